"""How the provisioning commands log in over SSH: chosen on purpose, checked before any resource.
Over 500 lines: reading a key (OpenSSH and PEM formats), probing the agent and the decision
are one contract with pulumi-command's connection code, kept together."""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUTO, KEY, AGENT = "auto", "key", "agent"
METHODS = (AUTO, KEY, AGENT)
# The project's config namespace (components.settings.NAMESPACE is this one).
NAMESPACE = "chi-persist"

# The ciphers and key derivation golang.org/x/crypto/ssh reads in an OpenSSH key.
OPENSSH_CIPHERS = ("aes256-ctr", "aes256-cbc")
OPENSSH_MAGIC = b"openssh-key-v1\x00"
PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<type>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)-----END (?P=type)-----", re.DOTALL
)
LEGACY_PEM_TYPES = ("RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY")

# The ssh agent protocol (draft-miller-ssh-agent): request and answer of the key list.
AGENTC_REQUEST_IDENTITIES = 11
AGENT_IDENTITIES_ANSWER = 12
AGENT_FAILURE = 5
AGENT_TIMEOUT_SECONDS = 5.0
AGENT_MAX_ANSWER = 256 * 1024


# --- the key's own text ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeyText:
    """What the text of a private key tells without its passphrase."""

    encrypted: bool
    public_key: bytes | None
    """The public key blob, when the text holds it unencrypted (OpenSSH format)."""
    problem: str | None = None
    """Why pulumi-command could not use this key; None when it can."""
    fix: str | None = None


# What pulumi-command 1.2.1 does with a connection (provider/pkg/provider/remote/
# connection.go, `connectionBase.SSHConfig`, and connection_unix.go):
# - `private_key`, when given, is parsed first: with `private_key_password` if that is
#   given, else without. An encrypted key without the password fails ("this private key
#   is passphrase protected"); a password with a key that has none fails too ("ssh: key
#   is not password protected", "ssh: not an encrypted key"). Readable are OpenSSH keys
#   (encrypted with aes256-ctr or aes256-cbc), and PEM keys (RSA, EC, DSA, PKCS#8), the
#   legacy ones also with their PEM encryption; an "ENCRYPTED PRIVATE KEY" (encrypted
#   PKCS#8) is not.
def inspect_private_key(text: str) -> KeyText:
    """Read the format of a private key the way pulumi-command's parser will meet it."""
    block = PEM_BLOCK.search(text)
    if block is None:
        return _unusable("is not a private key: no -----BEGIN ... PRIVATE KEY----- block")
    kind, body = block.group("type"), block.group("body")
    if kind == "OPENSSH PRIVATE KEY":
        return _inspect_openssh(body)
    if kind == "ENCRYPTED PRIVATE KEY":
        return _unusable(
            "is an encrypted PKCS#8 key, a format pulumi-command cannot read",
            "rewrite it in OpenSSH format, keeping a passphrase: ssh-keygen -p -f <key file>",
            encrypted=True,
        )
    if kind == "PRIVATE KEY":
        return KeyText(encrypted=False, public_key=None)
    if kind in LEGACY_PEM_TYPES:
        # PEM's own encryption is announced in a header before the body.
        encrypted = re.search(r"^Proc-Type:[^\n]*ENCRYPTED", body, re.MULTILINE) is not None
        return KeyText(encrypted=encrypted, public_key=None)
    return _unusable(f"is a {kind!r} block, not a private key pulumi-command can read")


def _inspect_openssh(body: str) -> KeyText:
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return _unusable("is an OpenSSH private key whose body is not base64")
    if not data.startswith(OPENSSH_MAGIC):
        return _unusable("is not a valid OpenSSH private key (no openssh-key-v1 header)")
    try:
        reader = _Reader(data[len(OPENSSH_MAGIC) :])
        cipher = reader.string().decode("ascii", "replace")
        kdf = reader.string().decode("ascii", "replace")
        reader.string()  # KDF options
        count = reader.uint32()
        public_key = reader.string() if count >= 1 else None
        for _ in range(max(count - 1, 0)):
            reader.string()
        reader.string()  # the private part, encrypted or not
    except ValueError:
        return _unusable("is an OpenSSH private key cut short")
    if count != 1:
        return _unusable(f"holds {count} keys; pulumi-command reads files of exactly one")
    encrypted = cipher != "none" or kdf != "none"
    if encrypted and (cipher not in OPENSSH_CIPHERS or kdf != "bcrypt"):
        return _unusable(
            f"is encrypted with {cipher} ({kdf}), which pulumi-command cannot read "
            f"(it reads {' and '.join(OPENSSH_CIPHERS)})",
            "re-encrypt it: ssh-keygen -p -Z aes256-ctr -f <key file>",
            encrypted=True,
            public_key=public_key,
        )
    return KeyText(encrypted=encrypted, public_key=public_key)


