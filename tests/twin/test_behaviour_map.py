"""Every behaviour the twin models beyond request and response shapes names the upstream code it
follows, and that code exists (tests/twin/services/<service>/behaviour.toml).

Each `[[behaviour]]` names a PyPI distribution and version (`upstream = "cinder==29.0.0"`),
a file inside its source, a function or `Class.method` defined in that file, and where the
twin does it (`twin = "tests/twin/services/volume/models.py:VolumeBackend.extend"`). The source
distributions are fetched from PyPI once into the cache ($CHI_PERSIST_CACHE, by default
~/.cache/chi-persist, under upstream-sources/<name>-<version>), checked against PyPI's sha256,
and read with `ast`. The `[[route.upstream]]` entries of source_map.toml (the calls the
program makes itself) are held to the same sources. The twin's code at each entry must name
the upstream function it follows, so the map and the code's comments say the same.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading the behaviour maps needs Python 3.11")

TWIN = Path(__file__).resolve().parent
REPO = TWIN.parents[1]
SERVICE_CODE = TWIN / "services"
MAP_FILES = sorted(SERVICE_CODE.glob("*/behaviour.toml"))
SOURCE_MAP = TWIN / "source_map.toml"
# The services whose maps this project keeps beside their models.
SERVICES = ("compute", "network", "volume", "image", "object_store")
UPSTREAM = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][A-Za-z0-9.]*)$")
ENTRY_KEYS = {"what", "upstream", "file", "function", "twin"}
PYPI = os.environ.get("CHI_PERSIST_PYPI_JSON", "https://pypi.org/pypi")
DOWNLOAD_SECONDS = 300


def load_entries() -> list[dict[str, Any]]:
    entries = []
    for path in MAP_FILES:
        for index, entry in enumerate(tomllib.loads(path.read_text()).get("behaviour", [])):
            entries.append({**entry, "_where": f"{path.parent.name}/behaviour.toml #{index + 1}"})
    return entries


def load_route_sources() -> list[dict[str, Any]]:
    found = []
    for route in tomllib.loads(SOURCE_MAP.read_text())["route"]:
        for index, source in enumerate(route.get("upstream", [])):
            where = f"source_map.toml {route['service']} {route['method']} {route['rule']}"
            found.append({**source, "_where": f"{where} #{index + 1}"})
    return found


ENTRIES = load_entries()
ROUTE_SOURCES = load_route_sources()


def entry_id(entry: dict[str, Any]) -> str:
    return f"{entry['_where']}: {entry.get('function')}"


# --- the sources ----------------------------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("CHI_PERSIST_CACHE") or str(Path.home() / ".cache" / "chi-persist")
    return Path(base) / "upstream-sources"


def _sdist_of(name: str, version: str) -> dict[str, Any]:
    """PyPI's record of the version's source distribution (the JSON API; its URLs may be
    relative to the API's own address on a mirror)."""
    index = f"{PYPI}/{name}/json"
    with urllib.request.urlopen(index, timeout=60) as answer:  # noqa: S310 (PyPI's https URL)
        releases = json.load(answer)["releases"]
    files = [item for item in releases.get(version, []) if item["packagetype"] == "sdist"]
    assert files, f"PyPI has no source distribution of {name}=={version}"
    record = dict(files[0])
    record["url"] = urllib.parse.urljoin(index, record["url"])
    return record


@cache
def source_dir(upstream: str) -> Path:
    """The unpacked source distribution named `name==version`, fetched once into the cache."""
    match = UPSTREAM.match(upstream)
    assert match, f"{upstream!r} is not name==version"
    name, version = match["name"], match["version"]
    root = cache_root()
    target = root / f"{name}-{version}"
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target
        try:
            record = _sdist_of(name, version)
            with urllib.request.urlopen(record["url"], timeout=DOWNLOAD_SECONDS) as answer:  # noqa: S310
                data = answer.read()
        except OSError as error:  # urllib's URLError and timeouts
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{upstream}'s source is not in {root} and PyPI cannot be reached: {error}")
        digest = hashlib.sha256(data).hexdigest()
        assert digest == record["digests"]["sha256"], f"{record['url']}: sha256 {digest} differs"
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-{version}-"))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                archive.extractall(staging, filter="data")
            (top,) = staging.iterdir()  # an sdist holds one directory, <name>-<version>
            shutil.rmtree(target, ignore_errors=True)
            top.rename(target)
            (target / ".complete").write_text(record["url"] + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --- definitions in a Python file -------------------------------------------------------------


def defines(source: str, qualname: str) -> bool:
    """Whether `source` defines `name` (a top-level function or class) or `Class.method`
    (a function, or a name assigned, in the class's body)."""
    tree = ast.parse(source)
    scope: list[ast.stmt] = tree.body
    parts = qualname.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == part:
                    found = node
            elif last and depth > 0 and isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        if not last:
            if not isinstance(found, ast.ClassDef):
                return False
            scope = found.body
    return True


def definition_text(path: Path, qualname: str | None) -> str:
    """The text of `qualname` in the file (its docstring and comments), or the whole file."""
    text = path.read_text()
    if not qualname:
        return text
    tree = ast.parse(text)
    scope: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in qualname.split("."):
        node = next(
            (
                each
                for each in scope
                if isinstance(each, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and each.name == part
            ),
            None,
        )
        assert node is not None, f"{path} defines no {qualname}"
        scope = getattr(node, "body", [])
    lines = text.splitlines()
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    # Comments just above the definition belong to it.
    while start > 1 and lines[start - 2].lstrip().startswith("#"):
        start -= 1
    return "\n".join(lines[start - 1 : node.end_lineno])


# --- the maps ---------------------------------------------------------------------------------


def test_each_service_has_its_map() -> None:
    """compute, network, volume and image each keep a behaviour.toml beside their models."""
    present = {path.parent.name for path in MAP_FILES}
    assert set(SERVICES) <= present, f"missing: {sorted(set(SERVICES) - present)}"


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_entry_is_complete(entry: dict[str, Any]) -> None:
    """Every entry says what, which upstream release, file and function, and where the twin
    does it; nothing else."""
    keys = set(entry) - {"_where"}
    assert keys == ENTRY_KEYS, f"{entry['_where']}: keys {sorted(keys)}, wanted {ENTRY_KEYS}"
    assert all(isinstance(entry[key], str) and entry[key].strip() for key in ENTRY_KEYS)
    assert UPSTREAM.match(entry["upstream"]), f"{entry['_where']}: {entry['upstream']!r}"
    assert entry["file"].endswith(".py") and not entry["file"].startswith("/")


def test_one_version_per_distribution() -> None:
    """The maps (and the source map's calls) read one release: a distribution named twice is
    named at the same version."""
    versions: dict[str, set[str]] = {}
    for entry in ENTRIES + ROUTE_SOURCES:
        match = UPSTREAM.match(entry["upstream"])
        assert match, entry["_where"]
        versions.setdefault(match["name"], set()).add(match["version"])
    mixed = {name: sorted(found) for name, found in versions.items() if len(found) > 1}
    assert not mixed, f"several versions of one distribution: {mixed}"


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_twin_place_exists_and_names_the_same_source(entry: dict[str, Any]) -> None:
    """The twin's file (and its function, when named) exists, and its docstring or comments
    there name the upstream function as the entry does (Class.method, or function)."""
    path_text, _, qualname = entry["twin"].partition(":")
    path = REPO / path_text
    assert path.is_file(), f"{entry['_where']}: {path_text} does not exist"
    if qualname:
        assert defines(path.read_text(), qualname), f"{entry['_where']}: no {qualname} there"
    text = definition_text(path, qualname or None)
    assert entry["function"] in text, (
        f"{entry['_where']}: the twin at {entry['twin']} does not name {entry['function']} "
        f"({entry['file']}); name the source there as the map does"
    )


@pytest.mark.parametrize("entry", ENTRIES + ROUTE_SOURCES, ids=entry_id)
def test_upstream_file_defines_the_function(entry: dict[str, Any]) -> None:
    """The named file is in that release's source and defines the named function."""
    source = source_dir(entry["upstream"]) / entry["file"]
    assert source.is_file(), f"{entry['_where']}: {entry['upstream']} has no {entry['file']}"
    assert defines(source.read_text(), entry["function"]), (
        f"{entry['_where']}: {entry['upstream']} {entry['file']} defines no {entry['function']}"
    )


# --- the checker itself -------------------------------------------------------------------------

SAMPLE = """
import os

LIMIT = 3


def helper():
    pass


class Manager(object):
    NAME = "manager"

    def extend_volume(self):
        def inner():
            pass

    async def later(self):
        pass
"""


@pytest.mark.parametrize(
    ("qualname", "expected"),
    [
        ("helper", True),
        ("Manager", True),
        ("Manager.extend_volume", True),
        ("Manager.later", True),
        ("Manager.NAME", True),
        ("LIMIT", False),  # a module constant is not a function
        ("Manager.inner", False),  # nested functions are not the class's
        ("Manager.extend", False),
        ("helper.extend_volume", False),
        ("Other.extend_volume", False),
    ],
)
def test_the_checker_finds_definitions_and_nothing_else(qualname: str, expected: bool) -> None:
    assert defines(SAMPLE, qualname) is expected


def test_a_source_in_the_cache_is_not_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source already complete in the cache is used without asking PyPI."""
    monkeypatch.setenv("CHI_PERSIST_CACHE", str(tmp_path))
    done = tmp_path / "upstream-sources" / "example-1.0"
    done.mkdir(parents=True)
    (done / ".complete").write_text("https://example.invalid/example-1.0.tar.gz\n")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *_, **__: pytest.fail("PyPI was asked"))
    assert source_dir.__wrapped__("example==1.0") == done
