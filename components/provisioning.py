"""What runs on the server over SSH: wait for it, pin its host key, copy the project's files,
prepare the volume, start the platform, stop it cleanly before the volume is detached, unless the
server is gone, and before the lease the server boots from ends. Every SSH connection accepts only
the key the server's own console shows."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.project_files import (
    DOCKER_DIR,
    PROJECT_ROOT,
    REMOTE_HOME_DIR,
    REMOTE_SCRIPTS_DIR,
    tree_digest,
)
from components.sealed_credentials import KEY_COMMAND, credentials_from_stdout

SSH_USER = "cc"
REMOTE_SCRIPTS = f"{REMOTE_HOME_DIR}/scripts/remote"
REMOTE_COMPOSE_FILE = f"{REMOTE_HOME_DIR}/docker/docker-compose.yaml"
# A new server takes minutes to boot; the local wait below bounds it.
SSH_WAIT_SECONDS = 900


@dataclass
class ProvisioningArgs:
    host: pulumi.Input[str]
    """The floating IP the commands connect to."""
    server_id: pulumi.Input[str]
    """The server; a new one re-runs every step."""
    attachment_id: pulumi.Input[str]
    """The volume attachment; a new one re-runs the volume and stack steps."""
    volume_id: pulumi.Input[str]
    """The Cinder volume id, which the server sees as the disk's serial."""
    volume_size_gib: pulumi.Input[int]
    """The volume's size in Cinder; a larger one re-runs the volume step, which grows it."""
    mount_point: str
    """Where the volume is mounted."""
    private_key: pulumi.Input[str] | None
    """SSH private key (secret); None to use the ssh agent."""
    private_key_password: pulumi.Input[str] | None = None
    """Passphrase of the private key (secret), only when it has one."""
    lease_end: pulumi.Input[str] | None = None
    """When the lease the server boots from ends (ISO 8601 UTC): a timer on the server stops
    the platform cleanly before then. None: the end is not known, no timer."""
    platform_access: str = "public"
    """"public": the platform's ports are published on every address of the server;
    "tunnel": on its 127.0.0.1 only (reached through an SSH tunnel)."""


