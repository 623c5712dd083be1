"""Pulumi.yaml's config block against the engine's rule, and against the settings module.

The rule is the engine's, read in pulumi/pulumi v3.274.1:
- pkg/workspace/config.go, `mergeConfig` (reached from
  `ValidateStackConfigAndApplyProjectConfig`, which `pulumi up`, `preview`, `destroy`
  and `refresh` call before the program runs): a key of the project's namespace
  declared with neither `default` nor `value` that the stack does not set is
  missing, and every missing key stops the command with
  "Stack '<name>' is missing configuration value(s) ..."; defaults fill the rest;
- pkg/workspace/config.go, `validateStackConfigValue`: a `secret: true` key whose
  value is not encrypted is refused ("... must be encrypted as it's secret"), and a
  default is plain text, so a secret key with a default is refused whenever a stack
  leaves it unset; the value must match the declared type (`ValidateConfigValue` in
  sdk/go/common/workspace/project.go), or "... must be of type '<type>'";
- sdk/go/common/workspace/project.go, `(*Project).Validate`: a default must match its type.

tests/support/engine_config.py applies that rule for the mocked program; here it is
held to the engine's own functions (tests/support/pulumi_config_check), and
Pulumi.yaml is held to it: keyPair is the only key a stack must set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components.settings import CONFIG_KEYS, validate
from tests.engine.workspace import StudentMachine, toolchain_skip_reason
from tests.support.engine_config import (
    ConfigValue,
    EngineConfigError,
    apply_project_config,
    engine_checker,
    engine_verdict,
    load_project,
    stack_file_values,
)
from tests.support.paths import REPO_ROOT
from tests.support.program import SERVER, VOLUME, evaluate_program
from tests.support.ssh_keys import stand_in_private_key

PROJECT_FILE = REPO_ROOT / "Pulumi.yaml"
PRIVATE_KEY = stand_in_private_key()
KEY_PAIR_ONLY = "config:\n  chi-persist:keyPair: ab1234-key\n"


def project() -> Any:
    return load_project(PROJECT_FILE.read_text())


def stack_of(text: str, tmp_path: Path, name: str = "Pulumi.ab1234.yaml") -> dict[str, ConfigValue]:
    path = tmp_path / name
    path.write_text(text)
    return stack_file_values(path, "chi-persist")


def refusal(project_text: str | None, stack_text: str, tmp_path: Path, stack: str = "ab1234"):
    """The engine rule's answer for a project (Pulumi.yaml if None) and a stack file."""
    loaded = project() if project_text is None else load_project(project_text)
    try:
        apply_project_config(loaded, stack, stack_of(stack_text, tmp_path))
    except EngineConfigError as error:
        return str(error)
    return None


# --- Pulumi.yaml under the engine's rule ---------------------------------------------------


def test_a_stack_setting_only_its_key_pair_passes_the_engine(tmp_path: Path) -> None:
    """keyPair is the only key a stack must set; every other key gets its default."""
    merged = apply_project_config(project(), "ab1234", stack_of(KEY_PAIR_ONLY, tmp_path))
    assert merged["chi-persist:keyPair"] == ConfigValue("ab1234-key")
    assert merged["chi-persist:netid"] == ConfigValue("")
    assert merged["chi-persist:reservation"] == ConfigValue("")
    assert merged["chi-persist:volumeType"] == ConfigValue("")
    assert merged["chi-persist:existingSecurityGroups"] == ConfigValue("[]", object=True)
    assert merged["chi-persist:volumeSize"] == ConfigValue("2")
    assert merged["chi-persist:allowedCidrs"] == ConfigValue('["0.0.0.0/0"]', object=True)


def test_a_stack_without_its_key_pair_is_refused_with_the_engines_words(tmp_path: Path) -> None:
    """No keyPair: the command stops before the program, as `pulumi up` does.

    pkg/workspace/config.go, mergeConfig: a declared key of the project's namespace with
    neither default nor value, not set by the stack, goes to missingStackConfigurationKeysError.
    """
    assert refusal(None, "config: {}\n", tmp_path) == (
        "validating stack config: Stack 'ab1234' is missing configuration value 'keyPair'"
    )
    with pytest.raises(EngineConfigError) as raised:
        evaluate_program("ab1234", {}, secrets={"sshPrivateKey": PRIVATE_KEY})
    assert str(raised.value) == (
        "validating stack config: Stack 'ab1234' is missing configuration value 'keyPair'"
    )


