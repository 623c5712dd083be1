"""The guest images, built once per recipe and cached outside the repository.

Two kinds come from one recipe: the rehearsal's (cc and its test key baked in)
and the cloud kind the stand-in KVM@TACC boots (cloud-init makes cc from Nova's
config drive, as on Chameleon's images). The recipe is build-image.sh with the
files under guest/; an image lives in `$CHI_PERSIST_CACHE/vm/<recipe digest>/`,
the digest covering the kind, and is rebuilt only when the recipe changes. A
build happens in a temporary directory renamed into place when it succeeds,
under a lock, so a failed or concurrent build never leaves a half image that
looks cached.

Run `python -m tests.vm.image [rehearsal|cloud]` (as root) to build or find an
image and print its directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.vm.failures import RehearsalError

RECIPE_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = RECIPE_DIR / "build-image.sh"
GUEST_FILES = RECIPE_DIR / "guest"
PACKAGES_FILE = GUEST_FILES / "packages.txt"
CLOUD_PACKAGES_NAME = "cloud-packages.txt"
REHEARSAL = "rehearsal"
CLOUD = "cloud"
KINDS = (REHEARSAL, CLOUD)
SUITE = "bookworm"
ROOT_LABEL = "chi-root"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt")
COMPLETE_MARKER = ".complete"
NEEDED_TOOLS = ("debootstrap", "mkfs.ext4", "ssh-keygen", "chroot")
# Images of other recipes unused for this long are removed after a build.
STALE_AFTER_SECONDS = 14 * 24 * 3600


@dataclass(frozen=True)
class GuestImage:
    """A built image: a raw ext4 root disk, the kernel and initramfs to boot it, the SSH key.

    Only the rehearsal kind has an SSH key; the cloud kind authorizes a server's key pair.
    """

    directory: Path
    kind: str = REHEARSAL

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def private_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def kernel_command_line(self) -> str:
        return f"root=LABEL={ROOT_LABEL} rw console=ttyS0 panic=-1"


def cache_dir() -> Path:
    """$CHI_PERSIST_CACHE/vm, the default cache being ~/.cache/chi-persist as in tests/run."""
    base = os.environ.get("CHI_PERSIST_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        base = os.path.join(xdg, "chi-persist")
    return Path(base) / "vm"


def recipe_files() -> list[Path]:
    """Every file whose content decides what the image holds."""
    return [BUILD_SCRIPT, *sorted(path for path in GUEST_FILES.rglob("*") if path.is_file())]


def recipe_digest(kind: str = REHEARSAL) -> str:
    """A short sha256 over the recipe's file names and contents, the Debian release and the kind."""
    _check_kind(kind)
    digest = hashlib.sha256(f"suite={SUITE}\0kind={kind}\0".encode())
    for path in recipe_files():
        content = path.read_bytes()
        name = path.relative_to(RECIPE_DIR).as_posix()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"image kind {kind!r} is not one of {', '.join(KINDS)}")


def debian_mirror(apt_dir: Path = APT_SOURCES, suite: str = SUITE) -> str:
    """The mirror this machine's apt uses for `suite`, or Debian's own when none is configured."""
    candidates = [apt_dir / "sources.list"]
    candidates += sorted((apt_dir / "sources.list.d").glob("*.list"))
    candidates += sorted((apt_dir / "sources.list.d").glob("*.sources"))
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found = (
            _deb822_mirror(text, suite)
            if path.suffix == ".sources"
            else _one_line_mirror(text, suite)
        )
        if found:
            return found
    return FALLBACK_MIRROR


def _one_line_mirror(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            rest = words[1:]
            if rest[0].startswith("["):
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2 and rest[1] == suite:
                return rest[0].rstrip("/")
    return None


def _deb822_mirror(text: str, suite: str) -> str | None:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0].rstrip("/")
    return None


