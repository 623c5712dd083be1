"""SSH keys for tests: a fixed, well-formed stand-in, and real keys made by ssh-keygen."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


STAND_IN_PUBLIC_KEY = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + b"\x11" * 32


def stand_in_private_key(comment: str = "chi-persist test key", encrypted: bool = False) -> str:
    """An OpenSSH private key, well-formed and always the same; it opens nothing.

    Its public key (STAND_IN_PUBLIC_KEY) is 32 fixed bytes, not derived from the
    private part: enough for every check this project makes before a connection,
    useless for a login. `encrypted` marks it aes256-ctr/bcrypt, as ssh-keygen -N does.
    """
    public = b"\x11" * 32
    private = b"\x22" * 32 + public
    public_blob = _string(b"ssh-ed25519") + _string(public)
    check = struct.pack(">II", 0x5EED5EED, 0x5EED5EED)
    block = check + public_blob + _string(private) + _string(comment.encode())
    block += bytes(range(1, 1 + (-len(block)) % 8))  # padding 1, 2, 3, ...
    cipher, kdf = (b"aes256-ctr", b"bcrypt") if encrypted else (b"none", b"none")
    kdf_options = _string(b"\x33" * 16) + struct.pack(">I", 16) if encrypted else b""
    data = (
        b"openssh-key-v1\x00"
        + _string(cipher)
        + _string(kdf)
        + _string(kdf_options)
        + struct.pack(">I", 1)
        + _string(public_blob)
        + _string(block)
    )
    body = base64.b64encode(data).decode()
    lines = [body[index : index + 70] for index in range(0, len(body), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


def ssh_keygen_skip_reason() -> str | None:
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (Debian package openssh-client; tests/run installs it)"
    return None


def make_key(
    path: Path, *, passphrase: str = "", key_type: str = "ed25519", key_format: str | None = None
) -> Path:
    """A real key pair made by ssh-keygen: `path` and `path`.pub."""
    command = ["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", "test", "-f", str(path)]
    if key_type == "rsa":
        command[4:4] = ["-b", "2048"]
    if key_format:
        command += ["-m", key_format]
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


def public_key_blob(path: Path) -> bytes:
    """The key blob of the public key beside `path`."""
    return base64.b64decode(Path(f"{path}.pub").read_text().split()[1])


@dataclass
class Agent:
    """An ssh-agent of the test's own, listening on a unix socket only."""

    socket: Path
    process: subprocess.Popen

    def add(self, key: Path) -> None:
        """Load an unencrypted key file into the agent."""
        subprocess.run(
            ["ssh-add", "-q", str(key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(self.socket)},
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )

    def add_without_passphrase(self, key: Path, passphrase: str) -> None:
        """Load a passphrase-protected key, as `ssh-add` after typing its passphrase would."""
        copy = key.with_name(key.name + ".open")
        shutil.copyfile(key, copy)
        copy.chmod(0o600)
        subprocess.run(
            ["ssh-keygen", "-q", "-p", "-P", passphrase, "-N", "", "-f", str(copy)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        self.add(copy)
        copy.unlink()

    def kill(self) -> None:
        """Kill the agent so it cannot remove its socket: a stale SSH_AUTH_SOCK."""
        self.process.kill()
        self.process.wait(timeout=10)


def ssh_agent_skip_reason() -> str | None:
    missing = [tool for tool in ("ssh-agent", "ssh-add", "ssh-keygen") if not shutil.which(tool)]
    if missing:
        return (
            f"{', '.join(missing)} missing (Debian package openssh-client; tests/run installs it)"
        )
    return None


@contextmanager
def ssh_agent() -> Iterator[Agent]:
    """A running ssh-agent (`ssh-agent -D -a <socket>`), stopped afterwards."""
    # A short path: unix socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="chi-agent-"))
    socket_path = directory / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssh-agent did not create {socket_path}")
            time.sleep(0.05)
        yield Agent(socket_path, process)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