def test_only_the_key_pair_is_required() -> None:
    """Every declared key but keyPair has a default, and no declared key is secret."""
    declared = project().config
    assert [key for key, spec in declared.items() if spec.default is None] == ["keyPair"]
    assert [key for key, spec in declared.items() if spec.secret] == []


def test_the_example_stack_file_passes_the_engine_and_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulumi.dev.yaml, as shipped, is accepted by the engine and evaluates."""
    merged = apply_project_config(
        project(), "dev", stack_file_values(REPO_ROOT / "Pulumi.dev.yaml", "chi-persist")
    )
    assert merged["chi-persist:keyPair"].text == "id_rsa_chameleon"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa_chameleon").write_text(PRIVATE_KEY)
    document = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())
    evaluation = evaluate_program("dev", document["config"])
    assert evaluation.one(SERVER).inputs["name"] == "node-persist-dev"


@pytest.mark.skipif(toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason()))
def test_a_stack_made_by_new_stack_passes_the_engine_and_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./chi-persist init's config (netid and keyPair only), as the real CLI stores it, is a
    complete stack."""
    machine = StudentMachine.create(tmp_path)
    (machine.home / ".ssh" / "id_rsa_chameleon").write_text(PRIVATE_KEY)
    result = machine.command("init", "ab1234", "--key-pair", "ab1234-key")
    assert result.returncode == 0, result.stderr
    path = machine.project / "Pulumi.ab1234.yaml"
    apply_project_config(project(), "ab1234", stack_file_values(path, "chi-persist"))
    monkeypatch.setenv("HOME", str(machine.home))
    evaluation = evaluate_program("ab1234", yaml.safe_load(path.read_text())["config"])
    assert evaluation.one(VOLUME).inputs["name"] == "block-persist-ab1234"


def test_stacks_written_by_class_stacks_pass_the_engine_and_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Pulumi.<netid>.yaml ./chi-persist class write writes is a complete stack."""
    machine = StudentMachine.create(tmp_path)
    roster = machine.workdir / "roster.yaml"
    roster.write_text(
        "defaults:\n  reservation: 3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00\n"
        "students:\n  - {netid: ab1234, key_pair: ab1234-key}\n"
        "  - {netid: cd5678, key_pair: cd5678-key, volume_size: 4, allowed_cidrs: [192.0.2.0/24]}\n"
    )
    output = tmp_path / "stacks"
    output.mkdir()
    result = machine.command("class", "write", str(roster), "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("HOME", str(machine.home))
    (machine.home / ".ssh" / "id_rsa_chameleon").write_text(PRIVATE_KEY)
    written = sorted(output.glob("Pulumi.*.yaml"))
    assert len(written) == 2
    for path in written:
        netid = path.name.split(".")[1]
        apply_project_config(project(), netid, stack_file_values(path, "chi-persist"))
        evaluation = evaluate_program(netid, yaml.safe_load(path.read_text())["config"])
        assert evaluation.one(SERVER).inputs["name"] == f"node-persist-{netid}"


ENGINE_TYPE_REFUSALS = [
    # (stack file line, key, type the engine names)
    ("chi-persist:volumeSize: '2.5'", "volumeSize", "integer"),
    ("chi-persist:volumeSize: big", "volumeSize", "integer"),
    ("chi-persist:volumeSize: ' 2'", "volumeSize", "integer"),
    ("chi-persist:allowedCidrs: 0.0.0.0/0", "allowedCidrs", "array<string>"),
    ("chi-persist:existingSecurityGroups: [1]", "existingSecurityGroups", "array<string>"),
    ("chi-persist:netid: [ab1234]", "netid", "string"),
    ("chi-persist:reservation: {id: x}", "reservation", "string"),
]


@pytest.mark.parametrize(("line", "key", "type_name"), ENGINE_TYPE_REFUSALS)
def test_a_value_of_the_wrong_type_is_refused_as_the_engine_refuses_it(
    line: str, key: str, type_name: str, tmp_path: Path
) -> None:
    """A value that does not match its declared type stops the command, naming key and type."""
    assert refusal(None, f"{KEY_PAIR_ONLY}  {line}\n", tmp_path) == (
        f"validating stack config: Stack 'ab1234' with configuration key '{key}' must be of "
        f"type '{type_name}'"
    )


SECRET_WITH_DEFAULT = """\
name: chi-persist
runtime: python
config:
  sshPrivateKey:
    type: string
    secret: true
    default: ""
