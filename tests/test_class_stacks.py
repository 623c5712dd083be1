"""./chi-persist class write: a roster becomes stack files, or each problem is named, none written.

class-stacks itself never calls Pulumi; what it writes must still be what the real CLI
reads. Where a test needs stack files as the CLI writes them (an encryption salt, an
encrypted secret, a number written as a string) or reads what was written back, it uses
the real CLI on a student machine (tests/engine/workspace.py).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.engine.workspace import StudentMachine, toolchain_skip_reason
from tests.support.ssh_keys import stand_in_private_key
from tests.support.tools import import_tool

ROSTER = """\
defaults:
  reservation: 3F1C5B9E-0D3A-4C1E-9B7A-2F6D8E4A1C00
  allowed_cidrs: [203.0.113.0/24]
students:
  - netid: ab1234
    key_pair: ab1234-key
  - netid: cd5678
    keyPair: cd5678-key
    volumeSize: 4
    allowed_cidrs: [198.51.100.0/24, 192.0.2.7/32]
"""

# A stack file written by hand; the files the CLI writes come from `configured` below.
EXISTING = """\
config:
  chi-persist:keyPair: old-key
  chi-persist:image: CC-Ubuntu22.04
  openstack:cloud: chameleon
"""

needs_cli = pytest.mark.skipif(
    toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())
)


@pytest.fixture
def machine(tmp_path: Path) -> StudentMachine:
    """A student machine whose pulumi calls are recorded (class-stacks should make none)."""
    student = StudentMachine.create(tmp_path)
    student.record_pulumi_calls()
    return student


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "stacks"
    directory.mkdir()
    return directory


@pytest.fixture(scope="session")
def configured(tmp_path_factory: pytest.TempPathFactory) -> StudentMachine:
    """A machine where the real CLI made stack ab1234 and set its config: a key pair, an
    image, another package's key, and the private key as an encrypted secret."""
    machine = StudentMachine.create(tmp_path_factory.mktemp("class-stacks-configured"))
    machine.pulumi("stack", "init", "ab1234", "--non-interactive", check=True)
    machine.pulumi(
        "config", "set-all", "--stack", "ab1234",
        "--plaintext", "chi-persist:keyPair=old-key",
        "--plaintext", "chi-persist:image=CC-Ubuntu22.04",
        "--plaintext", "openstack:cloud=chameleon",
        check=True,
    )  # fmt: skip
    machine.pulumi(
        "config", "set", "--secret", "chi-persist:sshPrivateKey", "--stack", "ab1234",
        stdin=stand_in_private_key(), check=True,
    )  # fmt: skip
    return machine


def class_stacks(machine: StudentMachine, *arguments: str) -> subprocess.CompletedProcess:
    """`./chi-persist class write` (or, with --leaks among the arguments, `class leaks`) as an
    instructor runs it, from a directory outside the project."""
    verb = "leaks" if "--leaks" in arguments else "write"
    rest = [argument for argument in arguments if argument != "--leaks"]
    return machine.command("class", verb, *rest, cwd=machine.workdir)


def write_roster(machine: StudentMachine, text: str) -> Path:
    path = machine.workdir / "roster.yaml"
    path.write_text(text)
    return path


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_roster_becomes_one_stack_file_per_student(machine, output_dir):
    """Each student gets Pulumi.<netid>.yaml with their values, the defaults, and nothing else."""
    roster = write_roster(machine, ROSTER)
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "Pulumi.ab1234.yaml",
        "Pulumi.cd5678.yaml",
    ]
    assert read_yaml(output_dir / "Pulumi.ab1234.yaml") == {
        "config": {
            "chi-persist:netid": "ab1234",
            "chi-persist:keyPair": "ab1234-key",
            "chi-persist:reservation": "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00",
            "chi-persist:allowedCidrs": ["203.0.113.0/24"],
        }
    }
    assert read_yaml(output_dir / "Pulumi.cd5678.yaml") == {
        "config": {
            "chi-persist:netid": "cd5678",
            "chi-persist:keyPair": "cd5678-key",
            "chi-persist:reservation": "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00",
            "chi-persist:volumeSize": 4,
            "chi-persist:allowedCidrs": ["198.51.100.0/24", "192.0.2.7/32"],
        }
    }
    assert "class: 2 created, 0 updated, 0 unchanged" in result.stdout
    assert machine.calls() == []


