"""The commands of scripts/ as modules, for tests that call their functions directly."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from tests.support.paths import REPO_ROOT

SCRIPTS_DIR = REPO_ROOT / "scripts"


def import_tool(module: str) -> ModuleType:
    """A module of scripts/chi_persist_tools, imported the way the launchers do."""
    for path in (str(REPO_ROOT), str(SCRIPTS_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module(f"chi_persist_tools.{module}")