"""


def test_a_secret_key_with_a_default_is_refused_unless_the_stack_encrypts_it(
    tmp_path: Path,
) -> None:
    """A default is plain text: a declared secret key left unset is refused.

    pkg/workspace/config.go, validateStackConfigValue: "projectConfigType.Secret &&
    !stackValue.Secure()" refuses it, for explicitly typed keys.
    """
    assert refusal(SECRET_WITH_DEFAULT, "config: {}\n", tmp_path) == (
        "validating stack config: Stack 'ab1234' with configuration key 'sshPrivateKey' must "
        "be encrypted as it's secret"
    )
    plain = "config:\n  chi-persist:sshPrivateKey: text\n"
    assert "must be encrypted" in refusal(SECRET_WITH_DEFAULT, plain, tmp_path)
    encrypted = "config:\n  chi-persist:sshPrivateKey:\n    secure: v1:abc\n"
    assert refusal(SECRET_WITH_DEFAULT, encrypted, tmp_path) is None


def test_several_missing_keys_are_named_in_one_error(tmp_path: Path) -> None:
    """The engine lists every missing key, sorted, in one sentence."""
    declared = "".join(f"  {key}:\n    type: string\n" for key in ("zeta", "alpha", "mid"))
    text = f"name: chi-persist\nruntime: python\nconfig:\n{declared}"
    assert refusal(text, "config: {}\n", tmp_path) == (
        "validating stack config: Stack 'ab1234' is missing configuration values 'alpha', "
        "'mid' and 'zeta'"
    )


def test_a_default_of_the_wrong_type_is_refused_when_the_project_loads() -> None:
    """A declared default must match its type, or the project does not load at all."""
    text = (
        "name: chi-persist\nruntime: python\nconfig:\n  size:\n    type: integer\n    default: x\n"
    )
    with pytest.raises(EngineConfigError) as raised:
        load_project(text)
    assert str(raised.value) == (
        "could not unmarshal 'Pulumi.yaml': The default value specified for configuration key "
        "'size' is not of the expected type 'integer'"
    )


# --- the settings module agrees with Pulumi.yaml -------------------------------------------


def test_settings_and_pulumi_yaml_declare_the_same_keys_alike() -> None:
    """Each non-secret key of CONFIG_KEYS is declared with its type, default and description;
    nothing else is declared; secret keys are documented in Pulumi.yaml's comments instead."""
    raw = yaml.safe_load(PROJECT_FILE.read_text())["config"]
    non_secret = {name for name, spec in CONFIG_KEYS.items() if not spec.secret}
    assert set(raw) == non_secret
    for name in non_secret:
        spec, declared = CONFIG_KEYS[name], raw[name]
        assert declared["type"] == spec.type, name
        assert declared["description"] == spec.description, name
        if spec.required:
            assert "default" not in declared, name
        else:
            assert declared["default"] == spec.default, name
        if spec.type == "array":
            assert declared["items"] == {"type": "string"}, name
    comments = [line for line in PROJECT_FILE.read_text().splitlines() if line.startswith("#")]
    for name, spec in CONFIG_KEYS.items():
        if spec.secret:
            assert any(line.startswith(f"#   {name}: ") for line in comments), name


def test_every_default_as_the_engine_passes_it_reads_as_valid_or_unset() -> None:
    """The program reads the engine's defaults ("" and [] as text) as "not set"."""
    merged = apply_project_config(
        project(), "ab1234", {"chi-persist:keyPair": ConfigValue("ab1234-key")}
    )
    raw = {key.split(":", 1)[1]: value.text for key, value in merged.items()}
    settings = validate(raw, "ab1234", private_key_set=True, environment={})
    assert settings.netid == "ab1234"
    assert settings.reservation is None
    assert settings.volume_type is None
    assert settings.existing_security_groups == ()
    assert settings.allowed_cidrs == ("0.0.0.0/0",)
    assert settings.volume_size == 2


# --- the harness against the engine's own code ---------------------------------------------

