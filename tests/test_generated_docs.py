"""Each config key is described once (components/settings.py); Pulumi.yaml's config block and
the README's configuration table are generated from it and must be up to date."""

from __future__ import annotations

import argparse

import yaml

from components.settings import CONFIG_KEYS
from tests.support.paths import REPO_ROOT
from tests.support.tools import import_tool

dev = import_tool("dev")


def test_generated_blocks_are_up_to_date() -> None:
    """A key added or changed in components/settings.py without regenerating fails here, with
    the command that regenerates."""
    stale = [
        str(path.relative_to(REPO_ROOT))
        for path, text in dev.generated().items()
        if path.read_text() != text
    ]
    assert not stale, f"out of date: {', '.join(stale)}; run `./chi-persist dev docs`"


def test_the_check_fails_on_a_stale_block_and_names_the_command(tmp_path, capsys) -> None:
    """`dev docs --check` on a README whose table lost a row: exit 1, naming the command."""
    for name in ("Pulumi.yaml", "README.md"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `mountPoint` |", "| `mountpoint` |"))
    original = dev.PROJECT_DIR
    dev.PROJECT_DIR = tmp_path
    try:
        generated = dev.generated(tmp_path)
        assert generated[readme] != readme.read_text()
        code = dev.run_command(argparse.Namespace(check=True))
    finally:
        dev.PROJECT_DIR = original
    assert code == 1
    assert "run `./chi-persist dev docs`" in capsys.readouterr().err


def test_pulumi_yaml_declares_every_key_but_the_secrets_as_settings_describes_it() -> None:
    declared = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["config"]
    expected = {name: key for name, key in CONFIG_KEYS.items() if not key.secret}
    assert list(declared) == list(expected)
    for name, key in expected.items():
        assert declared[name]["description"] == key.description
        assert declared[name]["type"] == key.type
        assert ("default" in declared[name]) == (not key.required)
