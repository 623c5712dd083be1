"""How the provisioning commands log in over SSH, chosen and checked before any resource exists.

pulumi-command 1.2.1 dials SSH_AUTH_SOCK whenever it is set, even when a key is
given (provider/pkg/provider/remote/connection.go, SSHConfig), so a set but dead
socket fails every remote command; it parses an encrypted key only with its
passphrase. components/ssh_auth.py decides the login from the settings, the key and
the agent; these tests hold it to a decision table, real keys from ssh-keygen and a
real ssh-agent, and the program as the mocked engine runs it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc

from components.ssh_auth import (
    AGENT,
    AUTO,
    KEY,
    AgentState,
    PrivateKey,
    choose_login,
    inspect_private_key,
    passphrase_opens,
    probe_agent,
)
from tests.support.program import (
    COPY_TO_REMOTE,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    Evaluation,
    evaluate_program,
)
from tests.support.ssh_keys import (
    STAND_IN_PUBLIC_KEY,
    make_key,
    public_key_blob,
    ssh_agent,
    ssh_agent_skip_reason,
    ssh_keygen_skip_reason,
    stand_in_private_key,
)

needs_ssh_keygen = pytest.mark.skipif(
    ssh_keygen_skip_reason() is not None, reason=str(ssh_keygen_skip_reason())
)
needs_ssh_agent = pytest.mark.skipif(
    ssh_agent_skip_reason() is not None, reason=str(ssh_agent_skip_reason())
)
PASSPHRASE = "correct horse battery"
PLAIN = stand_in_private_key()
ENCRYPTED = stand_in_private_key(encrypted=True)
KEY_PATH = "~/.ssh/id_rsa_chameleon"


# --- the key's format -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys of every format ssh-keygen writes, with and without a passphrase."""
    if ssh_keygen_skip_reason():
        pytest.skip(str(ssh_keygen_skip_reason()))
    directory = tmp_path_factory.mktemp("keys")
    made = {
        "openssh": {},
        "openssh-protected": {"passphrase": PASSPHRASE},
        "rsa-pem": {"key_type": "rsa", "key_format": "PEM"},
        "rsa-pem-protected": {"key_type": "rsa", "key_format": "PEM", "passphrase": PASSPHRASE},
        "ecdsa-pem-protected": {
            "key_type": "ecdsa",
            "key_format": "PEM",
            "passphrase": PASSPHRASE,
        },
        "rsa-pkcs8": {"key_type": "rsa", "key_format": "PKCS8"},
        "rsa-pkcs8-protected": {
            "key_type": "rsa",
            "key_format": "PKCS8",
            "passphrase": PASSPHRASE,
        },
    }
    return {name: make_key(directory / name, **options) for name, options in made.items()}


KEY_FORMATS = [
    # (key made by ssh-keygen, encrypted, usable by pulumi-command, public key in the text)
    ("openssh", False, True, True),
    ("openssh-protected", True, True, True),
    ("rsa-pem", False, True, False),
    ("rsa-pem-protected", True, True, False),
    ("ecdsa-pem-protected", True, True, False),
    ("rsa-pkcs8", False, True, False),
    ("rsa-pkcs8-protected", True, False, False),
]


@needs_ssh_keygen
@pytest.mark.parametrize(("name", "encrypted", "usable", "has_public"), KEY_FORMATS)
def test_key_formats_are_read_as_pulumi_command_will_meet_them(
    real_keys: dict[str, Path], name: str, encrypted: bool, usable: bool, has_public: bool
) -> None:
    """Encryption of OpenSSH, PEM and PKCS#8 keys is seen without the passphrase."""
    found = inspect_private_key(real_keys[name].read_text())
    assert found.encrypted is encrypted
    assert (found.problem is None) is usable, found.problem
    if has_public:
        assert found.public_key == public_key_blob(real_keys[name])
    else:
        assert found.public_key is None


BAD_KEY_TEXTS = [
    ("not a key", "hunter2", "is not a private key"),
    ("a public key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBER test", "is not a private key"),
    (
        "OpenSSH cut short",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "cut short",
    ),
    (
        "OpenSSH not base64",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n",
        "not base64",
    ),
    (
        "a certificate",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "not a private key",
    ),
]


