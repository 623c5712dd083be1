"""host-key: a new server's SSH host key, read from its own console through Nova, then checked.
stdout: the ed25519 key, `ssh-ed25519 BASE64`, and nothing else; progress goes to stderr."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from chi_persist_tools import openssh
from components.host_keys import ED25519, HostKey, keys_in_console, parse_key

EXIT_OK = 0
EXIT_FAILED = 1  # no key could be read, or the address shows another key: nothing was trusted
EXIT_USAGE = 2

# A new server's first boot installs Docker and pulls the platform's images before cloud-init
# prints the keys (keys-to-console runs after the user data's commands); on a busy site that
# is many minutes.
WAIT_SECONDS = 2700.0
# A server launched longer ago than this has finished its first boot: a console without the key
# block will not get one (the log rolled over, or cloud-init printed none), so no wait.
SETTLED_SECONDS = 3600.0
INTERVAL_SECONDS = 10.0
PROGRESS_EVERY_SECONDS = 60.0
NOVA_TIMEOUT_SECONDS = 30
KEYSCAN_TIMEOUT_SECONDS = 10

DESCRIPTION = """\
Print a server's SSH host key (ed25519) as its own console shows it, read through Nova
(os-getConsoleOutput) with the OpenStack provider's credentials (OS_CLOUD and clouds.yaml,
or an openrc's OS_* variables), waiting with a bound until cloud-init has printed it; then
check that the server's address shows that key on port 22 (with ssh-keyscan, when it is
installed). Run by `pulumi up` once per server, before the first SSH step."""

EPILOG = """\
exit status:
  0  the key is on stdout (`ssh-ed25519 BASE64`)
  1  no key could be read within --timeout, the console has none, Nova refused, or the
     address shows another key: nothing is trusted
  2  wrong arguments"""


class HostKeyUnavailable(Exception):
    """The console gave no usable key; the message says why."""


class HostKeyMismatch(Exception):
    """The address shows another key than the server's console."""


# `pulumi up` runs this on this machine once per server, before the first SSH step; what it
# prints becomes the `host_key` of every remote command and the clean stop's only accepted
# key, and the stack's output `known_hosts`. The console is the server's own (cloud-init
# writes the keys there at the end of the first boot; components/host_keys.py reads them)
# and only the project can read it (Nova's `os-getConsoleOutput`, with the OpenStack
# provider's credentials), so the key is the server's even when something else answers at
# its address.
class NovaConsole:
    """Nova's console output of a server, through the stack's OpenStack session."""

    def __init__(self) -> None:
        from components.openstack_api import CloudUnavailable, OpenStack

        try:
            self.api = OpenStack()
        except CloudUnavailable as error:
            raise HostKeyUnavailable(str(error)) from None

    def launched_seconds_ago(self, server_id: str) -> float | None:
        """How long ago Nova launched the server (OS-SRV-USG:launched_at, UTC), if it says."""
        from datetime import datetime, timezone

        from components.openstack_api import CloudUnavailable

        try:
            answer = self.api.call(
                "compute", "GET", f"/servers/{server_id}", timeout=NOVA_TIMEOUT_SECONDS
            )
        except CloudUnavailable:
            return None
        launched = (answer.body.get("server") or {}).get("OS-SRV-USG:launched_at")
        if answer.status != 200 or not launched:
            return None
        moment = datetime.fromisoformat(str(launched)).replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - moment).total_seconds()

    def __call__(self, server_id: str) -> tuple[int, str]:
        """(HTTP status, console text or Nova's message) of os-getConsoleOutput; status 0 when
        the cloud did not answer (tried again)."""
        from components.openstack_api import CloudUnavailable

        try:
            answer = self.api.call(
                "compute", "POST", f"/servers/{server_id}/action",
                json={"os-getConsoleOutput": {}}, timeout=NOVA_TIMEOUT_SECONDS,
            )  # fmt: skip
        except CloudUnavailable as error:
            if "could not reach" not in str(error):
                # The credentials or the catalog: waiting does not change them.
                raise HostKeyUnavailable(str(error)) from None
            return 0, str(error)
        if answer.status == 200:
            return 200, str(answer.body.get("output") or "")
        return answer.status, answer.error_message


