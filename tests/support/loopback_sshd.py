"""OpenSSH's sshd on a free port of 127.0.0.1, for tests that log in with the OpenSSH client.

It runs in the foreground (`sshd -D -e`) with a configuration of its own: a fresh host
key, one authorized keys file, public keys only, and no PAM. sshd must run as root to
log anyone in; the tests log in as the user they run as.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
READY_SECONDS = 20
# sshd refuses to start without its privilege separation directory.
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")


def sshd_skip_reason() -> str | None:
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (Debian package openssh-server; tests/run installs it)"
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (Debian package openssh-client)"
    if os.geteuid() != 0:
        return "sshd must run as root to log a user in; run the tests as root (sudo tests/run)"
    return None


@dataclass
class LoopbackSshd:
    """A running sshd; `authorize` adds a public key the login user may log in with."""

    host: str
    port: int
    user: str
    authorized_keys: Path
    log: Path
    process: subprocess.Popen
    host_key: str
    """Its ed25519 host key, `ssh-ed25519 BASE64`, as a client pins it."""

    def authorize(self, public_key_file: Path) -> None:
        with open(self.authorized_keys, "a") as handle:
            handle.write(public_key_file.read_text().strip() + "\n")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _banner(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as connection:
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def loopback_sshd(
    directory: Path, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[LoopbackSshd]:
    """sshd listening on one loopback address only (127.0.0.1 and a free port unless given: an
    address of 127.0.0.0/8 and port 22 stand for a server's floating IP), stopped afterwards;
    its files live in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    authorized_keys = directory / "authorized_keys"
    authorized_keys.touch(mode=0o600)
    port = port or _free_port()
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host}:{port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized_keys}",
                f"PidFile {directory / 'sshd.pid'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
    log = directory / "sshd.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not _banner(port, host):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not answer on {host}:{port}:\n{log.read_text()}")
            time.sleep(0.1)
        public = Path(f"{host_key}.pub").read_text().split()
        yield LoopbackSshd(
            host, port, getpass.getuser(), authorized_keys, log, process,
            host_key=" ".join(public[:2]),
        )  # fmt: skip
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