class Provisioning(pulumi.ComponentResource):
    """The remote steps, in order; each re-runs on a new server or when its files change."""

    credentials: pulumi.Output[dict[str, str]]
    host_key: pulumi.Output[str]
    start_stack: command.remote.Command
    clean_stop: command.local.Command
    lease_stop: command.remote.Command | None

    def __init__(
        self, name: str, args: ProvisioningArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("chi-persist:index:Provisioning", name, None, opts)
        # Dial retries do not pause between attempts, so a booting server could use them
        # all up in a second: wait here, patiently and with a bound, for sshd to answer.
        # (Any banner will do: it is only a wait. What is trusted is the key below.)
        wait_for_ssh = command.local.Command(
            f"{name}-wait-for-ssh",
            create=pulumi.Output.from_input(args.host).apply(wait_for_ssh_command),
            dir=str(PROJECT_ROOT),
            triggers=[args.server_id],
            opts=pulumi.ResourceOptions(parent=self),
        )
        # The server's host key, from its own console through Nova, once per server (its id
        # in the triggers): a replaced server gets its new key, one that stays is not read
        # again. Without a pinned key pulumi-command accepts any (remote/connection.go,
        # ssh.InsecureIgnoreHostKey), and whoever answered at the floating IP (a classmate
        # can move it to their VM) would get the commands and hand back the outputs. No
        # `dir`: the engine runs it in the project's root, and the state keeps no path.
        host_key = command.local.Command(
            f"{name}-host-key",
            create=pulumi.Output.all(args.server_id, args.host).apply(
                lambda values: host_key_command(values[0], values[1])
            ),
            triggers=[args.server_id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[wait_for_ssh]),
        )
        self.host_key = host_key.stdout
        connection = command.remote.ConnectionArgs(
            host=args.host,
            user=SSH_USER,
            private_key=args.private_key,
            private_key_password=args.private_key_password,
            # Every connection accepts this key only: a mismatch fails the step.
            host_key=host_key.stdout,
            # The local wait above has already seen sshd answer; these cover a slow first login.
            per_dial_timeout=30,
            dial_error_limit=20,
        )
        # The key that seals the platform's credentials on their way back from the server
        # (components/sealed_credentials.py): made once per stack, a secret in the state.
        credentials_key = command.local.Command(
            f"{name}-credentials-key",
            create=KEY_COMMAND,
            logging=command.local.Logging.NONE,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stdout"]),
        )
        wait_for_boot = command.remote.Command(
            f"{name}-wait-for-boot",
            connection=connection,
            create=wait_for_boot_command(),
            triggers=[args.server_id],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[wait_for_ssh]),
        )

        # The volume steps below are chained by PROPERTY dependencies (each one's id in the
        # next one's triggers), never by depends_on alone. On a delete-before-replace the
        # engine deletes first, in reverse order, exactly the dependents that take a property
        # of the replaced resource (step_generator.go, calculateDependentReplacements); a
        # depends_on edge is not followed. So a replaced copy, or a replaced prepare step,
        # takes the stack step and its clean-stop step with it, and the clean stop (compose
        # down, sync, unmount) runs before the copy is made again and before the volume is
        # prepared again.
        copy_scripts = command.remote.CopyToRemote(
            f"{name}-copy-scripts",
            connection=connection,
            source=pulumi.FileArchive(str(REMOTE_SCRIPTS_DIR)),
            remote_path=f"{REMOTE_HOME_DIR}/scripts",
            triggers=[args.server_id, tree_digest(REMOTE_SCRIPTS_DIR)],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[wait_for_boot],
                # The old scripts stop the old stack (release-volume.sh) before new ones land.
                delete_before_replace=True,
            ),
        )
        copy_docker = command.remote.CopyToRemote(
            f"{name}-copy-docker",
            connection=connection,
            source=pulumi.FileArchive(str(DOCKER_DIR)),
            remote_path=REMOTE_HOME_DIR,
            triggers=[args.server_id, tree_digest(DOCKER_DIR)],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[wait_for_boot],
                # The stack is stopped before the compose file it was started with is replaced.
                delete_before_replace=True,
            ),
        )
        # Whatever replaces the stack step must also replace this step, and order it after
        # the clean stop: that unmounts the volume, and only this step mounts it again. The
        # mount point is here so that a new one unmounts the old first.
        prepare_volume = command.remote.Command(
            f"{name}-prepare-volume",
            connection=connection,
            create=pulumi.Output.all(args.volume_id, args.volume_size_gib).apply(
                lambda values: prepare_volume_command(values[0], args.mount_point, values[1])
            ),
            triggers=[
                args.server_id,
                args.attachment_id,
                copy_scripts.id,
                copy_docker.id,
                args.mount_point,
                # A grown volume (its size comes from the extended resource) re-runs the step.
                args.volume_size_gib,
            ],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.start_stack = command.remote.Command(
            f"{name}-start-stack",
            connection=connection,
            create=pulumi.Output.from_input(args.host).apply(
                lambda host: start_stack_command(args.mount_point, host, args.platform_access)
            ),
            # The sealing key on stdin, which no error text repeats (the command line is).
            stdin=pulumi.Output.secret(credentials_key.stdout.apply(lambda key: f"{key}\n")),
            triggers=[
                args.server_id,
                args.attachment_id,
                copy_scripts.id,
                copy_docker.id,
                prepare_volume.id,
            ],
            add_previous_output_in_env=False,
            # stdout carries the platform's credentials, sealed: keep it secret, and out of
            # the logs.
            logging=command.remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(
                parent=self,
                additional_secret_outputs=["stdout"],
                # Its replacement is deleted first, so the clean stop below (its dependent
                # through triggers) runs before the stack starts again.
                delete_before_replace=True,
            ),
        )
        # At the lease's end Blazar deletes the server outright; a timer stops the platform
        # (compose down, sync, unmount: release-volume.sh) a few minutes before. Written after
        # the stack starts, and again for a new server or a new end. Registered before the
        # clean-stop step, which must stay last in the state's order (deleted first).
        self.lease_stop = None
        if args.lease_end is not None:
            self.lease_stop = command.remote.Command(
                f"{name}-lease-stop",
                connection=connection,
                create=pulumi.Output.from_input(args.lease_end).apply(
                    lambda end: schedule_lease_stop_command(end, args.mount_point)
                ),
                triggers=[args.server_id, args.lease_end, copy_scripts.id],
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.start_stack]),
            )
        # The clean stop (compose down, sync, unmount) is the delete of the step below, a local
        # command: a remote command's delete dials SSH before anything else, and a
        # server that vanished (a lease's end, a delete by hand) would fail every update that
        # replaces or deletes these steps; scripts/clean-stop asks Nova first and skips the
        # stop, with a warning, only when the server is gone. The stack step's id in its
        # triggers puts it in every replacement cascade of the stack step, and after it in
        # the state's order: it is deleted first, before the prepare step runs again and
        # before the attachment is deleted.
        login = _login_method(args.private_key)
        self.clean_stop = command.local.Command(
            f"{name}-clean-stop",
            delete=pulumi.Output.all(args.server_id, args.host, host_key.stdout).apply(
                lambda values: clean_stop_command(
                    values[0], values[1], login, args.mount_point, values[2]
                )
            ),
            environment=ssh_environment(args.private_key, args.private_key_password),
            triggers=[args.server_id, args.attachment_id, self.start_stack.id],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The old server's stop runs before anything of the new one exists.
                delete_before_replace=True,
            ),
        )
        self.credentials = pulumi.Output.secret(
            pulumi.Output.all(self.start_stack.stdout, credentials_key.stdout).apply(
                lambda values: credentials_from_stdout(values[0], values[1])
            )
        )
        self.register_outputs({})


def wait_for_ssh_command(host: str) -> str:
    """Poll the server's SSH port from this machine until sshd answers, with a bound."""
    return shlex.join(["python3", "scripts/wait-for-ssh", "--timeout", str(SSH_WAIT_SECONDS), host])


