"""Start a command's module from its launcher in scripts/, with the Python that has its packages.

The commands import components.settings, and with it Pulumi's SDK. A student who
runs them with a Python that lacks it, while the project's virtual environment
(./venv, made by `pulumi install` or the first `pulumi up`) exists, gets that
environment's Python instead of a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
VENV_PYTHON = PROJECT_DIR / "venv" / "bin" / "python"
# Set on the re-executed process, so a broken environment cannot loop.
REEXEC_MARK = "CHI_PERSIST_REEXEC"


def launch(module: str, launcher: str) -> int:
    """Run chi_persist_tools.<module>.main(); exit status."""
    try:
        loaded = importlib.import_module(f"chi_persist_tools.{module}")
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing in ("chi_persist_tools", "components", ""):
            raise
        if VENV_PYTHON.exists() and not os.environ.get(REEXEC_MARK):
            os.environ[REEXEC_MARK] = "1"
            # No shell: the same launcher and arguments, under the environment's Python.
            os.execv(VENV_PYTHON, [str(VENV_PYTHON), launcher, *sys.argv[1:]])  # noqa: S606
        print(
            f"error: the Python module {missing!r} is not installed for {sys.executable}",
            file=sys.stderr,
        )
        print(
            f"error: fix: make the project's virtual environment: `cd {PROJECT_DIR} && "
            "pulumi install` (or `python3 -m venv venv && venv/bin/pip install -r "
            "requirements.txt`), then run the command again",
            file=sys.stderr,
        )
        return 1
    return loaded.main()
