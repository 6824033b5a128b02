"""Dockerfiles: pinned bases, non-root, healthchecks on servers, no credentials, and
ENTRYPOINT/CMD that start the project's real entry points."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import DOCKERFILES, ROOT, SECRET_NAME, Dockerfile, check_command, image_tag

SERVERS = {"clip-service", "torchserve"}
EXPECTED = {"clip-service", "labeler", "trainer", "torchserve"}


def image_name(path) -> str:
    return path.name.removesuffix(".Dockerfile")


def test_one_dockerfile_per_image() -> None:
    assert {image_name(p) for p in DOCKERFILES} == EXPECTED


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_name)
def test_bases_pinned_non_root_no_credentials(path) -> None:
    df = Dockerfile.parse(path)
    stages = set()
    for word, rest in df.instructions:
        if word == "FROM":
            ref, *alias = rest.split()
            ref = df.resolve(ref)
            if ref not in stages:
                tag = image_tag(ref)
                assert tag and tag != "latest" and "$" not in ref, (
                    f"{path.name}: base {ref} not pinned"
                )
            if alias:
                stages.add(alias[-1])
        if word in {"ENV", "ARG", "LABEL"}:
            for name in re.findall(r"(\w+)=", rest):
                assert not SECRET_NAME.search(name), f"{path.name}: {word} {name} in a layer"
        if word in {"COPY", "ADD"} and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for s in sources:
                assert (ROOT / s).exists(), f"{path.name}: COPY {s} does not exist"
                assert dockerignore_admits(s), f"{path.name}: .dockerignore excludes {s}"
    users = [rest for word, rest in df.final_stage() if word == "USER"]
    assert users, f"{path.name}: final stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)"


def dockerignore_admits(path: str) -> bool:
    admitted = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        path = path.rstrip("/")
        # As Docker reads it: a pattern that names a directory also covers what is in it.
        inside = any(fnmatch.fnmatch(path[:i], pattern) for i in range(len(path)) if path[i] == "/")
        if fnmatch.fnmatch(path, pattern) or inside or pattern == "*":
            admitted = negate
    return admitted


def test_dockerignore_keeps_credentials_and_local_state_out() -> None:
    for path in (".env", "deploy/.env", ".venv", ".git", "artifacts", ".cache", "key_file.json"):
        assert not dockerignore_admits(path), path
    text = (ROOT / ".dockerignore").read_text()
    assert "**/.env" in text and "**/key_file.json" in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_name)
def test_healthcheck_on_servers_only(path) -> None:
    df = Dockerfile.parse(path)
    checks = [rest for word, rest in df.final_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1, f"{path.name}: state HEALTHCHECK (or HEALTHCHECK NONE) once"
    if image_name(path) not in SERVERS:
        assert checks[0] == "NONE"
        return
    cmd = json.loads(checks[0][checks[0].index("CMD") + 3 :].strip())
    if cmd[0] == "cdul":  # a project command: run with this venv's cdul
        argv = [str(Path(sys.executable).with_name("cdul")), *cmd[1:]]
    else:
        assert cmd[:2] == ["python", "-c"]
        compile(cmd[2], "<healthcheck>", "exec")
        argv = [sys.executable, "-c", cmd[2]]
    # Run it with nothing listening: it must fail as "unhealthy", not on an import.
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    for bad in ("ImportError", "ModuleNotFoundError", "NameError", "AttributeError", "SyntaxError"):
        assert bad not in out.stderr, out.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_name)
def test_entrypoint_and_cmd_are_real_entry_points(path) -> None:
    df = Dockerfile.parse(path)
    entrypoint = df.exec_form("ENTRYPOINT")
    assert entrypoint, f"{path.name}: ENTRYPOINT in exec (JSON) form"
    checked = check_command(df.argv())
    expected = {
        "clip-service": ["cdul clip-serve"],
        "labeler": ["cdul label"],
        "trainer": ["cdul train"],
        "torchserve": ["torchserve"],
    }[image_name(path)]
    assert checked == expected
    if image_name(path) == "torchserve":
        # The config baked in is the production one, and the image's paths match it.
        assert (
            "services/cdul/serving/config.properties /home/model-server/config.properties"
            in path.read_text()
        )


def test_every_image_shares_the_torch_layers() -> None:
    """The lines from the first FROM to the end of the shared block are the same text in
    every Dockerfile, so Docker builds the Python environment with torch once and every
    image reuses those layers (one ~6 GB copy on disk instead of four)."""

    def shared(path: Path) -> str:
        text = path.read_text()
        start, end = text.index("\nFROM "), text.index("# ---- end of the shared layers")
        return text[start:end]

    blocks = {path.name: shared(path) for path in DOCKERFILES}
    assert len(set(blocks.values())) == 1, sorted(blocks)
    assert "pip install" in next(iter(blocks.values()))
