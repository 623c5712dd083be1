"""The disposable compute: a port and floating IP that stay, a server, its volume attachment."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_openstack as openstack

from components.adoption import AdoptionPlan
from components.settings import OWNER_KEY

# Server inputs whose change replaces the server instead of resizing or rebuilding it.
REPLACED_ON_CHANGE = ["flavor_name", "flavor_id", "image_name", "image_id"]


@dataclass
class NodeArgs:
    server_name: str
    """Nova name of the server, node-persist-<netid>."""
    image: str
    """Image name."""
    flavor_id: pulumi.Input[str] | None
    """The reserved flavor's id: the stack's lease's reservation id, or the student's own
    reservation (KVM@TACC boots only reserved flavors). None with flavor_name."""
    flavor_name: str | None
    """A flavor by name, for a site that boots unreserved flavors; None with flavor_id."""
    key_pair: str
    """Key pair registered at the site."""
    network: str
    """Name of the network the port is on."""
    floating_ip_pool: str
    """Pool the floating IP comes from."""
    security_group_ids: pulumi.Input[list[str]]
    """Groups carried by the port."""
    volume_id: pulumi.Input[str]
    """The persistent volume to attach."""
    user_data: str
    """cloud-init user data run at the server's first boot."""
    owner: str = ""
    """The stack's owner key's value, <netid>/<stack>: server metadata, Neutron descriptions."""
    owner_tag: str = ""
    """The same as one Neutron tag."""
    adoption: AdoptionPlan = field(default_factory=lambda: AdoptionPlan({}))
    """What to adopt (import) or make again, from the state and the cloud."""


class Node(pulumi.ComponentResource):
    """Port, floating IP, server and volume attachment.

    The port and floating IP depend on nothing of the server's, so recycling the
    server keeps the address; the server and the attachment are what a recycle removes.
    """

    floating_ip: pulumi.Output[str]
    server_id: pulumi.Output[str]
    attachment_id: pulumi.Output[str]
    server: openstack.compute.Instance
    attachment: openstack.compute.VolumeAttach

    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("chi-persist:index:Node", name, None, opts)
        network = openstack.networking.get_network_output(
            name=args.network, opts=pulumi.InvokeOptions(parent=self)
        )
        owned = f" ({OWNER_KEY}={args.owner})" if args.owner else ""
        tags = [args.owner_tag] if args.owner_tag else None
        port = openstack.networking.Port(
            f"{name}-port",
            name=args.server_name,
            description=f"chi-persist: {args.server_name}{owned}",
            network_id=network.id,
            security_group_ids=args.security_group_ids,
            admin_state_up=True,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, **args.adoption.options("port")),
        )
        floating_ip = openstack.networking.FloatingIp(
            f"{name}-floating-ip",
            pool=args.floating_ip_pool,
            port_id=port.id,
            description=f"chi-persist: {args.server_name}{owned}",
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, **args.adoption.options("floating_ip")),
        )
        if (args.flavor_id is None) == (args.flavor_name is None):
            raise ValueError("NodeArgs: give exactly one of flavor_id and flavor_name")
        self.server = openstack.compute.Instance(
            f"{name}-server",
            name=args.server_name,
            image_name=args.image,
            flavor_name=args.flavor_name,
            flavor_id=args.flavor_id,
            key_pair=args.key_pair,
            networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
            user_data=args.user_data,
            stop_before_destroy=True,
            metadata={"chi-persist": "node", **({OWNER_KEY: args.owner} if args.owner else {})},
            opts=pulumi.ResourceOptions(
                parent=self,
                **args.adoption.options("server"),
                # The port (and so the floating IP) can belong to one server at a time, and
                # the volume must be released by the old server before the new one takes it.
                # The engine deletes first every dependent that takes a property of the
                # server (the attachment by instance_id, each remote step by the server id
                # in its triggers), the stack step first: a replacement is a recycle.
                delete_before_replace=True,
                # The provider resizes a server in place on a new flavor (a new reservation
                # is a new flavor id) and rebuilds it in place on a new image, wiping the
                # root disk with no clean stop and keeping the server id, so nothing would
                # re-run. Replacing it instead takes the recycle path above.
                replace_on_changes=REPLACED_ON_CHANGE,
                # user_data would replace the server whenever docker/ changes. Ignoring it
                # also means a server replaced for another reason (flavor, image) boots with
                # the OLD user data; only a recycled server gets the current one. Nothing
                # depends on it: the stack step installs Docker and starts the stack from
                # the files it copies, and compose pulls or builds whatever is missing.
                ignore_changes=["user_data"],
            ),
        )
        self.attachment = openstack.compute.VolumeAttach(
            f"{name}-volume-attachment",
            instance_id=self.server.id,
            volume_id=args.volume_id,
            opts=pulumi.ResourceOptions(
                parent=self,
                # A volume can be attached to one server at a time: detach, then attach.
                delete_before_replace=True,
                **args.adoption.options("attachment"),
            ),
        )
        self.floating_ip = floating_ip.address
        self.server_id = self.server.id
        self.attachment_id = self.attachment.id
        self.register_outputs(
            {
                "floating_ip": self.floating_ip,
                "server_id": self.server_id,
                "attachment_id": self.attachment_id,
            }
        )