def test_written_files_pass_the_programs_own_validation(machine, output_dir):
    """What class-stacks writes is accepted by settings.validate, as `pulumi up` would read it."""
    settings = import_tool("class_stacks").check_value.__module__
    validate = __import__(settings, fromlist=["validate"]).validate
    roster = write_roster(machine, ROSTER)
    assert class_stacks(machine, str(roster), "--output-dir", str(output_dir)).returncode == 0
    for path in output_dir.iterdir():
        config = read_yaml(path)["config"]
        raw = {key.split(":", 1)[1]: value for key, value in config.items()}
        netid = path.name.split(".")[1]
        settings_of_student = validate(raw, netid, private_key_set=True, environment={})
        assert settings_of_student.netid == netid


def test_default_output_is_the_project_directory(tmp_path):
    """Without --output-dir, stack files go beside Pulumi.yaml, wherever the command runs."""
    module = import_tool("class_stacks")
    arguments = module.build_parser().parse_args(["write", str(tmp_path / "roster.yaml")])
    assert arguments.output_dir == Path(__file__).resolve().parents[1]
    assert (arguments.output_dir / "Pulumi.yaml").is_file()


@needs_cli
def test_existing_file_keeps_secrets_salt_and_unset_keys(configured, tmp_path):
    """A stack file the real CLI wrote keeps every key the roster does not set, the encrypted
    secret and the salt as they were, and the CLI still reads it, secret and all."""
    machine = configured.clone(tmp_path)
    before = machine.stack_file("ab1234")
    roster = write_roster(machine, "students:\n  - {netid: ab1234, key_pair: new-key}\n")

    result = class_stacks(machine, str(roster))

    assert result.returncode == 0, result.stderr
    assert "0 created, 1 updated, 0 unchanged" in result.stdout
    assert f"updated {machine.project / 'Pulumi.ab1234.yaml'}" in result.stdout
    assert machine.stack_file("ab1234") == {
        "encryptionsalt": before["encryptionsalt"],
        "config": {
            **before["config"],
            "chi-persist:keyPair": "new-key",
            "chi-persist:netid": "ab1234",
        },
    }
    config = machine.config("ab1234", show_secrets=True)
    assert config["chi-persist:keyPair"] == "new-key"
    assert config["chi-persist:netid"] == "ab1234"
    assert config["chi-persist:image"] == "CC-Ubuntu22.04"
    assert config["openstack:cloud"] == "chameleon"
    assert config["chi-persist:sshPrivateKey"] == stand_in_private_key().strip()


def test_running_twice_changes_nothing_the_second_time(machine, output_dir):
    """A second run with the same roster reports every file unchanged and leaves them alone."""
    roster = write_roster(machine, ROSTER)
    class_stacks(machine, str(roster), "--output-dir", str(output_dir))
    before = {
        path.name: (path.read_text(), path.stat().st_mtime_ns) for path in output_dir.iterdir()
    }

    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 0, result.stderr
    assert "0 created, 0 updated, 2 unchanged" in result.stdout
    after = {
        path.name: (path.read_text(), path.stat().st_mtime_ns) for path in output_dir.iterdir()
    }
    assert after == before


@needs_cli
def test_equal_value_in_another_spelling_is_left_as_written(configured, tmp_path):
    """volumeSize as `pulumi config set` writes it (the string "4") equals the roster's 4: the
    file is left as the CLI wrote it."""
    machine = configured.clone(tmp_path)
    machine.pulumi(
        "config", "set-all", "--stack", "ab1234",
        "--plaintext", "chi-persist:netid=ab1234",
        "--plaintext", "chi-persist:volumeSize=4",
        check=True,
    )  # fmt: skip
    stack_file = machine.project / "Pulumi.ab1234.yaml"
    written = stack_file.read_text()
    assert 'chi-persist:volumeSize: "4"' in written
    roster = write_roster(
        machine, "students:\n  - {netid: ab1234, key_pair: old-key, volume_size: 4}\n"
    )
    result = class_stacks(machine, str(roster))
    assert result.returncode == 0, result.stderr
    assert "0 created, 0 updated, 1 unchanged" in result.stdout
    assert stack_file.read_text() == written


