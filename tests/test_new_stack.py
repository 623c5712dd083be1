"""./chi-persist init on the real Pulumi CLI: values checked before any call, then the stack
made and configured as the CLI stores it (the state directory, Pulumi.<netid>.yaml).

Each test has a student machine of its own (tests/engine/workspace.py): a copy of the
project, a home, a local state directory and a passphrase; its pulumi calls are recorded
on their way to the real CLI (tests/support/bin/pulumi).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.engine.workspace import StudentMachine, toolchain_skip_reason
from tests.support.ssh_keys import (
    make_key,
    ssh_agent,
    ssh_agent_skip_reason,
    stand_in_private_key,
)
from tests.support.tools import import_tool

SCOPE = ["--stack", "ab1234", "--non-interactive"]
LIST = ["stack", "ls", "--json", "--non-interactive"]
SELECT = ["stack", "select", "--create", "ab1234", "--non-interactive"]

needs_cli = pytest.mark.skipif(
    toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())
)


@pytest.fixture
def machine(tmp_path: Path) -> StudentMachine:
    """A student machine with the default private key file, ~/.ssh/id_rsa_chameleon."""
    student = StudentMachine.create(tmp_path)
    key = student.home / ".ssh" / "id_rsa_chameleon"
    key.write_text(stand_in_private_key())
    key.chmod(0o600)
    student.record_pulumi_calls()
    return student


def new_stack(machine: StudentMachine, *arguments: str, **options) -> subprocess.CompletedProcess:
    """./chi-persist init as a student runs it, from a directory outside the project."""
    return machine.command("init", *arguments, cwd=machine.workdir, **options)


def stack_config(machine: StudentMachine, stack: str = "ab1234") -> dict:
    """The `config:` block of Pulumi.<stack>.yaml, as the real CLI wrote it."""
    return (machine.stack_file(stack) or {}).get("config") or {}


def assert_nothing_made(machine: StudentMachine) -> None:
    """No pulumi call, no stack file; the state directory as the machine began."""
    assert machine.calls() == []
    assert list(machine.project.glob("Pulumi.*.yaml")) == [machine.project / "Pulumi.dev.yaml"]
    assert list((machine.root / "state").iterdir()) == []


def test_help_explains_the_passphrase_and_gives_examples(machine):
    """--help names PULUMI_CONFIG_PASSPHRASE and shows a full example."""
    result = new_stack(machine, "--help")
    assert result.returncode == 0
    assert "PULUMI_CONFIG_PASSPHRASE" in result.stdout
    assert "./chi-persist init ab1234 --key-pair ab1234-key" in result.stdout
    assert machine.calls() == []


@needs_cli
def test_new_stack_is_created_and_configured_from_the_project_directory(machine):
    """A new stack: created, then netid and keyPair set, in the project wherever new-stack ran;
    the CLI keeps them with an encryption salt and lists the project's defaults beside them."""
    result = new_stack(machine, "ab1234", "--key-pair", "ab1234-key")

    assert result.returncode == 0, result.stderr
    assert machine.calls() == [
        LIST,
        SELECT,
        ["config", "set", "chi-persist:netid", "ab1234", *SCOPE],
        ["config", "set", "chi-persist:keyPair", "ab1234-key", *SCOPE],
    ]
    assert {record["cwd"] for record in machine.records()} == {str(machine.project)}
    assert machine.stack_names() == ["ab1234"]
    stack_file = machine.stack_file("ab1234")
    assert stack_file["encryptionsalt"].startswith("v1:")
    assert stack_file["config"] == {
        "chi-persist:netid": "ab1234",
        "chi-persist:keyPair": "ab1234-key",
    }
    config = machine.config("ab1234")
    assert config["chi-persist:netid"] == "ab1234"
    assert config["chi-persist:keyPair"] == "ab1234-key"
    assert config["chi-persist:flavor"] == "m1.large"  # Pulumi.yaml's default
    assert "does not exist yet: creating it" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "next: pulumi up --stack ab1234"


