"""The engine's own checks, with the real CLI, on the stacks students and instructors make.

A stack made by `./chi-persist init <netid> --key-pair <name>` and nothing else, the
example `Pulumi.dev.yaml`, and the stack files `./chi-persist class write` writes from a
roster must all get past the engine's config check (required keys, types) and the
program's validation, and fail only where the program must reach a cloud. Here the
cloud is a closed port on 127.0.0.1, so the error must be the provider's connection
error, never a configuration error. Invalid settings are reported by the program,
with their fix, in the words the CLI prints.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from components.settings import CONFIG_KEYS
from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(bool(toolchain_skip_reason()), reason=toolchain_skip_reason() or ""),
]

NETID = "ab1234"
KEY_PAIR = "ab1234-key"
CONFIG_ERRORS = ("is missing configuration", "must be of type", "invalid setting")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def student(tmp_path: Path) -> StudentMachine:
    """A student's machine whose cloud credentials point at a closed local port."""
    port = closed_port()
    machine = StudentMachine.create(
        tmp_path,
        {
            "OS_AUTH_URL": f"http://127.0.0.1:{port}/v3",
            "OS_AUTH_TYPE": "v3applicationcredential",
            "OS_APPLICATION_CREDENTIAL_ID": "0123456789abcdef0123456789abcdef",
            "OS_APPLICATION_CREDENTIAL_SECRET": "a-made-up-secret-for-a-closed-port",
            "OS_REGION_NAME": "KVM@TACC",
            "OS_INTERFACE": "public",
            "OS_IDENTITY_API_VERSION": "3",
        },
    )
    machine.env["CLOSED_PORT"] = str(port)
    key = machine.home / ".ssh" / "id_rsa_chameleon"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "student", "-f", str(key)],
        check=True,
    )
    return machine


def preview(student: StudentMachine, stack: str) -> subprocess.CompletedProcess[str]:
    return student.pulumi("preview", "--stack", stack, "--non-interactive", timeout=600)


def assert_stopped_at_the_cloud(student: StudentMachine, result: subprocess.CompletedProcess[str]):
    """The preview failed, only because the closed port refused the provider's connection."""
    text = result.stdout + result.stderr
    assert result.returncode != 0, explain(result)
    assert not any(error in text for error in CONFIG_ERRORS), explain(result)
    assert f"127.0.0.1:{student.env['CLOSED_PORT']}" in text, explain(result)
    assert "connection refused" in text.lower(), explain(result)


def test_new_stack_needs_only_a_key_pair_and_config_lists_every_default(student):
    """`pulumi config` on a new-stack stack shows every declared setting with its default."""
    made = student.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    listed = student.pulumi("config", "--stack", NETID, "--json")
    assert listed.returncode == 0, explain(listed)
    config = json.loads(listed.stdout)
    assert config["chi-persist:keyPair"]["value"] == KEY_PAIR
    for name, spec in CONFIG_KEYS.items():
        if spec.secret:
            continue
        shown = config.get(f"chi-persist:{name}")
        assert shown is not None, f"{name} is not listed by `pulumi config`: {sorted(config)}"
        if name not in ("keyPair", "netid"):
            value = shown.get("objectValue", shown.get("value"))
            expected = spec.default
            if isinstance(expected, (list, int)) and isinstance(value, str):
                value = json.loads(value)
            assert value == expected, f"{name}: {shown} is not the default {expected!r}"


def test_new_stack_preview_gets_past_every_check_and_stops_at_the_cloud(student):
    """The engine's config check and the program's validation pass; the provider is reached."""
    made = student.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    assert_stopped_at_the_cloud(student, preview(student, NETID))


def test_invalid_settings_are_reported_by_the_program_with_their_fix(student):
    """Every bad value at once, each with the value seen and the command that fixes it."""
    made = student.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    for key, value in (("volumeSize", "0"), ("mountPoint", "/etc"), ("netid", "AB 12")):
        student.pulumi("config", "set", f"chi-persist:{key}", value, "--stack", NETID, check=True)
    result = preview(student, NETID)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "3 invalid settings in stack config:" in text, explain(result)
    for key, value in (("volumeSize", "0"), ("mountPoint", "'/etc'"), ("netid", "'AB 12'")):
        line = next((line for line in text.splitlines() if f"chi-persist:{key} = " in line), "")
        assert value in line and "Fix: pulumi config set" in line, explain(result)
    assert "Traceback" not in text, explain(result)
    assert "connection refused" not in text.lower(), "the cloud was contacted before the check"


def test_a_value_of_the_wrong_type_is_refused_by_the_engine_first(student):
    """Pulumi.yaml's declared types are the engine's to check, before the program runs."""
    made = student.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    student.pulumi("config", "set", "chi-persist:volumeSize", "2.5", "--stack", NETID, check=True)
    result = preview(student, NETID)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"Stack '{NETID}' with configuration key 'volumeSize' must be of type 'integer'" in text
    ), explain(result)


def test_the_example_stack_file_passes_the_same_check(student):
    """Pulumi.dev.yaml, as shipped, is a stack the engine and the program accept."""
    created = student.pulumi("stack", "init", "dev")
    assert created.returncode == 0, explain(created)
    assert_stopped_at_the_cloud(student, preview(student, "dev"))


def test_a_rosters_stack_files_pass_the_same_check(student):
    """class-stacks writes stack files that the engine and the program accept as they are."""
    roster = student.root / "roster.yaml"
    roster.write_text(
        "defaults:\n"
        "  allowed_cidrs: [203.0.113.0/24]\n"
        "students:\n"
        "  - {netid: ab1234, key_pair: ab1234-key}\n"
        "  - {netid: cd5678, key_pair: cd5678-key, volumeSize: 4}\n"
    )
    written = student.command("class", "write", str(roster))
    assert written.returncode == 0, explain(written)
    for netid in ("ab1234", "cd5678"):
        assert (student.project / f"Pulumi.{netid}.yaml").is_file()
        created = student.pulumi("stack", "init", netid)
        assert created.returncode == 0, explain(created)
        assert_stopped_at_the_cloud(student, preview(student, netid))
