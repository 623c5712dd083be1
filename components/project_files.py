"""The project's files that go to the server, found from this module, and their fingerprints."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REMOTE_SCRIPTS_DIR = PROJECT_ROOT / "scripts" / "remote"
DOCKER_DIR = PROJECT_ROOT / "docker"
IGNORED_NAMES = {"__pycache__", ".DS_Store"}

# Where cloud-init writes the first-boot copy, and where the provisioning copies go.
FIRST_BOOT_DIR = "/opt/chi-persist"
REMOTE_HOME_DIR = "/home/cc/chi-persist"
# What prepare-volume grows a volume with: growpart, and the sfdisk it writes GPT
# tables with. Ubuntu's cloud images (CC-Ubuntu24.04's base) ship both; cloud-init
# makes sure, at first boot, before any volume step runs.
VOLUME_TOOL_PACKAGES = ["cloud-guest-utils", "fdisk"]


def tree_files(directory: Path) -> list[Path]:
    """Every file below a directory, in a stable order."""
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and not IGNORED_NAMES.intersection(path.parts)
    )


def tree_digest(*directories: Path) -> str:
    """sha256 over the names (from each directory's parent) and contents of every file below."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in tree_files(directory):
            name = path.relative_to(directory.parent).as_posix()
            content = path.read_bytes()
            digest.update(f"{name}\0{len(content)}\0".encode())
            digest.update(content)
    return digest.hexdigest()


def first_boot_user_data(user: str = "cc") -> str:
    """cloud-init user data: install Docker and pre-pull the stack while the volume attaches.

    The files go to FIRST_BOOT_DIR under the same relative paths as in the project,
    so install-docker.sh finds lib.sh and the compose file (and its build contexts) beside it.
    """
    scripts = [REMOTE_SCRIPTS_DIR / "install-docker.sh", REMOTE_SCRIPTS_DIR / "lib.sh"]
    files = [*scripts, *tree_files(DOCKER_DIR)]
    write_files = [
        {
            "path": f"{FIRST_BOOT_DIR}/{path.relative_to(PROJECT_ROOT).as_posix()}",
            "encoding": "b64",
            "content": base64.b64encode(path.read_bytes()).decode(),
            "permissions": "0755" if path.suffix == ".sh" else "0644",
        }
        for path in files
    ]
    document = {
        "packages": VOLUME_TOOL_PACKAGES,
        "write_files": write_files,
        "runcmd": [
            [
                "bash",
                f"{FIRST_BOOT_DIR}/scripts/remote/install-docker.sh",
                "--user",
                user,
                "--compose-file",
                f"{FIRST_BOOT_DIR}/docker/docker-compose.yaml",
            ]
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=True, width=1000)