def _unusable(
    problem: str,
    fix: str | None = None,
    *,
    encrypted: bool = False,
    public_key: bytes | None = None,
) -> KeyText:
    return KeyText(encrypted=encrypted, public_key=public_key, problem=problem, fix=fix)


class _Reader:
    """The SSH wire format: uint32 and length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def uint32(self) -> int:
        if self.offset + 4 > len(self.data):
            raise ValueError("short read")
        (value,) = struct.unpack_from(">I", self.data, self.offset)
        self.offset += 4
        return value

    def string(self) -> bytes:
        length = self.uint32()
        if self.offset + length > len(self.data):
            raise ValueError("short read")
        value = self.data[self.offset : self.offset + length]
        self.offset += length
        return value


def public_key_line_blob(line: str) -> bytes | None:
    """The key blob of an OpenSSH public key line ("ssh-ed25519 AAAA... comment")."""
    fields = line.split()
    if len(fields) < 2:
        return None
    try:
        return base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return None


def passphrase_opens(key_text: str, passphrase: str) -> bool | None:
    """Whether `passphrase` opens the key, asked of ssh-keygen; None when that cannot be told.

    The key is written, for the moment of the check, to a file only its owner can read.
    """
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        return None
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DISPLAY", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE")
    }
    with tempfile.TemporaryDirectory(prefix="chi-persist-key-") as directory:
        path = Path(directory) / "key"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key_text if key_text.endswith("\n") else key_text + "\n")
        try:
            result = subprocess.run(
                [ssh_keygen, "-y", "-f", str(path)],
                input=passphrase + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=environment,
                start_new_session=True,  # no terminal: the passphrase is read from stdin
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    if result.returncode == 0:
        return True
    if "incorrect passphrase" in result.stderr:
        return False
    return None


# --- the agent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentState:
    """What answers at SSH_AUTH_SOCK."""

    socket: str | None
    """SSH_AUTH_SOCK; None when unset or empty (pulumi-command then dials nothing)."""
    answers: bool = False
    """Whether a connection succeeds: what pulumi-command needs not to fail."""
    identities: tuple[bytes, ...] | None = None
    """The public key blobs the agent holds; None when it did not list them."""
    reason: str = ""
    """Why it does not answer, or does not list its keys."""

    @property
    def usable(self) -> bool:
        return self.answers and bool(self.identities)


# pulumi-command dials the agent whenever `agent_socket_path` is given or SSH_AUTH_SOCK is
# set and not empty, and a failed dial fails the command before any login is tried, even
# when a key is given. No connection argument prevents it: an empty `agent_socket_path` is
# dialled too, and fails.
def probe_agent(socket_path: str | None, timeout: float = AGENT_TIMEOUT_SECONDS) -> AgentState:
    """Connect to the agent at `socket_path` and ask for its keys."""
    if not socket_path:
        return AgentState(socket=None)
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as error:
        return AgentState(socket_path, reason=f"no unix socket here: {error.strerror or error}")
    with connection:
        connection.settimeout(timeout)
        try:
            connection.connect(socket_path)
        except OSError as error:
            return AgentState(socket_path, reason=_socket_error(error))
        try:
            connection.sendall(struct.pack(">IB", 1, AGENTC_REQUEST_IDENTITIES))
            answer = _receive_message(connection)
        except (OSError, ValueError) as error:
            reason = _socket_error(error) if isinstance(error, OSError) else str(error)
            return AgentState(
                socket_path, answers=True, reason=f"it does not answer as an ssh agent ({reason})"
            )
    if not answer or answer[0] == AGENT_FAILURE or answer[0] != AGENT_IDENTITIES_ANSWER:
        return AgentState(socket_path, answers=True, reason="it refused to list its keys")
    try:
        reader = _Reader(answer[1:])
        identities = []
        for _ in range(reader.uint32()):
            identities.append(reader.string())
            reader.string()  # comment
    except ValueError:
        return AgentState(socket_path, answers=True, reason="its list of keys is malformed")
    reason = "" if identities else "it holds no keys"
    return AgentState(socket_path, answers=True, identities=tuple(identities), reason=reason)


def _receive_message(connection: socket.socket) -> bytes:
    header = _receive_exactly(connection, 4)
    (length,) = struct.unpack(">I", header)
    if length > AGENT_MAX_ANSWER:
        raise ValueError(f"an answer of {length} bytes")
    return _receive_exactly(connection, length)


def _receive_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ValueError("the connection closed mid-answer")
        data += chunk
    return data


def _socket_error(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such socket"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: the agent that made it is gone"
    if isinstance(error, TimeoutError):
        return "no answer within the time allowed"
    return error.strerror or str(error)


# --- the choice -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateKey:
    """A private key the commands could log in with, and where it is."""

    source: str
    """"config" (the secret sshPrivateKey) or "file" (the file at sshPrivateKeyPath)."""
    location: str
    """How messages name it: the path as configured, or chi-persist:sshPrivateKey."""
    text: str | None
    """None when only its existence is known here (./chi-persist init knows no secret)."""
    public_key: bytes | None = None
    """From the .pub file beside it, when its text does not hold it."""
    unreadable: str | None = None
    """Why the file could not be read."""


@dataclass(frozen=True)
class Login:
    """How the commands log in."""

    method: str
    """KEY or AGENT."""
    key_source: str | None = None
    """With KEY: "config" or "file"."""
    send_password: bool = False
    """With KEY: the key is encrypted, and sshPrivateKeyPassword goes with it."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoginProblem:
    """What stops the login: the setting (or environment variable), the value seen, rule, fix."""

    setting: str
    value: Any
    rule: str
    fix: str


