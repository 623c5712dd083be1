"""scripts/new-stack against the stand-in pulumi: exact calls, values checked before any call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.ssh_keys import (
    make_key,
    ssh_agent,
    ssh_agent_skip_reason,
    stand_in_private_key,
)
from tests.support.stand_in_pulumi import SCRIPTS_DIR, StandInPulumi, import_tool

SCOPE = ["--stack", "ab1234", "--non-interactive"]
LIST = ["stack", "ls", "--json", "--non-interactive"]
SELECT = ["stack", "select", "--create", "ab1234", "--non-interactive"]


@pytest.fixture
def pulumi(tmp_path: Path) -> StandInPulumi:
    stand_in = StandInPulumi.create(tmp_path)
    key = stand_in.home / ".ssh" / "id_rsa_chameleon"
    key.write_text(stand_in_private_key())
    key.chmod(0o600)
    return stand_in


def test_help_explains_the_passphrase_and_gives_examples(pulumi):
    """--help names PULUMI_CONFIG_PASSPHRASE and shows a full example."""
    result = pulumi.run("new-stack", "--help")
    assert result.returncode == 0
    assert "PULUMI_CONFIG_PASSPHRASE" in result.stdout
    assert "scripts/new-stack ab1234 --key-pair ab1234-key" in result.stdout
    assert pulumi.calls() == []


def test_new_stack_is_created_and_configured_from_the_project_directory(pulumi):
    """A new stack: select --create, then netid and keyPair, each run in the project directory."""
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "ab1234-key")

    assert result.returncode == 0, result.stderr
    assert pulumi.calls() == [
        LIST,
        SELECT,
        ["config", "set", "chi-persist:netid", "ab1234", *SCOPE],
        ["config", "set", "chi-persist:keyPair", "ab1234-key", *SCOPE],
    ]
    assert {record["cwd"] for record in pulumi.records()} == {str(REPO_ROOT)}
    assert pulumi.stack_names() == ["ab1234"]
    assert pulumi.config("ab1234") == {
        "chi-persist:netid": "ab1234",
        "chi-persist:keyPair": "ab1234-key",
    }
    assert "does not exist yet: creating it" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "next: pulumi up --stack ab1234"


def test_every_option_is_set_and_the_cidr_list_replaces_the_old_one(pulumi):
    """All options become config; a relative key path becomes absolute; old CIDRs are removed."""
    pulumi.add_stack("ab1234", {"version": 3, "deployment": {}})
    pulumi.set_config(
        "ab1234",
        {"chi-persist:allowedCidrs": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]},
    )
    key = pulumi.workdir / "keys" / "chameleon"
    key.parent.mkdir()
    key.write_text(stand_in_private_key())

    result = pulumi.run(
        "new-stack", "ab1234",
        "--key-pair", "my key",
        "--private-key-path", "keys/chameleon",
        "--reservation", "3F1C5B9E-0D3A-4C1E-9B7A-2F6D8E4A1C00",
        "--allowed-cidr", "203.0.113.0/24",
        "--allowed-cidr", "198.51.100.7/32",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert pulumi.calls() == [
        LIST,
        SELECT,
        ["config", "set", "chi-persist:netid", "ab1234", *SCOPE],
        ["config", "set", "chi-persist:keyPair", "my key", *SCOPE],
        ["config", "set", "chi-persist:sshPrivateKeyPath", str(key), *SCOPE],
        [
            "config",
            "set",
            "chi-persist:reservation",
            "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00",
            *SCOPE,
        ],
        ["config", "rm", "chi-persist:allowedCidrs", *SCOPE],
        ["config", "set", "--path", "chi-persist:allowedCidrs[0]", "203.0.113.0/24", *SCOPE],
        ["config", "set", "--path", "chi-persist:allowedCidrs[1]", "198.51.100.7/32", *SCOPE],
    ]
    assert pulumi.config("ab1234")["chi-persist:allowedCidrs"] == [
        "203.0.113.0/24",
        "198.51.100.7/32",
    ]
    assert "stack ab1234 exists: selecting it" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(
            ["AB1234", "--key-pair", "k"],
            ["NETID 'AB1234'", "lowercase letter", "scripts/new-stack ab1234"],
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
def test_bad_value_is_refused_before_any_pulumi_call(pulumi, arguments, expected):
    """A wrong value exits 2 naming the flag, the value and the fix; pulumi is never called."""
    result = pulumi.run("new-stack", *arguments)

    assert result.returncode == 2
    for fragment in expected:
        assert fragment in result.stderr
    assert "error: nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert pulumi.calls() == []


def test_existing_volume_id_is_set_so_up_takes_the_volume_over(pulumi):
    """--existing-volume-id stores the tutorial volume's id (lowercased) in the stack's config."""
    result = pulumi.run(
        "new-stack", "ab1234", "--key-pair", "ab1234-key",
        "--existing-volume-id", "7C9E4B2A-1D3F-4A5B-8C6D-E7F8091A2B3C",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert pulumi.calls()[-1] == [
        "config", "set", "chi-persist:existingVolumeId",
        "7c9e4b2a-1d3f-4a5b-8c6d-e7f8091a2b3c", *SCOPE,
    ]  # fmt: skip
    assert pulumi.config("ab1234")["chi-persist:existingVolumeId"] == (
        "7c9e4b2a-1d3f-4a5b-8c6d-e7f8091a2b3c"
    )


def test_help_explains_how_to_take_over_the_tutorial_volume(pulumi):
    """--help names the option and how to find the volume's id."""
    result = pulumi.run("new-stack", "--help")
    assert "--existing-volume-id" in result.stdout
    assert "openstack volume show block-persist-NETID -f value -c id" in result.stdout
    assert "Horizon: Volumes > Volumes" in result.stdout