def host_key_command(server_id: str, host: str) -> str:
    """Read the server's host key from its console (Nova) and check it at its address."""
    return shlex.join(["python3", HOST_KEY_SCRIPT, "--server-id", server_id, "--host", host])


def wait_for_boot_command() -> str:
    """Wait for cloud-init's first-boot work (Docker, image pulls), then make the copy target."""
    return (
        "set -eu; "
        "if command -v cloud-init >/dev/null 2>&1; then "
        "cloud-init status --wait >/dev/null "
        "|| echo 'warning: cloud-init reported errors; Docker is installed again when the "
        "stack starts (see /var/log/cloud-init-output.log)' >&2; "
        "fi; "
        f"mkdir -p {shlex.quote(REMOTE_HOME_DIR)}/scripts"
    )


def prepare_volume_command(volume_id: str, mount_point: str, size_gib: int) -> str:
    """Find the volume by its serial, format it only if blank, grow it if larger, mount it."""
    return shlex.join(
        [
            # Through the interpreter: CopyToRemote does not keep the file's mode.
            "sudo", "python3", f"{REMOTE_SCRIPTS}/prepare-volume",
            "--volume-id", volume_id,
            "--mount-point", mount_point,
            "--owner", SSH_USER,
            "--size-gib", str(size_gib),
        ]
    )  # fmt: skip


def start_stack_command(mount_point: str, host_ip: str, platform_access: str = "public") -> str:
    """Make sure Docker is there, then start the platform and print its sealed credentials."""
    install = shlex.join(
        ["sudo", "bash", f"{REMOTE_SCRIPTS}/install-docker.sh", "--user", SSH_USER]
    )
    start = shlex.join(
        [
            "sudo", "bash", f"{REMOTE_SCRIPTS}/start-stack.sh",
            "--mount-point", mount_point,
            "--host-ip", host_ip,
            "--compose-file", REMOTE_COMPOSE_FILE,
            "--platform-access", platform_access,
            "--print-sealed-credentials",
        ]
    )  # fmt: skip
    # Only the sealed credentials may reach stdout: everything else goes to stderr. The
    # sealing key on stdin is start-stack.sh's alone.
    return f"{install} >&2 </dev/null && {start}"


def release_volume_command(mount_point: str) -> str:
    """Stop the platform cleanly, sync and unmount, before the volume is detached."""
    return shlex.join(
        [
            "sudo", "bash", f"{REMOTE_SCRIPTS}/release-volume.sh",
            "--mount-point", mount_point,
            "--compose-file", REMOTE_COMPOSE_FILE,
        ]
    )  # fmt: skip


def schedule_lease_stop_command(lease_end: str, mount_point: str) -> str:
    """Set the systemd timer that stops the platform cleanly before the lease ends."""
    return shlex.join(
        [
            "sudo", "bash", f"{REMOTE_SCRIPTS}/schedule-lease-stop.sh",
            "--lease-end", lease_end,
            "--mount-point", mount_point,
            "--compose-file", REMOTE_COMPOSE_FILE,
        ]
    )  # fmt: skip


# The local command that runs the clean stop, from the project's root directory: the engine
# starts its providers there (pkg/engine/project.go, getPwdMain), and a delete runs with the
# inputs in the state, so no path of this checkout is kept in them.
CLEAN_STOP_SCRIPT = "scripts/clean-stop"
HOST_KEY_SCRIPT = "scripts/host-key"
SSH_KEY_VARIABLE = "CHI_PERSIST_SSH_PRIVATE_KEY"
SSH_PASSPHRASE_VARIABLE = "CHI_PERSIST_SSH_KEY_PASSPHRASE"  # noqa: S105 (a name)


def _login_method(private_key: pulumi.Input[str] | None) -> str:
    return "agent" if private_key is None else "key"


def clean_stop_command(
    server_id: str, host: str, login: str, mount_point: str, host_key: str | None = None
) -> str:
    """Ask Nova whether the server is still there; if so, release the volume over SSH, with
    the server's pinned host key the only one accepted."""
    pinned = ["--host-key", host_key] if host_key else []
    return shlex.join(
        [
            "python3", CLEAN_STOP_SCRIPT,
            "--server-id", server_id,
            "--host", host,
            "--user", SSH_USER,
            "--login", login,
            *pinned,
            "--", *shlex.split(release_volume_command(mount_point)),
        ]
    )  # fmt: skip


def ssh_environment(
    private_key: pulumi.Input[str] | None, private_key_password: pulumi.Input[str] | None
) -> dict[str, pulumi.Input[str]]:
    """The key and its passphrase for the clean stop's ssh, as secrets; nothing for the agent."""
    environment: dict[str, pulumi.Input[str]] = {}
    if private_key is not None:
        environment[SSH_KEY_VARIABLE] = pulumi.Output.secret(private_key)
        if private_key_password is not None:
            environment[SSH_PASSPHRASE_VARIABLE] = pulumi.Output.secret(private_key_password)
    return environment
