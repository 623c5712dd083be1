"""recycle: destroy a stack's server and its dependents; keep the volume, port and floating IP.
The plan comes from recycle_plan.py and the clean stop's fate from recycle_stop.py; this module
shows them, runs the destroys and checks what is left."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from chi_persist_tools.clean_stop import ServerLookup, look_up_server
from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    export_state,
    passphrase_is_set,
    pulumi_command_text,
    run_main,
    run_pulumi,
    selected_stack,
    stream_pulumi,
)
from chi_persist_tools.recycle_plan import (
    KEPT,
    Plan,
    Resource,
    plan_recycle,
    resources_in,
    steps_to_forget,
)
from chi_persist_tools.recycle_stop import (
    FORGET,
    REFUSE,
    SSH_PORT,
    STOP_THROUGH_NOVA,
    decide_stop,
    refuse_a_dead_agent,
    ssh_unreachable_reason,
    stop_server_through_nova,
)
from components.settings import check_value

DESCRIPTION = """\
Recycle the compute of a stack: destroy its server (node-persist-NETID) and what
depends on it (the volume attachment and the provisioning steps), and keep the
volume with all its data, the port and the floating IP. Then `pulumi up` makes a
new server, which attaches the same volume and finds every experiment, model and
notebook where it was. With --end-lease, the stack's KVM@TACC lease ends too, so
nothing is reserved while nobody works; the next `pulumi up` makes a new lease.
"""

EPILOG = """\
what it does:
  1. reads the stack's state (`pulumi stack export`) and finds the server;
  2. shows what will be destroyed and what stays, and asks (unless --yes);
  3. runs `pulumi destroy --target <server> --target-dependents`: before the volume is
     detached, the server stops the platform cleanly (docker compose down, sync, unmount);
  4. reads the state again and checks the volume, port and floating IP are still there;
  5. with --end-lease: `pulumi destroy --target <lease>`, once the server is gone, and
     checks again. The lease is the stack's own (lease-persist-NETID); a reservation you
     set yourself (chi-persist:reservation) is not the stack's, and is refused.
  The volume is never a target.

