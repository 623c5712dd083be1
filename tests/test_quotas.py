"""The quota check: what a stack adds, the decision, the reading of the three services, and the
program refusing before any resource (under mocks, with a pretend project)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.quotas import (
    Demand,
    Holdings,
    ProjectLimits,
    Quota,
    demand_of,
    read_holdings,
    read_limits,
    shortfalls,
)
from components.settings import validate
from tests.support.pretend_openstack import PretendOpenStack, PretendProject
from tests.support.program import CloudVolume, Evaluation, evaluate_program
from tests.support.ssh_keys import stand_in_private_key

STACK = "ab1234"
PRIVATE_KEY = stand_in_private_key()
LARGE = (4, 8192)
OWN_VOLUME = "0d6c2a1e-9b8f-4e7d-a6c5-b4a3928170f6"


def settings(**raw: Any):
    return validate({"keyPair": "ab1234-key", **raw}, STACK, check_private_key=False)


def limits(**quotas: tuple[int, int]) -> ProjectLimits:
    return ProjectLimits({name: Quota(*values) for name, values in quotas.items()})


# --- the decision ----------------------------------------------------------------------------

DECISIONS = [
    pytest.param({"instances": (10, 9)}, Demand(instances=1), [], id="the-last-instance-fits"),
    pytest.param(
        {"instances": (10, 10)}, Demand(instances=1), [("instances", 10, 10, 1)], id="no-room"
    ),
    pytest.param({"instances": (-1, 50)}, Demand(instances=1), [], id="unlimited"),
    pytest.param({}, Demand(instances=1), [], id="not-read-not-judged"),
    pytest.param({"instances": (0, 0)}, Demand(), [], id="nothing-needed"),
    pytest.param(
        {"security_groups": (10, 10), "security_group_rules": (100, 4), "cores": (20, 18)},
        Demand(security_groups=1, security_group_rules=7, cores=4),
        [("cores", 20, 18, 4), ("security_groups", 10, 10, 1)],
        id="each-quota-over-named",
    ),
    pytest.param(
        {"gigabytes": (1000, 998)}, Demand(gigabytes=3), [("gigabytes", 1000, 998, 3)], id="gib"
    ),
]


@pytest.mark.parametrize(("quotas", "demand", "expected"), DECISIONS)
def test_a_quota_is_short_only_when_used_plus_needed_exceeds_it(quotas, demand, expected) -> None:
    """used + needed > limit, for a limit that is set and read."""
    found = shortfalls(limits(**quotas), demand)
    assert [(s.name, s.limit, s.used, s.needed) for s in found] == expected


# --- what a stack adds -----------------------------------------------------------------------

NOTHING = Holdings(flavors={"m1.large": LARGE, "m1.medium": (2, 4096)})
DEPLOYED = Holdings(
    servers=frozenset({"node-persist-ab1234"}),
    groups={
        "persist-ab1234": frozenset((port, "0.0.0.0/0") for port in (22, 8000, 8888, 9000, 9001))
    },
    ports={"node-persist-ab1234": "port-1"},
    floating_ports=frozenset({"port-1"}),
    flavors={"m1.large": LARGE},
)
DEMANDS = [
    pytest.param(
        {},
        NOTHING,
        None,
        Demand(
            instances=1,
            cores=4,
            ram_mib=8192,
            security_groups=1,
            security_group_rules=7,
            ports=1,
            floating_ips=1,
            volumes=1,
            gigabytes=2,
        ),
        id="first-up",
    ),  # fmt: skip
    pytest.param({}, DEPLOYED, 2, Demand(), id="deployed-stack-adds-nothing"),
    pytest.param({"volumeSize": 5}, DEPLOYED, 2, Demand(gigabytes=3), id="growth-only"),
    pytest.param(
        {"allowedCidrs": ["0.0.0.0/0", "203.0.113.0/24"]},
        DEPLOYED,
        2,
        Demand(security_group_rules=5),
        id="one-more-network",
    ),
    pytest.param(
        {"existingSecurityGroups": ["allow-ssh"], "flavor": "m1.medium"},
        NOTHING,
        None,
        Demand(instances=1, cores=2, ram_mib=4096, ports=1, floating_ips=1, volumes=1, gigabytes=2),
        id="shared-groups-and-a-smaller-flavor",
    ),  # fmt: skip
    pytest.param(
        {},
        Holdings(groups=DEPLOYED.groups, ports=DEPLOYED.ports, flavors=DEPLOYED.flavors),
        2,
        Demand(instances=1, cores=4, ram_mib=8192, floating_ips=1),
        id="after-a-recycle-without-its-floating-ip",
    ),
]


@pytest.mark.parametrize(("raw", "holdings", "volume_now", "expected"), DEMANDS)
def test_what_a_stack_adds_is_what_it_does_not_find(raw, holdings, volume_now, expected) -> None:
    """Each resource the cloud already holds adds nothing; a larger volume adds its growth."""
    assert demand_of(settings(**raw), holdings, volume_now) == expected


def test_a_reservation_not_visible_yet_is_counted_as_an_instance_with_a_note() -> None:
    reservation = "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    demand = demand_of(settings(reservation=reservation), NOTHING, None)
    assert (demand.instances, demand.cores, demand.ram_mib) == (1, 0, 0)
    assert reservation in demand.notes[0] and "not counted" in demand.notes[0]


# --- reading the services --------------------------------------------------------------------


def test_limits_and_holdings_are_read_from_the_three_services() -> None:
    """Used counts include reservations; what exists is keyed by name."""
    project = PretendProject(
        used={"instances": 3, "cores": 12, "security_group": 5, "gigabytes": 20},
        servers=["node-persist-cd5678"],
        groups={"persist-cd5678": [(22, "0.0.0.0/0")]},
        ports={"node-persist-cd5678": "port-9"},
        floating_ports=["port-9"],
        volumes={"block-persist-cd5678": 4},
    )
    cloud = PretendOpenStack(project)
    read = read_limits(cloud)
    assert read.unread == ()
    assert read.quotas["instances"] == Quota(10, 3)
    assert read.quotas["cores"] == Quota(20, 12)
    assert read.quotas["security_groups"] == Quota(10, 6)  # the default group counts
    assert read.quotas["security_group_rules"] == Quota(100, 4)
    assert read.quotas["gigabytes"] == Quota(1000, 20)
    holdings = read_holdings(cloud)
    assert holdings.servers == {"node-persist-cd5678"}
    assert holdings.groups["persist-cd5678"] == {(22, "0.0.0.0/0")}
    assert holdings.ports == {"node-persist-cd5678": "port-9"}
    assert holdings.floating_ports == {"port-9"}
    assert holdings.volumes == {"block-persist-cd5678": 4}
    assert holdings.flavors["m1.large"] == LARGE and holdings.flavors["4"] == LARGE


def test_a_service_that_cannot_be_read_is_named_and_left_out() -> None:
    project = PretendProject(unreadable={"/limits": 403})
    read = read_limits(PretendOpenStack(project))
    assert "instances" not in read.quotas and "security_groups" in read.quotas
    (unread,) = read.unread
    assert unread.startswith("Nova's /limits: HTTP 403")


# --- the program --------------------------------------------------------------------------------


def evaluate(project: PretendProject, config: dict[str, Any] | None = None, **kwargs) -> Evaluation:
    return evaluate_program(
        STACK,
        {"keyPair": "ab1234-key", **(config or {})},
        secrets={"sshPrivateKey": PRIVATE_KEY},
        cloud_project=project,
        **kwargs,
    )


def refused(project: PretendProject, config: dict[str, Any] | None = None, **kwargs) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        evaluate(project, config, **kwargs)
    assert raised.value.registrations == [], "resources were registered before the refusal"
    message = str(raised.value)
    assert "Traceback" not in message
    return message


def test_an_up_over_the_instance_quota_is_refused_before_any_resource() -> None:
    """The class's servers fill the quota: the refusal names it, the numbers and the fixes."""
    project = PretendProject(used={"instances": 10, "cores": 16, "ram": 40960})
    message = refused(project)
    assert "nothing was created or changed" in message
    assert "Nova instances (servers): 10 of 10 in use, and this stack needs 1 more" in message
    assert "fewer servers at once" in message and "--end-lease" in message
    assert "ask the instructor" in message


