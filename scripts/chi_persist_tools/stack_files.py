"""Reading and writing Pulumi.<stack>.yaml, the per-stack config Pulumi keeps beside Pulumi.yaml."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from chi_persist_tools.command_line import EXIT_FAILED, CommandError
from components.settings import NAMESPACE


def yaml_module():
    """PyYAML, or an error that says how to get it."""
    try:
        import yaml
    except ImportError:
        raise CommandError(
            f"PyYAML is not installed for {sys.executable}",
            "fix: activate the project's virtual environment (`source venv/bin/activate`, "
            "made by the first `pulumi up`), or `pip install -r requirements.txt`",
            exit_code=EXIT_FAILED,
        ) from None
    return yaml


def stack_file(directory: Path, stack: str) -> Path:
    return directory / f"Pulumi.{stack}.yaml"


def config_key(name: str) -> str:
    """The full name Pulumi uses for one of the project's settings."""
    return f"{NAMESPACE}:{name}"


def yaml_error_text(error: Exception) -> str:
    """A YAML error as 'line N: problem', the line counted from 1."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem


class StackFileProblem(Exception):
    """An existing stack file that cannot be read as Pulumi stack config."""


def read_stack_file(path: Path) -> dict[str, Any] | None:
    """The document of an existing stack file, None when there is none."""
    yaml = yaml_module()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StackFileProblem(f"cannot be read: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StackFileProblem(f"is not valid YAML ({yaml_error_text(error)})") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise StackFileProblem(f"holds a {type(document).__name__}, not a mapping with `config:`")
    config = document.get("config")
    if config is not None and not isinstance(config, dict):
        raise StackFileProblem(f"has `config:` of type {type(config).__name__}, not a mapping")
    return document


def dump_stack_document(document: dict[str, Any]) -> str:
    yaml = yaml_module()
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old file or the new one, never half."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        temporary = Path(handle.name)
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    try:
        temporary.chmod(mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
