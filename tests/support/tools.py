"""The commands of scripts/ as modules, for tests that call their functions directly."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from types import ModuleType

from tests.support.paths import REPO_ROOT

SCRIPTS_DIR = REPO_ROOT / "scripts"


def import_tool(module: str) -> ModuleType:
    """A module of scripts/chi_persist_tools, imported the way the launchers do."""
    for path in (str(REPO_ROOT), str(SCRIPTS_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module(f"chi_persist_tools.{module}")


def command_argv(*arguments: str) -> list[str]:
    """`chi-persist ARGUMENTS` run by this Python as `python -m chi_persist_tools` (what the
    console script in ./venv/bin does): the checkout's ./chi-persist would make ./venv first."""
    return [sys.executable, "-m", "chi_persist_tools", *arguments]


def command_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (else this process's environment) with the checkout's packages importable."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS_DIR), str(REPO_ROOT)])
    return environment
