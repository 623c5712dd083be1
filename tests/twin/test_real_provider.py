"""The twin answers terraform-provider-openstack v3.4.0's own code, not only our reading of it.

provider_check/ is a Go program that links the provider (through the Go module proxy) and runs
the program's resources through the provider's create, read, update and delete functions
against a twin: an `up`, a refresh, an online volume extend, a recycle, a second `up`, a lease's
end (the server vanishes), then everything deleted. Built once per source digest, cached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.twin.harness import Twin

CHECK_DIR = Path(__file__).resolve().parent / "provider_check"
BUILD_SECONDS = 1800


def provider_check_binary() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((CHECK_DIR / name).read_bytes())
    cache = Path(os.environ.get("CHI_PERSIST_CACHE", Path.home() / ".cache" / "chi-persist"))
    binary = cache / "twin" / f"provider_check-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + f".{os.getpid()}.partial")
    build = subprocess.run(
        ["nice", "-n", "10", "go", "build", "-o", str(partial), "."],
        cwd=CHECK_DIR,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
    )
    assert build.returncode == 0, (
        f"go build of provider_check failed:\n{build.stdout}{build.stderr}"
    )
    partial.replace(binary)
    return binary


@pytest.mark.skipif(
    shutil.which("go") is None, reason="Go is not installed (it builds provider_check)"
)
def test_the_providers_own_code_runs_a_semester_on_the_twin(
    tmp_path: Path, public_key: str
) -> None:
    """Every create, read, update and delete of the program's resources, by the provider itself."""
    binary = provider_check_binary()
    twin = Twin(tmp_path / "state").start()
    try:
        twin.add_keypair("student", public_key)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("OS_")}
        environment.update(
            OS_CLOUD="twin", OS_CLIENT_CONFIG_FILE=str(twin.state_dir / "clouds.yaml")
        )
        environment["PROVIDER_LOG"] = str(tmp_path / "provider.log")
        result = subprocess.run(
            [str(binary), "student", twin.url],
            env=environment,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        log = (tmp_path / "provider.log").read_text(errors="replace")[-4000:]
        assert result.returncode == 0, (
            f"{result.stdout}{result.stderr}\nprovider log (tail):\n{log}"
        )
        assert result.stdout.splitlines()[-1] == "ok   every call answered as the provider expects"
        state = twin.state()
        assert state["servers"] == [] and state["volumes"] == [] and state["ports"] == []
    finally:
        assert twin.stop() == 0