def read_key_file(path: Path, location: str) -> PrivateKey | None:
    """The key file at `path`, None when there is none."""
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not text"
        return PrivateKey("file", location, None, unreadable=str(reason or error))
    public_key = None
    sidecar = path.with_name(path.name + ".pub")
    if sidecar.is_file():
        try:
            public_key = public_key_line_blob(sidecar.read_text())
        except (OSError, UnicodeDecodeError):
            public_key = None
    return PrivateKey("file", location, text, public_key=public_key)


# The key and the agent are both "publickey" logins, and golang.org/x/crypto/ssh tries
# each method name once: when a key is given, the agent's keys are never offered. So a key
# is used alone whenever SSH_AUTH_SOCK is unset or answers, and a set but dead SSH_AUTH_SOCK
# would fail every remote command whatever the method: this refuses it, with the fix, before
# any resource exists. The text of a key and its passphrase are never part of a message.
def choose_login(
    method: str,
    key: PrivateKey | None,
    key_path: str,
    agent: AgentState,
    *,
    password_set: bool = False,
    password: str | None = None,
    check_passphrase: Callable[[str, str], bool | None] = passphrase_opens,
) -> tuple[Login | None, list[LoginProblem]]:
    """Decide how the commands log in; (the login, []) or (None, every problem found).

    `key` is the secret sshPrivateKey if set, else the file at `key_path` if it exists.
    """
    problems: list[LoginProblem] = []
    notes: list[str] = []
    agent_dead = agent.socket is not None and not agent.answers
    if agent_dead:
        problems.append(
            LoginProblem(
                "SSH_AUTH_SOCK",
                agent.socket,
                f"no ssh agent answers at this socket ({agent.reason}); pulumi-command dials "
                "SSH_AUTH_SOCK whenever it is set, even when a key is given, so every remote "
                "command would fail",
                "`unset SSH_AUTH_SOCK` in this shell, then run pulumi again (a key is then used "
                'alone), or start an agent here: eval "$(ssh-agent)" && ssh-add <your key>',
            )
        )

    text = _key_text(key, problems)
    usable_key = key is not None and not any(p.setting in _KEY_SETTINGS for p in problems)
    encrypted = bool(text and text.encrypted)
    public_key = (text.public_key if text else None) or (key.public_key if key else None)
    agent_holds_key = (
        None if public_key is None or not agent.usable else public_key in (agent.identities or ())
    )

    def key_login() -> Login | None:
        assert key is not None
        if not encrypted:
            if password_set:
                notes.append(
                    f"{NAMESPACE}:sshPrivateKeyPassword is set, but the key {key.location} has "
                    "no passphrase: it is not used"
                )
            return Login(KEY, key.source, notes=tuple(notes))
        if password_set:
            opens = check_passphrase(key.text, password) if key.text and password else None
            if opens is False:
                problems.append(
                    LoginProblem(
                        "sshPrivateKeyPassword",
                        "[secret]",
                        f"does not open the private key {key.location}",
                        f"pulumi config set --secret {NAMESPACE}:sshPrivateKeyPassword "
                        "(it asks for the passphrase)",
                    )
                )
                return None
            return Login(KEY, key.source, send_password=True, notes=tuple(notes))
        return None

    if method == KEY:
        if key is None:
            problems.append(
                LoginProblem(
                    "sshPrivateKeyPath",
                    key_path,
                    f"{NAMESPACE}:sshAuth is key, but there is no key: sshPrivateKey is not set "
                    f"and {key_path} does not exist",
                    f"pulumi config set {NAMESPACE}:sshPrivateKeyPath <your key file>, or "
                    f"pulumi config set --secret {NAMESPACE}:sshPrivateKey < <your key file>",
                )
            )
        elif usable_key:
            login = key_login()
            if login is not None:
                return _done(login, problems)
            if encrypted and not password_set:
                problems.append(_passphrase_needed(key))
    elif method == AGENT:
        if agent.socket is None:
            problems.append(
                LoginProblem(
                    "sshAuth",
                    AGENT,
                    "SSH_AUTH_SOCK is not set: there is no ssh agent to log in with",
                    'start one in the shell that runs pulumi: eval "$(ssh-agent)" && ssh-add '
                    f"<your key>; or pulumi config set {NAMESPACE}:sshAuth auto",
                )
            )
        elif agent.answers and not agent.usable:
            problems.append(_agent_without_keys(agent, key_path))
        elif agent.usable:
            if agent_holds_key is False:
                notes.append(
                    f"the ssh agent does not hold the key {key.location if key else key_path}; "
                    "it must hold the private key of your key pair"
                )
            return _done(Login(AGENT, notes=tuple(notes)), problems)
    else:  # AUTO
        if key is not None and usable_key:
            login = key_login()
            if login is not None:
                return _done(login, problems)
            if encrypted and not password_set:
                if agent.usable and agent_holds_key is not False:
                    holds = "which holds it" if agent_holds_key else "which must hold it"
                    notes.append(
                        f"the private key {key.location} is protected by a passphrase and "
                        f"{NAMESPACE}:sshPrivateKeyPassword is not set: logging in through the "
                        f"ssh agent, {holds}"
                    )
                    return _done(Login(AGENT, notes=tuple(notes)), problems)
                problems.append(_passphrase_needed(key))
        elif key is None:
            if agent.usable:
                return _done(Login(AGENT, notes=tuple(notes)), problems)
            if agent.answers:
                problems.append(_agent_without_keys(agent, key_path))
            elif not agent_dead:
                problems.append(_no_key_at_all(key_path))
    return None, problems


