"""Install the lock into the venv with uv (``make install``, so ``make test`` and ``make demo``).

    python3 deploy/install.py --venv .venv --lock requirements/dev.txt

Why uv and not pip: the lock holds torch's CUDA build (about 5.5 GB unpacked); pip
installed it in 76 s on a 2-core machine (factor 2.67), uv in 28 s (it unpacks in parallel
into its cache and links from there). Both compile the bytecode at install time
(``--compile-bytecode``; 11 s of uv's 28): where ``PYTHONDONTWRITEBYTECODE`` is set, as
on these machines, Python never writes it on import, and every process of the demo then
compiled torch again (importing torch, torchvision, open_clip and grpc took 8.0 s instead
of 3.9 s). The same files either way: every one is checked against the lock's sha256
(``--require-hashes``), and nothing is resolved (``--no-deps``).

Steps: uv itself from the lock (pip, its hashes), then the lock, then the project
(editable, no dependencies), then ``uv pip check``. Where the packages come from is pip's
own configuration (``pip config list``: ``index-url``, ``extra-index-url``, ``find-links``,
from pip.conf or ``PIP_*``), handed to uv as flags, so a mirror or a disk of wheels that pip
is set up to use serves both. Every index is searched for the best match
(``--index-strategy unsafe-best-match``, pip's own behaviour): safe here because no file is
taken whose hash the lock does not list. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pip's settings that say where packages come from -> uv's flag for each value.
PIP_SOURCES = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
               "find-links": "--find-links"}  # fmt: skip


class InstallError(Exception):
    """The venv cannot be installed; the message says which step and why."""


def lock_entry(lock: Path, package: str) -> str:
    """``package``'s requirement in ``lock``, with its hashes (a requirements file's text)."""
    text = lock.read_text(encoding="utf-8")
    pattern = rf"^{re.escape(package)}==[^\n]*\\\n(?:[ \t]+--hash=[^\n]*\n)+"
    match = re.search(pattern, text, re.M)
    if match is None:
        raise InstallError(f"{lock} has no hashed entry for {package}")
    return match.group(0).replace("\\\n", " ").replace("\n", " ").strip() + "\n"


def pip_sources(config_list: str) -> tuple[list[str], dict[str, str]]:
    """uv's flags and environment for the package sources in ``pip config list``'s output.

    Environment values (``:env:``) win over files, as in pip; a value may hold several
    locations separated by whitespace. pip's ``cert`` (a CA bundle, e.g. a proxy's) becomes
    uv's ``SSL_CERT_FILE``."""
    chosen: dict[str, tuple[int, str]] = {}
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, name = key.rpartition(".")
        if name not in (*PIP_SOURCES, "cert"):
            continue
        rank = 1 if scope == ":env:" else 0
        if name not in chosen or rank >= chosen[name][0]:
            chosen[name] = (rank, value.strip().strip("'\""))
    environment = {"SSL_CERT_FILE": chosen.pop("cert")[1]} if "cert" in chosen else {}
    flags = []
    for name, (_, value) in sorted(chosen.items()):
        for location in value.split():
            flags += [PIP_SOURCES[name], location]
    return flags, environment


def _run(step: str, command: list[str], **kwargs) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, **kwargs)
    except OSError as error:
        raise InstallError(f"{step}: cannot run {command[0]}: {error.strerror}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit {result.returncode}"
        raise InstallError(f"{step} failed: {last} (command: {shlex.join(command)})")
    return result.stdout


def uv_steps(python: Path, uv: Path, lock: Path, sources: list[str]) -> list[tuple[str, list[str]]]:
    """(step, command) for each step after uv itself: the lock, the project, the check."""
    common = [str(uv), "pip", "install", "--quiet", "--python", str(python), "--no-deps"]
    return [
        ("the lock", [*common, "--require-hashes", "--compile-bytecode",
                      "--index-strategy", "unsafe-best-match", *sources, "-r", str(lock)]),
        ("the project", [*common, "--no-build-isolation", "--editable", str(REPO)]),
        ("uv pip check", [str(uv), "pip", "check", "--quiet", "--python", str(python)]),
    ]  # fmt: skip


def _version(uv: Path) -> str | None:
    """The version ``uv --version`` reports, None when there is no working uv there."""
    if not uv.exists():
        return None
    result = subprocess.run([uv, "--version"], capture_output=True, text=True)
    words = result.stdout.split()
    return words[1] if result.returncode == 0 and len(words) > 1 else None


def install(venv: Path, lock: Path) -> None:
    python, uv = venv / "bin" / "python", venv / "bin" / "uv"
    if not python.is_file():
        raise InstallError(f"{venv} has no bin/python: make the venv first")
    pinned = lock_entry(lock, "uv")
    version = pinned.split()[0].split("==")[1]
    if _version(uv) != version:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirement:
            requirement.write(pinned)
            requirement.flush()
            _run("uv from the lock", [str(python), "-m", "pip", "install", "--quiet",
                 "--require-hashes", "--no-deps", "-r", requirement.name])  # fmt: skip
    config = _run("pip config list", [str(python), "-m", "pip", "config", "list"])
    sources, environment = pip_sources(config)
    for step, command in uv_steps(python, uv, lock, sources):
        _run(step, command, env={**os.environ, **environment})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--lock", type=Path, default=REPO / "requirements" / "dev.txt")
    args = parser.parse_args(argv)
    try:
        install(args.venv.resolve(), args.lock.resolve())
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
