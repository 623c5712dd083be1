"""The Pulumi engine's config rule, applied the way `pulumi up`, `preview` and `destroy` apply it.

Under `pulumi.runtime.set_mocks` no CLI runs, so nothing checks a stack's config
against `Pulumi.yaml` before the program starts. This module does, following the
engine's own code (pulumi/pulumi v3.274.1):

- loading Pulumi.yaml: `LoadProjectBytes` and `(*Project).Validate` in
  sdk/go/common/workspace/loaders.go and project.go (a default must match its
  declared type; an array needs `items`; `default` and `value` exclude each other);
- merging and checking a stack's config: `mergeConfig`, `validateStackConfigValues`
  and `validateStackConfigValue` in pkg/workspace/config.go, reached from
  `ValidateStackConfigAndApplyProjectConfig`. A key of the project's namespace
  declared with neither `default` nor `value` and not set by the stack is missing;
  every missing key is named in one error. A default fills an unset key; then every
  explicitly typed key is checked: a `secret: true` key whose value is not encrypted
  is refused (a default is always plain text, so a secret key with a default is
  refused whenever the stack leaves it unset), and the value must match the type as
  `ValidateConfigValue` (project.go) decides;
- the text the CLI prints: cmd/pulumi/operations/up.go wraps the error as
  "validating stack config: ...".

Values are kept as the engine keeps them (config.Value: a text, whether it is
encrypted, whether it is an object in JSON), and reach the program as that text.
`tests/support/pulumi_config_check` runs the engine's own functions on the same
input, and tests/test_config_schema.py holds this module to their answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHECKER_SOURCE = Path(__file__).resolve().parent / "pulumi_config_check"
CHECKER_BUILD_TIMEOUT = 1800

# project.json's SimpleConfigType
CONFIG_TYPES = ("string", "integer", "boolean", "array", "object")
DECLARATION_FIELDS = {"type", "items", "description", "secret", "default", "value"}
INT64 = (-(2**63), 2**63 - 1)


class EngineConfigError(Exception):
    """The engine refuses the project or the stack's config; the text is what the CLI prints."""


@dataclass(frozen=True)
class ConfigValue:
    """One stack config value as the engine holds it (sdk/go/common/resource/config/value.go)."""

    text: str
    secure: bool = False
    object: bool = False

    @classmethod
    def of(cls, value: Any, *, secret: bool = False) -> ConfigValue:
        """A value as a stack file or `pulumi config set` gives it (object.MarshalString)."""
        if isinstance(value, dict) and set(value) == {"secure"}:
            return cls(str(value["secure"]), secure=True)
        if isinstance(value, str):
            return cls(value, secure=secret)
        if isinstance(value, (bool, int, float)):
            return cls(_json(value), secure=secret)
        if isinstance(value, (list, dict)):
            return cls(_json(value), secure=secret, object=True)
        raise TypeError(f"no config value of type {type(value).__name__}: {value!r}")


@dataclass(frozen=True)
class ConfigType:
    """One entry of Pulumi.yaml's `config:` block (workspace.ProjectConfigType)."""

    type: str | None = None
    items: dict[str, Any] | None = None
    description: str = ""
    default: Any = None
    value: Any = None
    secret: bool = False

    @property
    def explicitly_typed(self) -> bool:
        return self.type is not None


@dataclass(frozen=True)
class Project:
    name: str
    config: dict[str, ConfigType]


def load_project(text: str, path: str = "Pulumi.yaml") -> Project:
    """Pulumi.yaml as the engine loads it, refused where the engine refuses it."""
    raw = yaml.safe_load(text) or {}
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise EngineConfigError(
            f"could not validate '{path}': project is missing a 'name' attribute"
        )
    block = raw.get("config") or {}
    if not isinstance(block, dict):
        raise EngineConfigError(f"could not validate '{path}': config must be a map of keys")
    config: dict[str, ConfigType] = {}
    for key, declaration in block.items():
        if isinstance(declaration, (str, int, bool, list)):
            # RewriteShorthandConfigValues: `key: value` is a default in the project's
            # namespace and a value in any other.
            field = "default" if _namespaced_by_project(name, key) else "value"
            declaration = {field: declaration}
        _check_declaration_schema(path, key, declaration)
        config[key] = ConfigType(
            type=declaration.get("type"),
            items=declaration.get("items"),
            description=declaration.get("description") or "",
            default=declaration.get("default"),
            value=declaration.get("value"),
            secret=bool(declaration.get("secret")),
        )
    project = Project(name=name, config=config)
    _validate_project(project, path)
    return project


