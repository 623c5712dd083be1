"""Every route the twin serves is mapped to where the pinned sources make the call and decode
its answer (tests/twin/source_map.toml), and the map is held to the Go sources themselves.

For each route: the map names it and nothing unserved; the gophercloud v2.8.0 request function
is defined in the package's requests.go and calls the named URL builder, the builder in urls.go
yields the route's path segments (a literal for a literal, a variable for a `<placeholder>`,
through the builders it delegates to and the package's constants), and the named result type or
function is defined in results.go; each terraform-provider-openstack v3.4.0 function named is
defined in its file. Reservation (Blazar) routes are called by the project's own lease
resource, not by the Go provider: they name the Blazar API source instead, which is not checked
here. CHI@TACC's routes (its Keystone and Swift) are called by Python clients, not the Go
provider: they name openstacksdk's and keystoneauth1's functions, found in the installed
distribution of the version pinned, and this project's functions that make the call.
What a call sends and reads is compared with the twin's answer in each service's tests.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.twin.services import app as twin_app

tomllib = pytest.importorskip("tomllib", reason="reading source_map.toml needs Python 3.11")

MAP_FILE = Path(__file__).resolve().parent / "source_map.toml"
SOURCE_MAP: dict[str, Any] = tomllib.loads(MAP_FILE.read_text())
ROUTES: list[dict[str, Any]] = SOURCE_MAP["route"]
AUTOMATIC_METHODS = {"OPTIONS"}


def route_key(route: dict[str, Any]) -> tuple[str, str, str]:
    return (route["service"], route["method"], route["rule"])


def route_id(route: dict[str, Any]) -> str:
    return " ".join(route_key(route))


def served_routes() -> set[tuple[str, str, str]]:
    """(service, method, rule relative to the service's prefix) for every rule the app has."""
    application = twin_app.create_app(None)  # type: ignore[arg-type]  # views are not called
    prefixes = {module.SERVICE: module.PREFIX for module in twin_app.SERVICES}
    prefixes["admin"] = twin_app.ADMIN_PREFIX
    served = set()
    for rule in application.url_map.iter_rules():
        service = rule.endpoint.split(".", 1)[0]
        assert service in prefixes, f"rule {rule.rule} belongs to no service ({rule.endpoint})"
        relative = rule.rule.removeprefix(prefixes[service]) or "/"
        methods = set(rule.methods or ()) - AUTOMATIC_METHODS
        if "GET" in methods:
            methods.discard("HEAD")  # werkzeug answers HEAD on every GET rule
        served |= {(service, method, relative) for method in methods}
    return served


# --- the Go sources ------------------------------------------------------------------------


@cache
def module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache, downloaded through the proxy if absent."""
    go = shutil.which("go")
    if go is None:
        default = Path.home() / "go" / "pkg" / "mod" / f"{module}@{version}"
        if default.is_dir():
            return default
        pytest.skip(f"Go is not installed and {module}@{version} is not in {default.parent}")
    environment = {**os.environ, "GOFLAGS": ""}  # no inherited -mod=vendor
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        cwd=Path(__file__).resolve().parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"go mod download {module}@{version}:\n{result.stderr}"
    directory = Path(json.loads(result.stdout)["Dir"])
    assert directory.is_dir(), f"go mod download gave {directory}, which is not a directory"
    return directory


def gophercloud_dir() -> Path:
    return module_dir(SOURCE_MAP["gophercloud_module"], SOURCE_MAP["gophercloud_version"])


def provider_dir() -> Path:
    return module_dir(SOURCE_MAP["provider_module"], SOURCE_MAP["provider_version"])


@cache
def go_text(path: Path) -> str:
    assert path.is_file(), f"{path} does not exist"
    return path.read_text()


def defines(text: str, name: str) -> bool:
    """`Name` (a function or type) or `Type.Method` (a method, on a value or pointer)."""
    if "." in name:
        receiver, method = name.split(".")
        pattern = rf"^func\s+\(\s*\w+\s+\*?{receiver}\s*\)\s+{method}\s*\("
    else:
        pattern = rf"^(func\s+{name}\s*\(|type\s+{name}\s)"
    return re.search(pattern, text, re.MULTILINE) is not None


def function_body(text: str, name: str) -> str:
    match = re.search(rf"^func\s+{name}\s*\((.*?)\)[^{{\n]*\{{\n(.*?)^\}}", text, re.M | re.S)
    assert match is not None, f"no function {name}"
    return match.group(0)


def package_constants(package: Path) -> dict[str, str]:
    constants: dict[str, str] = {}
    for source in sorted(package.glob("*.go")):
        if source.name.endswith("_test.go"):
            continue
        text = go_text(source)
        blocks = re.findall(r"^const\s*\((.*?)^\)", text, re.M | re.S)
        singles = re.findall(r'^const\s+(\w+\s*=\s*"[^"]*")', text, re.M)
        for declaration in [*blocks, *singles]:
            constants.update(re.findall(r'(\w+)\s*=\s*"([^"]*)"', declaration))
    return constants


def split_arguments(text: str) -> list[str]:
    return [argument.strip() for argument in text.split(",") if argument.strip()]


def url_segments(package: Path, builder: str) -> list[tuple[str, str]]:
    """What ServiceURL receives from the builder: ("literal", text) or ("variable", name)."""
    urls = go_text(package / "urls.go")
    constants = package_constants(package)

    def resolve(name: str, bound: dict[str, str]) -> list[tuple[str, str]]:
        match = re.search(
            rf"^func\s+{name}\s*\((.*?)\)\s*string\s*\{{\s*return\s+(.*?)\n\}}", urls, re.M | re.S
        )
        assert match is not None, f"{package.name}/urls.go has no one-line builder {name}"
        expression = match.group(2).strip()
        call = re.fullmatch(r"(\w+)\.ServiceURL\((.*)\)", expression)
        if call is not None:
            segments = []
            for argument in split_arguments(call.group(2)):
                argument = bound.get(argument, argument)
                # ServiceURL joins its parts with "/": a part may hold several segments.
                if argument.startswith('"'):
                    segments += [("literal", part) for part in argument.strip('"').split("/")]
                elif argument in constants:
                    segments += [("literal", part) for part in constants[argument].split("/")]
                else:
                    segments.append(("variable", argument))
            return segments
        delegate = re.fullmatch(r"(\w+)\((.*)\)", expression)
        assert delegate is not None, f"{name} in {package.name}/urls.go returns {expression!r}"
        passed = [bound.get(argument, argument) for argument in split_arguments(delegate.group(2))]
        callee = re.search(rf"^func\s+{delegate.group(1)}\s*\((.*?)\)", urls, re.M | re.S)
        assert callee is not None, f"{name} calls {delegate.group(1)}, not in urls.go"
        callee_names = [part.split()[0] for part in split_arguments(callee.group(1))]
        return resolve(delegate.group(1), dict(zip(callee_names, passed, strict=True)))

    return resolve(builder, {})


def route_segments(route: dict[str, Any]) -> list[tuple[str, str]]:
    base = SOURCE_MAP["base"][route["service"]]
    rule = route["rule"]
    assert rule.startswith(base), (
        f"{route_id(route)}: gophercloud's client for {route['service']} builds under {base}"
    )
    parts = [part for part in rule.removeprefix(base).split("/") if part]
    return [
        ("variable", part[1:-1]) if part.startswith("<") else ("literal", part) for part in parts
    ]


def segments_match(built: list[tuple[str, str]], expected: list[tuple[str, str]]) -> bool:
    """Same length, a literal where the route has that literal, a variable for a placeholder."""
    return len(built) == len(expected) and all(
        kind == wanted_kind and (kind == "variable" or text == wanted_text)
        for (kind, text), (wanted_kind, wanted_text) in zip(built, expected, strict=True)
    )


# --- the map against the twin ----------------------------------------------------------------


def test_every_served_route_has_an_entry() -> None:
    """A route the twin serves that the map does not name fails, with its method and rule."""
    mapped = {route_key(route) for route in ROUTES}
    missing = sorted(served_routes() - mapped)
    assert not missing, f"served routes with no entry in {MAP_FILE.name}: {missing}"


def test_every_entry_names_a_served_route() -> None:
    """An entry for a route the twin does not serve (or a duplicate) fails."""
    keys = [route_key(route) for route in ROUTES]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicates, f"routes mapped twice: {duplicates}"
    unserved = sorted(set(keys) - served_routes())
    assert not unserved, f"{MAP_FILE.name} names routes the twin does not serve: {unserved}"


def test_the_twins_routes_are_the_services_routes() -> None:
    """The app serves exactly what each service's ROUTES declares (plus the admin API, and
    Blazar's rules also with .json, as blazar/api/v1/utils.py Rest.route serves them)."""
    declared = {
        (module.SERVICE, method, rule)
        for module in twin_app.SERVICES
        for rule, method, _view in module.ROUTES
    }
    served = {
        (service, method, rule.removesuffix(".json") if service == "reservation" else rule)
        for service, method, rule in served_routes()
        if service != "admin"
    }
    assert served == declared


ROUTE_KEYS = {
    "service",
    "method",
    "rule",
    "provider",
    "for_this_program",
    "gophercloud",
    "served_because",
    "gophercloud_none",
    "blazar",
    "upstream",
    "sdk",
    "sdk_none",
    "chi_persist",
}
# CHI@TACC's services: Python clients call them (openstacksdk, keystoneauth1).
SDK_SERVICES = ("identity_chi_tacc", "object_store")
REPO = Path(__file__).resolve().parents[2]
CALL_KEYS = {
    "package",
    "request",
    "url",
    "result",
    "url_literals",
    "no_result",
    "request_file",
    "no_url_builder",
}


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_entry_has_only_the_maps_keys(route: dict[str, Any]) -> None:
    """A key out of place (a route whose [[route]] header went missing lands its keys in the
    table before it) fails, naming the table."""
    assert set(route) <= ROUTE_KEYS, f"{route_id(route)}: {sorted(set(route) - ROUTE_KEYS)}"
    for call in route.get("gophercloud", []):
        assert set(call) <= CALL_KEYS, f"{route_id(route)}: {sorted(set(call) - CALL_KEYS)}"
    for source in route.get("upstream", []) + route.get("blazar", []):
        assert set(source) <= {"upstream", "file", "function"}, f"{route_id(route)}: {source}"
    for source in route.get("sdk", []):
        assert set(source) == {"distribution", "file", "function"}, f"{route_id(route)}: {source}"
    for source in route.get("chi_persist", []):
        assert set(source) == {"file", "function"}, f"{route_id(route)}: {source}"


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_entry_says_who_calls_it_and_why_it_is_served(route: dict[str, Any]) -> None:
    """Each entry names its callers, or says why the twin serves a call the provider does not make
    for this program; a Go call is named or its absence explained."""
    if route["service"] in SDK_SERVICES:
        assert isinstance(route["for_this_program"], bool)
        assert bool(route.get("sdk")) != bool(route.get("sdk_none")), (
            f"{route_id(route)}: name the client functions or say why there are none (not both)"
        )
        if route["for_this_program"]:
            assert route.get("chi_persist"), f"{route_id(route)}: name this project's caller"
        else:
            assert route.get("served_because"), f"{route_id(route)}: say why the twin serves it"
        assert not route.get("provider") and not route.get("gophercloud")
        return
    if route["service"] == "reservation":
        assert route.get("blazar"), f"{route_id(route)}: name the Blazar API source"
        for source in route["blazar"]:
            assert source["file"].startswith("blazar/") and source["function"]
        assert route.get("served_because"), f"{route_id(route)}: say who calls it"
        assert not route.get("provider") and not route.get("gophercloud")
        return
    assert isinstance(route["for_this_program"], bool)
    assert isinstance(route["provider"], list)
    if route["for_this_program"]:
        assert route["provider"], f"{route_id(route)}: name the provider function that calls it"
    else:
        assert route.get("served_because"), f"{route_id(route)}: say why the twin serves it"
    calls = route.get("gophercloud", [])
    assert bool(calls) != bool(route.get("gophercloud_none")), (
        f"{route_id(route)}: name the gophercloud calls or say why there are none (not both)"
    )
    for call in calls:
        assert call.get("url") or call.get("no_url_builder"), f"{route_id(route)}: {call}"
        assert call.get("result") or call.get("no_result"), f"{route_id(route)}: {call}"


# --- the map against the Python clients and this project ------------------------------------


def python_defines(text: str, qualname: str) -> bool:
    """`name` (a function or class at the top) or `Class.method` defined in the source."""
    scope: list[ast.stmt] = ast.parse(text).body
    parts = qualname.split(".")
    for depth, part in enumerate(parts):
        found = next(
            (
                node
                for node in scope
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and node.name == part
            ),
            None,
        )
        if found is None:
            return False
        if depth < len(parts) - 1:
            if not isinstance(found, ast.ClassDef):
                return False
            scope = found.body
    return True


def installed_file(distribution: str, file: str) -> Path:
    """The file of an installed distribution, which must be the version the map pins."""
    name, _, version = distribution.partition("==")
    installed = importlib.metadata.version(name)
    assert installed == version, (
        f"{name} {installed} is installed, the map names {version}: pin and map one version"
    )
    path = Path(str(importlib.metadata.distribution(name).locate_file(file)))
    assert path.is_file(), f"{distribution} has no {file}"
    return path


SDK_SOURCES = [
    pytest.param(source, id=f"{route_id(route)}: {source['function']}")
    for route in ROUTES
    for source in route.get("sdk", [])
]
PROJECT_CALLERS = [
    pytest.param(source, id=f"{route_id(route)}: {source['function']}")
    for route in ROUTES
    for source in route.get("chi_persist", [])
]


@pytest.mark.parametrize("source", SDK_SOURCES)
def test_client_functions_are_defined_where_named(source: dict[str, str]) -> None:
    """Each openstacksdk or keystoneauth1 function named is defined in that file of the
    installed distribution, of the version pinned."""
    text = installed_file(source["distribution"], source["file"]).read_text()
    assert python_defines(text, source["function"]), (
        f"{source['distribution']} {source['file']} defines no {source['function']}"
    )


@pytest.mark.parametrize("source", PROJECT_CALLERS)
def test_this_projects_callers_are_defined_where_named(source: dict[str, str]) -> None:
    """Each of this project's callers is defined in the file named."""
    path = REPO / source["file"]
    assert path.is_file(), f"{source['file']} does not exist"
    assert python_defines(path.read_text(), source["function"]), (
        f"{source['file']} defines no {source['function']}"
    )


def test_the_python_checker_finds_methods_and_nothing_else() -> None:
    text = "class Proxy:\n    def get_info(self):\n        def inner():\n            pass\n"
    assert python_defines(text, "Proxy.get_info") and python_defines(text, "Proxy")
    assert not python_defines(text, "Proxy.inner") and not python_defines(text, "get_info")


# --- the map against the Go sources -------------------------------------------------------


@pytest.mark.parametrize(
    "route", [route for route in ROUTES if route.get("provider")], ids=route_id
)
def test_provider_functions_are_defined_where_named(route: dict[str, Any]) -> None:
    """Each terraform-provider-openstack v3.4.0 file exists and defines the function named."""
    for caller in route["provider"]:
        found = defines(go_text(provider_dir() / caller["file"]), caller["function"])
        assert found, f"{route_id(route)}: {caller['file']} defines no {caller['function']}"


@pytest.mark.parametrize(
    "route", [route for route in ROUTES if route.get("gophercloud")], ids=route_id
)
def test_gophercloud_calls_are_defined_and_build_the_routes_path(route: dict[str, Any]) -> None:
    """requests.go defines the request and calls the URL builder; urls.go's builder yields the
    route's segments; results.go defines what decodes the answer."""
    for call in route["gophercloud"]:
        package = gophercloud_dir() / call["package"]
        requests = go_text(package / call.get("request_file", "requests.go"))
        name = f"{call['package']}.{call['request']}"
        found = defines(requests, call["request"])
        assert found, f"{route_id(route)}: no {name}"
        if call.get("result"):
            found = defines(go_text(package / "results.go"), call["result"])
            assert found, (
                f"{route_id(route)}: {call['package']}/results.go defines no {call['result']}"
            )
        if not call.get("url"):
            continue
        body = function_body(requests, call["request"])
        calls_builder = re.search(rf"\b{call['url']}\(", body) is not None
        assert calls_builder, f"{name} does not call {call['url']}"
        # A builder argument the caller passes as a constant (the tag extension's resource
        # type, "ports") is that literal in the route.
        built = [
            ("literal", call["url_literals"][text])
            if kind == "variable" and text in call.get("url_literals", {})
            else (kind, text)
            for kind, text in url_segments(package, call["url"])
        ]
        assert segments_match(built, route_segments(route)), (
            f"{route_id(route)}: {call['package']}/urls.go {call['url']} builds {built}, "
            f"the route is {route_segments(route)}"
        )


def test_the_url_check_catches_a_wrong_segment() -> None:
    """The path check accepts the builder's own route and refuses a literal or a variable that
    differs, or a missing segment."""
    package = gophercloud_dir() / "openstack/compute/v2/volumeattach"
    built = url_segments(package, "getURL")
    assert built == [
        ("literal", "servers"),
        ("variable", "serverID"),
        ("literal", "os-volume_attachments"),
        ("variable", "aID"),
    ]

    def segments(rule: str) -> list[tuple[str, str]]:
        return route_segments({"service": "compute", "method": "GET", "rule": rule})

    assert segments_match(built, segments("/v2.1/servers/<s>/os-volume_attachments/<v>"))
    assert not segments_match(built, segments("/v2.1/servers/<s>/os-interface/<v>"))
    assert not segments_match(built, segments("/v2.1/servers/<s>/os-volume_attachments/detail"))
    assert not segments_match(built, segments("/v2.1/servers/<s>/os-volume_attachments"))