@needs_cli
def test_a_roster_then_new_stack_gives_the_student_a_configured_stack(machine):
    """A roster's file, in the project, becomes the student's stack: new-stack makes it with
    the real CLI, which adds its salt to the file and reads every roster value back."""
    roster = write_roster(machine, ROSTER)
    assert class_stacks(machine, str(roster)).returncode == 0
    key = machine.home / ".ssh" / "id_rsa_chameleon"
    key.write_text(stand_in_private_key())
    made = machine.command("init", "cd5678", "--key-pair", "cd5678-key", cwd=machine.workdir)
    assert made.returncode == 0, made.stderr
    assert machine.stack_names() == ["cd5678"]
    assert machine.stack_file("cd5678")["encryptionsalt"].startswith("v1:")
    config = machine.config("cd5678")
    assert config["chi-persist:reservation"] == "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    assert config["chi-persist:allowedCidrs"] == ["198.51.100.0/24", "192.0.2.7/32"]
    assert config["chi-persist:volumeSize"] == "4"
    assert config["chi-persist:flavor"] == "m1.large"  # Pulumi.yaml's default


LEASE_ROSTER = """\
defaults:
  lease_duration: 1d
students:
  - netid: ab1234
    key_pair: ab1234-key
  - netid: cd5678
    key_pair: cd5678-key
    leaseDuration: 1d12h
  - netid: ef9012
    key_pair: ef9012-key
    reservation: 3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00
"""


def test_lease_duration_is_set_per_class_or_per_student(machine, output_dir):
    """leaseDuration from the defaults, or a student's own, written as given and read by the
    program as that many seconds; a student with their own reservation is told it is unused."""
    settings_module = __import__(
        import_tool("class_stacks").check_value.__module__, fromlist=["validate"]
    )
    roster = write_roster(machine, LEASE_ROSTER)

    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 0, result.stderr
    expected = {"ab1234": ("1d", 86400), "cd5678": ("1d12h", 129600), "ef9012": ("1d", 86400)}
    for netid, (written, seconds) in expected.items():
        config = read_yaml(output_dir / f"Pulumi.{netid}.yaml")["config"]
        assert config["chi-persist:leaseDuration"] == written
        raw = {key.split(":", 1)[1]: value for key, value in config.items()}
        settings = settings_module.validate(raw, netid, private_key_set=True, environment={})
        assert settings.lease_duration_seconds == seconds
        assert settings.makes_lease == (netid != "ef9012")
    assert (
        "note: student 3 (ef9012) has a reservation of their own: their stack makes no lease, "
        "so leaseDuration (1d) is not used for it"
    ) in result.stdout
    assert "ab1234" not in "".join(
        line for line in result.stdout.splitlines() if line.startswith("note:")
    )


def test_dry_run_prints_the_files_and_writes_nothing(machine, output_dir):
    """--dry-run shows each would-be file (valid YAML) and leaves the directory as it was."""
    (output_dir / "Pulumi.ab1234.yaml").write_text(EXISTING)
    roster = write_roster(machine, ROSTER)

    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["Pulumi.ab1234.yaml"]
    assert (output_dir / "Pulumi.ab1234.yaml").read_text() == EXISTING
    assert "--- Pulumi.ab1234.yaml (would be updated)" in result.stdout
    assert "--- Pulumi.cd5678.yaml (would be created)" in result.stdout
    shown = result.stdout.split("--- Pulumi.cd5678.yaml (would be created)\n")[1]
    shown = shown.split("class:")[0]
    assert yaml.safe_load(shown)["config"]["chi-persist:volumeSize"] == 4
    assert "dry run, nothing written; would be: 1 created, 1 updated, 0 unchanged" in result.stdout