def read_console_key(
    server_id: str,
    timeout: float = WAIT_SECONDS,
    interval: float = INTERVAL_SECONDS,
    say: Callable[[str], None] = lambda text: None,
    read: Callable[[str], tuple[int, str]] | None = None,
    settled: bool | None = None,
) -> HostKey:
    """The server's ed25519 key from its console, waiting up to `timeout` for cloud-init;
    for a server whose first boot is long over (`settled`: asked of Nova unless given), a
    console without the key fails at once."""
    if read is None:
        nova = NovaConsole()
        read = nova
        if settled is None:
            age = nova.launched_seconds_ago(server_id)
            settled = age is not None and age > SETTLED_SECONDS
    started = time.monotonic()
    deadline = started + timeout
    last_said = started
    waiting_for = "Nova"
    while True:
        status, text = read(server_id)
        if status == 200:
            found = keys_in_console(text)
            if found.ed25519 is not None:
                return found.ed25519
            if found.block_found:
                kinds = ", ".join(key.type for key in found.keys) or "none"
                raise HostKeyUnavailable(
                    f"cloud-init printed server {server_id}'s host keys on its console, but no "
                    f"{ED25519} key among them (found: {kinds}); the image must make one "
                    "(OpenSSH's default, and cloud-init's ssh_genkeytypes)"
                )
            if found.cloud_init_finished:
                raise HostKeyUnavailable(
                    f"cloud-init finished on server {server_id} without printing its host keys "
                    "on the console (the image's cloud-init may not run keys-to-console, or "
                    "sets ssh.emit_keys_to_console false)"
                )
            if settled:
                raise HostKeyUnavailable(
                    f"server {server_id} was launched over {SETTLED_SECONDS / 3600:.0f} h ago and "
                    "its console no longer shows the host keys cloud-init printed at its first "
                    "boot (Nova keeps the last 100 KiB of it); a new server prints them again: "
                    "`./chi-persist recycle --stack <netid>`, then `pulumi up` (the volume and its "
                    "data stay)"
                )
            waiting_for = "cloud-init to print the host keys at the end of the first boot"
        elif status == 404:
            raise HostKeyUnavailable(f"Nova has no server {server_id} (it was deleted)")
        elif status in (401, 403):
            raise HostKeyUnavailable(
                f"Nova refused to show server {server_id}'s console ({status}: {text}); "
                "the credentials must be the project's own"
            )
        else:
            # 409 while the server builds, a cloud that does not answer for a moment.
            waiting_for = f"Nova's console output ({status or 'no answer'}: {text[:200]})"
        now = time.monotonic()
        if now + interval > deadline:
            raise HostKeyUnavailable(
                f"no host key on server {server_id}'s console within {timeout:.0f} s; "
                f"last waited for {waiting_for}"
            )
        if now - last_said >= PROGRESS_EVERY_SECONDS:
            say(f"still waiting for {waiting_for} ({now - started:.0f} s)")
            last_said = now
        time.sleep(interval)


def keyscan(host: str, port: int) -> HostKey | None | str:
    """The ed25519 key the address shows (ssh-keyscan); None when nothing answered, a text
    (why) when it cannot be asked here."""
    tool = shutil.which("ssh-keyscan")
    if tool is None:
        return "ssh-keyscan is not installed (Debian/Ubuntu: openssh-client)"
    try:
        result = subprocess.run(
            [tool, "-T", str(KEYSCAN_TIMEOUT_SECONDS), "-t", "ed25519", "-p", str(port), host],
            capture_output=True, text=True, timeout=KEYSCAN_TIMEOUT_SECONDS * 3,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"ssh-keyscan failed: {error}"
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            continue
        key = parse_key(line)
        if key is not None and key.type == ED25519:
            return key
    return None


# The key is then compared with what the address shows on port 22 (`ssh-keyscan`, when it
# is installed): another key stops here, with the cause.
def check_address(key: HostKey, host: str, port: int, server_id: str) -> str:
    """What the address showed, as a line for stderr; HostKeyMismatch when it is another key."""
    shown = keyscan(host, port)
    if isinstance(shown, str):
        return f"the key at {host}:{port} was not compared here ({shown}); every SSH step checks it"
    if shown is None:
        return f"{host}:{port} showed no key just now; every SSH step checks it"
    if shown.blob != key.blob:
        raise HostKeyMismatch(
            f"{host}:{port} shows the host key {shown.fingerprint}, but server {server_id}'s "
            f"own console shows {key.fingerprint}: whoever answers at that address is not the "
            "server. Nothing was sent to it, and no volume was detached"
        )
    return f"{host}:{port} shows the same key"


def build_parser() -> argparse.ArgumentParser:
    parser = openssh.server_parser("host-key", DESCRIPTION, EPILOG)
    parser.add_argument(
        "--timeout",
        type=float,
        default=WAIT_SECONDS,
        help=f"give up after this many seconds (default {WAIT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=INTERVAL_SECONDS,
        help=f"seconds between reads of the console (default {INTERVAL_SECONDS:.0f})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.timeout <= 0 or arguments.interval <= 0:
        parser.error(
            f"--timeout and --interval must be positive (seen {arguments.timeout}, "
            f"{arguments.interval})"
        )
    if not 0 < arguments.port < 65536:
        parser.error(f"--port must be 1 to 65535, not {arguments.port}")

    def say(text: str) -> None:
        print(f"host-key: {text}", file=sys.stderr, flush=True)

    server = arguments.server_id
    say(f"reading server {server}'s host keys from its console (Nova), up to "
        f"{arguments.timeout:.0f} s")  # fmt: skip
    try:
        key = read_console_key(server, arguments.timeout, arguments.interval, say)
        say(f"server {server}'s console shows its {ED25519} key {key.fingerprint}")
        say(check_address(key, arguments.host, arguments.port, server))
    except HostKeyUnavailable as unavailable:
        print(f"error: {unavailable}", file=sys.stderr)
        print(
            f"error: fix: look at the server's console log (Horizon: Compute > Instances > "
            f"{server} > Log, or `openstack console log show {server}`); if the server is "
            "broken, `./chi-persist recycle --stack <netid>` and `pulumi up` make a new one. "
            "Nothing was sent to the server",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except HostKeyMismatch as mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        print(
            f"error: fix: check that the floating IP {arguments.host} is on this server's "
            f"port (`openstack floating ip show {arguments.host}`: its port must be "
            "node-persist-<netid>'s; anyone in the class's project can move it), then run "
            "`pulumi up` again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(key.line, flush=True)
    return EXIT_OK
