"""scripts/class-stacks: a roster becomes stack files, or each problem is named, none written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.support.stand_in_pulumi import StandInPulumi, import_tool

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

EXISTING = """\
encryptionsalt: v1:c2FsdHlzYWx0:v1:aXY=:dGFn
config:
  chi-persist:keyPair: old-key
  chi-persist:sshPrivateKey:
    secure: v1:bm9uY2U=:Y2lwaGVydGV4dA==
  chi-persist:image: CC-Ubuntu22.04
  openstack:cloud: chameleon
"""


@pytest.fixture
def pulumi(tmp_path: Path) -> StandInPulumi:
    return StandInPulumi.create(tmp_path)


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "stacks"
    directory.mkdir()
    return directory


def write_roster(pulumi: StandInPulumi, text: str) -> Path:
    path = pulumi.workdir / "roster.yaml"
    path.write_text(text)
    return path


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_roster_becomes_one_stack_file_per_student(pulumi, output_dir):
    """Each student gets Pulumi.<netid>.yaml with their values, the defaults, and nothing else."""
    roster = write_roster(pulumi, ROSTER)
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))

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
    assert "class-stacks: 2 created, 0 updated, 0 unchanged" in result.stdout
    assert pulumi.calls() == []


def test_written_files_pass_the_programs_own_validation(pulumi, output_dir):
    """What class-stacks writes is accepted by settings.validate, as `pulumi up` would read it."""
    settings = import_tool("class_stacks").check_value.__module__
    validate = __import__(settings, fromlist=["validate"]).validate
    roster = write_roster(pulumi, ROSTER)
    assert pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir)).returncode == 0
    for path in output_dir.iterdir():
        config = read_yaml(path)["config"]
        raw = {key.split(":", 1)[1]: value for key, value in config.items()}
        netid = path.name.split(".")[1]
        settings_of_student = validate(raw, netid, private_key_set=True, environment={})
        assert settings_of_student.netid == netid


def test_default_output_is_the_project_directory(tmp_path):
    """Without --output-dir, stack files go beside Pulumi.yaml, wherever the command runs."""
    class_stacks = import_tool("class_stacks")
    arguments = class_stacks.build_parser().parse_args([str(tmp_path / "roster.yaml")])
    assert arguments.output_dir == Path(__file__).resolve().parents[1]
    assert (arguments.output_dir / "Pulumi.yaml").is_file()


def test_existing_file_keeps_secrets_salt_and_unset_keys(pulumi, output_dir):
    """Keys the roster does not set stay, byte for byte: the secret, the salt, other namespaces."""
    (output_dir / "Pulumi.ab1234.yaml").write_text(EXISTING)
    roster = write_roster(pulumi, "students:\n  - {netid: ab1234, key_pair: new-key}\n")

    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 0, result.stderr
    assert read_yaml(output_dir / "Pulumi.ab1234.yaml") == {
        "encryptionsalt": "v1:c2FsdHlzYWx0:v1:aXY=:dGFn",
        "config": {
            "chi-persist:keyPair": "new-key",
            "chi-persist:sshPrivateKey": {"secure": "v1:bm9uY2U=:Y2lwaGVydGV4dA=="},
            "chi-persist:image": "CC-Ubuntu22.04",
            "openstack:cloud": "chameleon",
            "chi-persist:netid": "ab1234",
        },
    }
    assert "updated " in result.stdout
    assert "0 created, 1 updated, 0 unchanged" in result.stdout


def test_running_twice_changes_nothing_the_second_time(pulumi, output_dir):
    """A second run with the same roster reports every file unchanged and leaves them alone."""
    roster = write_roster(pulumi, ROSTER)
    pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))
    before = {
        path.name: (path.read_text(), path.stat().st_mtime_ns) for path in output_dir.iterdir()
    }

    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 0, result.stderr
    assert "0 created, 0 updated, 2 unchanged" in result.stdout
    after = {
        path.name: (path.read_text(), path.stat().st_mtime_ns) for path in output_dir.iterdir()
    }
    assert after == before


def test_equal_value_in_another_spelling_is_left_as_written(pulumi, output_dir):
    """volumeSize "4" as `pulumi config set` writes it equals the roster's 4: file unchanged."""
    existing = (
        "config:\n"
        "  chi-persist:netid: ab1234\n"
        "  chi-persist:keyPair: k\n"
        '  chi-persist:volumeSize: "4"\n'
    )
    (output_dir / "Pulumi.ab1234.yaml").write_text(existing)
    roster = write_roster(pulumi, "students:\n  - {netid: ab1234, key_pair: k, volume_size: 4}\n")
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stderr
    assert "unchanged" in result.stdout
    assert (output_dir / "Pulumi.ab1234.yaml").read_text() == existing