_KEY_SETTINGS = ("sshPrivateKey", "sshPrivateKeyPath")


def _done(login: Login, problems: list[LoginProblem]) -> tuple[Login | None, list[LoginProblem]]:
    return (None, problems) if problems else (login, [])


def _key_text(key: PrivateKey | None, problems: list[LoginProblem]) -> KeyText | None:
    """The key's format, adding a problem when pulumi-command could not use it."""
    if key is None:
        return None
    setting = "sshPrivateKey" if key.source == "config" else "sshPrivateKeyPath"
    shown = "[secret]" if key.source == "config" else key.location
    if key.unreadable:
        problems.append(
            LoginProblem(
                setting,
                shown,
                f"cannot be read ({key.unreadable})",
                f"make it readable by the user who runs pulumi (chmod 600 {key.location}), "
                f"or pulumi config set {NAMESPACE}:sshPrivateKeyPath <your key file>",
            )
        )
        return None
    if key.text is None:
        return None
    text = inspect_private_key(key.text)
    if text.problem:
        fix = text.fix or (
            f"pulumi config set {NAMESPACE}:sshPrivateKeyPath <the private key of your key pair>"
            if key.source == "file"
            else f"pulumi config set --secret {NAMESPACE}:sshPrivateKey < <your key file>"
        )
        problems.append(LoginProblem(setting, shown, text.problem, fix))
    return text


def _passphrase_needed(key: PrivateKey) -> LoginProblem:
    path = key.location if key.source == "file" else "<your key file>"
    return LoginProblem(
        "sshPrivateKeyPassword",
        None,
        f"the private key {key.location} is protected by a passphrase, and neither "
        f"{NAMESPACE}:sshPrivateKeyPassword nor an ssh agent holding the key is there",
        f"pulumi config set --secret {NAMESPACE}:sshPrivateKeyPassword (it asks for the "
        f'passphrase), or load the key into an agent: eval "$(ssh-agent)" && ssh-add {path}',
    )


def _no_key_at_all(key_path: str) -> LoginProblem:
    return LoginProblem(
        "sshPrivateKey",
        key_path,
        f"no private key found: sshPrivateKey is not set, {key_path} does not exist, and no "
        "ssh agent is running (SSH_AUTH_SOCK is unset)",
        f"pulumi config set {NAMESPACE}:sshPrivateKeyPath <path to your key>, or "
        f"pulumi config set --secret {NAMESPACE}:sshPrivateKey < <path to your key>",
    )


def _agent_without_keys(agent: AgentState, key_path: str) -> LoginProblem:
    return LoginProblem(
        "SSH_AUTH_SOCK",
        agent.socket,
        f"the ssh agent there cannot log in: {agent.reason}",
        f"ssh-add <your key> (e.g. ssh-add {key_path}), or pulumi config set "
        f"{NAMESPACE}:sshPrivateKeyPath <your key file>",
    )
