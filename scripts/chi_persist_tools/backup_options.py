"""chi-persist backup, backups and restore: their help and arguments (standard library only: the
help works before the project's virtual environment exists). The work is in backup.py."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

TURN_ON = """\
turning backups on (once per stack):
  backups go to an object store, which KVM@TACC does not have: CHI@TACC's Swift serves
  it, with a clouds.yaml entry of its own (`ccauth clouds-yaml --all-sites` writes one
  per site), e.g. chi_tacc:
    pulumi config set chi-persist:backupCloud chi_tacc --stack ab1234
  optional: chi-persist:backupContainer (default chi-persist-NETID, made if missing),
  chi-persist:backupKeep (default 3), chi-persist:backupOnRecycle (true: every
  `./chi-persist recycle` takes one while the platform is stopped)."""

EXIT_STATUS = """\
exit status:
  0  done
  1  the object store, the server or a pulumi call failed (what to do is printed)
  2  wrong arguments or settings, backups off, or not confirmed: nothing was changed
  130  interrupted"""

BACKUP_DESCRIPTION = """\
Back up the platform's data to the object store: the MLflow database (pg_dump in the
PostgreSQL container, custom format, taken while it runs), the MinIO bucket's
objects, the notebooks (jupyter_work) and the volume's other files, and a manifest
(the time, the sizes and sha256 of each part, the stack, the image versions).

The data goes from the server to the object store directly, in segments (Swift's
static large objects), with a token of its own that this machine issues, sends over
SSH's standard input and revokes afterwards: no credential is written on the server.
The manifest is written last, once every part is there: a backup that fails half-way
never looks complete. Then the oldest complete backups beyond backupKeep are deleted.
"""

BACKUP_EPILOG = f"""\
{TURN_ON}

examples:
  ./chi-persist backup --stack ab1234
  ./chi-persist backups --stack ab1234

{EXIT_STATUS}
"""

BACKUPS_DESCRIPTION = """\
List the stack's backups in the object store: when each was taken, its size, its
parts, and whether it is complete (its manifest exists and every part is there at
the size the manifest gives).
"""

BACKUPS_EPILOG = f"""\
{TURN_ON}

{EXIT_STATUS}
"""

RESTORE_DESCRIPTION = """\
Restore a backup onto the stack's platform: the newest complete one, or BACKUP.

Without --force only onto an empty platform: a new volume, or one whose data
directories hold nothing (no MLflow run, no object, no notebook, no other file).
With --force it first shows what it would replace, and asks (unless --yes).

It stops MLflow and Jupyter, downloads every part to the volume and checks its size
and sha256 against the manifest, restores the database beside the one in use,
uploads the objects, then swaps the database, the notebooks and the other files in;
then it starts MLflow and Jupyter again and checks that MLflow lists the backup's
runs. A restore that fails before the swap leaves the old data in place.
"""

RESTORE_EPILOG = f"""\
when to use it:
  the volume was deleted (Horizon, the README's "delete everything"), the data was
  damaged, or you move to a new stack or site: `pulumi up` a stack (it makes a new,
  empty volume), then restore onto it.

examples:
  ./chi-persist restore --stack ab1234                    # the newest complete backup
  ./chi-persist restore 20260503T142205Z --stack ab1234   # that one
  ./chi-persist restore --stack ab1234 --force            # over data (asks first)

{TURN_ON}

{EXIT_STATUS}
"""


def add_backup_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    del parser, parents  # --stack, --yes and the verbosity are the shared options


def add_restore_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument(
        "backup",
        nargs="?",
        metavar="BACKUP",
        help="the backup's name (`./chi-persist backups` lists them); default: the newest "
        "complete one",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="restore over a platform that holds data (shows what is replaced, and asks)",
    )


def _run(body_name: str):  # noqa: ANN202 (an argparse handler)
    def handler(arguments: argparse.Namespace) -> int:
        from chi_persist_tools import backup
        from chi_persist_tools.command_line import run_main

        if body_name == "backup":
            return run_main(lambda: backup.run_backup(arguments.stack))
        if body_name == "backups":
            return run_main(lambda: backup.run_backups(arguments.stack))
        return run_main(
            lambda: backup.run_restore(
                arguments.stack, arguments.backup, arguments.force, arguments.yes
            )
        )

    return handler


BACKUP = SimpleNamespace(
    DESCRIPTION=BACKUP_DESCRIPTION,
    EPILOG=BACKUP_EPILOG,
    add_arguments=add_backup_arguments,
    run_command=_run("backup"),
)
BACKUPS = SimpleNamespace(
    DESCRIPTION=BACKUPS_DESCRIPTION,
    EPILOG=BACKUPS_EPILOG,
    add_arguments=add_backup_arguments,
    run_command=_run("backups"),
)
RESTORE = SimpleNamespace(
    DESCRIPTION=RESTORE_DESCRIPTION,
    EPILOG=RESTORE_EPILOG,
    add_arguments=add_restore_arguments,
    run_command=_run("restore"),
)