def test_example_roster_in_the_help_is_valid(machine, output_dir):
    """The roster shown by --help is accepted as it is."""
    module = import_tool("class_stacks")
    assert module.ROSTER_EXAMPLE.splitlines()[0] in class_stacks(machine, "--help").stdout
    roster = write_roster(machine, module.ROSTER_EXAMPLE)
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir), "--dry-run")
    assert result.returncode == 0, result.stderr


def test_bare_list_of_students_is_accepted(machine, output_dir):
    """A roster may be just the list of students."""
    roster = write_roster(machine, "- {netid: ab1234, key_pair: k}\n")
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stderr
    assert read_yaml(output_dir / "Pulumi.ab1234.yaml")["config"]["chi-persist:keyPair"] == "k"


BAD_ROSTERS = [
    pytest.param(
        """\
        students:
          - {netid: ab1234, key_pair: k1}
          - {netid: cd5678, key_pair: k2}
          - {netid: ab1234, key_pair: k3}
        """,
        ["roster.yaml:4: student 3 (ab1234): netid 'ab1234' is also on student 1 (line 2)"],
        id="duplicate-netid",
    ),
    pytest.param(
        """\
        students:
          - {netid: ab1234, key_pair: k1}
          - key_pair: k2
        """,
        ["roster.yaml:3: student 2: has no netid; fix: add `netid: <the student's netID>`"],
        id="missing-netid",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
        """,
        ["roster.yaml:2: student 1 (ab1234): has no key_pair; fix: add `key_pair:"],
        id="missing-key-pair",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            volume_sise: 4
        """,
        ["roster.yaml:4: student 1 (ab1234): unknown key 'volume_sise'", "correct its spelling"],
        id="unknown-key",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            volume_size: 0
        """,
        [
            "roster.yaml:4: student 1 (ab1234): volume_size = 0: must be a whole number of GiB",
            "fix: correct it, e.g. volume_size: 2",
        ],
        id="bad-value",
    ),
    pytest.param(
        """\
        students:
          - netid: AB1234
            key_pair: k
        """,
        ["roster.yaml:2: student 1 (AB1234): netid = 'AB1234': must be 2-32 characters"],
        id="bad-netid",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: 2024
        """,
        ["key_pair = 2024", "YAML read it as int: put it in quotes"],
        id="number-for-a-name",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            allowed_cidrs: [10.0.0.1]
        """,
        ["allowed_cidrs = ['10.0.0.1']", "write 10.0.0.1/32"],
        id="cidr-without-prefix",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            sshPrivateKey: "-----BEGIN OPENSSH PRIVATE KEY-----"
        """,
        ["roster.yaml:4: student 1 (ab1234): 'sshPrivateKey' is a secret, and secrets never go"],
        id="secret",
    ),
    pytest.param(
        """\
        defaults:
          ssh_private_key: "-----BEGIN OPENSSH PRIVATE KEY-----"
        students:
          - {netid: ab1234, key_pair: k}
        """,
        ["roster.yaml:2: defaults: 'ssh_private_key' is a secret"],
        id="secret-in-defaults",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            keyPair: k
        """,
        ["roster.yaml:4: student 1 (ab1234): 'keyPair' sets the same setting as 'key_pair'"],
        id="same-key-twice",
    ),
    pytest.param(
        """\
        defaults:
          netid: ab1234
        students:
          - {netid: ab1234, key_pair: k}
        """,
        ["roster.yaml:2: defaults: netid cannot be a default"],
        id="netid-in-defaults",
    ),
    pytest.param(
        """\
        defaults:
          volume_size: -1
        students:
          - {netid: ab1234, key_pair: k}
        """,
        ["roster.yaml:2: defaults: volume_size = -1: must be a whole number of GiB"],
        id="bad-default",
    ),
    pytest.param(
        """\
        defaults: [volume_size]
        students:
          - {netid: ab1234, key_pair: k}
        """,
        ["roster.yaml:1: defaults: is a list, not a mapping of settings"],
        id="defaults-not-a-mapping",
    ),
    pytest.param(
        """\
        students: ab1234
        """,
        ["roster.yaml:1: the students are a str, not a list of rows"],
        id="students-not-a-list",
    ),
    pytest.param(
        """\
        students: []
        """,
        ["roster.yaml:1: the list of students is empty"],
        id="no-students",
    ),
    pytest.param(
        """\
        defaults: {volume_size: 4}
        """,
        ["roster.yaml: no `students:` list"],
        id="students-key-missing",
    ),
    pytest.param(
        """\
        just some text
        """,
        ["roster.yaml: the students are a str, not a list of rows"],
        id="roster-not-a-list",
    ),
    pytest.param(
        """\
        students:
          - ab1234
        """,
        ["roster.yaml:2: student 1: is a str, not a mapping like"],
        id="row-not-a-mapping",
    ),
    pytest.param(
        """\
        students:
          - {netid: ab1234, key_pair: k}
        teachers:
          - xy9999
        """,
        ["roster.yaml: unknown top-level key 'teachers'"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: [k
          - netid: cd5678
        """,
        ["roster.yaml:4: not valid YAML (line 4, column 10:"],
        id="bad-yaml",
    ),
    pytest.param(
        """\
        students:
          - netid: ab1234
            key_pair: k
            lease_duration: 8
        """,
        [
            "roster.yaml:4: student 1 (ab1234): lease_duration = 8: must be a duration in "
            "days, hours and minutes, in that order, like 8h, 3d, 90m or 1d12h, from 1h to 7d "
            "(YAML read it as int: put it in quotes); fix: correct it, e.g. lease_duration: 8h"
        ],
        id="lease-duration-without-unit",
    ),
    pytest.param(
        """\
        defaults:
          leaseDuration: 30d
        students:
          - {netid: ab1234, key_pair: k}
        """,
        [
            "roster.yaml:2: defaults: leaseDuration = '30d': is longer than 7d, the longest "
            "lease this project asks KVM@TACC for"
        ],
        id="lease-duration-beyond-the-maximum",
    ),
    pytest.param(
        """\
        students:
          - {netid: ab1234, key_pair: k, lease_duration: 30m}
        """,
        ["roster.yaml:2: student 1 (ab1234): lease_duration = '30m': is shorter than 1h"],
        id="lease-duration-too-short",
    ),
]


