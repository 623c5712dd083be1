"""What ./chi-persist does around the command: parse first (help needs Python alone), then make
the project's virtual environment on first use and run the command with its Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
VENV = PROJECT_DIR / "venv"
VENV_PYTHON = VENV / "bin" / "python"
LAUNCHER = PROJECT_DIR / "chi-persist"
# Set on the re-executed process, so a broken environment cannot loop.
REEXEC_MARK = "CHI_PERSIST_REEXEC"


def in_project_venv() -> bool:
    return VENV.exists() and Path(sys.prefix).resolve() == VENV.resolve()


def make_venv() -> None:
    """`pulumi install` (what `pulumi up` would do), or venv and pip without Pulumi."""
    print(
        "chi-persist: making the project's virtual environment in ./venv (once: a few minutes)",
        file=sys.stderr,
        flush=True,
    )
    pulumi = shutil.which("pulumi")
    if pulumi:
        steps = [[pulumi, "install"]]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
        ]
    for step in steps:
        done = subprocess.run(step, cwd=PROJECT_DIR, check=False)
        if done.returncode != 0:
            print(
                f"chi-persist: error: `{' '.join(step)}` failed (exit status {done.returncode})",
                file=sys.stderr,
            )
            print(
                "chi-persist: error: fix: check the network to PyPI and the message above, "
                f"remove the half-made environment (rm -rf {VENV}), then run the command again",
                file=sys.stderr,
            )
            raise SystemExit(1)


def run(argv: Sequence[str]) -> int:
    from chi_persist_tools import cli

    parser = cli.build_parser()
    cli.enable_completion(parser)
    # Help and wrong arguments end here, with Python's standard library alone.
    arguments = parser.parse_args(argv)
    if getattr(arguments, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if not in_project_venv():
        if os.environ.get(REEXEC_MARK):
            print(
                f"chi-persist: error: {VENV_PYTHON} does not run the project's environment "
                f"(sys.prefix is {sys.prefix})",
                file=sys.stderr,
            )
            print(f"chi-persist: error: fix: rm -rf {VENV}, then run the command again",
                  file=sys.stderr)  # fmt: skip
            return 1
        if not VENV_PYTHON.exists():
            make_venv()
        os.environ[REEXEC_MARK] = "1"
        # No shell: the same launcher and arguments, under the environment's Python.
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(LAUNCHER), *argv])  # noqa: S606
    return cli.main(argv)


def moved(old: str, new: Sequence[str], argv: Sequence[str]) -> None:
    """An old command name (kept for one release): say the new one, then run it."""
    print(f"{old} is now `./chi-persist {' '.join(new)}`: running that", file=sys.stderr)
    command = [sys.executable, str(LAUNCHER), *new, *argv]
    os.execv(sys.executable, command)  # noqa: S606
