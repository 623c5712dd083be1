"""Lays out a bin directory in which a `pulumi` binary runs Python programs with our language host.

The host is this project's substitute for upstream's `pulumi-language-python`, whose Go
module the module proxy refuses (README.md beside this file). The layout is the one the
Pulumi CLI expects of its bundled Python support, all in one directory (the CLI looks next
to its own executable, then on PATH):

    pulumi                           the CLI (a hard link or a copy: never a symlink, or the CLI
                                     warns that the host on PATH is not the one beside it)
    pulumi-language-python           a wrapper: PYTHON language_host.py -use-executor ... "$@"
    language_host.py                 a copy of language_host.py beside this file, so the
                                     directory stands alone and can be cached outside the
                                     checkout
    pulumi-language-python-exec      from the Go module cache, sdk/v3@<version>/python/cmd/
    pulumi-resource-pulumi-python    from the Go module cache, sdk/v3@<version>/python/dist/

Usage: python tests/engine/substitutes/language_host/host_bin.py PULUMI OUT_DIR
           [--python PYTHON] [--sdk-version V]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

LANGUAGE_HOST = Path(__file__).resolve().parent / "language_host.py"
SDK_VERSION = "3.274.1"
SDK_FILES = {
    "pulumi-language-python-exec": "python/cmd/pulumi-language-python-exec",
    "pulumi-resource-pulumi-python": "python/dist/pulumi-resource-pulumi-python",
}


def go_module_cache() -> Path:
    """GOMODCACHE, as `go env` reports it, else its default (~/go/pkg/mod)."""
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    go = shutil.which("go")
    if go:
        answer = subprocess.run(
            [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False
        )
        if answer.returncode == 0 and answer.stdout.strip():
            return Path(answer.stdout.strip())
    return Path.home() / "go" / "pkg" / "mod"


def sdk_module_dir(version: str = SDK_VERSION) -> Path:
    return go_module_cache() / "github.com" / "pulumi" / "pulumi" / "sdk" / f"v3@v{version}"


def wrapper_script(python: str) -> str:
    return (
        "#!/bin/sh\n"
        "# The Python language host of this project, run as the CLI's pulumi-language-python.\n"
        'here=$(dirname "$0")\n'
        f'exec {shlex.quote(python)} "$here/language_host.py" '
        '-use-executor "$here/pulumi-language-python-exec" "$@"\n'
    )


def _write_executable(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(path)


def _place_pulumi(pulumi: Path, target: Path) -> None:
    source = pulumi.resolve()
    if target.is_file():
        have, want = target.stat(), source.stat()
        if target.samefile(source) or (have.st_size, have.st_mtime) == (
            want.st_size,
            want.st_mtime,
        ):
            return
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copy2(source, partial)
    partial.chmod(0o755)
    partial.replace(target)


def assemble(
    pulumi: Path,
    out_dir: Path,
    python: str = sys.executable,
    sdk_dir: Path | None = None,
) -> Path:
    """Fills out_dir as described above and returns it; an existing layout is refreshed."""
    sdk_dir = sdk_dir or sdk_module_dir()
    missing = [str(sdk_dir / rel) for rel in SDK_FILES.values() if not (sdk_dir / rel).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the Pulumi SDK files the Python host needs are missing: {', '.join(missing)}; "
            "fetch the module with "
            f"`go mod download github.com/pulumi/pulumi/sdk/v3@v{SDK_VERSION}`"
        )
    if not Path(pulumi).is_file():
        raise FileNotFoundError(f"no pulumi binary at {pulumi}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _place_pulumi(Path(pulumi), out_dir / "pulumi")
    _write_executable(out_dir / "language_host.py", LANGUAGE_HOST.read_bytes())
    _write_executable(out_dir / "pulumi-language-python", wrapper_script(python).encode())
    for name, rel in SDK_FILES.items():
        _write_executable(out_dir / name, (sdk_dir / rel).read_bytes())
    return out_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pulumi", type=Path, help="the pulumi binary")
    parser.add_argument("out_dir", type=Path, help="the bin directory to fill")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter with grpcio and the pulumi SDK that runs the host (default: this one)",
    )
    parser.add_argument("--sdk-version", default=SDK_VERSION)
    args = parser.parse_args(argv)
    try:
        assemble(args.pulumi, args.out_dir, args.python, sdk_module_dir(args.sdk_version))
    except FileNotFoundError as error:
        print(f"host_bin.py: {error}", file=sys.stderr)
        return 1
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