@pytest.mark.parametrize(("roster_text", "expected"), BAD_ROSTERS)
def test_bad_roster_is_reported_with_its_row_and_nothing_is_written(
    machine, output_dir, roster_text, expected
):
    """Each kind of mistake is named with its line and row; no stack file is written or changed."""
    (output_dir / "Pulumi.ab1234.yaml").write_text(EXISTING)
    roster = write_roster(machine, textwrap.dedent(roster_text))

    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for fragment in expected:
        assert any(fragment in line for line in errors), (fragment, result.stderr)
    assert "nothing was written" in errors[-1]
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["Pulumi.ab1234.yaml"]
    assert (output_dir / "Pulumi.ab1234.yaml").read_text() == EXISTING


def test_every_problem_of_every_row_is_reported_at_once(machine, output_dir):
    """Three bad rows give three errors and a count, and no file even for the good row."""
    roster = write_roster(
        machine,
        textwrap.dedent(
            """\
            students:
              - {netid: ab1234, key_pair: k}
              - {netid: cd5678}
              - {netid: ef9012, key_pair: k, volume_size: big}
              - {key_pair: k}
            """
        ),
    )
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[2] for line in errors[:3]] == ["3", "4", "5"]
    assert "3 problems in" in errors[-1]
    assert list(output_dir.iterdir()) == []


