"""Nova's state and rules: flavors, key pairs, servers and their volume attachments.

A server moves as Nova's does: BUILD until the machine driver reports the guest
running, then ACTIVE; os-stop powers it off (SHUTOFF); a guest found off while
ACTIVE is marked SHUTOFF (Nova's power-state sync); delete ends the guest, gives
back its volumes and unbinds its ports, and the server is then gone (404).
Attaching reserves the volume in Cinder (attaching), hot-plugs it through the
driver, then marks it in-use; detaching is the reverse, and a guest that does
not let go leaves the volume in-use. Cinder's volume-extended event grows the
guest's disk later, on Nova's own time (a failure is only logged). Servers count
against the project's instance, core and RAM quotas. Messages are Nova's
(nova/exception.py, nova/api/openstack/compute/servers.py, volume_attachments.py).
Each behaviour names the upstream function it follows; compute/behaviour.toml lists them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
import time
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import ComputeError, ServiceError, is_uuid_like
from tests.twin.services.state import new_uuid, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

# id, name, vCPUs, RAM MiB, root disk GiB: Nova's classic flavors.
FLAVORS = (
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
    ("5", "m1.xlarge", 8, 16384, 160),
)
POWER_NOSTATE, POWER_RUNNING, POWER_SHUTDOWN = 0, 1, 4
STATUS_OF = {"building": "BUILD", "active": "ACTIVE", "stopped": "SHUTOFF", "error": "ERROR"}
ATTACHABLE_STATES = ("active", "stopped")
GIB = 1024**3
# nova/conf/quota.py: the quotas a project member sees in /limits besides instances, cores and
# ram (the twin's settings); floating_ips, security_groups and security_group_rules are the
# nova-network ones nova/quota.py keeps as AbsoluteResource with no option: unlimited.
FIXED_QUOTAS = {
    "key_pairs": 100,
    "metadata_items": 128,
    "injected_files": 5,
    "injected_file_content_bytes": 10240,
    "server_groups": 10,
    "server_group_members": 10,
    "floating_ips": -1,
    "security_groups": -1,
    "security_group_rules": -1,
}
DEVICE_PATTERN = re.compile(r"^/dev/x{0,1}[a-z]{0,1}d{0,1}[a-z]+[0-9]*$")
# nova/virt/libvirt/driver.py MAX_CONSOLE_BYTES: what os-getConsoleOutput reads of the log.
CONSOLE_BYTES = 100 * 1024


def bad_request(message: str) -> ComputeError:
    return ComputeError(400, message)


def not_found(message: str) -> ComputeError:
    return ComputeError(404, message)


def invalid_state(server: dict[str, Any], action: str) -> ComputeError:
    """nova/api/openstack/common.py raise_http_conflict_for_instance_invalid_state."""
    if server["task_state"] is not None:
        attribute, value = "task_state", server["task_state"]
    else:
        attribute, value = "vm_state", server["vm_state"]
    return ComputeError(
        409, f"Cannot '{action}' instance {server['id']} while it is in {attribute} {value}"
    )


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint of an SSH public key: MD5 of the key blob, colon separated
    (nova/crypto.py generate_fingerprint)."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_ssh_public_key(public_key.strip().encode())
        blob = base64.b64decode(public_key.split()[1])
    except (ValueError, IndexError, TypeError, UnicodeError):
        raise bad_request("Keypair data is invalid: failed to generate fingerprint") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[index : index + 2] for index in range(0, len(digest), 2))


def generated_key_pair(name: str) -> tuple[str, str]:
    """(private key PEM, public key) as Nova makes them when no public key is given
    (nova/crypto.py generate_key_pair, through KeypairAPI.create_key_pair)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} Generated-by-Nova"


def hostname_of(name: str) -> str:
    """nova/utils.py sanitize_hostname: lower case, letters, digits and dashes, at most 63."""
    text = name.lower()
    text = re.sub(r"[ _.]", "-", text)
    text = re.sub(r"[^\w-]+", "", text, flags=re.ASCII)
    text = text.strip(".-")[:63].rstrip("-")
    return text or "server"


class ComputeBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    # --- collections -------------------------------------------------------------------

    @property
    def flavors(self) -> dict[str, Any]:
        return self.state.collection("flavors")

    @property
    def keypairs(self) -> dict[str, Any]:
        return self.state.collection("keypairs")

    @property
    def servers(self) -> dict[str, Any]:
        return self.state.collection("servers")

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        for flavor_id, name, vcpus, ram, disk in FLAVORS:
            self.flavors[flavor_id] = {
                "id": flavor_id,
                "name": name,
                "vcpus": vcpus,
                "ram": ram,
                "disk": disk,
                "swap": 0,
                "ephemeral": 0,
                "rxtx_factor": 1.0,
                "is_public": True,
                "description": None,
                "extra_specs": {},
            }
        self.state.data["keypair_sequence"] = 0

    def recover(self) -> None:
        """The twin restarted: what nova-compute does with each instance at its start
        (nova/compute/manager.py ComputeManager._init_instance): a delete under way is
        finished, a server that was building goes to ERROR; a power action cut short is
        cleared (Nova retries a stop; the guest here was stopped with the twin)."""
        for server in list(self.servers.values()):
            if server["task_state"] == "deleting":
                self._schedule_delete(server, reason="delete")
                continue
            if server["vm_state"] == "building":
                self._error(server, "The twin stopped while the server was building.")
            elif server["task_state"] in ("powering-off", "powering-on"):
                server["task_state"] = None
            for volume_id, attachment in list(server["attachments"].items()):
                if attachment["state"] in ("attaching", "detaching"):
                    self._schedule_release(server, volume_id)

    def _schedule_release(self, server: dict[str, Any], volume_id: str) -> None:
        """Undo an attach or finish a detach that a stopped twin left half done."""
        server_id = server["id"]
        cloud = self.cloud

        def release() -> None:
            cloud.call_driver("detach", server_id, volume_id)
            with self.state.lock:
                server["attachments"].pop(volume_id, None)
                volume = cloud.volume.volumes.get(volume_id)
                if volume is not None:
                    cloud.volume.detached(volume)
                self.state.save()

        cloud.jobs.submit(server_id, release)

    # --- lookups -------------------------------------------------------------------------

    def get_server(self, server_id: str) -> dict[str, Any]:
        server = self.servers.get(server_id)
        if server is None:
            raise not_found(f"Instance {server_id} could not be found.")
        return server

    def get_flavor(self, flavor_id: str) -> dict[str, Any]:
        flavor = self.flavors.get(flavor_id)
        if flavor is None:
            raise not_found(f"Flavor {flavor_id} could not be found.")
        return flavor

    def get_keypair(self, name: str) -> dict[str, Any]:
        keypair = self.keypairs.get(name)
        if keypair is None:
            raise not_found(f"Keypair {name} not found for user {self.cloud.identity.user_id}")
        return keypair

    def exposable(self, server: dict[str, Any]) -> bool:
        """Whether the driver has a machine for the server that a floating IP may reach."""
        return (
            server["booted"]
            and server["vm_state"] in ("active", "stopped")
            and server["task_state"] != "deleting"
        )

    # --- key pairs -----------------------------------------------------------------------

    def create_keypair(
        self, name: str, public_key: str | None, key_type: str = "ssh"
    ) -> dict[str, Any]:
        if name in self.keypairs:
            # nova/objects/keypair.py _create_in_db: the name is the user's, once.
            raise ComputeError(409, f"Key pair '{name}' already exists.")
        private_key = None
        if public_key is None:
            private_key, public_key = generated_key_pair(name)
        self.state.data["keypair_sequence"] = self.state.data.get("keypair_sequence", 0) + 1
        keypair = {
            "id": self.state.data["keypair_sequence"],
            "name": name,
            "public_key": public_key,
            "fingerprint": fingerprint(public_key),
            "type": key_type,
            "user_id": self.cloud.identity.user_id,
            "created_at": stamp(),
        }
        self.keypairs[name] = keypair
        return {**keypair, "private_key": private_key} if private_key else keypair

    def delete_keypair(self, name: str) -> None:
        self.get_keypair(name)
        del self.keypairs[name]

    # --- servers -------------------------------------------------------------------------

    def _reference(self, value: str) -> str:
        """The id in an id or in a URL ending with it (imageRef, flavorRef)."""
        return str(value).rstrip("/").rsplit("/", 1)[-1]

    def _security_group_ids(self, names: list[str]) -> list[str]:
        """nova/network/security_group_api.py validate_name, through neutronclient's lookup."""
        network = self.cloud.network
        groups = network.groups_of_project()
        ids = []
        for name in names:
            if name == "default":
                ids.append(network.default_group()["id"])
                continue
            by_id = [group for group in groups if group["id"] == name]
            if by_id:
                ids.append(name)
                continue
            by_name = [group for group in groups if group["name"] == name]
            if len(by_name) > 1:
                raise ComputeError(
                    409,
                    f"Multiple security_group matches found for name '{name}', use an ID to be "
                    "more specific.",
                )
            if not by_name:
                raise bad_request(f"Unable to find security_group with name or id '{name}'")
            ids.append(by_name[0]["id"])
        return ids

    def _requested_networks(self, requested: Any, group_ids: list[str]) -> list[tuple[str, Any]]:
        """[("port", port) | ("network", network)], checked as Nova's create does
        (nova/network/neutron.py API._validate_requested_network_ids: one tenant network
        when none is asked for; API._ports_needed_per_instance: a port bound to a device is
        in use)."""
        network = self.cloud.network
        if requested in (None, "auto"):
            tenant = network.tenant_networks()
            if len(tenant) != 1:
                raise ComputeError(
                    409,
                    "More than one possible network found. Specify network ID(s) to select "
                    "which one(s) to connect to.",
                )
            return [("network", tenant[0])]
        if requested == "none":
            return []
        chosen: list[tuple[str, Any]] = []
        for item in requested:
            if item.get("port"):
                port = network.ports.get(item["port"])
                if port is None:
                    raise bad_request(f"Port id {item['port']} could not be found.")
                if port["device_id"]:
                    raise ComputeError(409, f"Port {port['id']} is still in use.")
                if not port["fixed_ips"]:
                    raise bad_request(f"Port {port['id']} requires a FixedIP in order to be used.")
                chosen.append(("port", port))
                continue
            network_id = item.get("uuid")
            if not network_id or not is_uuid_like(network_id):
                raise bad_request(
                    f"Bad networks format: network uuid is not in proper format ({network_id})"
                )
            found = network.networks.get(network_id)
            if found is None:
                raise bad_request(f"Network {network_id} could not be found.")
            if found["router:external"]:
                raise ComputeError(
                    403,
                    f"It is not allowed to create an interface on external network {network_id}",
                )
            if item.get("fixed_ip"):
                raise ComputeError(501, "The twin does not serve fixed_ip in a server's networks.")
            chosen.append(("network", found))
        return chosen

    # --- quotas (nova/quota.py, nova/compute/utils.py) --------------------------------------

    def quotas(self) -> dict[str, dict[str, int]]:
        """nova/quota.py DbQuotaDriver.get_project_quotas(usages=True): limit and in_use of each
        resource. Instances, cores and ram count every server of the project that is not
        deleted yet, whatever its state (nova/quota.py _instances_cores_ram_count); key pairs
        and server group members are per user and shown as 0 (_get_usages); the
        nova-network quotas are kept unlimited for the API's sake."""
        config = self.cloud.config
        project_id = self.cloud.identity.project_id
        mine = [server for server in self.servers.values() if server["project_id"] == project_id]
        used = {
            "instances": len(mine),
            "cores": sum(server["flavor"]["vcpus"] for server in mine),
            "ram": sum(server["flavor"]["ram"] for server in mine),
        }
        limits = {
            "instances": config["quota_instances"],
            "cores": config["quota_cores"],
            "ram": config["quota_ram"],
            **FIXED_QUOTAS,
        }
        return {
            name: {"limit": limit, "in_use": used.get(name, 0)} for name, limit in limits.items()
        }

    def _check_instance_quota(self, flavor: dict[str, Any], count: int = 1) -> None:
        """nova/compute/utils.py check_num_instances_quota: instances, cores and ram checked
        together (Quotas.check_deltas); over any, TooManyInstances names each resource over
        (sorted), what was asked, used and allowed. The API answers it 403
        (nova/api/openstack/compute/servers.py ServersController.create)."""
        quotas = self.quotas()
        deltas = {
            "instances": count,
            "cores": count * flavor["vcpus"],
            "ram": count * flavor["ram"],
        }
        overs = sorted(
            name
            for name, delta in deltas.items()
            if quotas[name]["limit"] >= 0 and quotas[name]["in_use"] + delta > quotas[name]["limit"]
        )
        if not overs:
            return
        # get_over_quota_detail: each column joined with ", ", in the order of the overs.
        names = ", ".join(overs)
        asked = ", ".join(str(deltas[name]) for name in overs)
        used = ", ".join(str(quotas[name]["in_use"]) for name in overs)
        allowed = ", ".join(str(quotas[name]["limit"]) for name in overs)
        raise ComputeError(
            403,
            f"Quota exceeded for {names}: Requested {asked}, but already used {used} of "
            f"{allowed} {names}",
        )

    def create_server(self, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A new server in BUILD, booting in the background: (server, admin password)."""
        flavor = self.flavors.get(self._reference(request["flavorRef"]))
        if flavor is None:
            raise bad_request(f"Flavor {self._reference(request['flavorRef'])} could not be found.")
        image_ref = request.get("imageRef") or ""
        if not image_ref:
            raise bad_request(
                "Block Device Mapping is Invalid: Boot sequence for the instance and image/block "
                "device mapping combination is not valid."
            )
        image = self.cloud.image.get(self._reference(image_ref))
        if image is None:
            raise bad_request("Can not find requested image")
        key_name = request.get("key_name")
        keypair = None
        if key_name is not None:
            keypair = self.keypairs.get(key_name)
            if keypair is None:
                raise bad_request("Invalid key_name provided.")
        group_names = [group["name"] for group in request.get("security_groups") or []]
        group_ids = self._security_group_ids(group_names) if group_names else []
        chosen = self._requested_networks(request.get("networks"), group_ids)
        # nova/compute/api.py API._provision_instances checks the quota after the request's
        # image, flavor, key pair and networks.
        self._check_instance_quota(flavor)
        user_data = request.get("user_data")
        server_id = new_uuid()
        moment = stamp()
        network = self.cloud.network
        port_ids, created_ports = [], []
        for kind, item in chosen:
            if kind == "port":
                port = item
            else:
                port = network.create_port(
                    {
                        "network_id": item["id"],
                        "security_groups": group_ids or [network.default_group()["id"]],
                    }
                )
                created_ports.append(port["id"])
            network.bind_port(port, server_id)
            port_ids.append(port["id"])
        server = {
            "id": server_id,
            "name": request["name"],
            "description": request.get("description"),
            "project_id": self.cloud.identity.project_id,
            "user_id": self.cloud.identity.user_id,
            "image_id": image["id"],
            "image_name": image["name"],
            "flavor": dict(flavor),
            "key_name": key_name,
            "public_key": keypair["public_key"] if keypair else None,
            "metadata": dict(request.get("metadata") or {}),
            "user_data": user_data,
            "config_drive": bool(request.get("config_drive")),
            "availability_zone": request.get("availability_zone") or "nova",
            "requested_security_groups": group_names,
            "tags": list(request.get("tags") or []),
            "ports": port_ids,
            "created_ports": created_ports,
            "attachments": {},
            "vm_state": "building",
            "task_state": "scheduling",
            "power_state": POWER_NOSTATE,
            "created": moment,
            "updated": moment,
            "launched_at": None,
            "fault": None,
            "booted": False,
            "hostname": hostname_of(request["name"]),
        }
        self.servers[server_id] = server
        admin_password = "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(12)
        )
        self._schedule_boot(server)
        return server, admin_password

    def _schedule_boot(self, server: dict[str, Any]) -> None:
        server_id = server["id"]
        cloud = self.cloud
        network = cloud.network

        def boot() -> None:
            with self.state.lock:
                if server_id not in self.servers or server["task_state"] == "deleting":
                    return
                first = network.ports.get(server["ports"][0]) if server["ports"] else None
                arguments = {
                    "image": server["image_name"],
                    "user_data": base64.decodebytes(server["user_data"].encode())
                    if server["user_data"]
                    else None,
                    "public_keys": [server["public_key"]] if server["public_key"] else [],
                    "metadata": dict(server["metadata"]),
                    "hostname": server["hostname"],
                    "mac": first["mac_address"] if first else "fa:16:3e:00:00:00",
                    "fixed_ip": first["fixed_ips"][0]["ip_address"] if first else "10.56.0.2",
                }
                server["task_state"] = "spawning"
            failure = cloud.call_driver("boot", server_id, **arguments)
            with self.state.lock:
                if server_id not in self.servers:
                    return
                if failure is not None:
                    self._error(server, failure)
                else:
                    server["booted"] = True
                self.state.save()

        cloud.jobs.submit(server_id, boot)

    def _error(self, server: dict[str, Any], message: str) -> None:
        """ERROR, with the fault GET shows (nova/compute/utils.py add_instance_fault_from_exc)."""
        server["vm_state"] = "error"
        server["task_state"] = None
        server["updated"] = stamp()
        server["fault"] = {"code": 500, "message": message[:255], "created": stamp()}

    def _activate(self, server: dict[str, Any]) -> None:
        server["vm_state"] = "active"
        server["task_state"] = None
        server["power_state"] = POWER_RUNNING
        server["updated"] = stamp()
        if server["launched_at"] is None:
            server["launched_at"] = stamp()

    def _power_off(self, server: dict[str, Any]) -> None:
        server["vm_state"] = "stopped"
        server["task_state"] = None
        server["power_state"] = POWER_SHUTDOWN
        server["updated"] = stamp()

    def tick(self) -> None:
        """Follow the driver: a building guest that runs is ACTIVE (nova/compute/manager.py
        ComputeManager._build_and_run_instance), a guest found off while ACTIVE is SHUTOFF
        (ComputeManager._sync_instance_power_state), a broken or vanished one is ERROR."""
        with self.state.lock:
            watched = [
                server_id
                for server_id, server in self.servers.items()
                if server["booted"] and server["task_state"] not in ("deleting", "powering-off")
                and server["vm_state"] != "error"
            ]  # fmt: skip
        if not watched:
            return
        seen = {server_id: self.cloud.driver_state(server_id) for server_id in watched}
        changed = False
        with self.state.lock:
            for server_id, driver_state in seen.items():
                server = self.servers.get(server_id)
                if server is None or server["task_state"] in ("deleting", "powering-off"):
                    continue
                vm_state, task_state = server["vm_state"], server["task_state"]
                if driver_state == "error" and vm_state != "error":
                    failure = getattr(self.cloud.driver, "failure", None)
                    reason = failure(server_id) if callable(failure) else None
                    self._error(server, reason or "The machine driver reports the guest failed.")
                elif vm_state == "building" and driver_state == "running":
                    self._activate(server)
                elif vm_state == "building" and driver_state in ("gone", "stopped"):
                    self._error(server, f"The guest is {driver_state} before it finished building.")
                elif vm_state == "active" and task_state is None and driver_state == "stopped":
                    self._power_off(server)
                elif vm_state == "active" and driver_state == "gone":
                    self._error(server, "The machine driver no longer has this server's guest.")
                elif (
                    vm_state == "stopped"
                    and task_state == "powering-on"
                    and driver_state == "running"
                ):
                    self._activate(server)
                else:
                    continue
                changed = True
                self.cloud.record(
                    "compute",
                    server_id=server_id,
                    action="status",
                    detail=f"{STATUS_OF[vm_state]} -> {STATUS_OF[server['vm_state']]}",
                )
            if changed:
                self.cloud.network.sync_exposures()
                self.state.save()

    def stop_server(self, server: dict[str, Any]) -> None:
        """os-stop: powering-off, the guest shut down, then SHUTOFF (nova/compute/manager.py
        ComputeManager.stop_instance)."""
        if server["vm_state"] not in ("active", "error") or server["task_state"] is not None:
            raise invalid_state(server, "stop")
        server["task_state"] = "powering-off"
        server_id = server["id"]
        booted = server["booted"]

        def stop() -> None:
            failure = self.cloud.call_driver("stop", server_id) if booted else None
            with self.state.lock:
                if server_id not in self.servers:
                    return
                if failure is None:
                    self._power_off(server)
                else:
                    server["task_state"] = None
                self.state.save()

        self.cloud.jobs.submit(server_id, stop)

    def start_server(self, server: dict[str, Any]) -> None:
        """os-start: powering-on, then ACTIVE once the guest runs (nova/compute/manager.py
        ComputeManager.start_instance)."""
        if server["vm_state"] != "stopped" or server["task_state"] is not None:
            raise invalid_state(server, "start")
        if not callable(getattr(self.cloud.driver, "start", None)):
            raise ComputeError(501, "The twin's machine driver cannot start a stopped server.")
        server["task_state"] = "powering-on"
        server_id = server["id"]

        def start() -> None:
            failure = self.cloud.call_driver("start", server_id)
            with self.state.lock:
                if server_id in self.servers and failure is not None:
                    server["task_state"] = None
                    self.state.save()

        self.cloud.jobs.submit(server_id, start)

    # --- the console ---------------------------------------------------------------------

    def console_output(self, server: dict[str, Any], length: int | None) -> str:
        """os-getConsoleOutput, as nova/api/openstack/compute/console_output.py
        ConsoleOutputController.get_console_output answers it: a server no host has taken yet
        is not ready, 409 (nova/compute/api.py check_instance_host); the text is the guest's
        console, the last 100 KiB of its log (nova/virt/libvirt/driver.py
        LibvirtDriver._get_console_output_file), cut to its last `length` lines
        (nova/compute/manager.py ComputeManager._tail_log: 0 gives nothing, and -1, which the
        API calls unlimited, drops the first line), without control characters. A server whose
        host keys the admin API forged shows those instead of the guest's."""
        if server["task_state"] == "scheduling" and not server["booted"]:
            raise ComputeError(409, f"Instance {server['id']} is not ready")
        reader = getattr(self.cloud.driver, "console_output", None)
        if not callable(reader):
            raise ComputeError(501, "The twin's machine driver keeps no console output.")
        try:
            raw = reader(server["id"]).encode("utf-8", "replace")
        except Exception:  # the guest's machine is gone: Nova's ConsoleNotAvailable
            raise ComputeError(404, "Guest does not have a console available.") from None
        raw = raw[-CONSOLE_BYTES:]
        forged = server.get("forged_host_keys")
        if forged:
            raw = _with_host_keys(raw.decode("ascii", "replace"), forged).encode()
        if length is not None:
            raw = b"" if length == 0 else b"\n".join(raw.split(b"\n")[-length:])
        return re.sub("[\x00-\x08\x0b-\x1f]", "", raw.decode("ascii", "replace"))

    def forge_host_keys(self, server: dict[str, Any], forge: bool | list[str]) -> list[str]:
        """The admin API's switch: the server's console shows other host keys than its guest
        has (fresh ones, or the public keys given), or its own again."""
        from tests.twin.services.machines import generated_host_keys

        if isinstance(forge, list):
            server["forged_host_keys"] = list(forge)
        elif forge:
            server["forged_host_keys"] = generated_host_keys(server["hostname"])
        else:
            server.pop("forged_host_keys", None)
        return list(server.get("forged_host_keys") or [])

    def delete_server(self, server: dict[str, Any], reason: str = "delete") -> None:
        if server["task_state"] == "deleting":
            return
        server["task_state"] = "deleting"
        server["updated"] = stamp()
        self._schedule_delete(server, reason)

    def _schedule_delete(self, server: dict[str, Any], reason: str) -> None:
        server_id = server["id"]
        booted = server["booted"]

        def delete() -> None:
            failure = None
            if booted or self.cloud.driver_state(server_id) != "gone":
                failure = self.cloud.call_driver("delete", server_id)
            with self.state.lock:
                if server_id not in self.servers:
                    return
                if failure is not None and self.cloud.driver_state(server_id) != "gone":
                    self._error(server, f"Deleting the guest failed: {failure}")
                else:
                    self._forget(server)
                    self.cloud.record(
                        "compute", server_id=server_id, action=reason, detail="server gone"
                    )
                self.state.save()

        self.cloud.jobs.submit(server_id, delete)

    def _forget(self, server: dict[str, Any]) -> None:
        """The guest is gone: its volumes are detached (nova/compute/manager.py
        ComputeManager._shutdown_instance), the ports Nova made are deleted and the ports it
        was given unbound (nova/network/neutron.py API.deallocate_for_instance)."""
        network = self.cloud.network
        volumes = self.cloud.volume
        for volume_id in server["attachments"]:
            volume = volumes.volumes.get(volume_id)
            if volume is not None:
                volumes.detached(volume)
        network.forget_exposures(server["id"])
        for port_id in server["ports"]:
            port = network.ports.get(port_id)
            if port is None:
                continue
            if port_id in server["created_ports"]:
                network.delete_port(port_id)
            else:
                network.unbind_port(port)
        del self.servers[server["id"]]
        network.sync_exposures()

    def port_removed(self, server: dict[str, Any], port_id: str) -> None:
        if port_id in server["ports"]:
            server["ports"].remove(port_id)

    # --- volume attachments ------------------------------------------------------------

    def _check_attach_state(self, server: dict[str, Any], action: str) -> None:
        if server["vm_state"] not in ATTACHABLE_STATES or server["task_state"] is not None:
            raise invalid_state(server, action)

    def attach_volume(
        self, server: dict[str, Any], volume_id: str, device: str | None
    ) -> dict[str, Any]:
        """Cinder reserves the volume (attaching), the guest gets the disk, then in-use; a
        plug that fails gives the volume back (nova/compute/manager.py
        ComputeManager.attach_volume)."""
        self._check_attach_state(server, "attach_volume")
        volumes = self.cloud.volume
        volume = volumes.volumes.get(volume_id)
        if volume is None:
            raise not_found(f"Volume {volume_id} could not be found.")
        if volume_id in server["attachments"]:
            raise bad_request(f"Invalid volume: volume {volume_id} already attached")
        if device is not None and not DEVICE_PATTERN.match(device):
            raise bad_request(f"The supplied device path ({device}) is invalid.")
        try:
            volumes.reserve(volume)
        except ServiceError as error:
            raise bad_request(error.message) from None
        used = {attachment["device"] for attachment in server["attachments"].values()}
        letter = next(
            letter for letter in string.ascii_lowercase[1:] if f"/dev/vd{letter}" not in used
        )
        chosen = f"/dev/vd{letter}"
        server["attachments"][volume_id] = {"device": chosen, "state": "attaching"}
        server_id = server["id"]
        disk = volumes.disk(volume_id)
        cloud = self.cloud

        def attach() -> None:
            failure = cloud.call_driver("attach", server_id, volume_id, disk)
            with self.state.lock:
                attachment = server["attachments"].get(volume_id)
                if server_id not in self.servers or attachment is None:
                    return
                if failure is None:
                    attachment["state"] = "attached"
                    volumes.attached(volume, server_id, chosen)
                else:
                    del server["attachments"][volume_id]
                    volumes.unreserve(volume)
                self.state.save()

        cloud.jobs.submit(server_id, attach)
        return {"id": volume_id, "serverId": server_id, "volumeId": volume_id, "device": chosen}

    def attachment(self, server: dict[str, Any], volume_id: str) -> dict[str, Any]:
        attachment = server["attachments"].get(volume_id)
        if attachment is None:
            raise not_found(f"Instance {server['id']} is not attached to volume {volume_id}")
        return attachment

    def volume_extended(self, server_id: str, volume_id: str) -> None:
        """Cinder's volume-extended event (nova/compute/manager.py ComputeManager.extend_volume),
        handled in the background after Cinder has already set the new size: the guest's disk
        is grown to the volume's size; a failure is only logged (an instance fault and a
        failed instance action), and nobody is told."""
        cloud = self.cloud
        delay = cloud.config["guest_extend_seconds"]
        fails = cloud.config["guest_extend_fails"]

        def extend() -> None:
            time.sleep(delay)
            with self.state.lock:
                server = self.servers.get(server_id)
                volume = cloud.volume.volumes.get(volume_id)
                if server is None or volume is None or volume_id not in server["attachments"]:
                    cloud.record(
                        "compute",
                        server_id=server_id,
                        action="extend_volume",
                        outcome="skipped",
                        detail=f"Extend volume failed, volume {volume_id} is not attached to "
                        "instance.",
                    )
                    return
                size_bytes = volume["size"] * GIB
            if fails:
                failure = "the twin's guest_extend_fails: the hypervisor did not resize the disk"
            else:
                failure = cloud.call_driver("resize_disk", server_id, volume_id, size_bytes)
            cloud.record(
                "compute",
                server_id=server_id,
                action="extend_volume",
                outcome="ok" if failure is None else "error",
                detail=(
                    f"volume {volume_id} grown to {size_bytes} bytes in the guest"
                    if failure is None
                    else f"Extend volume failed, volume_id={volume_id}, reason: {failure}"
                ),
            )

        cloud.jobs.submit(server_id, extend)

    def detach_volume(self, server: dict[str, Any], volume_id: str) -> None:
        """Cinder's begin_detaching, then the guest lets the disk go and the volume is
        available; a guest that holds on leaves it in-use (nova/compute/manager.py
        ComputeManager._detach_volume, roll_detaching on failure)."""
        self._check_attach_state(server, "detach_volume")
        volumes = self.cloud.volume
        volume = volumes.volumes.get(volume_id)
        if volume is None:
            raise not_found(f"Volume {volume_id} could not be found.")
        attachment = self.attachment(server, volume_id)
        try:
            volumes.begin_detaching(volume)
        except ServiceError as error:
            raise bad_request(f"Invalid volume: {error.message}") from None
        attachment["state"] = "detaching"
        server_id = server["id"]
        cloud = self.cloud

        def detach() -> None:
            failure = cloud.call_driver("detach", server_id, volume_id)
            with self.state.lock:
                if server_id not in self.servers:
                    return
                if failure is None:
                    server["attachments"].pop(volume_id, None)
                    volumes.detached(volume)
                else:
                    attachment["state"] = "attached"
                    volumes.roll_detaching(volume)
                self.state.save()

        cloud.jobs.submit(server_id, detach)


def _with_host_keys(console: str, public_keys: list[str]) -> str:
    """The console with every host key block (cloud-init's) holding `public_keys` instead."""
    from tests.twin.services.machines import KEYS_BEGIN, KEYS_END, host_key_block

    lines, result, inside = console.split("\n"), [], False
    for line in lines:
        if KEYS_BEGIN in line:
            inside = True
            result.extend(host_key_block(public_keys))
        elif inside and KEYS_END in line:
            inside = False
        elif not inside:
            result.append(line)
    return "\n".join(result)