def image_skip_reason() -> str | None:
    """Why the image cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "building the guest image needs root (debootstrap, chroot)"
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools for the guest image: {', '.join(missing)} (tests/run installs them)"
    return None


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_image(
    say: Callable[[str], None] = print, kind: str = REHEARSAL
) -> tuple[GuestImage, bool]:
    """The cached image of a kind for the current recipe, built first if needed; True when built."""
    root = cache_dir()
    image = GuestImage(root / recipe_digest(kind), kind)
    marker = image.directory / COMPLETE_MARKER
    if marker.is_file():
        marker.touch()
        return image, False
    with _build_lock(root):
        if marker.is_file():
            marker.touch()
            return image, False
        _build(image, say)
        _remove_stale_images(root, keep=image.directory)
    return image, True


def _remove_stale_images(root: Path, keep: Path) -> None:
    """Drop images of older recipes that no run has used for a while."""
    now = time.time()
    for marker in root.glob(f"*/{COMPLETE_MARKER}"):
        directory = marker.parent
        if directory != keep and now - marker.stat().st_mtime > STALE_AFTER_SECONDS:
            shutil.rmtree(directory, ignore_errors=True)


def _build(image: GuestImage, say: Callable[[str], None]) -> None:
    reason = image_skip_reason()
    if reason:
        raise RehearsalError("image build", f"cannot build the guest image: {reason}")
    staging = image.directory.with_name(f".building-{image.directory.name}-{os.getpid()}")
    output = staging / "image"
    shutil.rmtree(staging, ignore_errors=True)
    if image.directory.exists():
        # Left by an interrupted rename or an older layout: it has no completion marker.
        shutil.rmtree(image.directory)
    staging.mkdir(parents=True)
    log = staging / "build.log"
    mirror = debian_mirror()
    say(
        f"building the {image.kind} guest image in {image.directory} from {mirror} "
        "(a few minutes, once)"
    )
    started = time.monotonic()
    try:
        command = [
            "bash", str(BUILD_SCRIPT),
            "--output", str(output),
            "--kind", image.kind,
            "--mirror", mirror,
            "--packages", str(PACKAGES_FILE),
            "--guest-files", str(GUEST_FILES),
            "--suite", SUITE,
        ]  # fmt: skip
        key = staging / "id_ed25519"
        if image.kind == REHEARSAL:
            _run_logged(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "chi-persist-rehearsal",
                 "-f", str(key)],
                log, "image build: SSH key",
            )  # fmt: skip
            command += ["--public-key", f"{key}.pub"]
        else:
            command += ["--apt-packages", str(GUEST_FILES / CLOUD_PACKAGES_NAME)]
        _run_logged(command, log, "image build")
        if image.kind == REHEARSAL:
            shutil.move(key, output / "id_ed25519")
            shutil.move(f"{key}.pub", output / "id_ed25519.pub")
        shutil.copy(log, output / "build.log")
        (output / COMPLETE_MARKER).write_text(f"built in {time.monotonic() - started:.0f}s\n")
        output.rename(image.directory)
    finally:
        _remove_staging(staging)


def _run_logged(command: list[str], log: Path, phase: str) -> None:
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        raise RehearsalError(
            phase,
            f"{command[0]} {command[1] if len(command) > 1 else ''} exited with "
            f"{result.returncode}",
            output=log.read_text(errors="replace"),
        )


def _remove_staging(staging: Path) -> None:
    """Remove a staging directory, never following a mount that a failed build left."""
    if not staging.exists():
        return
    mounts = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False
    ).stdout.split()
    inside = [target for target in mounts if target.startswith(f"{staging}/")]
    for target in sorted(inside, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(staging)], check=False)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    kind = arguments[0] if arguments else REHEARSAL
    if len(arguments) > 1 or kind not in KINDS:
        print(f"usage: python -m tests.vm.image [{'|'.join(KINDS)}]", file=sys.stderr)
        return 2
    try:
        image, built = ensure_image(kind=kind)
    except RehearsalError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{image.directory} ({'built now' if built else 'cached'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