def test_unreadable_existing_stack_file_stops_everything(machine, output_dir):
    """A stack file that is not YAML is reported, and no other student's file is written."""
    (output_dir / "Pulumi.cd5678.yaml").write_text("config: [unclosed\n")
    roster = write_roster(machine, ROSTER)
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 2
    assert "Pulumi.cd5678.yaml (student 2, cd5678) is not valid YAML" in result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["Pulumi.cd5678.yaml"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(["missing.yaml"], "roster 'missing.yaml' does not exist", id="no-roster"),
        pytest.param(
            ["roster.yaml", "--output-dir", "nowhere"],
            "--output-dir 'nowhere' is not a directory; fix: create it",
            id="no-output-dir",
        ),
    ],
)
def test_wrong_paths_are_named_with_the_fix(machine, arguments, expected):
    """A missing roster or output directory is a usage error naming the path."""
    write_roster(machine, ROSTER)
    result = class_stacks(machine, *arguments)
    assert result.returncode == 2
    assert expected in result.stderr


# --- the project's quotas ---------------------------------------------------------------------

TUTORIAL_GROUPS = ("allow-ssh", "allow-8888", "allow-8000", "allow-9000", "allow-9001")
SHARED = "defaults:\n  existing_security_groups: [" + ", ".join(TUTORIAL_GROUPS) + "]\n"


def class_of(size: int, defaults: str = "") -> str:
    rows = "".join(
        f"  - {{netid: st{number:02d}, key_pair: st{number:02d}-key}}\n"
        for number in range(1, size + 1)
    )
    return f"{defaults}students:\n{rows}"


@pytest.fixture
def twin(tmp_path: Path, request: pytest.FixtureRequest):
    """The stand-in KVM@TACC with OpenStack's default quotas, and the tutorial's shared
    groups, which a class's project has once. A class of twelve also needs more than
    Cinder's default 10 volumes: the project's volume quota is 20, as an instructor would
    have it raised, unless a test asks for another (indirect parameter)."""
    from tests.twin import steps
    from tests.twin.harness import Twin

    volumes = getattr(request, "param", 20)
    started = Twin(tmp_path / "twin" / "state", settings={"quota_volumes": volumes}).start()
    api = started.api()
    for name in TUTORIAL_GROUPS:
        steps.security_group(api, name, ports=())
    yield started
    assert started.stop() == 0, started.log_text()


@pytest.fixture
def instructor(tmp_path: Path, twin) -> StudentMachine:
    """The instructor's machine, with the class's credentials for the twin in the shell."""
    clouds = twin.state_dir / "clouds.yaml"
    machine = StudentMachine.create(
        tmp_path, {"OS_CLOUD": "twin", "OS_CLIENT_CONFIG_FILE": str(clouds), "NO_PROXY": "*"}
    )
    machine.record_pulumi_calls()
    return machine


def test_a_roster_over_the_security_group_quota_is_refused_with_the_way_out(instructor, output_dir):
    """Twelve groups of their own, the tutorial's five and the default one exceed the default
    quota of 10: refused before anything is written, naming the quota and the shared groups."""
    roster = write_roster(instructor, class_of(12))
    result = class_stacks(instructor, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "Neutron security groups (the project's default group counts): 6 of 10 in use, and the "
        "roster's 12 new stacks need 12 more (4 left)" in result.stderr
    ), result.stderr
    assert "existing_security_groups: [allow-ssh, allow-8888" in result.stderr
    assert "Cinder volumes" not in result.stderr
    assert "nothing was written" in result.stderr
    assert list(output_dir.iterdir()) == []


def test_the_same_roster_sharing_the_tutorials_groups_is_written(instructor, output_dir):
    """With existingSecurityGroups in the defaults the persistent quotas hold; the servers
    cannot all run at once on 20 cores, which is a warning with the number that can."""
    roster = write_roster(instructor, class_of(12, SHARED))
    result = class_stacks(instructor, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(output_dir.iterdir())) == 12
    assert "quotas: the roster fits project" in result.stdout, result.stdout
    assert "Neutron security groups 6+0 of 10" in result.stdout, result.stdout
    warning = next(line for line in result.stdout.splitlines() if "at the same time" in line)
    assert "at most 5 can run at the same time" in warning, warning
    assert "Nova cores (vCPUs): 0 of 20 in use, 48 needed" in warning, warning
    assert instructor.calls() == []


