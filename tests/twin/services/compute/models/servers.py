"""Nova's servers: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

import base64
import secrets
import string
from typing import Any

from tests.twin.services.compute.models.common import (
    POWER_NOSTATE,
    POWER_RUNNING,
    POWER_SHUTDOWN,
    STATUS_OF,
    bad_request,
    hostname_of,
    invalid_state,
)
from tests.twin.services.core import ComputeError, is_uuid_like
from tests.twin.services.state import new_uuid, stamp


class ServerBackend:
    """Servers through their life: create, boot, power sync, stop, start and delete."""

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