def _check_declaration_schema(path: str, key: str, declaration: Any) -> None:
    """project.json's ConfigTypeDeclaration (the engine's own wording is not reproduced)."""
    problem = None
    if not isinstance(declaration, dict):
        problem = "is neither a value nor a declaration"
    elif set(declaration) - DECLARATION_FIELDS:
        problem = (
            f"has fields the schema does not allow: {sorted(set(declaration) - DECLARATION_FIELDS)}"
        )
    elif "type" in declaration and declaration["type"] not in CONFIG_TYPES:
        problem = f"type must be one of {', '.join(CONFIG_TYPES)}"
    elif "secret" in declaration and not isinstance(declaration["secret"], bool):
        problem = "secret must be true or false"
    elif "description" in declaration and not isinstance(declaration["description"], str):
        problem = "description must be text"
    elif "items" in declaration and not _items_schema_valid(declaration["items"]):
        problem = "items must be {type: ...}, with items of its own for an array"
    if problem:
        raise EngineConfigError(f"could not validate '{path}': config key '{key}' {problem}")


def _items_schema_valid(items: Any) -> bool:
    if not isinstance(items, dict) or "type" not in items:
        return False
    if items["type"] == "array":
        return "items" in items and _items_schema_valid(items["items"])
    return isinstance(items["type"], str) or _items_schema_valid(items["type"])