ENGINE_CASES = [
    # (case, project text or None for Pulumi.yaml, stack file text, stack name)
    ("only a key pair", None, KEY_PAIR_ONLY, "ab1234"),
    ("nothing set", None, "config: {}\n", "ab1234"),
    ("empty stack file", None, "", "ab1234"),
    ("the example stack", None, (REPO_ROOT / "Pulumi.dev.yaml").read_text(), "dev"),
    ("every key set", None, KEY_PAIR_ONLY + "  chi-persist:netid: ab1234\n"
     "  chi-persist:volumeSize: 4\n  chi-persist:reservation: ''\n"
     "  chi-persist:allowedCidrs: [203.0.113.0/24, 198.51.100.7/32]\n"
     "  chi-persist:existingSecurityGroups: [allow-ssh]\n  openstack:cloud: chameleon\n"
     "  chi-persist:sshPrivateKey:\n    secure: v1:abc\n", "ab1234"),
    *[(f"wrong type {line}", None, f"{KEY_PAIR_ONLY}  {line}\n", "ab1234")
      for line, _, _ in ENGINE_TYPE_REFUSALS],
    ("integer with a sign", None, KEY_PAIR_ONLY + "  chi-persist:volumeSize: '+5'\n", "ab1234"),
    ("integer as a float", None, KEY_PAIR_ONLY + "  chi-persist:volumeSize: 4.0\n", "ab1234"),
    ("a key without namespace", None, "config:\n  keyPair: k\n", "ab1234"),
    ("secret with a default", SECRET_WITH_DEFAULT, "config: {}\n", "ab1234"),
    ("secret encrypted", SECRET_WITH_DEFAULT,
     "config:\n  chi-persist:sshPrivateKey:\n    secure: v1:abc\n", "ab1234"),
    ("untyped secret with a default",
     "name: chi-persist\nruntime: python\nconfig:\n  token:\n    secret: true\n    default: x\n",
     "config: {}\n", "ab1234"),
    ("two missing", "name: chi-persist\nruntime: python\nconfig:\n  b:\n    type: string\n"
     "  a:\n    type: integer\n", "config: {}\n", "ab1234"),
    ("booleans", "name: chi-persist\nruntime: python\nconfig:\n  flag:\n    type: boolean\n"
     "    default: true\n  other:\n    type: boolean\n    default: false\n",
     "config:\n  chi-persist:other: 'yes'\n", "ab1234"),
    ("a default of the wrong type",
     "name: chi-persist\nruntime: python\nconfig:\n  size:\n    type: integer\n    default: x\n",
     "config: {}\n", "ab1234"),
    ("an array without items",
     "name: chi-persist\nruntime: python\nconfig:\n  names:\n    type: array\n    default: []\n",
     "config: {}\n", "ab1234"),
    ("shorthand default", "name: chi-persist\nruntime: python\nconfig:\n  size: 3\n",
     "config: {}\n", "ab1234"),
]  # fmt: skip


@pytest.fixture(scope="module")
def checker() -> Path:
    binary, reason = engine_checker()
    if binary is None:
        pytest.skip(str(reason))
    return binary


@pytest.mark.parametrize(
    ("case", "project_text", "stack_text", "stack"),
    ENGINE_CASES,
    ids=[row[0] for row in ENGINE_CASES],
)
def test_the_harness_answers_as_the_engines_own_code(
    case: str, project_text: str | None, stack_text: str, stack: str, checker: Path, tmp_path: Path
) -> None:
    """Same project and stack file: the same error text, or the same merged config."""
    project_file = tmp_path / "Pulumi.yaml"
    project_file.write_text(PROJECT_FILE.read_text() if project_text is None else project_text)
    stack_file = tmp_path / f"Pulumi.{stack}.yaml"
    stack_file.write_text(stack_text)
    expected_error, expected_config = engine_verdict(checker, project_file, stack_file, stack)

    try:
        loaded = load_project(project_file.read_text())
        merged = apply_project_config(loaded, stack, stack_file_values(stack_file, loaded.name))
        error = None
    except EngineConfigError as refused:
        error, merged = str(refused), {}
    if expected_error is not None and expected_error.startswith("could not unmarshal"):
        # The engine names the file by the path it was given.
        expected_error = expected_error.replace(str(project_file), "Pulumi.yaml")
    assert error == expected_error
    assert merged == expected_config
