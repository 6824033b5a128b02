"""deploy/compose*.yaml: valid against the Compose specification's JSON schema
(vendored), credentials only from .env, hardened services, real commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_support import (
    COMPOSE_FILES,
    DOCKER,
    ROOT,
    SECRET_NAME,
    Dockerfile,
    check_command,
    image_tag,
)

SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
COMPOSE = ROOT / "deploy" / "compose.yaml"
#: The schema declares draft 2019-09 (as "http://json-schema.org/draft/2019-09/schema#",
#: a spelling jsonschema does not map to its validator): name the validator explicitly.
VALIDATOR = jsonschema.Draft201909Validator


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_valid_against_compose_spec_schema(path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    VALIDATOR.check_schema(schema)
    errors = sorted(VALIDATOR(schema).iter_errors(load(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file() -> None:
    """The validator is live: an unknown service key is refused."""
    schema = json.loads(SCHEMA.read_text())
    broken = {"services": {"x": {"image": "a:1", "comand": ["typo"]}}}
    assert list(VALIDATOR(schema).iter_errors(broken))


def test_the_stack_has_every_component() -> None:
    services = load(COMPOSE)["services"]
    assert {
        "minio",
        "create-bucket",
        "clip-service",
        "torchserve",
        "prometheus",
        "labeler",
        "trainer",
    } <= set(services)
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for one_shot in ("create-bucket", "fetch-model", "labeler", "label-merge", "trainer"):
        assert services[one_shot]["restart"] == "no"


def test_credentials_only_from_env_file() -> None:
    for path in COMPOSE_FILES:
        for name, service in load(path)["services"].items():
            env = service.get("environment", {})
            assert isinstance(env, dict), f"{name}: environment as a mapping"
            for key, value in env.items():
                if SECRET_NAME.search(key):
                    assert re.fullmatch(r"\$\{\w+(:?[?-][^}]*)?\}", str(value)), f"{name}: {key}"
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(example), f"undocumented in .env.example: {used - set(example)}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must not carry a value for {key}"
    assert ".env" in (ROOT / "deploy/.gitignore").read_text().split()


def test_services_hardened_pinned_and_healthy() -> None:
    services = load(COMPOSE)["services"]
    for name, s in services.items():
        assert s.get("read_only") is True, name
        assert s.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        tag = image_tag(s["image"])
        assert tag and tag != "latest", f"{name}: {s['image']}"
        if "build" in s:
            assert (ROOT / "deploy" / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} published beyond loopback"
    # Servers: a healthcheck here or in their Dockerfile.
    for name in ("minio", "prometheus"):
        assert services[name]["healthcheck"]["test"]
    for name in ("clip-service", "torchserve"):
        image = services[name]["image"].split("/", 1)[1].split(":")[0]
        assert "HEALTHCHECK --" in (DOCKER / f"{image}.Dockerfile").read_text()


def test_service_commands_are_real_entry_points() -> None:
    checked = []
    for s in load(COMPOSE)["services"].values():
        if not s["image"].startswith("cdul/"):
            continue
        image = s["image"].split("/", 1)[1].split(":")[0]
        df = Dockerfile.parse(DOCKER / f"{image}.Dockerfile")
        entrypoint = s.get("entrypoint", df.exec_form("ENTRYPOINT"))
        command = s.get("command", [] if "entrypoint" in s else df.exec_form("CMD") or [])
        argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in [*entrypoint, *command]]
        checked += check_command(argv)
    assert {"cdul clip-serve", "cdul label", "cdul label-merge", "cdul train", "torchserve"} <= set(
        checked
    )


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="no docker-compose (Debian: apt-get install docker-compose, v1.29)",
)
@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]])
def test_docker_compose_v1_accepts_the_files(files: list[str]) -> None:
    """Debian's docker-compose 1.29 (no top-level `name:`; the project name comes from
    COMPOSE_PROJECT_NAME in .env) parses and interpolates the stack."""
    env = {"PATH": os.environ["PATH"], "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}
    command = ["docker-compose", *(f"--file={ROOT / 'deploy' / f}" for f in files), "config"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert {"clip-service", "minio", "prometheus"} <= set(rendered["services"])