@pytest.mark.parametrize("twin", [10], indirect=True, ids=["default-volume-quota"])
def test_a_class_of_twelve_needs_more_than_the_default_ten_volumes(instructor, output_dir):
    """Cinder's default quota is 10 volumes, and every student keeps one: refused, named."""
    roster = write_roster(instructor, class_of(12, SHARED))
    result = class_stacks(instructor, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Cinder volumes: 0 of 10 in use, and the roster's 12 new stacks need 12 more" in (
        result.stderr
    ), result.stderr
    assert list(output_dir.iterdir()) == []


def test_without_credentials_the_quotas_are_not_checked_and_it_says_so(machine, output_dir):
    """No OpenStack credentials in the shell: the files are written, and a note says the
    quotas were not checked and how to have them checked."""
    roster = write_roster(machine, class_of(12))
    result = class_stacks(machine, str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stderr
    assert "the project's quotas were not checked" in result.stdout
    assert "export OS_CLOUD=" in result.stdout


def test_leaks_lists_what_carries_a_roster_key_and_no_state_here_holds(instructor, twin):
    """--leaks: read-only, each resource of a roster student that no stack state on this
    machine holds, with the command that would delete it; what a state holds is not listed,
    nor anything of a stack outside the roster, nor anything without a key."""
    from tests.support.pulumi_state import of_type, state_fixture
    from tests.twin import steps

    api = twin.api()
    port = steps.port(api, "node-persist-st01", [])
    api.put(
        f"{api.network}/ports/{port['id']}/tags", json={"tags": ["chi-persist-stack=st01/st01"]}
    )
    volume = api.post(
        f"{api.volume}/volumes",
        json={"volume": {"name": "block-persist-st02", "size": 1,
                         "metadata": {"chi-persist-stack": "st02/st02"}}},
    ).json()["volume"]  # fmt: skip
    stray = steps.port(api, "node-persist-st02", [])
    api.put(
        f"{api.network}/ports/{stray['id']}/tags", json={"tags": ["chi-persist-stack=st02/st02"]}
    )
    other = steps.port(api, "node-persist-zz99", [])
    api.put(
        f"{api.network}/ports/{other['id']}/tags", json={"tags": ["chi-persist-stack=zz99/zz99"]}
    )
    steps.port(api, "node-persist-st01-by-hand", [])  # no key: not the program's
    state = state_fixture()
    (held,) = of_type(state, "openstack:blockstorage/volume:Volume")
    text = json.dumps(state).replace(held["id"], volume["id"]).replace("ab1234", "st02")
    instructor.import_state("st02", json.loads(text))
    before = len(twin.events())

    roster = write_roster(instructor, class_of(2))
    result = class_stacks(instructor, str(roster), "--leaks")
    assert result.returncode == 0, result.stdout + result.stderr
    leaks = [line for line in result.stdout.splitlines() if line.startswith("leak:")]
    assert len(leaks) == 2, result.stdout
    (st01,) = [line for line in leaks if port["id"] in line]
    assert "st01: port" in st01 and "no stack state here" in st01, st01
    assert f"openstack port delete {port['id']}" in st01, st01
    assert any(stray["id"] in line and "not in stack st02's state" in line for line in leaks)
    assert volume["id"] not in result.stdout, "the state holds this volume"
    assert "resources of stacks not in the roster: zz99/zz99" in result.stdout
    changes = [
        (event["method"], event["path"])
        for event in twin.events(before)
        if event.get("kind") == "api"
        and event.get("method") != "GET"
        and event.get("path") != "/v3/auth/tokens"  # logging in
    ]
    assert changes == [], f"a leak report changed the cloud: {changes}"
    assert list(instructor.project.glob("Pulumi.st0*.yaml")) == [
        instructor.project / "Pulumi.st02.yaml"
    ], "a leak report writes no stack file"