def test_every_bad_value_is_reported_at_once(pulumi):
    """Three wrong values give three error lines, not just the first."""
    result = pulumi.run(
        "new-stack", "AB", "--key-pair", "!", "--reservation", "x", "--allowed-cidr", "1.2.3.4"
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split()[1] for line in errors[:4]] == [
        "NETID",
        "--key-pair",
        "--reservation",
        "--allowed-cidr",
    ]
    assert pulumi.calls() == []


def test_missing_key_pair_flag_is_a_usage_error(pulumi):
    """Without --key-pair, argparse says what is required."""
    result = pulumi.run("new-stack", "ab1234")
    assert result.returncode == 2
    assert "--key-pair" in result.stderr
    assert pulumi.calls() == []


def test_no_private_key_anywhere_is_refused(pulumi):
    """No key file and no ssh agent: refused before pulumi, with the flag that fixes it."""
    (pulumi.home / ".ssh" / "id_rsa_chameleon").unlink()
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "k")
    assert result.returncode == 2
    assert "no private key" in result.stderr
    assert "--private-key-path PATH" in result.stderr
    assert pulumi.calls() == []


@pytest.mark.skipif(ssh_agent_skip_reason() is not None, reason=str(ssh_agent_skip_reason()))
def test_ssh_agent_is_accepted_with_a_warning(pulumi, tmp_path):
    """No key file but a running ssh agent holding a key: the stack is made, with a warning."""
    (pulumi.home / ".ssh" / "id_rsa_chameleon").unlink()
    with ssh_agent() as agent:
        agent.add(make_key(tmp_path / "agent-key"))
        env = dict(pulumi.env, SSH_AUTH_SOCK=str(agent.socket))
        result = pulumi.run("new-stack", "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: no private key file at ~/.ssh/id_rsa_chameleon" in result.stdout
    assert "ssh agent" in result.stdout
    assert pulumi.stack_names() == ["ab1234"]


def test_dead_agent_socket_with_a_key_file_is_a_warning(pulumi):
    """A key file and an SSH_AUTH_SOCK where nothing answers: the stack is made, with the fix."""
    env = dict(pulumi.env, SSH_AUTH_SOCK=str(pulumi.root / "gone" / "agent.sock"))
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: SSH_AUTH_SOCK = " in result.stdout
    assert "unset SSH_AUTH_SOCK" in result.stdout
    assert "the private key file ~/.ssh/id_rsa_chameleon" in result.stdout


def test_dead_agent_socket_without_a_key_file_is_refused(pulumi):
    """No key file and an SSH_AUTH_SOCK where nothing answers: no way to log in, nothing made."""
    (pulumi.home / ".ssh" / "id_rsa_chameleon").unlink()
    env = dict(pulumi.env, SSH_AUTH_SOCK=str(pulumi.root / "gone" / "agent.sock"))
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 2
    assert "no ssh agent answers at this socket" in result.stderr
    assert "--private-key-path PATH" in result.stderr
    assert pulumi.calls() == []


def test_secret_key_in_the_stack_file_is_enough(tmp_path, monkeypatch):
    """A stack file holding the secret sshPrivateKey satisfies the key rule without a file."""
    new_stack = import_tool("new_stack")
    (tmp_path / "Pulumi.ab1234.yaml").write_text(
        "config:\n  chi-persist:sshPrivateKey:\n    secure: v1:abc:def\n"
    )
    monkeypatch.setattr(new_stack, "PROJECT_DIR", tmp_path)
    arguments = new_stack.build_parser().parse_args(["ab1234", "--key-pair", "k"])
    plan = new_stack.check_arguments(arguments, {"HOME": str(tmp_path / "nobody")})
    assert plan.key_source == "config"


def test_unset_passphrase_is_explained_when_pulumi_refuses(pulumi):
    """Creating a stack without PULUMI_CONFIG_PASSPHRASE fails with pulumi's words and the fix."""
    env = {key: value for key, value in pulumi.env.items() if key != "PULUMI_CONFIG_PASSPHRASE"}
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "k", env=env)
    assert result.returncode == 1
    assert "note: PULUMI_CONFIG_PASSPHRASE is not set" in result.stdout
    assert "passphrase must be set with PULUMI_CONFIG_PASSPHRASE" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert pulumi.calls() == [LIST, SELECT]


def test_failed_config_call_shows_what_pulumi_said(pulumi):
    """A failing `pulumi config set` stops the command with exit 1 and pulumi's message."""
    pulumi.fail("config set", "error: could not write Pulumi.ab1234.yaml: disk full")
    result = pulumi.run("new-stack", "ab1234", "--key-pair", "k")
    assert result.returncode == 1
    assert "`pulumi config set chi-persist:netid ab1234 --stack ab1234" in result.stderr
    assert "could not write Pulumi.ab1234.yaml: disk full" in result.stderr
    assert "run new-stack again" in result.stderr
    assert "Traceback" not in result.stderr
    assert pulumi.calls()[-1][:3] == ["config", "set", "chi-persist:netid"]


def test_launcher_without_the_pulumi_sdk_says_how_to_fix():
    """Started by a Python without the project's packages, the command explains, not crashes."""
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    if (REPO_ROOT / "venv").exists():
        pytest.skip("the project has a ./venv, which the launcher would switch to")
    probe = subprocess.run([base_python, "-c", "import pulumi"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip(f"{base_python} has the pulumi SDK installed")
    result = subprocess.run(
        [base_python, str(SCRIPTS_DIR / "new-stack"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "the Python module 'pulumi' is not installed" in result.stderr
    assert "pulumi install" in result.stderr
    assert "Traceback" not in result.stderr