def test_the_tenth_students_group_is_refused_with_the_shared_groups_fix() -> None:
    """Nine classmates' groups and the default one fill the default quota of 10."""
    project = PretendProject(used={"security_group": 9, "security_group_rule": 63})
    message = refused(project)
    assert "Neutron security groups (the project's default group counts): 10 of 10" in message
    assert "pulumi config set --path 'chi-persist:existingSecurityGroups[0]' allow-ssh" in message
    evaluation = evaluate(project, {"existingSecurityGroups": ["allow-ssh", "allow-8888"]})
    assert not [r for r in evaluation.registrations if r.type.endswith("secGroup:SecGroup")]


def test_a_deployed_stack_at_full_quota_is_not_refused() -> None:
    """A quota full with the stack's own resources: its next `up` adds nothing and runs."""
    project = PretendProject(
        used={"instances": 10, "security_group": 9, "volumes": 10, "gigabytes": 1000},
        servers=["node-persist-ab1234"],
        groups={"persist-ab1234": [(p, "0.0.0.0/0") for p in (22, 8000, 8888, 9000, 9001)]},
        ports={"node-persist-ab1234": "port-1"},
        floating_ports=["port-1"],
        limits={"instances": 10, "cores": 20, "ram": 51200, "security_group": 10,
                "security_group_rule": 100, "port": 500, "floatingip": 50, "volumes": 10,
                "gigabytes": 1000},
    )  # fmt: skip
    own = CloudVolume(
        id=OWN_VOLUME, name="block-persist-ab1234", metadata={"chi-persist-stack": "ab1234/ab1234"}
    )
    evaluation = evaluate(project, cloud_volumes=(own,))
    assert evaluation.other_warnings == []
    grown = refused(project, {"volumeSize": 3}, cloud_volumes=(own,))
    assert "Cinder gigabytes (all volumes' sizes): 1000 of 1000 in use" in grown
    assert "needs 1 more" in grown and "chi-persist:volumeSize" in grown


