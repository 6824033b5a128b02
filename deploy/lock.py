"""The lock: every package each install set gets, with versions and hashes (``make lock``).

    python3 deploy/lock.py            # resolve pyproject.toml's pins into requirements/*.txt
    python3 deploy/lock.py --check    # exit 1, saying what differs, when they disagree

``pyproject.toml`` pins the project's direct dependencies; the transitive ones are
resolved here, once, by uv (``uv pip compile --generate-hashes``, for Linux x86_64 and
Python 3.11, the platform of every image and CI) and written to ``requirements/``:

* ``dev.txt``: ``make install`` (so ``make test``, ``make demo``) and CI. Everything,
  torch and its CUDA libraries included: pip takes those from the machine's local
  wheels, which are PyPI's files, so their hashes are PyPI's.
* ``torch-base.txt``: the images' shared first layer: what torch and torchvision need,
  without torch's build (torch, torchvision, triton, nvidia-*, cuda-*). The images take
  that build from PyTorch's CPU index (or the local wheels), whose files differ from
  PyPI's: it is installed after this layer, pinned by version, and finds every other
  dependency already installed.
* ``clip-service.txt``, ``labeler.txt``, ``trainer.txt``, ``serving.txt``: one image's
  component (its extra), also without torch's build, at torch-base's versions.
* ``label-studio.txt``: the Label Studio that CI installs beside the project for the
  review loop's test (the ``label-studio`` dependency group).

Each file starts with a digest of the pyproject.toml fields it was resolved from, so
``--check`` (and ``tests/deploy/test_lock.py``) notice any changed pin, extra or group.
Standard library only; uv comes from the dev venv (``make lock``) or ``--uv PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# torch's build: what the images take from PyTorch's own index rather than the lock.
TORCH_BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
DIGEST_LINE = "# pyproject-digest: "


class LockError(Exception):
    """The lock cannot be made or read; the message says why."""


@dataclass(frozen=True)
class InstallSet:
    """One lock file: which of pyproject.toml's requirements it resolves."""

    name: str
    extras: tuple[str, ...] = ()
    group: str | None = None
    core_only: bool = False  # the core dependencies alone (the images' torch layer)
    with_torch_build: bool = False

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


INSTALL_SETS: tuple[InstallSet, ...] = (
    InstallSet("dev", extras=("dev",), with_torch_build=True),
    InstallSet("torch-base", core_only=True),
    InstallSet("clip-service", extras=("clip-service",)),
    InstallSet("labeler", extras=("labeler",)),
    InstallSet("trainer", extras=("trainer",)),
    InstallSet("serving", extras=("serving",)),
    InstallSet("label-studio", group="label-studio"),
)


def read_pyproject(path: Path = REPO / "pyproject.toml") -> dict:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def inputs_digest(pyproject: dict, install_set: InstallSet) -> str:
    """sha256 of the pyproject fields ``install_set`` is resolved from."""
    project = pyproject["project"]
    if install_set.group is not None:
        fields = {"group": pyproject.get("dependency-groups", {}).get(install_set.group)}
    else:
        fields = {
            "dependencies": project.get("dependencies", []),
            "optional-dependencies": project.get("optional-dependencies", {}),
        }
    fields["requires-python"] = project.get("requires-python")
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def direct_pins(pyproject: dict, install_set: InstallSet) -> dict[str, str]:
    """name -> version of each ``name==version`` the set asks for directly (extras expanded)."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    if install_set.group is not None:
        wanted = list(pyproject.get("dependency-groups", {}).get(install_set.group, []))
    else:
        wanted = list(project.get("dependencies", []))
        pending, seen = list(install_set.extras), set()
        while pending:
            extra = pending.pop()
            if extra in seen:
                continue
            seen.add(extra)
            for requirement in optional.get(extra, []):
                if (inner := re.fullmatch(r"cdul\[([^\]]+)\]", requirement)) is not None:
                    pending += [e.strip() for e in inner.group(1).split(",")]
                else:
                    wanted.append(requirement)
    pins = {}
    for requirement in wanted:
        name, sep, version = requirement.partition("==")
        if sep:
            pins[canonical(name.partition("[")[0])] = version.strip()
    if not install_set.with_torch_build:
        pins = {n: v for n, v in pins.items() if not TORCH_BUILD.match(n)}
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def read_lock(path: Path) -> tuple[str | None, dict[str, str]]:
    """(the digest line's value, name -> version) of one lock file."""
    if not path.is_file():
        raise LockError(f"{path.relative_to(REPO)} is missing: run `make lock`")
    digest, pins = None, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(DIGEST_LINE):
            digest = line[len(DIGEST_LINE) :].strip()
        elif (match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)) is not None:
            pins[canonical(match.group(1))] = match.group(2)
    return digest, pins


