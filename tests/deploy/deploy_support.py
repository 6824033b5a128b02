"""Helpers for the static deployment checks: rendering, walking pod specs, Dockerfiles,
and checking that a command line names a real entry point of this project."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
K8S = ROOT / "k8s"
OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE_FILES = sorted((ROOT / "deploy").glob("compose*.yaml"))

#: Env/config names that hold credentials: never a literal value.
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ROOT_USER", re.I)

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is required"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template in an object, CRDs included."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in POD_TEMPLATE_KINDS:
        yield name, doc["spec"]["template"]
    elif doc["kind"] == "PyTorchJob":
        for role, spec in doc["spec"]["pytorchReplicaSpecs"].items():
            yield f"{name}[{role}]", spec["template"]


def containers(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = template["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def image_tag(image: str) -> str | None:
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# -- Dockerfiles ---------------------------------------------------------------------


@dataclass
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest), continuation lines joined
    args: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical, buf = [], ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not buf and (not line or line.startswith("#")):
                continue
            if line.startswith("#"):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            logical.append(buf + line)
            buf = ""
        instructions = []
        for line in logical:
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
        args = {}
        for word, rest in instructions:
            if word == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args.setdefault(key.strip(), value.strip())
        return cls(path, instructions, args)

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)

    def final_stage(self) -> list[tuple[str, str]]:
        starts = [i for i, (w, _) in enumerate(self.instructions) if w == "FROM"]
        return self.instructions[starts[-1] :]

    def exec_form(self, word: str) -> list[str] | None:
        found = [rest for w, rest in self.final_stage() if w == word]
        if not found:
            return None
        value = json.loads(found[-1])  # exec (JSON) form only: no shell in between
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), found[-1]
        return value

    def argv(self) -> list[str]:
        return (self.exec_form("ENTRYPOINT") or []) + (self.exec_form("CMD") or [])


# -- entry points ----------------------------------------------------------------------


@cache
def help_text(*argv: str) -> str:
    out = subprocess.run(
        [str(VENV_BIN / argv[0]), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{' '.join(argv)} --help exited {out.returncode}:\n{out.stderr}"
    return out.stdout


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and a != "--help"]


def check_command(argv: list[str]) -> list[str]:
    """Check that ``argv`` starts one of the project's real entry points: the program
    exists in the venv, its ``--help`` runs, and every ``--flag`` given is one it
    documents. Returns the checked programs; ``python -c`` snippets are compiled."""
    assert argv, "empty command"
    program = Path(argv[0]).name
    if program in {"python", "python3"}:
        assert argv[1] == "-c", argv
        compile(argv[2], "<command>", "exec")
        return ["python -c"]
    assert (VENV_BIN / program).is_file(), f"{program} is not installed in the venv"
    if program == "cdul":
        sub = argv[1]
        text = help_text("cdul", sub)
        missing = [f for f in _flags(argv[2:]) if f not in text]
        assert not missing, f"cdul {sub} has no options {missing}"
        return [f"cdul {sub}"]
    if program == "torchrun":
        text = help_text("torchrun")
        assert "--no-python" in argv, "torchrun must start the cdul console script (--no-python)"
        split = argv.index("--no-python")
        missing = [f for f in _flags(argv[1:split]) if f not in text]
        assert not missing, f"torchrun has no options {missing}"
        return ["torchrun", *check_command(argv[split + 1 :])]
    if program == "torchserve":
        text = help_text("torchserve")
        missing = [f for f in _flags(argv[1:]) if f not in text]
        assert not missing, f"torchserve has no options {missing}"
        return ["torchserve"]
    raise AssertionError(f"unknown entry point {shlex.join(argv)}")


def expand_k8s_vars(args: list[str]) -> list[str]:
    """Kubernetes $(VAR) references -> a placeholder value (flags stay as they are)."""
    return [re.sub(r"\$\((\w+)\)", "1", a) for a in args]