Nova is asked first (with the OS_CLOUD / openrc credentials of `pulumi up`):
  - the server is gone (deleted by hand, a lease's end): the clean stop cannot run, so
    its step is removed from the state and the destroy goes on. PostgreSQL then
    recovers from its journal on the next start: committed data is safe; writes of the
    last seconds before the server went away may be lost. You are warned first.
  - the server is shut off: its shutdown unmounted the volume; the step is removed.
  - the server runs and answers on SSH: the clean stop runs in the destroy.
  - the server runs (or Nova cannot say) and SSH does not answer from here (your address
    not in allowedCidrs, a VPN): refused, nothing changes. --stop-through-nova shuts it
    down through Nova (a clean shutdown unmounts the volume), then recycles it.

examples:
  ./chi-persist recycle --stack ab1234
  ./chi-persist recycle --stack ab1234 --yes && pulumi up --stack ab1234
  ./chi-persist recycle --stack ab1234 --end-lease   # done for the day: release the reservation
  ./chi-persist recycle --stack ab1234 --stop-through-nova   # SSH is closed to you here
  ./chi-persist recycle                   # the selected stack (`pulumi stack select NETID`)

exit status:
  0  the server (and with --end-lease the lease) is gone and the volume, port and
     floating IP are still in the stack
  1  a pulumi command failed, the stack's state is not safe to recycle, or something
     that must stay is missing afterwards (what to do is printed)
  2  wrong arguments, no stack selected, no server to recycle, --end-lease on a stack
     without a lease of its own, or not confirmed: nothing was changed

PULUMI_CONFIG_PASSPHRASE must be set (as for `pulumi up`) when the stack's secrets
are protected by a passphrase, the default of this project's local state backend.
"""


def describe_lease(lease: Resource) -> str:
    """The lease, with when it ends as the stack last saw it."""
    end = lease.outputs.get("end_date")
    return lease.describe() + (f", ends {end}" if isinstance(end, str) and end else "")


def show_plan(plan: Plan) -> None:
    if plan.server is None:
        print(
            f"recycle: stack {plan.stack} has no server any more (an earlier recycle or the "
            "lease's end removed it): only its lease will be ended"
        )
    else:
        print(
            f"recycle: stack {plan.stack}: these will be destroyed (the server and its dependents):"
        )
    for resource in plan.removed:
        extra = ""
        if resource.stops_on_delete:
            extra = " (its delete step stops the platform cleanly and unmounts the volume)"
        print(f"  - {resource.describe()}{extra}")
    if plan.lease is not None:
        then = "then, once the server is gone, " if plan.server is not None else ""
        print(f"recycle: {then}the lease ends, and with it the reservation:")
        print(f"  - {describe_lease(plan.lease)}")
    print("recycle: these stay:")
    for resource in plan.kept:
        print(f"  + {resource.describe()}")
    if plan.lease_kept is not None:
        print(
            f"  + {describe_lease(plan.lease_kept)} (still reserved: add --end-lease to "
            "release it too)"
        )
    for kind, label in KEPT.items():
        if not any(resource.type == kind for resource in plan.kept):
            print(f"warning: the stack has no {label} in its state, so none can be kept")


def confirm(plan: Plan) -> bool:
    if plan.server is None:
        question = f"End the lease of stack {plan.stack}?"
    elif plan.lease is not None:
        question = f"Recycle the server of stack {plan.stack} and end its lease?"
    else:
        question = f"Recycle the server of stack {plan.stack}?"
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print()
        raise CommandError(
            "no answer (nothing to read a confirmation from); nothing was changed",
            f"fix: run `./chi-persist recycle --stack {plan.stack}` in a terminal, or pass --yes",
            exit_code=EXIT_USAGE,
        )
    return answer.strip().lower() in ("y", "yes")


def check_after(
    plan: Plan, export: Mapping[str, Any], *, lease_ended: bool = False, quiet: bool = False
) -> None:
    """The server (and, once ended, the lease) is gone, and everything that had to stay is
    still there, same ids."""
    resources = {resource.urn: resource for resource in resources_in(export)}
    problems = []
    if plan.server is not None and plan.server.urn in resources:
        problems.append(f"the server is still in the state: {plan.server.describe()}")
    if lease_ended and plan.lease is not None and plan.lease.urn in resources:
        if not any(
            before.urn not in resources or resources[before.urn].id != before.id
            for before in plan.kept
        ):
            raise CommandError(
                f"the lease is still in the state after its destroy: {plan.lease.describe()}",
                f"fix: `pulumi stack --stack {plan.stack}` shows it; run `./chi-persist recycle "
                f"--stack {plan.stack} --end-lease` again, or end it in Horizon (KVM@TACC, "
                f"Reservations > Leases) and run `pulumi refresh --stack {plan.stack}`",
                exit_code=EXIT_FAILED,
            )
        problems.append(f"the lease is still in the state: {plan.lease.describe()}")
    for before in plan.kept:
        after = resources.get(before.urn)
        if after is None:
            problems.append(f"{before.describe()} is NOT in the stack's state any more")
        elif after.id != before.id:
            problems.append(
                f"{before.describe()} now has id {after.id}: it is not the same {KEPT[before.type]}"
            )
    if problems:
        raise CommandError(
            *problems,
            f"fix: do not run `pulumi up` yet: a new, empty volume could be made. Check in "
            f"Horizon (KVM@TACC, Volumes) that the volume with the id above still exists, "
            f"and ask your instructor to bring it back into stack {plan.stack} "
            "(`pulumi import`)",
            exit_code=EXIT_FAILED,
        )
    if not quiet:
        for resource in plan.kept:
            print(f"recycle: still there: {resource.describe()}")


def destroy_server(plan: Plan, again: str) -> None:
    """The targeted destroy of the server and its dependents; the volume is never a target."""
    assert plan.server is not None
    stack = plan.stack
    destroy = [
        "destroy",
        "--stack",
        stack,
        "--target",
        plan.server.urn,
        "--target-dependents",
        "--yes",
        "--non-interactive",
    ]
    print(f"recycle: {pulumi_command_text(destroy)}", flush=True)
    try:
        stream_pulumi(destroy)
    except PulumiFailed as failure:
        address = plan.address or "the server's address"
        if failure.mentions("passphrase"):
            failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
        raise failure.with_fix(
            "the volume was not a target and is not destroyed by this command",
            f"fix: if pulumi could not reach the server ({address}:{SSH_PORT}), run "
            f"`{again}` again: it skips the clean stop of a server that "
            "does not answer. If a step on the server failed, log in (ssh cc@"
            f"{plan.address or 'IP'}) to see why, then run recycle again. "
            f"`pulumi stack --stack {stack}` shows what is left",
        ) from None


def end_lease(plan: Plan) -> None:
    """The targeted destroy of the lease alone: without --target-dependents, so the engine
    refuses (error 2014) rather than take along anything that still depends on it."""
    assert plan.lease is not None
    stack = plan.stack
    destroy = [
        "destroy", "--stack", stack, "--target", plan.lease.urn, "--yes", "--non-interactive",
    ]  # fmt: skip
    print(f"recycle: ending the lease: {pulumi_command_text(destroy)}", flush=True)
    try:
        stream_pulumi(destroy)
    except PulumiFailed as failure:
        if failure.mentions("passphrase"):
            failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
        gone = "the server is gone; " if plan.server is not None else ""
        raise failure.with_fix(
            f"{gone}the lease was not ended and its reservation is still held; the volume was "
            "not a target and is not destroyed by this command",
            f"fix: correct what pulumi reports, then `./chi-persist recycle --stack {stack} "
            "--end-lease` again (it ends only the lease now); or delete the lease in Horizon "
            f"(KVM@TACC, Reservations > Leases) and run `pulumi refresh --stack {stack}`",
        ) from None


def run(
    stack: str | None,
    assume_yes: bool,
    environ: Mapping[str, str],
    end_lease_too: bool = False,
    nova_stop: bool = False,
) -> int:
    if stack is not None:
        problem = check_value("netid", stack)[1]
        if problem is not None:
            raise CommandError(
                f"--stack {stack!r}: a stack is named after its netID, which {problem.rule}",
                "fix: e.g. --stack ab1234 (`pulumi stack ls` lists the stacks)",
            )
    else:
        stack = selected_stack("recycle")
        print(f"recycle: using the selected stack {stack}")

    plan = plan_recycle(stack, export_state(stack), end_lease=end_lease_too)
    if plan.secrets_provider == "passphrase" and not passphrase_is_set(dict(environ)):
        raise CommandError(
            f"stack {stack}'s secrets are protected by a passphrase, and "
            "PULUMI_CONFIG_PASSPHRASE is not set; nothing was changed",
            f"fix: {HOW_TO_UNLOCK_SECRETS}",
        )
    show_plan(plan)

    forget: list[Resource] = []
    stop_through_nova = False
    if plan.stop_steps:
        server_id = plan.server.id if plan.server is not None else None
        lookup = look_up_server(server_id) if server_id else ServerLookup(gone=True)
        unreachable = ssh_unreachable_reason(plan.address) if plan.address else "no address"
        decision = decide_stop(lookup, unreachable, stop_through_nova=nova_stop, stack=stack)
        for line in decision.lines:
            print(line)
        if decision.action == REFUSE:
            raise CommandError(*decision.refusal, exit_code=EXIT_FAILED)
        if decision.action in (FORGET, STOP_THROUGH_NOVA):
            forget = steps_to_forget(plan)
        stop_through_nova = decision.action == STOP_THROUGH_NOVA

    if plan.stop_steps and not forget:
        refuse_a_dead_agent(environ, plan.stop_steps)

    if not assume_yes and not confirm(plan):
        print("recycle: not confirmed; nothing was changed")
        return EXIT_USAGE

    if plan.stop_steps and not forget and not stop_through_nova:
        # backupOnRecycle: a backup while MLflow and Jupyter are stopped, before the clean
        # stop stops the rest (backup.py); it does nothing when the setting is off.
        from chi_persist_tools.backup import backup_before_recycle

        backup_before_recycle(stack, plan.address)
    if stop_through_nova:
        assert plan.server is not None and plan.server.id
        stop_server_through_nova(plan.server.id)
    for step in forget:
        arguments = ["state", "delete", "--stack", stack, step.urn, "--yes", "--non-interactive"]
        print(f"recycle: forgetting {step.name}: {pulumi_command_text(arguments)}", flush=True)
        try:
            run_pulumi(arguments)
        except PulumiFailed as failure:
            if failure.mentions("passphrase"):
                failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
            raise failure.with_fix(
                "fix: nothing was destroyed yet; correct what pulumi reports and run recycle again"
            ) from None

    again = f"./chi-persist recycle --stack {stack}" + (" --end-lease" if plan.lease else "")
    if plan.server is not None:
        destroy_server(plan, again)
        check_after(plan, export_state(stack), quiet=plan.lease is not None)
    # The lease in a destroy of its own once the server is gone, so no reservation is held.
    if plan.lease is not None:
        end_lease(plan)
        check_after(plan, export_state(stack), lease_ended=True)
    if plan.server is None:
        print(
            f"recycle: done: the lease of stack {stack} has ended, nothing is reserved; its "
            "volume and data, port and floating IP are unchanged"
        )
    elif plan.lease is not None:
        print(
            f"recycle: done: the server of stack {stack} is gone and its lease has ended, "
            "nothing is reserved; its volume and data, port and floating IP are unchanged"
        )
    else:
        print(
            f"recycle: done: the server of stack {stack} is gone; its volume and data, port "
            "and floating IP are unchanged"
        )
    if plan.lease is not None:
        print(f"next: pulumi up --stack {stack}   (makes a new lease, then a new server)")
    else:
        print(f"next: pulumi up --stack {stack}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument(
        "--stop-through-nova",
        action="store_true",
        help="when the server runs but its SSH port does not answer from here, shut it down "
        "through Nova (a clean shutdown stops the platform and unmounts the volume), then "
        "detach the volume and delete it",
    )
    parser.add_argument(
        "--end-lease",
        action="store_true",
        help="also end the stack's KVM@TACC lease, after the server, so nothing is reserved "
        "(the next `pulumi up` makes a new one)",
    )


def build_parser() -> argparse.ArgumentParser:
    from chi_persist_tools.cli import parser_for

    return parser_for("recycle")


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist recycle`."""
    return run_main(
        lambda: run(
            arguments.stack,
            arguments.yes,
            os.environ,
            arguments.end_lease,
            arguments.stop_through_nova,
        )
    )
