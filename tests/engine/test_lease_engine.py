"""The lease resource under the real Pulumi engine, against the twin's Blazar (no VMs).

A program of one resource, `components.lease.Lease`, in a student machine's project
directory (tests/engine/workspace.py), run by the real CLI with a local state
directory: the provider is serialised with the program by the SDK (dill) and run by
the engine's Python provider process, which is what mocks cannot show. The cloud is
`tests/twin/serve --machines null`, reached with the student's credentials
(`OS_CLOUD` and the clouds.yaml the twin writes).
"""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.lease import parse_blazar_date
from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.twin.harness import Twin

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(bool(toolchain_skip_reason()), reason=toolchain_skip_reason() or ""),
]

STACK = "ab1234"
PROGRAM = textwrap.dedent(
    """\
    import pulumi

    from components.lease import Lease, LeaseArgs

    config = pulumi.Config()
    lease = Lease(
        "lease",
        LeaseArgs(
            name="lease-persist-ab1234",
            flavor_name=config.get("flavor") or "m1.large",
            duration_seconds=int(config.get("seconds") or 8 * 3600),
            lease_duration=config.get("duration") or "8h",
        ),
    )
    for name in ("lease_id", "reservation_id", "status", "start_date", "end_date"):
        pulumi.export(name, getattr(lease, name))
    """
)
PROJECT = textwrap.dedent(
    """\
    name: lease-check
    runtime:
      name: python
      options:
        toolchain: pip
        virtualenv: venv
    """
)


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    started = Twin(tmp_path / "twin" / "state").start()
    yield started
    status = started.stop()
    assert status == 0, f"serve exited with {status}:\n{started.log_text()}"


@pytest.fixture
def student(tmp_path: Path, twin: Twin) -> StudentMachine:
    """A project holding only the lease (and the components it imports), one stack."""
    machine = StudentMachine.create(
        tmp_path,
        {
            "OS_CLOUD": "twin",
            "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
            "NO_PROXY": "127.0.0.1,localhost",
        },
    )
    (machine.project / "Pulumi.yaml").write_text(PROJECT)
    (machine.project / "Pulumi.dev.yaml").unlink()
    (machine.project / "__main__.py").write_text(PROGRAM)
    machine.pulumi("stack", "init", STACK, "--non-interactive", check=True)
    return machine


def up(student: StudentMachine) -> Any:
    return student.pulumi("up", "--yes", "--non-interactive", "--stack", STACK, timeout=300)


def set_duration(student: StudentMachine, text: str, seconds: int) -> None:
    for key, value in (("duration", text), ("seconds", str(seconds))):
        student.pulumi("config", "set", key, value, "--stack", STACK, check=True)


def blazar_lease(twin: Twin, lease_id: str) -> Any:
    api = twin.api()
    return api.get(f"{api.reservation}/leases/{lease_id}")


def test_up_makes_an_active_lease_whose_reservation_is_a_flavor(
    student: StudentMachine, twin: Twin
) -> None:
    """One `pulumi up`: an ACTIVE lease, its status shown while it starts, and Nova's
    private flavor whose id is the reservation id."""
    result = up(student)
    assert result.returncode == 0, explain(result)
    assert "): ACTIVE" in result.stdout, "the lease's status is shown while up waits"
    outputs = student.outputs(STACK)
    assert outputs["status"] == "ACTIVE"
    lease = blazar_lease(twin, outputs["lease_id"]).json()["lease"]
    assert lease["status"] == "ACTIVE" and lease["name"] == "lease-persist-ab1234"
    api = twin.api()
    flavor = api.get(f"{api.compute}/flavors/{outputs['reservation_id']}")
    assert flavor.status_code == 200, flavor.text
    start, end = (parse_blazar_date(outputs[key]) for key in ("start_date", "end_date"))
    assert end - start == datetime.timedelta(hours=8)
    again = student.pulumi(
        "preview", "--expect-no-changes", "--non-interactive", "--stack", STACK, timeout=300
    )
    assert again.returncode == 0, explain(again)