def test_dry_run_prints_the_files_and_writes_nothing(pulumi, output_dir):
    """--dry-run shows each would-be file (valid YAML) and leaves the directory as it was."""
    (output_dir / "Pulumi.ab1234.yaml").write_text(EXISTING)
    roster = write_roster(pulumi, ROSTER)

    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["Pulumi.ab1234.yaml"]
    assert (output_dir / "Pulumi.ab1234.yaml").read_text() == EXISTING
    assert "--- Pulumi.ab1234.yaml (would be updated)" in result.stdout
    assert "--- Pulumi.cd5678.yaml (would be created)" in result.stdout
    shown = result.stdout.split("--- Pulumi.cd5678.yaml (would be created)\n")[1]
    shown = shown.split("class-stacks:")[0]
    assert yaml.safe_load(shown)["config"]["chi-persist:volumeSize"] == 4
    assert "dry run, nothing written; would be: 1 created, 1 updated, 0 unchanged" in result.stdout


def test_example_roster_in_the_help_is_valid(pulumi, output_dir):
    """The roster shown by --help is accepted as it is."""
    class_stacks = import_tool("class_stacks")
    assert (
        class_stacks.ROSTER_EXAMPLE.splitlines()[0] in pulumi.run("class-stacks", "--help").stdout
    )
    roster = write_roster(pulumi, class_stacks.ROSTER_EXAMPLE)
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir), "--dry-run")
    assert result.returncode == 0, result.stderr


def test_bare_list_of_students_is_accepted(pulumi, output_dir):
    """A roster may be just the list of students."""
    roster = write_roster(pulumi, "- {netid: ab1234, key_pair: k}\n")
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))
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
]


@pytest.mark.parametrize(("roster_text", "expected"), BAD_ROSTERS)
def test_bad_roster_is_reported_with_its_row_and_nothing_is_written(
    pulumi, output_dir, roster_text, expected
):
    """Each kind of mistake is named with its line and row; no stack file is written or changed."""
    (output_dir / "Pulumi.ab1234.yaml").write_text(EXISTING)
    roster = write_roster(pulumi, textwrap.dedent(roster_text))

    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for fragment in expected:
        assert any(fragment in line for line in errors), (fragment, result.stderr)
    assert "nothing was written" in errors[-1]
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["Pulumi.ab1234.yaml"]
    assert (output_dir / "Pulumi.ab1234.yaml").read_text() == EXISTING


def test_every_problem_of_every_row_is_reported_at_once(pulumi, output_dir):
    """Three bad rows give three errors and a count, and no file even for the good row."""
    roster = write_roster(
        pulumi,
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
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[2] for line in errors[:3]] == ["3", "4", "5"]
    assert "3 problems in" in errors[-1]
    assert list(output_dir.iterdir()) == []


def test_unreadable_existing_stack_file_stops_everything(pulumi, output_dir):
    """A stack file that is not YAML is reported, and no other student's file is written."""
    (output_dir / "Pulumi.cd5678.yaml").write_text("config: [unclosed\n")
    roster = write_roster(pulumi, ROSTER)
    result = pulumi.run("class-stacks", str(roster), "--output-dir", str(output_dir))
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
def test_wrong_paths_are_named_with_the_fix(pulumi, arguments, expected):
    """A missing roster or output directory is a usage error naming the path."""
    write_roster(pulumi, ROSTER)
    result = pulumi.run("class-stacks", *arguments)
    assert result.returncode == 2
    assert expected in result.stderr