def problems(pyproject: dict) -> list[str]:
    """Every way the lock files disagree with ``pyproject``; empty when they agree."""
    found = []
    for install_set in INSTALL_SETS:
        try:
            digest, locked = read_lock(install_set.path)
        except LockError as error:
            found.append(str(error))
            continue
        name = install_set.path.relative_to(REPO)
        for package, version in direct_pins(pyproject, install_set).items():
            if locked.get(package) != version:
                found.append(
                    f"{name}: {package} is {locked.get(package, 'absent')}, pyproject.toml "
                    f"pins {version}"
                )
        if digest != inputs_digest(pyproject, install_set):
            found.append(f"{name} was resolved from other pyproject.toml pins")
        build = sorted(filter(TORCH_BUILD.match, locked))
        if build and not install_set.with_torch_build:
            found.append(f"{name} holds torch's build ({', '.join(build)})")
    return found


def compile_set(uv: str, install_set: InstallSet, pyproject: dict) -> None:
    """Resolve one set; the versions it already locks are kept where they still fit
    (uv prefers an existing output file's pins), so adding one pin moves nothing else."""
    with tempfile.TemporaryDirectory(prefix="cdul-lock-") as tmp:
        output = Path(tmp) / install_set.path.name
        if install_set.path.is_file():
            shutil.copyfile(install_set.path, output)
        command = [uv, "pip", "compile", "--generate-hashes", "--no-header", "--quiet",
                   "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
                   "--output-file", str(output)]  # fmt: skip
        if install_set.group is not None:
            command += ["--group", f"pyproject.toml:{install_set.group}"]
        else:
            command += ["pyproject.toml", *(f"--extra={e}" for e in install_set.extras)]
        if not install_set.with_torch_build:
            base = LOCK_DIR / "torch-base.txt"
            if install_set.extras and base.is_file():
                command += ["--constraint", str(base)]  # one version of each shared package
            resolved = _run(command, install_set, output)
            excluded = sorted(
                {n for n in (canonical(m) for m in re.findall(r"^(\S+)==", resolved, re.M))
                 if TORCH_BUILD.match(n)}
            )  # fmt: skip
            command += [f"--no-emit-package={n}" for n in excluded]
        text = _run(command, install_set, output)
    header = (
        f"# {install_set.path.name}: resolved from pyproject.toml by `make lock` "
        f"(deploy/lock.py); do not edit.\n{DIGEST_LINE}{inputs_digest(pyproject, install_set)}\n"
    )
    install_set.path.write_text(header + text, encoding="utf-8")


def _run(command: list[str], install_set: InstallSet, output: Path) -> str:
    """Run uv; the lock it wrote to ``output``."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise LockError(f"uv could not resolve {install_set.name}: {result.stderr.strip()}")
    return output.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--uv", default=str(REPO / ".venv" / "bin" / "uv"), help="uv to run")
    args = parser.parse_args(argv)
    pyproject = read_pyproject()
    try:
        if not args.check:
            LOCK_DIR.mkdir(exist_ok=True)
            # torch-base first: the component sets are resolved within its versions.
            ordered = sorted(INSTALL_SETS, key=lambda s: not s.core_only)
            for install_set in ordered:
                compile_set(args.uv, install_set, pyproject)
                print(f"wrote {install_set.path.relative_to(REPO)}")
        found = problems(pyproject)
    except LockError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in found:
        print(f"lock drift: {problem}", file=sys.stderr)
    if found:
        print("run `make lock` and commit requirements/", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