def test_the_up_after_a_lease_ended_makes_a_new_one(student: StudentMachine, twin: Twin) -> None:
    """Ended through /_twin/leases/{id}/end: preview shows a replacement, and `pulumi up`
    deletes the ended lease and makes a new ACTIVE one with a new reservation."""
    assert up(student).returncode == 0
    first = student.outputs(STACK)
    twin.end_lease(first["lease_id"])
    preview = student.pulumi("preview", "--non-interactive", "--stack", STACK, timeout=300)
    assert preview.returncode == 0, explain(preview)
    assert "replace" in preview.stdout, explain(preview)
    result = up(student)
    assert result.returncode == 0, explain(result)
    second = student.outputs(STACK)
    assert second["lease_id"] != first["lease_id"]
    assert second["reservation_id"] != first["reservation_id"]
    assert second["status"] == "ACTIVE"
    assert blazar_lease(twin, first["lease_id"]).status_code == 404
    assert blazar_lease(twin, second["lease_id"]).json()["lease"]["status"] == "ACTIVE"


def test_a_longer_duration_extends_the_same_lease_where_the_site_allows_it(
    student: StudentMachine, twin: Twin
) -> None:
    """Extension allowed: same lease and reservation, a later end."""
    assert up(student).returncode == 0
    first = student.outputs(STACK)
    twin.configure(lease_extension="allowed")
    set_duration(student, "1d", 24 * 3600)
    result = up(student)
    assert result.returncode == 0, explain(result)
    second = student.outputs(STACK)
    assert second["lease_id"] == first["lease_id"]
    assert second["reservation_id"] == first["reservation_id"]
    start, end = (parse_blazar_date(second[key]) for key in ("start_date", "end_date"))
    assert end - start == datetime.timedelta(days=1)
    held = blazar_lease(twin, first["lease_id"]).json()["lease"]
    assert parse_blazar_date(held["end_date"]) == end


def test_a_refused_extension_stops_up_with_the_cause_and_the_fix(
    student: StudentMachine, twin: Twin
) -> None:
    """Upstream Blazar's refusal: `pulumi up` fails with the site's words and both ways
    out, no traceback; the lease keeps its end."""
    assert up(student).returncode == 0
    first = student.outputs(STACK)
    twin.configure(lease_extension="refused")
    set_duration(student, "1d", 24 * 3600)
    result = up(student)
    text = result.stdout + result.stderr
    assert result.returncode != 0, explain(result)
    assert "is not yet supported" in text, explain(result)
    assert f"still ends at {first['end_date']}" in text, explain(result)
    assert "pulumi config set chi-persist:leaseDuration 8h" in text, explain(result)
    assert f"scripts/recycle --stack {STACK} --end-lease --yes" in text, explain(result)
    assert "Traceback" not in text, explain(result)
    held = blazar_lease(twin, first["lease_id"]).json()["lease"]
    assert parse_blazar_date(held["end_date"]) == parse_blazar_date(first["end_date"])


def test_no_capacity_stops_up_with_the_cause_and_the_fix(
    student: StudentMachine, twin: Twin
) -> None:
    """Every host reserved: `pulumi up` fails with "Not enough hosts available", what to
    change, no traceback, and no lease left in Blazar."""
    twin.configure(lease_capacity=0)
    result = up(student)
    text = result.stdout + result.stderr
    assert result.returncode != 0, explain(result)
    assert "Not enough hosts available" in text, explain(result)
    assert "chi-persist:leaseDuration" in text and "chi-persist:flavor" in text, explain(result)
    assert "Traceback" not in text, explain(result)
    assert twin.state()["leases"] in ([], {})


def test_destroy_deletes_the_lease(student: StudentMachine, twin: Twin) -> None:
    """`pulumi destroy` ends the lease: Blazar no longer has it, Nova no longer the flavor."""
    assert up(student).returncode == 0
    outputs = student.outputs(STACK)
    result = student.pulumi("destroy", "--yes", "--non-interactive", "--stack", STACK, timeout=300)
    assert result.returncode == 0, explain(result)
    assert blazar_lease(twin, outputs["lease_id"]).status_code == 404
    api = twin.api()
    assert api.get(f"{api.compute}/flavors/{outputs['reservation_id']}").status_code == 404