@pytest.mark.parametrize(("case", "text", "rule"), BAD_KEY_TEXTS, ids=[r[0] for r in BAD_KEY_TEXTS])
def test_text_that_is_no_usable_key_is_named_so(case: str, text: str, rule: str) -> None:
    """Text pulumi-command could not parse is reported, before any server is made for it."""
    found = inspect_private_key(text)
    assert found.problem is not None and rule in found.problem


@needs_ssh_keygen
def test_pkcs8_encrypted_key_fix_rewrites_it_in_a_format_pulumi_command_reads(
    real_keys: dict[str, Path], tmp_path: Path
) -> None:
    """The fix offered for an encrypted PKCS#8 key (ssh-keygen -p) gives a usable key."""
    found = inspect_private_key(real_keys["rsa-pkcs8-protected"].read_text())
    assert (
        found.fix
        == "rewrite it in OpenSSH format, keeping a passphrase: ssh-keygen -p -f <key file>"
    )
    copy = tmp_path / "key"
    copy.write_bytes(real_keys["rsa-pkcs8-protected"].read_bytes())
    copy.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", PASSPHRASE, "-N", PASSPHRASE, "-f", str(copy)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    rewritten = inspect_private_key(copy.read_text())
    assert rewritten.problem is None and rewritten.encrypted


@needs_ssh_keygen
@pytest.mark.parametrize("name", ["openssh-protected", "rsa-pem-protected"])
def test_passphrase_is_checked_against_the_key(real_keys: dict[str, Path], name: str) -> None:
    """ssh-keygen says whether a passphrase opens the key; the right one does, others do not."""
    text = real_keys[name].read_text()
    assert passphrase_opens(text, PASSPHRASE) is True
    assert passphrase_opens(text, "not the passphrase") is False


# --- the agent ------------------------------------------------------------------------------


@needs_ssh_agent
def test_a_running_agent_answers_with_the_keys_it_holds(tmp_path: Path) -> None:
    """A real ssh-agent: first no keys, then the public key of the one added."""
    with ssh_agent() as agent:
        empty = probe_agent(str(agent.socket))
        assert empty.answers and empty.identities == () and not empty.usable
        assert empty.reason == "it holds no keys"
        key = make_key(tmp_path / "key")
        agent.add(key)
        holding = probe_agent(str(agent.socket))
    assert holding.usable
    assert holding.identities == (public_key_blob(key),)


@needs_ssh_agent
def test_the_socket_of_a_killed_agent_does_not_answer() -> None:
    """An agent killed without cleaning up leaves its socket file: connection refused."""
    with ssh_agent() as agent:
        agent.kill()
        assert agent.socket.exists()
        state = probe_agent(str(agent.socket))
    assert not state.answers
    assert "connection refused" in state.reason


def test_a_path_where_nothing_listens_does_not_answer(tmp_path: Path) -> None:
    """No socket at all, or a plain file: nothing answers."""
    missing = probe_agent(str(tmp_path / "no-agent.sock"))
    assert not missing.answers and missing.reason == "no such socket"
    plain_file = tmp_path / "file"
    plain_file.write_text("")
    assert not probe_agent(str(plain_file)).answers
    assert probe_agent(None) == AgentState(socket=None)
    assert probe_agent("") == AgentState(socket=None)