def test_quotas_that_cannot_be_read_are_a_warning_not_a_refusal() -> None:
    """A site whose policy hides a quota: the check says what it skipped; the up goes on."""
    project = PretendProject(unreadable={"/limits": 403}, used={"security_group": 2})
    evaluation = evaluate(project)
    assert any("Nova's /limits: HTTP 403" in warning for warning in evaluation.warnings)
    assert evaluation.registrations, "the up should have gone on"


# --- a roster ----------------------------------------------------------------------------------


def test_a_roster_is_refused_only_for_what_its_stacks_keep() -> None:
    """Groups and volumes are kept: over them, a problem. Servers come and go with leases:
    over the compute quotas, a warning with how many can run at once."""
    from components.quotas import roster_check, servers_at_once

    student = demand_of(settings(), NOTHING, None)
    twelve = [student] * 12
    project = limits(
        instances=(10, 0), cores=(20, 0), ram_mib=(51200, 0), security_groups=(10, 6),
        security_group_rules=(100, 4), ports=(500, 0), floating_ips=(50, 0), volumes=(20, 0),
        gigabytes=(1000, 0),
    )  # fmt: skip
    problems, warnings = roster_check(project, twelve)
    assert len(problems) == 1 and problems[0].startswith("Neutron security groups")
    assert "the roster's 12 new stacks need 12 more (4 left)" in problems[0]
    (warning,) = warnings
    assert "at most 5 can run at the same time" in warning
    assert "a smaller flavor" in warning and "fewer servers at once" in warning
    assert servers_at_once(project, twelve) == 5
    medium = demand_of(settings(flavor="m1.medium"), NOTHING, None)
    assert servers_at_once(project, [medium] * 12) == 10
    deployed = demand_of(settings(), DEPLOYED, 2)
    assert roster_check(project, [deployed] * 12) == ([], [])
