"""Build the project's container images: ``make images`` (standard library only).

    python3 deploy/docker/build_images.py [--images clip-service labeler ...]
        [--python-image IMAGE | --python-image local] [--packages pypi|host] [--tag TAG]

* ``--python-image``: the base (the Dockerfiles' ``PYTHON_IMAGE``). Default: the official
  slim image the Dockerfiles name. ``local`` builds (once) and uses ``cdul-base:bookworm``
  from Debian's packages (deploy/base/build-local-base.sh), for machines that reach no
  container registry.
* ``--packages``: where pip inside the build finds packages. ``pypi`` (default): PyPI, and
  the labeler's torch from PyTorch's CPU index. ``host``: the package indexes and
  find-links directories this machine's pip is configured with (``pip config list``) that
  are local directories, served read-only on loopback for the length of the build, PyPI
  for everything else, and the labeler's torch from them too (PyTorch's CPU index is not
  consulted). The build containers use the host network to reach them.

Every image shares its first layers (the Python environment with torch): Docker builds
them once. Prints each image's build time and size, and writes them to
``artifacts/images.csv``.
"""

from __future__ import annotations

import argparse
import csv
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("clip-service", "labeler", "trainer", "torchserve")
LOCAL_BASE = "cdul-base:bookworm"
DEFAULT_PORT = 8799  # fixed, so the build arguments (and so Docker's layer cache) repeat


class BuildError(Exception):
    """A build step failed; the message says which."""


def project_version() -> str:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def pip_locations() -> tuple[list[Path], list[Path]]:
    """(index directories, find-links directories) that this machine's pip reads from disk."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    indexes: list[Path] = []
    links: list[Path] = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        target = {"index-url": indexes, "extra-index-url": indexes, "find-links": links}.get(option)
        for entry in value.strip().strip("'\"").split() if target is not None else []:
            path = Path(urllib.parse.urlparse(entry).path if "://" in entry else entry)
            if (
                not entry.startswith(("http://", "https://"))
                and path.is_dir()
                and path not in target
            ):
                target.append(path)
    return indexes, links


class _Mounts(http.server.SimpleHTTPRequestHandler):
    """Serves ``/<n>/...`` from the n-th mounted directory, nothing else."""

    mounts: tuple[Path, ...] = ()

    def translate_path(self, path: str) -> str:
        head, _, rest = urllib.parse.urlparse(path).path.lstrip("/").partition("/")
        if not head.isdigit() or int(head) >= len(self.mounts):
            return "/nonexistent"
        root = self.mounts[int(head)]
        target = (root / urllib.parse.unquote(rest)).resolve()
        return str(target) if target.is_relative_to(root.resolve()) else "/nonexistent"

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_host_packages(port: int) -> Iterator[dict[str, str]]:
    """Serve the host's local pip indexes on 127.0.0.1:port; yield the build arguments."""
    indexes, links = pip_locations()
    if not indexes and not links:
        raise BuildError("--packages host: this machine's pip reads no local index or wheels")
    # An index's links are relative (../../files/x.whl): serve the directory above it.
    mounts = tuple(dict.fromkeys([*(i.parent for i in indexes), *links]))
    handler = type("Mounts", (_Mounts,), {"mounts": mounts})
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as error:
        raise BuildError(f"cannot serve the local packages on 127.0.0.1:{port}: {error}") from None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    index_urls = [f"{base}/{mounts.index(i.parent)}/{i.name}/" for i in indexes]
    link_urls = [f"{base}/{mounts.index(d)}/" for d in links]
    try:
        yield {
            "PIP_EXTRA_INDEX_URL": " ".join(index_urls),
            "PIP_FIND_LINKS": " ".join(link_urls),
            "TORCH_INDEX_URL": "",
        }
    finally:
        server.shutdown()
        server.server_close()


def ensure_local_base() -> str:
    probe = subprocess.run(["docker", "image", "inspect", LOCAL_BASE], capture_output=True)
    if probe.returncode != 0:
        print(f"building the local base {LOCAL_BASE} (deploy/base/build-local-base.sh)")
        script = REPO / "deploy" / "base" / "build-local-base.sh"
        if subprocess.run([str(script), LOCAL_BASE]).returncode != 0:
            raise BuildError(f"could not build {LOCAL_BASE}")
    return LOCAL_BASE


def build(image: str, tag: str, build_args: dict[str, str]) -> tuple[float, int]:
    """docker build one image; return (seconds, size in bytes)."""
    name = f"cdul/{image}:{tag}"
    command = ["docker", "build", "--network", "host", "-f",
               f"deploy/docker/{image}.Dockerfile", "-t", name]  # fmt: skip
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: works everywhere
    started = time.monotonic()
    if subprocess.run([*command, "."], cwd=REPO, env=env).returncode != 0:
        raise BuildError(f"docker build of {name} failed (see above)")
    seconds = time.monotonic() - started
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", name],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return seconds, int(size)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", choices=IMAGES, default=list(IMAGES))
    parser.add_argument("--tag", default=None, help="image tag (default: the project version)")
    parser.add_argument("--python-image", default="", help="base image, or 'local'")
    parser.add_argument("--packages", choices=("pypi", "host"), default="pypi")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="for --packages host")
    parser.add_argument("--report", type=Path, default=REPO / "artifacts" / "images.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = args.tag or project_version()
    try:
        if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
            raise BuildError("no Docker daemon answers (`docker info` fails)")
        build_args: dict[str, str] = {}
        if args.python_image:
            local = args.python_image == "local"
            build_args["PYTHON_IMAGE"] = ensure_local_base() if local else args.python_image
        rows = []
        host = args.packages == "host"
        with serve_host_packages(args.port) if host else nullcontext({}) as package_args:
            for image in args.images:
                seconds, size = build(image, tag, {**build_args, **package_args})
                rows.append((f"cdul/{image}:{tag}", round(seconds, 1), round(size / 1e9, 2)))
    except BuildError as error:
        print(f"make images: error: {error}", file=sys.stderr)
        return 2
    args.report.parent.mkdir(parents=True, exist_ok=True)
    with args.report.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "build_s", "size_gb"))
        writer.writerows(rows)
    print(f"\n{'image':<32}{'build s':>10}{'size GB':>10}")
    for name, seconds, size in rows:
        print(f"{name:<32}{seconds:>10.1f}{size:>10.2f}")
    print(f"(written to {args.report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
