"""Where the project's files are, found from this file rather than the working directory."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REMOTE_SCRIPTS = REPO_ROOT / "scripts" / "remote"
DOCKER_DIR = REPO_ROOT / "docker"
