"""Fixtures for the container tests: a Docker daemon, the project's images and the
stand-ins for images no registry can give here (MinIO -> moto's S3 server, nginx-
unprivileged -> Debian's nginx laid out the same way).

Every test here is marked ``containers``: ``make test-containers`` runs them,
``make test`` does not (they build ~6 GB of images). Without a Docker daemon they skip,
saying why; ``.ci/run`` installs and starts one on CI's throwaway machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STAND_INS = {
    "cdul-test/s3:moto": ("s3.Dockerfile", REPO),
    "cdul-test/nginx-unprivileged:debian": ("nginx-unprivileged.Dockerfile", HERE / "images"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.containers)


def docker_missing() -> str | None:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command (Debian: apt-get install docker.io; .ci/run does it on CI)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker daemon answers `docker info` (start dockerd; .ci/run does it on CI)"
    return None


def build_settings() -> list[str]:
    """deploy/docker/build_images.py flags: the local base unless CDUL_PYTHON_IMAGE names
    another; packages from this machine's local pip indexes where it has any, unless
    CDUL_PACKAGES says (pypi or host)."""
    sys.path.insert(0, str(REPO / "deploy" / "docker"))
    from build_images import pip_locations

    packages = os.environ.get("CDUL_PACKAGES") or ("host" if any(pip_locations()) else "pypi")
    return ["--python-image", os.environ.get("CDUL_PYTHON_IMAGE", "local"), "--packages", packages]


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Every project image and stand-in, built (Docker's layer cache makes a rebuild of
    unchanged sources take seconds). Returns the stand-ins' names by what they replace."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    build = [sys.executable, str(REPO / "deploy" / "docker" / "build_images.py")]
    subprocess.run([*build, *build_settings()], check=True, cwd=REPO)
    base = os.environ.get("CDUL_PYTHON_IMAGE", "local").replace("local", "cdul-base:bookworm")
    for name, (dockerfile, context) in STAND_INS.items():
        subprocess.run(
            ["docker", "build", "--quiet", "--network", "host", "-t", name,
             "--build-arg", f"PYTHON_IMAGE={base}",
             "-f", str(HERE / "images" / dockerfile), str(context)],
            check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
    return {
        "minio/minio": "cdul-test/s3:moto",
        "nginxinc/nginx-unprivileged": "cdul-test/nginx-unprivileged:debian",
    }


@pytest.fixture
def docker_label(request: pytest.FixtureRequest) -> Iterator[str]:
    """A label for every container a test starts; all of them are removed at the end."""
    label = f"cdul-test={os.getpid()}-{request.node.name[:40]}"
    yield label
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                            capture_output=True, text=True).stdout.split()  # fmt: skip
    if listed:
        subprocess.run(["docker", "rm", "--force", *listed], capture_output=True)
