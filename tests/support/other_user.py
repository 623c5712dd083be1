"""Running a script as another user (nobody), whatever the permissions of the checkout.

A checkout may sit under a directory other users cannot enter (a clone in root's
home, a `mktemp -d`, pytest's own base directory): `bash <checkout>/script` run as
nobody then fails with exit 126 before the script says a word. The `as_nobody`
fixture copies the script and its neighbours (lib.sh) to a directory everyone can
enter and read, and gives the command that runs the copy as nobody, from there.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# Where a world-readable directory can be made: the temporary directory Python
# would use, then the usual shared ones.
SHARED_PARENTS = (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm")


@dataclass(frozen=True)
class NobodyCommand:
    """A copy of a script, and how to run it as nobody."""

    argv: list[str]
    """setpriv ... bash|python3 <copy of the script>: append the script's arguments."""
    cwd: Path
    """The copy's directory, which nobody can enter."""


def enterable_by_everyone(path: Path) -> bool:
    """Whether every directory from / down to `path` lets other users pass through."""
    path = path.resolve()
    return all(os.stat(part).st_mode & stat.S_IXOTH for part in [path, *path.parents])


def interpreter_of(script: Path) -> str:
    """python3 for a script whose first line names it, else bash: the first on PATH that
    nobody can run (a python3 under root's home, such as pyenv's shim, is refused to them)."""
    first_line = script.read_bytes()[:64].split(b"\n", 1)[0]
    name = "python3" if b"python3" in first_line else "bash"
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / name
        if (
            candidate.is_file()
            and os.stat(candidate).st_mode & stat.S_IXOTH
            and enterable_by_everyone(candidate.parent)
        ):
            return str(candidate)
    return name


def shared_directory() -> Path:
    """A fresh directory every user can enter and read, under a parent they can reach."""
    for parent in SHARED_PARENTS:
        if Path(parent).is_dir() and enterable_by_everyone(Path(parent)):
            directory = Path(tempfile.mkdtemp(prefix="chi-persist-shared-", dir=parent))
            directory.chmod(0o755)
            return directory
    raise RuntimeError(f"none of {', '.join(SHARED_PARENTS)} can be entered by other users")


@pytest.fixture
def as_nobody() -> Iterator[Callable[[Path], NobodyCommand]]:
    """Copy a script (and its neighbours) where nobody can read it; removed after the test."""
    made: list[Path] = []

    def command(script: Path) -> NobodyCommand:
        directory = shared_directory()
        made.append(directory)
        for neighbour in script.parent.iterdir():
            if neighbour.is_file():
                shutil.copyfile(neighbour, directory / neighbour.name)
                (directory / neighbour.name).chmod(0o644)
        copy = directory / script.name
        return NobodyCommand(argv=[*AS_NOBODY, interpreter_of(script), str(copy)], cwd=directory)

    yield command
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)
