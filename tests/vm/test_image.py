"""The guest image's cache: the right mirror, a new image per recipe, no half-built image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.vm import image as image_module
from tests.vm.failures import RehearsalError


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"sources.list": "deb http://mirror.example/debian bookworm main\n"},
            "http://mirror.example/debian",
            id="one-line",
        ),
        pytest.param(
            {"sources.list": "deb [arch=amd64] http://m.example/debian/ bookworm main\n"},
            "http://m.example/debian",
            id="one-line-with-options",
        ),
        pytest.param(
            {
                "sources.list.d/debian.sources": (
                    "Types: deb\nURIs: http://deb822.example/debian\n"
                    "Suites: bookworm bookworm-updates\nComponents: main\n\n"
                    "Types: deb\nURIs: http://deb822.example/debian-security\n"
                    "Suites: bookworm-security\nComponents: main\n"
                )
            },
            "http://deb822.example/debian",
            id="deb822",
        ),
        pytest.param(
            {
                "sources.list.d/debian.sources": (
                    "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
                )
            },
            image_module.FALLBACK_MIRROR,
            id="deb822-disabled",
        ),
        pytest.param(
            {"sources.list": "deb http://sec.example/debian-security bookworm-security main\n"},
            image_module.FALLBACK_MIRROR,
            id="only-security",
        ),
        pytest.param({}, image_module.FALLBACK_MIRROR, id="nothing-configured"),
    ],
)
def test_image_comes_from_the_mirror_apt_uses(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """The image is bootstrapped from this machine's Debian mirror, or Debian's own without one."""
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert image_module.debian_mirror(tmp_path) == expected


def copy_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the recipe the image module reads instead of the real one."""
    recipe = tmp_path / "recipe"
    shutil.copytree(image_module.RECIPE_DIR / "guest", recipe / "guest")
    shutil.copy(image_module.BUILD_SCRIPT, recipe / "build-image.sh")
    monkeypatch.setattr(image_module, "RECIPE_DIR", recipe)
    monkeypatch.setattr(image_module, "BUILD_SCRIPT", recipe / "build-image.sh")
    monkeypatch.setattr(image_module, "GUEST_FILES", recipe / "guest")
    monkeypatch.setattr(image_module, "PACKAGES_FILE", recipe / "guest" / "packages.txt")
    return recipe


@pytest.mark.parametrize("kind", image_module.KINDS)
@pytest.mark.parametrize(
    "changed_file",
    [
        "build-image.sh",
        "guest/packages.txt",
        "guest/docker",
        "guest/docker.service",
        "guest/cloud-packages.txt",
        "guest/cloud.cfg",
    ],
)
def test_changing_the_recipe_means_a_new_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed_file: str, kind: str
) -> None:
    """Every recipe file is in the cache key, so a change is never served a stale image."""
    recipe = copy_recipe(tmp_path, monkeypatch)
    before = image_module.recipe_digest(kind)
    with open(recipe / changed_file, "a") as handle:
        handle.write("\n# changed\n")
    assert image_module.recipe_digest(kind) != before


def test_each_kind_is_an_image_of_its_own() -> None:
    """The rehearsal's image (a baked key) and the cloud image (cloud-init) never share a cache."""
    assert image_module.recipe_digest("rehearsal") != image_module.recipe_digest("cloud")
    with pytest.raises(ValueError, match="'desktop' is not one of rehearsal, cloud"):
        image_module.recipe_digest("desktop")


def test_failed_build_leaves_nothing_that_looks_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that fails half-way reports its output and leaves no image and no staging."""
    recipe = copy_recipe(tmp_path, monkeypatch)
    (recipe / "build-image.sh").write_text(
        "#!/usr/bin/env bash\n"
        'output=$2; mkdir -p "$output"; echo partial >"$output/disk.img"\n'
        "echo 'debootstrap: E: Failed getting release file' >&2; exit 1\n"
    )
    monkeypatch.setenv("CHI_PERSIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image_module, "image_skip_reason", lambda: None)

    with pytest.raises(RehearsalError) as raised:
        image_module.ensure_image(say=lambda _message: None)

    assert raised.value.phase == "image build"
    assert "Failed getting release file" in str(raised.value)
    leftovers = [p.name for p in (tmp_path / "cache" / "vm").iterdir() if p.name != ".lock"]
    assert leftovers == []
