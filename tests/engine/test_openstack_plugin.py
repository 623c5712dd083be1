"""The openstack resource plugin built here, against the SDK the program is written with.

tests/engine/substitutes/openstack_plugin/build makes pulumi-resource-openstack
from terraform-provider-openstack v3.4.0 and pulumi-terraform-bridge v3.135.0
(the pair pulumi-openstack 5.5.x bridges), with this project's substitute for
pulumi-openstack's token and name mapping. These tests hold it to the installed
Python SDK pulumi_openstack: the version it asks for, every resource and
function token, every property and its type, the provider's configuration
and where it falls back to the environment; and they drive it over gRPC,
as the engine does, against a local Keystone and Neutron to show that it
reads clouds.yaml (OS_CLOUD, OS_CLIENT_CONFIG_FILE) and OS_* variables.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from tests.support import sdk_surface
from tests.support.keystone_neutron import KeystoneNeutron, Server, network
from tests.support.paths import REPO_ROOT
from tests.support.resource_plugin import running_plugin

PLUGIN_MODULE = REPO_ROOT / "tests" / "engine" / "substitutes" / "openstack_plugin"
TOOLCHAIN = REPO_ROOT / "tests" / "engine" / "toolchain"
# A cold build compiles the Terraform provider, the bridge and tfgen: allow an hour.
BUILD_SECONDS = 3600
PROVIDER_URN = "urn:pulumi:dev::chi-persist::pulumi:providers:openstack::default_5_5_3"

# What chi-persist itself calls: any difference here breaks the program.
PROGRAM_RESOURCES = [
    "openstack:compute/instance:Instance",
    "openstack:compute/volumeAttach:VolumeAttach",
    "openstack:blockstorage/volume:Volume",
    "openstack:networking/port:Port",
    "openstack:networking/floatingIp:FloatingIp",
    "openstack:networking/secGroup:SecGroup",
    "openstack:networking/secGroupRule:SecGroupRule",
    "pulumi:providers:openstack",
]
PROGRAM_FUNCTIONS = [
    "openstack:networking/getNetwork:getNetwork",
    "openstack:networking/getSecGroup:getSecGroup",
    "openstack:blockstorage/getVolumeV3:getVolumeV3",
]
# In the pulumi_openstack 5.5.3 wheel but in no schema of pulumi-openstack 5.5.x:
# a stale file beside workflow_workflow_v2.py, which calls the served token
# openstack:index/workflowWorkflowV2:WorkflowWorkflowV2. The published plugin
# refuses this token too.
SDK_ONLY_FUNCTIONS = {"openstack:index/getWorkflowWorkflowV2:getWorkflowWorkflowV2"}


def sdk_package_dir() -> Path:
    spec = importlib.util.find_spec("pulumi_openstack")
    assert spec is not None and spec.origin is not None, "pulumi_openstack is not installed"
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def sdk_version() -> str:
    """The plugin version the installed SDK asks the engine for."""
    return json.loads((sdk_package_dir() / "pulumi-plugin.json").read_text())["version"]


@pytest.fixture(scope="module")
def sdk() -> sdk_surface.Sdk:
    return sdk_surface.read_sdk(sdk_package_dir())


@pytest.fixture(scope="module")
def plugin(tmp_path_factory, sdk_version) -> Path:
    """The plugin, built (or taken from the build's cache) at the SDK's version."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: tests/engine/substitutes/openstack_plugin/build needs it")
    binary = tmp_path_factory.mktemp("plugin") / "pulumi-resource-openstack"
    result = subprocess.run(
        [str(PLUGIN_MODULE / "build"), str(binary), sdk_version],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"the plugin's build failed:\n{result.stderr[-5000:]}"
    return binary


@pytest.fixture(scope="module")
def schema(plugin, tmp_path_factory) -> dict:
    """The schema the plugin serves, asked for over gRPC as the engine asks."""
    home = tmp_path_factory.mktemp("schema-home")
    with running_plugin(plugin, {"HOME": str(home)}, home, home / "plugin.log") as running:
        return running.schema()


def test_plugin_reports_the_version_the_sdk_asks_for(plugin, sdk_version):
    """The engine loads resource-openstack-v<version>: the binary must say the same."""
    reported = subprocess.run(
        [str(plugin), "-version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert reported == sdk_version


def test_schema_carries_the_sdk_version(schema, sdk_version):
    """`pulumi package get-schema` and the engine see the version the SDK was made for."""
    assert schema["name"] == "openstack"
    assert schema["version"] == sdk_version


def test_every_sdk_resource_token_is_served(sdk, schema):
    """Each resource class of the SDK registers a token the plugin knows."""
    served = set(schema["resources"]) | {"pulumi:providers:openstack"}
    assert sorted(set(sdk.resources) - served) == []


def test_every_sdk_function_token_is_served(sdk, schema):
    """Each function of the SDK invokes a token the plugin knows (one stale SDK file aside)."""
    missing = set(sdk.functions) - set(schema["functions"])
    assert missing == SDK_ONLY_FUNCTIONS


@pytest.mark.parametrize("token", PROGRAM_RESOURCES)
def test_program_resources_match_the_sdk(sdk, schema, token):
    """Every input, output and state property of a resource the program uses, by type."""
    assert sdk_surface.compare_resource(sdk, schema, token) == []


@pytest.mark.parametrize("token", PROGRAM_FUNCTIONS)
def test_program_functions_match_the_sdk(sdk, schema, token):
    """Every argument and result property of a function the program uses, by type."""
    assert sdk_surface.compare_function(sdk, schema, token) == []


def test_all_other_resources_and_functions_match_the_sdk(sdk, schema):
    """The rest of the SDK, listed in one go: nothing it declares is missing or retyped."""
    mismatches = []
    for token in sorted(set(sdk.resources) - set(PROGRAM_RESOURCES)):
        mismatches += sdk_surface.compare_resource(sdk, schema, token)
    for token in sorted(set(sdk.functions) - set(PROGRAM_FUNCTIONS) - SDK_ONLY_FUNCTIONS):
        mismatches += sdk_surface.compare_function(sdk, schema, token)
    assert mismatches == [], "\n".join(mismatches)


def test_config_keys_and_environment_fallbacks_match_the_sdk(sdk, schema):
    """Every `openstack:` config key exists with its type and the same OS_* fallback."""
    assert sdk_surface.compare_config(sdk, schema) == []
    environment = {
        name: spec["defaultInfo"]["environment"]
        for name, spec in schema["config"]["variables"].items()
        if "defaultInfo" in spec
    }
    assert environment == {
        "allowReauth": ["OS_ALLOW_REAUTH"],
        "cloud": ["OS_CLOUD"],
        "delayedAuth": ["OS_DELAYED_AUTH"],
        "endpointType": ["OS_ENDPOINT_TYPE"],
        "insecure": ["OS_INSECURE"],
        "region": ["OS_REGION_NAME"],
        "swauth": ["OS_SWAUTH"],
    }


def test_comparison_notices_a_missing_or_retyped_property(sdk, schema):
    """The comparison above can fail: a schema with one property dropped and one retyped."""
    doctored = json.loads(json.dumps(schema))
    instance = doctored["resources"]["openstack:compute/instance:Instance"]
    del instance["inputProperties"]["keyPair"]
    instance["properties"]["accessIpV4"] = {"type": "integer"}
    network_type = doctored["types"]["openstack:compute/InstanceNetwork:InstanceNetwork"]
    network_type["properties"]["uuid"] = {"type": "array", "items": {"type": "string"}}
    found = sdk_surface.compare_resource(sdk, doctored, "openstack:compute/instance:Instance")
    assert any("input.keyPair" in line and "not served" in line for line in found), found
    assert any("output.accessIpV4" in line and "integer" in line for line in found), found
    assert any("InstanceNetwork" in line and ".uuid" in line for line in found), found


@pytest.mark.parametrize(
    ("token", "news"),
    [
        ("openstack:networking/secGroup:SecGroup", {"description": "web ports"}),
        ("openstack:blockstorage/volume:Volume", {"size": 2}),
    ],
)
def test_unnamed_resources_are_auto_named(plugin, tmp_path, token, news):
    """A resource left without `name` gets `<resource name>-<7 hex digits>`, as upstream's."""
    env = {"HOME": str(tmp_path)}
    with running_plugin(plugin, env, tmp_path, tmp_path / "plugin.log") as running:
        inputs, failures = running.check(f"urn:pulumi:dev::chi-persist::{token}::web", news)
    assert failures == []
    assert re.fullmatch(r"web-[0-9a-f]{7}", inputs["name"]), inputs


def clouds_yaml(path: Path, api: KeystoneNeutron) -> None:
    """A clouds.yaml as Chameleon hands it out: an application credential and a region."""
    path.write_text(
        textwrap.dedent(f"""\
            clouds:
              chameleon:
                auth_type: v3applicationcredential
                auth:
                  auth_url: {api.auth_url}
                  application_credential_id: "app-cred-id-1234"
                  application_credential_secret: "app-cred-secret-5678"
                region_name: {api.region}
                interface: public
                identity_api_version: 3
            """)
    )


def look_up_network(plugin: Path, env: dict, cwd: Path, name: str) -> tuple[dict, list[str]]:
    """Configure the provider from the environment alone and call getNetwork, as at preview."""
    with running_plugin(plugin, env, cwd, cwd / "plugin.log") as running:
        inputs, failures = running.check_config({"version": "5.5.3"}, PROVIDER_URN)
        assert failures == []
        running.configure(inputs)
        return running.invoke("openstack:networking/getNetwork:getNetwork", {"name": name})


def auth_requests(api: KeystoneNeutron) -> list[dict]:
    return [r.body for r in api.requests if r.method == "POST" and r.path == "/v3/auth/tokens"]


def test_reads_clouds_yaml_named_by_os_cloud(plugin, tmp_path):
    """OS_CLOUD and OS_CLIENT_CONFIG_FILE alone: credential, URL and region come from the file."""
    sharednet = network("sharednet1")
    with Server(KeystoneNeutron(networks=[sharednet, network("public")])) as api:
        clouds_yaml(tmp_path / "clouds.yaml", api)
        env = {
            "HOME": str(tmp_path),
            "OS_CLOUD": "chameleon",
            "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
        }
        result, failures = look_up_network(plugin, env, tmp_path, "sharednet1")
    assert failures == []
    assert result["id"] == sharednet["id"]
    assert result["region"] == "KVM@TACC"
    [auth] = auth_requests(api)
    assert auth["auth"]["identity"] == {
        "methods": ["application_credential"],
        "application_credential": {"id": "app-cred-id-1234", "secret": "app-cred-secret-5678"},
    }
    lookups = [r for r in api.requests if r.path.endswith("/v2.0/networks")]
    assert [(r.path, r.query.get("name")) for r in lookups] == [("/v2.0/networks", ["sharednet1"])]


def test_reads_os_variables_without_clouds_yaml(plugin, tmp_path):
    """OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, OS_REGION_NAME: password auth."""
    sharednet = network("sharednet1")
    with Server(KeystoneNeutron(networks=[sharednet])) as api:
        env = {
            "HOME": str(tmp_path),
            "OS_AUTH_URL": api.auth_url,
            "OS_USERNAME": "student",
            "OS_PASSWORD": "not-a-real-password",
            "OS_PROJECT_NAME": "CHI-000000",
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "KVM@TACC",
        }
        result, failures = look_up_network(plugin, env, tmp_path, "sharednet1")
    assert failures == []
    assert result["id"] == sharednet["id"]
    [auth] = auth_requests(api)
    assert auth["auth"]["identity"]["methods"] == ["password"]
    assert auth["auth"]["identity"]["password"]["user"]["name"] == "student"
    assert auth["auth"]["scope"]["project"]["name"] == "CHI-000000"
    assert [r.path for r in api.requests if r.method == "GET"] == ["/v2.0/networks"]


def application_credential_env(api: KeystoneNeutron, home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "OS_AUTH_URL": api.auth_url,
        "OS_AUTH_TYPE": "v3applicationcredential",
        "OS_APPLICATION_CREDENTIAL_ID": "app-cred-id-9",
        "OS_APPLICATION_CREDENTIAL_SECRET": "app-cred-secret-9",
        "OS_REGION_NAME": api.region,
    }


def test_reads_application_credential_from_os_variables(plugin, tmp_path):
    """OS_APPLICATION_CREDENTIAL_ID and _SECRET, as an openrc file for one sets them."""
    sharednet = network("sharednet1")
    with Server(KeystoneNeutron(networks=[sharednet])) as api:
        env = application_credential_env(api, tmp_path)
        result, failures = look_up_network(plugin, env, tmp_path, "sharednet1")
    assert failures == []
    assert result["id"] == sharednet["id"]
    [auth] = auth_requests(api)
    assert auth["auth"]["identity"]["application_credential"] == {
        "id": "app-cred-id-9",
        "secret": "app-cred-secret-9",
    }


@pytest.mark.parametrize(
    ("variable", "value", "neutron_path"),
    [
        ("OS_REGION_NAME", "KVM@TACC", "/v2.0/networks"),
        ("OS_REGION_NAME", "CHI@UC", "/other-region/v2.0/networks"),
        ("OS_ENDPOINT_TYPE", "internal", "/internal/v2.0/networks"),
    ],
)
def test_os_variables_choose_the_catalog_endpoint(plugin, tmp_path, variable, value, neutron_path):
    """OS_REGION_NAME and OS_ENDPOINT_TYPE pick the Neutron endpoint out of the catalog."""
    with Server(KeystoneNeutron(networks=[network("sharednet1")])) as api:
        env = {**application_credential_env(api, tmp_path), variable: value}
        _, failures = look_up_network(plugin, env, tmp_path, "sharednet1")
    assert failures == []
    assert [r.path for r in api.requests if r.method == "GET"] == [neutron_path]


@pytest.mark.parametrize(("delayed_auth", "tokens_after_configure"), [(None, 0), ("false", 1)])
def test_os_delayed_auth_decides_when_keystone_is_asked(
    plugin, tmp_path, delayed_auth, tokens_after_configure
):
    """Authentication waits for the first API call unless OS_DELAYED_AUTH=false."""
    with Server(KeystoneNeutron(networks=[network("sharednet1")])) as api:
        env = application_credential_env(api, tmp_path)
        if delayed_auth is not None:
            env["OS_DELAYED_AUTH"] = delayed_auth
        with running_plugin(plugin, env, tmp_path, tmp_path / "plugin.log") as running:
            inputs, _ = running.check_config({"version": "5.5.3"}, PROVIDER_URN)
            running.configure(inputs)
            after_configure = len(auth_requests(api))
            _, failures = running.invoke(
                "openstack:networking/getNetwork:getNetwork", {"name": "sharednet1"}
            )
    assert failures == []
    assert after_configure == tokens_after_configure
    assert len(auth_requests(api)) == 1


def test_without_any_credentials_says_what_is_missing(plugin, tmp_path):
    """No OS_CLOUD, no OS_AUTH_URL, no config: the Terraform provider's own message."""
    with running_plugin(plugin, {"HOME": str(tmp_path)}, tmp_path, tmp_path / "plugin.log") as p:
        inputs, _ = p.check_config({"version": "5.5.3"}, PROVIDER_URN)
        try:
            p.configure(inputs)
            _, failures = p.invoke(
                "openstack:networking/getNetwork:getNetwork", {"name": "sharednet1"}
            )
            message = "; ".join(failures)
        except grpc.RpcError as error:
            message = error.details() or ""
    assert "One of 'auth_url' or 'cloud' must be specified" in message


def real_toolchain_env() -> dict[str, str]:
    """The environment tests/engine/toolchain prints for the real CLI and plugins."""
    if not TOOLCHAIN.exists():
        pytest.skip("tests/engine/toolchain (the real Pulumi CLI and language host) is absent")
    printed = subprocess.run(
        [str(TOOLCHAIN), "--python", sys.executable, "--print-env"],
        capture_output=True,
        text=True,
        check=True,
        timeout=BUILD_SECONDS,
    ).stdout
    script = printed + "\nenv -0\n"
    dump = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return dict(entry.split("=", 1) for entry in dump.decode().split("\0") if "=" in entry)


def test_cli_reads_the_same_schema(plugin, schema, tmp_path):
    """`pulumi package get-schema <plugin>` (the real CLI) returns what GetSchema does."""
    env = {**real_toolchain_env(), "HOME": str(tmp_path)}
    printed = subprocess.run(
        ["pulumi", "package", "get-schema", str(plugin)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert json.loads(printed) == schema


def test_preview_of_a_network_lookup_through_the_real_engine(tmp_path):
    """`pulumi preview` of a get_network call reaches the local Neutron through the plugin."""
    env = real_toolchain_env()
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        textwrap.dedent(f"""\
            name: network-lookup
            runtime:
              name: python
              options:
                virtualenv: {sys.prefix}
            backend:
              url: file://{tmp_path / "state"}
            """)
    )
    (project / "__main__.py").write_text(
        textwrap.dedent("""\
            import pulumi
            import pulumi_openstack as openstack

            network = openstack.networking.get_network(name="sharednet1")
            pulumi.export("network_id", network.id)
            """)
    )
    (tmp_path / "state").mkdir()
    sharednet = network("sharednet1")
    with Server(KeystoneNeutron(networks=[sharednet])) as api:
        clouds_yaml(tmp_path / "clouds.yaml", api)
        env.update(
            HOME=str(tmp_path),
            PULUMI_CONFIG_PASSPHRASE="preview-only",
            OS_CLOUD="chameleon",
            OS_CLIENT_CONFIG_FILE=str(tmp_path / "clouds.yaml"),
        )
        for arguments in (["stack", "init", "dev"], ["preview", "--non-interactive"]):
            result = subprocess.run(
                ["pulumi", *arguments],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
    assert sharednet["id"] in result.stdout
    assert any(r.path == "/v2.0/networks" for r in api.requests)
