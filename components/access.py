"""Who may reach the node: one security group of the student's own, or groups that already exist."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_openstack as openstack

from components.adoption import AdoptionPlan, rule

# The ports the platform answers on, by what listens there.
PLATFORM_PORTS: dict[str, int] = {
    "ssh": 22,
    "jupyter": 8888,
    "mlflow": 8000,
    "minio-api": 9000,
    "minio-console": 9001,
}
# In platformAccess tunnel, only SSH is open: the others answer on the server's 127.0.0.1,
# through an SSH tunnel (`./chi-persist open`).
TUNNEL_PORTS: dict[str, int] = {"ssh": PLATFORM_PORTS["ssh"]}


def ports_for(platform_access: str) -> dict[str, int]:
    """The ports the security group opens for a platformAccess mode ("public" or "tunnel")."""
    return dict(TUNNEL_PORTS if platform_access == "tunnel" else PLATFORM_PORTS)


@dataclass
class AccessRulesArgs:
    group_name: str
    """Name of the group to create; it carries the netid, since names are shared by the class."""
    allowed_cidrs: Sequence[str]
    """IPv4 networks allowed on every port."""
    existing_groups: Sequence[str] = ()
    """Names of groups that already exist; when given, they are used and none is created."""
    ports: dict[str, int] | None = None
    """Ports to open, by service; PLATFORM_PORTS when None."""
    owner_tag: str = ""
    """The stack's owner key as a Neutron tag, on the group."""
    owner_description: str = ""
    """The stack's owner key as it ends every description: " (chi-persist-stack=<owner>)"."""
    adoption: AdoptionPlan = field(default_factory=lambda: AdoptionPlan({}))
    """What to adopt (import) or make again, from the state and the cloud."""


def opened_ports(args: AccessRulesArgs) -> list[tuple[str, int, str]]:
    """(service, port, cidr) of every rule the group holds."""
    return [
        (service, port, cidr)
        for service, port in sorted((args.ports or PLATFORM_PORTS).items())
        for cidr in args.allowed_cidrs
    ]


class AccessRules(pulumi.ComponentResource):
    """A security group with one TCP ingress rule per port and allowed network."""

    security_group_ids: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: AccessRulesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("chi-persist:index:AccessRules", name, None, opts)
        if args.existing_groups:
            ids = [
                openstack.networking.get_sec_group_output(name=group, opts=_invoke(self)).id
                for group in args.existing_groups
            ]
            self.security_group_ids = pulumi.Output.all(*ids).apply(list)
        else:
            group = openstack.networking.SecGroup(
                f"{name}-group",
                name=args.group_name,
                # The description is the group's, whatever ports its rules open (Neutron
                # has no update for it, and a switch of platformAccess keeps the group).
                description="chi-persist: SSH, Jupyter, MLflow and MinIO" + args.owner_description,
                tags=[args.owner_tag] if args.owner_tag else None,
                opts=pulumi.ResourceOptions(parent=self, **args.adoption.options("group")),
            )
            for service, port, cidr in opened_ports(args):
                openstack.networking.SecGroupRule(
                    f"{name}-{service}-{cidr.replace('/', '-')}",
                    security_group_id=group.id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol="tcp",
                    port_range_min=port,
                    port_range_max=port,
                    remote_ip_prefix=cidr,
                    description=f"{service} (TCP {port}) from {cidr}{args.owner_description}",
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        **args.adoption.options(rule(service, cidr).key),
                        # Neutron has no update for a rule: a new description would replace
                        # every rule a stack made before rules named their owner (the group,
                        # which carries the key, is what tells whose they are).
                        ignore_changes=["description"],
                    ),
                )
            self.security_group_ids = group.id.apply(lambda group_id: [group_id])
        self.register_outputs({"security_group_ids": self.security_group_ids})


def _invoke(parent: pulumi.Resource) -> pulumi.InvokeOptions:
    return pulumi.InvokeOptions(parent=parent)
