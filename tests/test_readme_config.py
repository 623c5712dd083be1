"""The README's configuration section says what Pulumi.yaml, the engine and the program do."""

from __future__ import annotations

import json
import re

import pulumi
import pytest

from components.settings import CONFIG_KEYS
from tests.support.engine_config import (
    ConfigValue,
    EngineConfigError,
    apply_project_config,
    load_project,
)
from tests.support.paths import REPO_ROOT
from tests.support.program import evaluate_program
from tests.support.ssh_keys import stand_in_private_key

README = (REPO_ROOT / "README.md").read_text()
PROJECT = load_project((REPO_ROOT / "Pulumi.yaml").read_text())


def config_table() -> dict[str, tuple[str, str]]:
    """The rows of the README's configuration table: key -> (default, meaning)."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([A-Za-z]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_every_setting_has_a_row_with_its_default() -> None:
    """Each key of CONFIG_KEYS has a row; the default shown is Pulumi.yaml's."""
    rows = config_table()
    assert set(rows) == set(CONFIG_KEYS)
    for name, spec in CONFIG_KEYS.items():
        shown = rows[name][0]
        if spec.secret:
            assert "secret, not declared" in shown, name
        elif spec.required:
            assert shown == "required", name
        elif spec.default == "":
            assert shown.startswith('`""`'), name
        elif spec.default == []:
            assert shown.startswith("`[]`"), name
        else:
            assert shown.startswith("`"), name
            assert shown.strip("`").replace('"', "") in (
                str(spec.default),
                str(spec.default).replace("'", ""),
                json.dumps(spec.default),  # a boolean, as Pulumi.yaml writes it
            ), name


def test_the_engine_messages_quoted_are_the_engines() -> None:
    """The two refusals the README quotes are what the engine's rule says for them."""
    with pytest.raises(EngineConfigError) as missing:
        apply_project_config(PROJECT, "ab1234", {})
    with pytest.raises(EngineConfigError) as wrong_type:
        apply_project_config(
            PROJECT,
            "ab1234",
            {
                "chi-persist:keyPair": ConfigValue("k"),
                "chi-persist:volumeSize": ConfigValue("2.5"),
            },
        )
    for refusal in (missing.value, wrong_type.value):
        quoted = str(refusal).removeprefix("validating stack config: ")
        assert f"`{quoted}`" in README


def test_the_invalid_setting_example_is_what_the_program_prints() -> None:
    """The example report in the README is the program's own, word for word."""
    block = README.split("the command that fixes it, for example:", 1)[1]
    example = block.split("```", 2)[1].strip("\n").splitlines()
    assert example[0] == "1 invalid setting in stack config:"
    match = re.match(r"^  - chi-persist:(\w+) = '([^']*)': ", example[1])
    assert match, example
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_program(
            "ab1234",
            {"keyPair": "ab1234-key", match.group(1): match.group(2)},
            secrets={"sshPrivateKey": stand_in_private_key()},
        )
    assert str(raised.value).splitlines() == example
