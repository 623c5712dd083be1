"""Whether a recycle's clean stop can run: what Nova says of the server and whether its SSH
port answers from here; and the stop through Nova for a server SSH does not reach."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chi_persist_tools.clean_stop import ServerLookup, look_up_server, request_server_stop
from chi_persist_tools.command_line import EXIT_FAILED, CommandError
from chi_persist_tools.recycle_plan import Resource
from components.ssh_auth import probe_agent

SSH_PORT = 22
PROBE_TIMEOUT_SECONDS = 5.0
# Nova's graceful stop waits up to its shutdown_timeout (60 s by default) before it powers off.
NOVA_STOP_SECONDS = 300
NOVA_POLL_SECONDS = 5.0


def ssh_unreachable_reason(address: str, port: int = SSH_PORT) -> str | None:
    """None when something accepts a TCP connection on address:port, else why not."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_SECONDS):
            return None
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except OSError as error:
        return error.strerror or str(error)


# What a recycle does about the clean stop, from what Nova says and whether SSH answers.
STOP_OVER_SSH = "stop over ssh"
FORGET = "forget the stop"
STOP_THROUGH_NOVA = "stop through nova"
REFUSE = "refuse"
# A server in one of these runs nothing: its platform cannot be stopped, and needs not be.
SERVER_OFF = ("SHUTOFF",)


@dataclass(frozen=True)
class StopDecision:
    action: str
    lines: tuple[str, ...] = ()
    """What is printed before the plan is confirmed."""
    refusal: tuple[str, ...] = ()
    """For REFUSE: the cause, then the fix."""


def decide_stop(
    lookup: ServerLookup, unreachable: str | None, *, stop_through_nova: bool, stack: str
) -> StopDecision:
    """Ask Nova, not the network: only a server Nova no longer has (or one that is shut off)
    loses its clean stop, with a warning of what that means for the data; one that runs but
    does not answer here keeps its volume attached, unless --stop-through-nova shuts it down."""
    lost_writes = (
        "PostgreSQL will recover from its journal on the next start: committed data is safe, "
        "but writes of the last seconds before the server went away may be lost"
    )
    if lookup.gone:
        return StopDecision(
            FORGET,
            (
                "warning: Nova no longer has the server: the clean stop (docker compose down, "
                f"sync, unmount) cannot run, so its step is removed from the state. {lost_writes}",
            ),
        )
    status = (lookup.status or "").upper()
    if lookup.exists and status in SERVER_OFF:
        return StopDecision(
            FORGET,
            (
                f"recycle: the server is {status}: nothing runs on it and its shutdown unmounted "
                "the volume, so the clean stop's step is removed from the state",
            ),
        )
    if unreachable is None:
        return StopDecision(
            STOP_OVER_SSH,
            (
                "recycle: the server answers on SSH: the platform will be stopped cleanly before "
                "the volume is detached",
            ),
        )
    seen = f"Nova says {status}" if lookup.exists else f"Nova could not be asked ({lookup.problem})"
    if lookup.exists and stop_through_nova:
        return StopDecision(
            STOP_THROUGH_NOVA,
            (
                f"recycle: the server does not answer on SSH from here ({unreachable}) and {seen}: "
                "it will be shut down through Nova (a clean shutdown stops the platform and "
                "unmounts the volume) before the volume is detached",
            ),
        )
    nova_fix = (
        "or shut it down through Nova first: "
        f"`./chi-persist recycle --stack {stack} --stop-through-nova`"
        if lookup.exists
        else "or make Nova reachable (`export OS_CLOUD=...` with clouds.yaml, or `source` your "
        "openrc file) so recycle can tell whether the server still exists"
    )
    return StopDecision(
        REFUSE,
        refusal=(
            f"the server does not answer on SSH from here ({unreachable}) and {seen}: it may be "
            "running PostgreSQL on the volume, so the volume is not detached without its clean "
            "stop; nothing was changed",
            "fix: recycle from a network the server lets in (your address must be in "
            f"chi-persist:allowedCidrs: `pulumi config get --stack {stack} chi-persist:"
            f"allowedCidrs`; a VPN or campus network may block port 22), {nova_fix}",
        ),
    )


def stop_server_through_nova(server_id: str) -> None:
    """os-stop (Nova's graceful shutdown: ACPI, then power off), then wait for SHUTOFF."""
    print(f"recycle: shutting server {server_id} down through Nova (os-stop)", flush=True)
    problem = request_server_stop(server_id)
    if problem is not None:
        raise CommandError(
            f"Nova did not stop server {server_id}: {problem}; nothing was destroyed",
            "fix: stop it in Horizon (Compute > Instances > Shut Off Instance), then run "
            "recycle again",
            exit_code=EXIT_FAILED,
        )
    deadline = time.monotonic() + NOVA_STOP_SECONDS
    while True:
        lookup = look_up_server(server_id)
        if lookup.gone or (lookup.status or "").upper() in SERVER_OFF:
            print(f"recycle: server {server_id} is shut off", flush=True)
            return
        if time.monotonic() > deadline:
            raise CommandError(
                f"server {server_id} was still {lookup.status or lookup.problem} "
                f"{NOVA_STOP_SECONDS} s after Nova was asked to stop it; nothing was destroyed",
                "fix: look at it in Horizon (Compute > Instances), then run recycle again",
                exit_code=EXIT_FAILED,
            )
        time.sleep(NOVA_POLL_SECONDS)


def refuse_a_dead_agent(environ: Mapping[str, str], stop_steps: Sequence[Resource]) -> None:
    """A clean stop that logs in through the agent (or a remote one: pulumi-command dials
    SSH_AUTH_SOCK whenever it is set) would fail the destroy after it began on a socket where
    no agent answers. A stop that logs in with the stack's key does not dial it."""
    if not any(step.dials_the_agent for step in stop_steps):
        return
    agent = probe_agent(environ.get("SSH_AUTH_SOCK") or None)
    if agent.socket is not None and not agent.answers:
        raise CommandError(
            f"SSH_AUTH_SOCK={agent.socket}: no ssh agent answers there ({agent.reason}); the "
            "clean stop logs in over SSH through the agent, so the destroy would fail on it; "
            "nothing was changed",
            'fix: start an agent in this shell: eval "$(ssh-agent)" && ssh-add <your key>, '
            "or `unset SSH_AUTH_SOCK` and give the stack its key (pulumi config set "
            "chi-persist:sshAuth key, then pulumi up); then ./chi-persist recycle again",
        )