@pytest.fixture
def silent_socket(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts connections and closes them without a word."""
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_a_socket_that_is_no_agent_answers_but_lists_no_keys(silent_socket: str) -> None:
    """Something listens but does not speak the agent protocol: it connects, nothing more."""
    state = probe_agent(silent_socket)
    assert state.answers and state.identities is None and not state.usable
    assert "does not answer as an ssh agent" in state.reason


# --- the decision table ---------------------------------------------------------------------

NO_AGENT = AgentState(socket=None)
DEAD = AgentState("/run/user/1000/gone.sock", reason="connection refused: the agent is gone")
EMPTY = AgentState("/tmp/agent.sock", answers=True, identities=(), reason="it holds no keys")
HOLDING = AgentState("/tmp/agent.sock", answers=True, identities=(STAND_IN_PUBLIC_KEY,))
OTHER = AgentState("/tmp/agent.sock", answers=True, identities=(b"another key",))
NOT_AGENT = AgentState(
    "/tmp/agent.sock", answers=True, reason="it does not answer as an ssh agent (closed)"
)

FILE_KEY = PrivateKey("file", KEY_PATH, PLAIN)
FILE_ENCRYPTED = PrivateKey("file", KEY_PATH, ENCRYPTED)
CONFIG_KEY = PrivateKey("config", "chi-persist:sshPrivateKey", PLAIN)
CONFIG_UNKNOWN = PrivateKey("config", "chi-persist:sshPrivateKey", None)
CONFIG_GARBAGE = PrivateKey("config", "chi-persist:sshPrivateKey", "hunter2")
FILE_GARBAGE = PrivateKey("file", KEY_PATH, "hunter2")
FILE_UNREADABLE = PrivateKey("file", KEY_PATH, None, unreadable="Permission denied")

LOGINS = [
    # (case, sshAuth, key, agent, password set, passphrase opens, expected login)
    ("key found, no agent", AUTO, FILE_KEY, NO_AGENT, False, None, (KEY, "file", False)),
    ("key found, live agent unused", AUTO, FILE_KEY, HOLDING, False, None, (KEY, "file", False)),
    ("secret key, live agent unused", AUTO, CONFIG_KEY, HOLDING, False, None,
     (KEY, "config", False)),
    ("secret key known only to exist", AUTO, CONFIG_UNKNOWN, NO_AGENT, False, None,
     (KEY, "config", False)),
    ("no key, agent holding one", AUTO, None, HOLDING, False, None, (AGENT, None, False)),
    ("agent chosen over a key", AGENT, FILE_KEY, HOLDING, False, None, (AGENT, None, False)),
    ("key chosen", KEY, FILE_KEY, HOLDING, False, None, (KEY, "file", False)),
    ("protected key with its passphrase", AUTO, FILE_ENCRYPTED, NO_AGENT, True, True,
     (KEY, "file", True)),
    ("protected key, passphrase unverifiable", AUTO, FILE_ENCRYPTED, NO_AGENT, True, None,
     (KEY, "file", True)),
    ("protected key, chosen, with its passphrase", KEY, FILE_ENCRYPTED, HOLDING, True, True,
     (KEY, "file", True)),
    ("protected key, agent holds it", AUTO, FILE_ENCRYPTED, HOLDING, False, None,
     (AGENT, None, False)),
    ("passphrase set for a key without one", AUTO, FILE_KEY, NO_AGENT, True, None,
     (KEY, "file", False)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "key", "agent", "password_set", "opens", "expected"),
    LOGINS,
    ids=[row[0] for row in LOGINS],
)
def test_the_login_is_chosen_by_the_table(
    case: str,
    method: str,
    key: PrivateKey | None,
    agent: AgentState,
    password_set: bool,
    opens: bool | None,
    expected: tuple[str, str | None, bool],
) -> None:
    """Each row: the method used, where its key comes from, whether the passphrase goes too."""
    login, problems = choose_login(
        method,
        key,
        KEY_PATH,
        agent,
        password_set=password_set,
        password=PASSPHRASE if password_set else None,
        check_passphrase=lambda text, passphrase: opens,
    )
    assert problems == []
    assert login is not None
    assert (login.method, login.key_source, login.send_password) == expected


REFUSALS = [
    # (case, sshAuth, key, agent, password set, passphrase opens, setting, rule words, fix words)
    ("dead agent beside a key", AUTO, FILE_KEY, DEAD, False, None, "SSH_AUTH_SOCK",
     "no ssh agent answers at this socket", "unset SSH_AUTH_SOCK"),
    ("dead agent, key chosen", KEY, FILE_KEY, DEAD, False, None, "SSH_AUTH_SOCK",
     "even when a key is given", "unset SSH_AUTH_SOCK"),
    ("dead agent, agent chosen", AGENT, FILE_KEY, DEAD, False, None, "SSH_AUTH_SOCK",
     "connection refused", "ssh-add"),
    ("no key, no agent", AUTO, None, NO_AGENT, False, None, "sshPrivateKey",
     "no private key found", "pulumi config set chi-persist:sshPrivateKeyPath"),
    ("no key, empty agent", AUTO, None, EMPTY, False, None, "SSH_AUTH_SOCK",
     "it holds no keys", "ssh-add"),
    ("no key, not an agent", AUTO, None, NOT_AGENT, False, None, "SSH_AUTH_SOCK",
     "does not answer as an ssh agent", "ssh-add"),
    ("key chosen, none there", KEY, None, HOLDING, False, None, "sshPrivateKeyPath",
     "sshAuth is key, but there is no key", "pulumi config set chi-persist:sshPrivateKeyPath"),
    ("agent chosen, none running", AGENT, FILE_KEY, NO_AGENT, False, None, "sshAuth",
     "SSH_AUTH_SOCK is not set", 'eval "$(ssh-agent)"'),
    ("agent chosen, holding nothing", AGENT, FILE_KEY, EMPTY, False, None, "SSH_AUTH_SOCK",
     "it holds no keys", "ssh-add"),
    ("protected key, wrong passphrase", AUTO, FILE_ENCRYPTED, NO_AGENT, True, False,
     "sshPrivateKeyPassword", "does not open the private key",
     "pulumi config set --secret chi-persist:sshPrivateKeyPassword"),
    ("protected key, nothing to open it", AUTO, FILE_ENCRYPTED, NO_AGENT, False, None,
     "sshPrivateKeyPassword", "is protected by a passphrase",
     "pulumi config set --secret chi-persist:sshPrivateKeyPassword"),
    ("protected key, agent holds another", AUTO, FILE_ENCRYPTED, OTHER, False, None,
     "sshPrivateKeyPassword", "is protected by a passphrase", "ssh-add ~/.ssh/id_rsa_chameleon"),
    ("protected key chosen, agent not asked", KEY, FILE_ENCRYPTED, HOLDING, False, None,
     "sshPrivateKeyPassword", "is protected by a passphrase", "sshPrivateKeyPassword"),
    ("unreadable key file", AUTO, FILE_UNREADABLE, HOLDING, False, None, "sshPrivateKeyPath",
     "cannot be read (Permission denied)", "chmod 600"),
    ("key file holds no key", AUTO, FILE_GARBAGE, HOLDING, False, None, "sshPrivateKeyPath",
     "is not a private key", "pulumi config set chi-persist:sshPrivateKeyPath"),
    ("secret holds no key", AUTO, CONFIG_GARBAGE, HOLDING, False, None, "sshPrivateKey",
     "is not a private key", "pulumi config set --secret chi-persist:sshPrivateKey"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "key", "agent", "password_set", "opens", "setting", "rule", "fix"),
    REFUSALS,
    ids=[row[0] for row in REFUSALS],
)
def test_a_login_that_would_fail_is_refused_with_its_fix(
    case: str,
    method: str,
    key: PrivateKey | None,
    agent: AgentState,
    password_set: bool,
    opens: bool | None,
    setting: str,
    rule: str,
    fix: str,
) -> None:
    """Each row: no login, and a problem naming what to change, the rule and the fix."""
    login, problems = choose_login(
        method,
        key,
        KEY_PATH,
        agent,
        password_set=password_set,
        password=PASSPHRASE if password_set else None,
        check_passphrase=lambda text, passphrase: opens,
    )
    assert login is None
    matching = [p for p in problems if p.setting == setting and rule in p.rule and fix in p.fix]
    assert matching, problems
    shown = " ".join(f"{p.value} {p.rule} {p.fix}" for p in problems)
    assert "hunter2" not in shown and PASSPHRASE not in shown
    assert PLAIN.splitlines()[1] not in shown and ENCRYPTED.splitlines()[1] not in shown


# --- the program ----------------------------------------------------------------------------


def connections(evaluation: Evaluation) -> list[dict[str, Any]]:
    remote = evaluation.of_type(REMOTE_COMMAND) + evaluation.of_type(COPY_TO_REMOTE)
    # Every step that logs in: boot, both copies, prepare, start, and the lease's stop timer.
    assert {registration.name for registration in remote} == {
        "provisioning-wait-for-boot", "provisioning-copy-scripts", "provisioning-copy-docker",
        "provisioning-prepare-volume", "provisioning-start-stack", "provisioning-lease-stop",
    }  # fmt: skip
    return [registration.inputs["connection"] for registration in remote]


def clean_stop_login(evaluation: Evaluation) -> tuple[str, dict[str, str]]:
    """The clean stop's --login, and what it gets in its environment (secrets, checked so)."""
    (stop,) = [r for r in evaluation.of_type(LOCAL_COMMAND) if r.inputs.get("delete")]
    words = stop.inputs["delete"].split()
    environment = stop.inputs.get("environment") or {}
    if environment:
        serialised = stop.raw_inputs["environment"]
        # The SDK marks the whole map secret when any value of it is.
        assert is_secret(serialised) or all(is_secret(serialised[name]) for name in environment)
    return words[words.index("--login") + 1], environment


def evaluate_with_home(
    home: Path,
    config: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
    ssh_auth_sock: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> Evaluation:
    assert monkeypatch is not None
    monkeypatch.setenv("HOME", str(home))
    return evaluate_program(
        "ab1234",
        {"keyPair": "ab1234-key", **(config or {})},
        secrets=secrets or {},
        ssh_auth_sock=ssh_auth_sock,
    )


def is_secret(serialised: Any) -> bool:
    """Whether a serialised input carries Pulumi's secret marker."""
    return (
        isinstance(serialised, dict)
        and serialised.get(rpc._special_sig_key) == rpc._special_secret_sig
    )


def refused(**kwargs: Any) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_with_home(**kwargs)
    assert raised.value.registrations == []  # type: ignore[attr-defined]
    return str(raised.value)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory with ~/.ssh, and no key in it yet."""
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return tmp_path / "home"


def put_key(home: Path, text: str = PLAIN) -> Path:
    key = home / ".ssh" / "id_rsa_chameleon"
    key.write_text(text)
    key.chmod(0o600)
    return key


@needs_ssh_agent
def test_a_stale_agent_socket_is_refused_before_any_resource(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed agent's SSH_AUTH_SOCK beside a key: refused, naming the socket and the fix."""
    put_key(home)
    with ssh_agent() as agent:
        agent.kill()
        message = refused(home=home, ssh_auth_sock=str(agent.socket), monkeypatch=monkeypatch)
    assert f"SSH_AUTH_SOCK = '{agent.socket}': no ssh agent answers at this socket" in message
    assert "Fix: `unset SSH_AUTH_SOCK`" in message
    assert "chi-persist:SSH_AUTH_SOCK" not in message


def test_an_agent_socket_that_is_not_there_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSH_AUTH_SOCK naming a path where nothing listens: refused, whatever sshAuth says."""
    put_key(home)
    for method in (AUTO, KEY, AGENT):
        message = refused(
            home=home,
            config={"sshAuth": method},
            ssh_auth_sock=str(home / "gone.sock"),
            monkeypatch=monkeypatch,
        )
        assert "no ssh agent answers at this socket (no such socket)" in message


@needs_ssh_agent
def test_a_key_is_used_alone_while_a_live_agent_runs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a key there, the commands get the key and no agent socket; the agent is not asked."""
    put_key(home)
    with ssh_agent() as agent:
        agent.add(make_key(tmp_path / "other"))
        evaluation = evaluate_with_home(
            home=home, ssh_auth_sock=str(agent.socket), monkeypatch=monkeypatch
        )
    for connection in connections(evaluation):
        assert connection["privateKey"] == PLAIN
        assert "agentSocketPath" not in connection
        assert "privateKeyPassword" not in connection
    assert clean_stop_login(evaluation) == (KEY, {"CHI_PERSIST_SSH_PRIVATE_KEY": PLAIN})
    assert evaluation.outputs["ssh_command"].startswith("ssh -i '~/.ssh/id_rsa_chameleon' -o ")


@needs_ssh_agent
def test_the_agent_logs_in_when_no_key_exists(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sshPrivateKey and no key file, an agent holding a key: no key is sent."""
    with ssh_agent() as agent:
        agent.add(make_key(tmp_path / "agent-key"))
        evaluation = evaluate_with_home(
            home=home, ssh_auth_sock=str(agent.socket), monkeypatch=monkeypatch
        )
    for connection in connections(evaluation):
        assert "privateKey" not in connection
    assert clean_stop_login(evaluation) == (AGENT, {})
    assert evaluation.outputs["ssh_command"].startswith("ssh -o StrictHostKeyChecking=yes ")
    assert evaluation.outputs["ssh_command"].endswith("' cc@129.114.27.10")


@needs_ssh_agent
def test_the_agent_logs_in_when_chosen_even_beside_a_key(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshAuth agent: the agent logs in, the key file is not sent."""
    put_key(home)
    with ssh_agent() as agent:
        agent.add(make_key(tmp_path / "agent-key"))
        evaluation = evaluate_with_home(
            home=home,
            config={"sshAuth": "agent"},
            ssh_auth_sock=str(agent.socket),
            monkeypatch=monkeypatch,
        )
    for connection in connections(evaluation):
        assert "privateKey" not in connection
    assert clean_stop_login(evaluation) == (AGENT, {})


@needs_ssh_agent
def test_an_agent_holding_no_keys_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent is the only way in and holds nothing: refused with ssh-add as the fix."""
    with ssh_agent() as agent:
        message = refused(home=home, ssh_auth_sock=str(agent.socket), monkeypatch=monkeypatch)
    assert "the ssh agent there cannot log in: it holds no keys" in message
    assert "ssh-add" in message


@needs_ssh_keygen
@pytest.mark.parametrize("key_format", [None, "PEM"])
def test_a_protected_key_goes_with_its_passphrase(
    home: Path, monkeypatch: pytest.MonkeyPatch, key_format: str | None
) -> None:
    """sshPrivateKeyPassword opens the key: both are sent, in a secret connection."""
    key = make_key(
        home / ".ssh" / "id_rsa_chameleon",
        passphrase=PASSPHRASE,
        key_type="rsa" if key_format else "ed25519",
        key_format=key_format,
    )
    evaluation = evaluate_with_home(
        home=home, secrets={"sshPrivateKeyPassword": PASSPHRASE}, monkeypatch=monkeypatch
    )
    for connection in connections(evaluation):
        assert connection["privateKey"] == key.read_text()
        assert connection["privateKeyPassword"] == PASSPHRASE
    assert clean_stop_login(evaluation) == (
        KEY,
        {
            "CHI_PERSIST_SSH_PRIVATE_KEY": key.read_text(),
            "CHI_PERSIST_SSH_KEY_PASSPHRASE": PASSPHRASE,
        },
    )
    for registration in evaluation.of_type(REMOTE_COMMAND):
        # The SDK marks the whole connection secret when any field of it is.
        assert is_secret(registration.raw_inputs["connection"]), registration.name


@needs_ssh_keygen
def test_a_wrong_passphrase_is_refused_without_being_shown(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passphrase that does not open the key: refused; neither it nor the key is printed."""
    key = make_key(home / ".ssh" / "id_rsa_chameleon", passphrase=PASSPHRASE)
    message = refused(
        home=home, secrets={"sshPrivateKeyPassword": "guess-me-not"}, monkeypatch=monkeypatch
    )
    assert (
        "chi-persist:sshPrivateKeyPassword = '[secret]': does not open the private key" in message
    )
    assert "guess-me-not" not in message
    assert key.read_text().splitlines()[1] not in message


@needs_ssh_keygen
@pytest.mark.parametrize("method", [AUTO, KEY])
def test_a_protected_key_with_nothing_to_open_it_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """No passphrase and no agent: refused, with both ways through."""
    make_key(home / ".ssh" / "id_rsa_chameleon", passphrase=PASSPHRASE)
    message = refused(home=home, config={"sshAuth": method}, monkeypatch=monkeypatch)
    assert "the private key ~/.ssh/id_rsa_chameleon is protected by a passphrase" in message
    assert "pulumi config set --secret chi-persist:sshPrivateKeyPassword" in message
    assert "ssh-add ~/.ssh/id_rsa_chameleon" in message


@needs_ssh_agent
def test_a_protected_key_is_used_through_the_agent_holding_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshAuth auto, a protected key, no passphrase, the agent holds that key: the agent logs in."""
    key = make_key(home / ".ssh" / "id_rsa_chameleon", passphrase=PASSPHRASE)
    with ssh_agent() as agent:
        agent.add_without_passphrase(key, PASSPHRASE)
        evaluation = evaluate_with_home(
            home=home, ssh_auth_sock=str(agent.socket), monkeypatch=monkeypatch
        )
        with_key_chosen = refused(
            home=home,
            config={"sshAuth": "key"},
            ssh_auth_sock=str(agent.socket),
            monkeypatch=monkeypatch,
        )
    for connection in connections(evaluation):
        assert "privateKey" not in connection
    assert clean_stop_login(evaluation) == (AGENT, {})
    assert "is protected by a passphrase" in with_key_chosen


def test_an_unknown_login_method_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sshAuth takes key, agent or auto."""
    put_key(home)
    message = refused(home=home, config={"sshAuth": "password"}, monkeypatch=monkeypatch)
    assert "chi-persist:sshAuth = 'password': must be one of auto, key, agent" in message
    assert "pulumi config set chi-persist:sshAuth key" in message