def _validate_project(project: Project, path: str) -> None:
    """(*Project).Validate, its error wrapped as LoadProjectBytes wraps it."""

    def refuse(message: str) -> None:
        raise EngineConfigError(f"could not unmarshal '{path}': {message}")

    for key, declared in project.config.items():
        if declared.default is not None and declared.value is not None:
            refuse(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
        if _namespaced_by_project(project.name, key):
            if declared.type == "array" and declared.items is None:
                refuse(
                    f"The configuration key '{key}' declares an array but does not specify the "
                    "underlying type via the 'items' attribute"
                )
            if (
                declared.explicitly_typed
                and declared.default is not None
                and not valid_config_value(declared.type, declared.items, declared.default)
            ):
                refuse(
                    f"The default value specified for configuration key '{key}' is not of the "
                    f"expected type '{full_type_name(declared.type, declared.items)}'"
                )
        else:
            if declared.explicitly_typed:
                refuse(
                    f"Configuration key '{key}' is not namespaced by the project and should not "
                    "define a type"
                )
            if declared.default is not None:
                refuse(
                    f"Configuration key '{key}' is not namespaced by the project and should not "
                    "define a default value. Did you mean to use the 'value' attribute instead "
                    "of 'default'?"
                )
            if declared.value is None:
                refuse(
                    f"Configuration key '{key}' is namespaced and must provide an attribute 'value'"
                )


def apply_project_config(
    project: Project, stack_name: str, stack_config: Mapping[str, ConfigValue]
) -> dict[str, ConfigValue]:
    """The stack's config with the project's defaults merged in, or the engine's refusal.

    Keys are full keys (`<namespace>:<name>`). Raises EngineConfigError with the text
    `pulumi up` prints after "error: ".
    """
    merged = dict(stack_config)
    missing: list[str] = []
    for key in sorted(project.config):
        declared = project.config[key]
        full_key = _full_key(project.name, key)
        if full_key in merged:
            continue
        if declared.value is None and declared.default is None:
            if full_key.split(":", 1)[0] == project.name:
                missing.append(key)
            continue
        value = declared.default if declared.default is not None else declared.value
        merged[full_key] = _project_value(value)
    if missing:
        _refuse(_missing_keys_message(missing, stack_name))
    for key in sorted(project.config):
        declared = project.config[key]
        if not declared.explicitly_typed:
            continue
        stack_value = merged.get(_full_key(project.name, key), ConfigValue(""))
        if declared.secret and not stack_value.secure:
            _refuse(
                f"Stack '{stack_name}' with configuration key '{key}' must be encrypted as "
                "it's secret"
            )
        content: Any = json.loads(stack_value.text) if stack_value.object else stack_value.text
        if not valid_config_value(declared.type, declared.items, content):
            _refuse(
                f"Stack '{stack_name}' with configuration key '{key}' must be of type "
                f"'{full_type_name(declared.type, declared.items)}'"
            )
    return merged


def _refuse(message: str) -> None:
    raise EngineConfigError(f"validating stack config: {message}")


def _missing_keys_message(keys: list[str], stack_name: str) -> str:
    """missingStackConfigurationKeysError and formatMissingKeys."""
    if len(keys) == 1:
        listed = f"'{keys[0]}'"
        noun = "value"
    else:
        ordered = sorted(keys)
        listed = ", ".join(f"'{key}'" for key in ordered[:-1]) + f" and '{ordered[-1]}'"
        noun = "values"
    return f"Stack '{stack_name}' is missing configuration {noun} {listed}"


def valid_config_value(type_name: str | None, items: Mapping[str, Any] | None, value: Any) -> bool:
    """workspace.ValidateConfigValue: whether `value` (decoded from YAML or JSON) fits the type."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if type(value) is int:
            return True
        if type(value) is float:
            return math.isfinite(value) and value == math.trunc(value)
        if isinstance(value, str):
            # strconv.Atoi: an optional sign and decimal digits, within 64 bits.
            return re.fullmatch(r"[+-]?[0-9]+", value) is not None and (
                INT64[0] <= int(value) <= INT64[1]
            )
        return False
    if type_name == "boolean":
        return value in ("true", "false") if isinstance(value, str) else isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or items is None:
        return False
    return all(valid_config_value(items.get("type"), items.get("items"), item) for item in value)


def full_type_name(type_name: str | None, items: Mapping[str, Any] | None) -> str:
    """workspace.InferFullTypeName: `array<string>` for an array of strings."""
    if items is not None:
        return f"array<{full_type_name(items.get('type'), items.get('items'))}>"
    return type_name or ""


def stack_file_values(path: Path, project_name: str) -> dict[str, ConfigValue]:
    """The `config:` of a Pulumi.<stack>.yaml, keys namespaced as LoadProjectStackBytes does.

    An encrypted value keeps its ciphertext as its text: this harness has no
    passphrase, so a test reading a stack file with secrets sees the ciphertext.
    """
    document = yaml.safe_load(path.read_text()) or {}
    values = {}
    for key, value in (document.get("config") or {}).items():
        full_key = key if ":" in key else f"{project_name}:{key}"
        values[full_key] = ConfigValue.of(value)
    return values


def _project_value(value: Any) -> ConfigValue:
    """createConfigValue: a string, integer or boolean as text; anything else as JSON."""
    if isinstance(value, bool):
        return ConfigValue("true" if value else "false")
    if isinstance(value, (str, int)):
        return ConfigValue(str(value))
    return ConfigValue(_json(value), object=True)


def _json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact; whole floats without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _full_key(project_name: str, key: str) -> str:
    """parseConfigKey: a key without a namespace belongs to the project."""
    if ":" in key:
        return key
    if re.search(r"[.\[\]\"]", key):
        raise NotImplementedError(f"config key {key!r} would be read as a property path")
    return f"{project_name}:{key}"


def _namespaced_by_project(project_name: str, key: str) -> bool:
    return ":" not in key or key.startswith(f"{project_name}:")


# --- the engine's own code, as an oracle ---------------------------------------------------


def engine_checker() -> tuple[Path | None, str | None]:
    """The pulumi_config_check binary, built once per source digest: (path, None) or (None, why).

    It is cached beside the test virtual environment ($CHI_PERSIST_CACHE, by default
    ~/.cache/chi-persist); the first build fetches the engine's Go modules through the
    Go module proxy and takes a few minutes.
    """
    go = shutil.which("go")
    if go is None:
        return None, "go is not installed (the engine's config code is Go)"
    digest = hashlib.sha256()
    for path in sorted(CHECKER_SOURCE.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    base = os.environ.get("CHI_PERSIST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "chi-persist"
    )
    binary = Path(base) / f"pulumi-config-check-{digest.hexdigest()[:16]}" / "pulumi_config_check"
    if binary.is_file():
        return binary, None
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
    try:
        built = subprocess.run(
            ["nice", "-n", "10", go, "build", "-o", str(partial), "."],
            cwd=CHECKER_SOURCE,
            capture_output=True,
            text=True,
            timeout=CHECKER_BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"building the engine's config checker took over {CHECKER_BUILD_TIMEOUT} s"
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        return None, f"could not build the engine's config checker: {built.stderr.strip()[-800:]}"
    partial.replace(binary)
    return binary, None


def engine_verdict(
    checker: Path, project_file: Path, stack_file: Path, stack_name: str
) -> tuple[str | None, dict[str, ConfigValue]]:
    """What the engine's own functions answer: (error text, {}) or (None, merged config)."""
    answer = subprocess.run(
        [str(checker), str(project_file), str(stack_file), stack_name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    verdict = json.loads(answer.stdout)
    config = {
        key: ConfigValue(value["text"], secure=value["secure"], object=value["object"])
        for key, value in (verdict.get("config") or {}).items()
    }
    return verdict.get("error"), config