@needs_cli
def test_every_option_is_set_and_the_cidr_list_replaces_the_old_one(machine):
    """All options become config; a relative key path becomes absolute; old CIDRs are gone."""
    machine.pulumi("stack", "init", "ab1234", "--non-interactive", check=True)
    machine.pulumi(
        "config", "set-all", "--path", "--stack", "ab1234",
        "--plaintext", "chi-persist:allowedCidrs[0]=10.0.0.0/8",
        "--plaintext", "chi-persist:allowedCidrs[1]=172.16.0.0/12",
        "--plaintext", "chi-persist:allowedCidrs[2]=192.168.0.0/16",
        check=True,
    )  # fmt: skip
    assert len(machine.config("ab1234")["chi-persist:allowedCidrs"]) == 3
    key = machine.workdir / "keys" / "chameleon"
    key.parent.mkdir()
    key.write_text(stand_in_private_key())

    result = new_stack(
        machine, "ab1234",
        "--key-pair", "my key",
        "--private-key-path", "keys/chameleon",
        "--reservation", "3F1C5B9E-0D3A-4C1E-9B7A-2F6D8E4A1C00",
        "--allowed-cidr", "203.0.113.0/24",
        "--allowed-cidr", "198.51.100.7/32",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "stack ab1234 exists: selecting it" in result.stdout
    expected = {
        "chi-persist:netid": "ab1234",
        "chi-persist:keyPair": "my key",
        "chi-persist:sshPrivateKeyPath": str(key),
        "chi-persist:reservation": "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00",
        "chi-persist:allowedCidrs": ["203.0.113.0/24", "198.51.100.7/32"],
    }
    assert stack_config(machine) == expected
    config = machine.config("ab1234")
    assert {key: config[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(
            ["AB1234", "--key-pair", "k"],
            ["NETID 'AB1234'", "lowercase letter", "./chi-persist init ab1234"],
            id="uppercase-netid",
        ),
        pytest.param(["a", "--key-pair", "k"], ["NETID 'a'", "2-32 characters"], id="short-netid"),
        pytest.param(
            ["ab1234", "--key-pair", "bad/name"],
            ["--key-pair 'bad/name'", "key pair registered at KVM@TACC", "--key-pair id_rsa"],
            id="bad-key-pair",
        ),
        pytest.param(
            ["ab1234", "--key-pair", "k", "--reservation", "tomorrow"],
            ["--reservation 'tomorrow'", "UUID of a reserved flavor"],
            id="bad-reservation",
        ),
        pytest.param(
            ["ab1234", "--key-pair", "k", "--allowed-cidr", "203.0.113.7"],
            ["--allowed-cidr '203.0.113.7'", "write 203.0.113.7/32"],
            id="cidr-without-prefix",
        ),
        pytest.param(
            [
                "ab1234",
                "--key-pair",
                "k",
                "--allowed-cidr",
                "10.0.0.0/8",
                "--allowed-cidr",
                "10.0.0.0/8",
            ],
            ["same network twice"],
            id="duplicate-cidr",
        ),  # fmt: skip
        pytest.param(
            ["ab1234", "--key-pair", "k", "--private-key-path", "/nonexistent/key"],
            ["--private-key-path '/nonexistent/key': no such file"],
            id="missing-key-file",
        ),
        pytest.param(
            ["ab1234", "--key-pair", "k", "--existing-volume-id", "block-persist-ab1234"],
            [
                "--existing-volume-id 'block-persist-ab1234'",
                "UUID",
                "not its name",
                "openstack volume show block-persist-ab1234 -f value -c id",
            ],
            id="volume-name-not-id",
        ),
        pytest.param(
            ["ab1234", "--key-pair", "k", "--existing-volume-id", ""],
            ["--existing-volume-id '': empty", "openstack volume show block-persist-ab1234"],
            id="empty-volume-id",
        ),
    ],
)
def test_bad_value_is_refused_before_any_pulumi_call(machine, arguments, expected):
    """A wrong value exits 2 naming the flag, the value and the fix; pulumi is never called."""
    result = new_stack(machine, *arguments)

    assert result.returncode == 2
    for fragment in expected:
        assert fragment in result.stderr
    assert "error: nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_made(machine)


@needs_cli
def test_existing_volume_id_is_set_so_up_takes_the_volume_over(machine):
    """--existing-volume-id stores the tutorial volume's id (lowercased) in the stack's config."""
    result = new_stack(
        machine, "ab1234", "--key-pair", "ab1234-key",
        "--existing-volume-id", "7C9E4B2A-1D3F-4A5B-8C6D-E7F8091A2B3C",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert stack_config(machine)["chi-persist:existingVolumeId"] == (
        "7c9e4b2a-1d3f-4a5b-8c6d-e7f8091a2b3c"
    )
    assert machine.config("ab1234")["chi-persist:existingVolumeId"] == (
        "7c9e4b2a-1d3f-4a5b-8c6d-e7f8091a2b3c"
    )


def test_help_explains_how_to_take_over_the_tutorial_volume(machine):
    """--help names the option and how to find the volume's id."""
    result = new_stack(machine, "--help")
    assert "--existing-volume-id" in result.stdout
    assert "openstack volume show block-persist-NETID -f value -c id" in result.stdout
    assert "Horizon: Volumes > Volumes" in result.stdout


def test_every_bad_value_is_reported_at_once(machine):
    """Three wrong values give three error lines, not just the first."""
    result = new_stack(
        machine, "AB", "--key-pair", "!", "--reservation", "x", "--allowed-cidr", "1.2.3.4"
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split()[1] for line in errors[:4]] == [
        "NETID",
        "--key-pair",
        "--reservation",
        "--allowed-cidr",
    ]
    assert_nothing_made(machine)


def test_missing_key_pair_flag_is_a_usage_error(machine):
    """Without --key-pair, argparse says what is required."""
    result = new_stack(machine, "ab1234")
    assert result.returncode == 2
    assert "--key-pair" in result.stderr
    assert_nothing_made(machine)


def test_no_private_key_anywhere_is_refused(machine):
    """No key file and no ssh agent: refused before pulumi, with the flag that fixes it."""
    (machine.home / ".ssh" / "id_rsa_chameleon").unlink()
    result = new_stack(machine, "ab1234", "--key-pair", "k")
    assert result.returncode == 2
    assert "no private key" in result.stderr
    assert "--private-key-path PATH" in result.stderr
    assert_nothing_made(machine)


@needs_cli
@pytest.mark.skipif(ssh_agent_skip_reason() is not None, reason=str(ssh_agent_skip_reason()))
def test_ssh_agent_is_accepted_with_a_warning(machine, tmp_path):
    """No key file but a running ssh agent holding a key: the stack is made, with a warning."""
    (machine.home / ".ssh" / "id_rsa_chameleon").unlink()
    with ssh_agent() as agent:
        agent.add(make_key(tmp_path / "agent-key"))
        env = dict(machine.env, SSH_AUTH_SOCK=str(agent.socket))
        result = new_stack(machine, "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: no private key file at ~/.ssh/id_rsa_chameleon" in result.stdout
    assert "ssh agent" in result.stdout
    assert machine.stack_names() == ["ab1234"]
    assert stack_config(machine)["chi-persist:keyPair"] == "k"


@needs_cli
def test_dead_agent_socket_with_a_key_file_is_a_warning(machine):
    """A key file and an SSH_AUTH_SOCK where nothing answers: the stack is made, with the fix."""
    env = dict(machine.env, SSH_AUTH_SOCK=str(machine.root / "gone" / "agent.sock"))
    result = new_stack(machine, "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: SSH_AUTH_SOCK = " in result.stdout
    assert "unset SSH_AUTH_SOCK" in result.stdout
    assert "the private key file ~/.ssh/id_rsa_chameleon" in result.stdout
    assert machine.stack_names() == ["ab1234"]


def test_dead_agent_socket_without_a_key_file_is_refused(machine):
    """No key file and an SSH_AUTH_SOCK where nothing answers: no way to log in, nothing made."""
    (machine.home / ".ssh" / "id_rsa_chameleon").unlink()
    env = dict(machine.env, SSH_AUTH_SOCK=str(machine.root / "gone" / "agent.sock"))
    result = new_stack(machine, "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 2
    assert "no ssh agent answers at this socket" in result.stderr
    assert "--private-key-path PATH" in result.stderr
    assert_nothing_made(machine)


@needs_cli
def test_secret_key_in_the_stack_is_enough(machine):
    """A private key kept as the stack's secret (`pulumi config set --secret`) satisfies the key
    rule without a file; new-stack leaves the secret as it was."""
    machine.pulumi("stack", "init", "ab1234", "--non-interactive", check=True)
    machine.pulumi(
        "config", "set", "--secret", "chi-persist:sshPrivateKey", "--stack", "ab1234",
        stdin=stand_in_private_key(), check=True,
    )  # fmt: skip
    secure = stack_config(machine)["chi-persist:sshPrivateKey"]["secure"]
    (machine.home / ".ssh" / "id_rsa_chameleon").unlink()

    result = new_stack(machine, "ab1234", "--key-pair", "k")

    assert result.returncode == 0, result.stderr
    assert "will log in with the stack's secret chi-persist:sshPrivateKey" in result.stdout
    assert stack_config(machine)["chi-persist:sshPrivateKey"] == {"secure": secure}
    secrets = machine.config("ab1234", show_secrets=True)
    assert secrets["chi-persist:sshPrivateKey"] == stand_in_private_key().strip()


@needs_cli
def test_an_empty_passphrase_is_refused_before_any_stack_is_made(machine):
    """PULUMI_CONFIG_PASSPHRASE set but empty would encrypt the stack's secrets with nothing
    (Pulumi takes it before the file): refused with the passphrase file as the fix, and no
    pulumi call at all."""
    result = new_stack(
        machine, "ab1234", "--key-pair", "k", env={**machine.env, "PULUMI_CONFIG_PASSPHRASE": ""}
    )
    assert result.returncode == 2
    assert "PULUMI_CONFIG_PASSPHRASE is set but empty" in result.stderr
    assert "export PULUMI_CONFIG_PASSPHRASE_FILE=" in result.stderr
    assert machine.calls() == []
    assert machine.stack_names() == []


@pytest.mark.parametrize(
    ("environ", "content", "mode", "says"),
    [
        ({"PULUMI_CONFIG_PASSPHRASE": "  "}, None, None, "is set but empty"),
        ({}, "a passphrase\n", 0o644, "has mode 644: others on this machine can read"),
        ({}, "\n", 0o600, "is empty"),
        ({}, None, None, "the file cannot be read"),
        ({}, "a passphrase\n", 0o600, None),
        ({"PULUMI_CONFIG_PASSPHRASE": "a passphrase"}, None, None, None),
    ],
    ids=["blank", "readable-by-others", "empty-file", "missing-file", "file", "variable"],
)
def test_the_passphrase_protects_something(environ, content, mode, says, tmp_path: Path):
    """An empty passphrase, or a passphrase file that others can read, that is empty or
    missing, is refused with the fix; a real one passes."""
    command_line = import_tool("command_line")
    path = tmp_path / "passphrase"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    if "PULUMI_CONFIG_PASSPHRASE" not in environ:
        environ = {**environ, "PULUMI_CONFIG_PASSPHRASE_FILE": str(path)}
    if says is None:
        command_line.check_passphrase(environ)
        return
    with pytest.raises(command_line.CommandError) as refused:
        command_line.check_passphrase(environ)
    assert says in " ".join(refused.value.lines)
    assert "fix:" in refused.value.lines[-1]


@needs_cli
def test_unset_passphrase_is_explained_when_pulumi_refuses(machine):
    """Creating a stack without PULUMI_CONFIG_PASSPHRASE: the real CLI refuses; its words, the
    fix, and no stack."""
    env = {key: value for key, value in machine.env.items() if key != "PULUMI_CONFIG_PASSPHRASE"}
    result = new_stack(machine, "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 1
    assert "note: PULUMI_CONFIG_PASSPHRASE is not set" in result.stdout
    assert "passphrase must be set with PULUMI_CONFIG_PASSPHRASE" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert machine.calls() == [LIST, SELECT]
    assert machine.stack_names() == []


@needs_cli
def test_failed_config_call_shows_what_pulumi_said(machine):
    """A `pulumi config set` that fails stops the command with exit 1 and pulumi's message.

    Here the stack file names a key twice (a hand edit): YAML readers that keep the last
    value let it pass; the CLI refuses to read it."""
    machine.pulumi("stack", "init", "ab1234", "--non-interactive", check=True)
    stack_file = machine.project / "Pulumi.ab1234.yaml"
    stack_file.write_text(
        stack_file.read_text()
        + "config:\n  chi-persist:keyPair: old-key\n  chi-persist:keyPair: older-key\n"
    )
    result = new_stack(machine, "ab1234", "--key-pair", "k")
    assert result.returncode == 1
    assert "`pulumi config set chi-persist:netid ab1234 --stack ab1234" in result.stderr
    assert 'mapping key "chi-persist:keyPair" already defined' in result.stderr
    assert "run `./chi-persist init` again" in result.stderr
    assert "Traceback" not in result.stderr
    assert machine.calls()[-1][:3] == ["config", "set", "chi-persist:netid"]
