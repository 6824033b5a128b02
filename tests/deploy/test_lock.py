"""The lock (requirements/*.txt, `make lock`) agrees with pyproject.toml, and every place
that installs packages installs from it: the venv (Makefile, so CI), each image, and the
Label Studio that CI installs."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys

import pytest
from deploy_support import DOCKERFILES, ROOT

_spec = importlib.util.spec_from_file_location("cdul_lock", ROOT / "deploy" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
sys.modules["cdul_lock"] = lock  # dataclasses look their module up by name
_spec.loader.exec_module(lock)


def test_lock_agrees_with_pyproject() -> None:
    found = lock.problems(lock.read_pyproject())
    assert not found, "\n".join(found) + "\nrun `make lock` and commit requirements/"


@pytest.mark.parametrize(
    ("package", "install_set"), [("numpy", "dev"), ("grpcio", "labeler"), ("torch", "dev")]
)
def test_a_changed_pin_is_drift(package: str, install_set: str) -> None:
    """The companion: the same check fails, naming the package and the file, once one
    pin in pyproject.toml moves (here in memory) and the lock does not follow."""
    pyproject = copy.deepcopy(lock.read_pyproject())
    project = pyproject["project"]
    lists = [project["dependencies"], *project["optional-dependencies"].values()]
    changed = False
    for requirements in lists:
        for i, requirement in enumerate(requirements):
            if requirement.startswith(f"{package}=="):
                requirements[i] = f"{package}==0.0.1"
                changed = True
    assert changed
    found = lock.problems(pyproject)
    assert f"requirements/{install_set}.txt: {package} is " in "\n".join(found)
    assert any(f"{package} is" in p and "pins 0.0.1" in p for p in found)
    assert any("was resolved from other pyproject.toml pins" in p for p in found)


def test_a_new_extra_requirement_is_drift() -> None:
    pyproject = copy.deepcopy(lock.read_pyproject())
    pyproject["project"]["optional-dependencies"]["trainer"].append("rich==14.0.0")
    found = "\n".join(lock.problems(pyproject))
    assert "requirements/trainer.txt: rich is absent, pyproject.toml pins 14.0.0" in found
    assert "requirements/dev.txt: rich is absent" in found  # dev includes the trainer


def test_every_locked_package_has_version_and_hash() -> None:
    for install_set in lock.INSTALL_SETS:
        text = install_set.path.read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert len(entries) > 5, install_set.name
        for entry in entries:
            head = entry.splitlines()[0]
            assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._\[\],-]*==\S+ \\$", head), head
            assert "--hash=sha256:" in entry, head


def test_the_images_lock_leaves_torchs_build_to_the_torch_index() -> None:
    """The images take torch's build from PyTorch's CPU index (files that differ from
    PyPI's), so no image lock holds torch, torchvision or the CUDA libraries; the venv's
    lock holds them all (the machine's local wheels are PyPI's files)."""
    _, dev = lock.read_lock(lock.LOCK_DIR / "dev.txt")
    assert {"torch", "torchvision", "nvidia-cudnn-cu13"} <= set(dev)
    for name in ("torch-base", "clip-service", "labeler", "trainer", "serving"):
        _, pins = lock.read_lock(lock.LOCK_DIR / f"{name}.txt")
        assert not [p for p in pins if lock.TORCH_BUILD.match(p)], name
        assert pins["numpy"] == dev["numpy"]  # one version everywhere


def test_every_install_uses_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    # the venv's one install step (tests/deploy/test_install.py)
    assert "deploy/install.py --venv $(VENV) --lock $(LOCK)" in makefile
    assert "LOCK := requirements/dev.txt" in makefile
    assert re.search(r"pip install[^\n]*-e '?\.\[", makefile) is None  # no unlocked extras
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-r requirements/label-studio.txt" in ci and "label-studio==" not in ci
    extras = {"clip-service": "clip-service", "labeler": "labeler", "trainer": "trainer",
              "torchserve": "serving"}  # fmt: skip
    for path in DOCKERFILES:
        text = path.read_text()
        extra = extras[path.name.removesuffix(".Dockerfile")]
        assert "pip install --require-hashes --no-deps -r /src/requirements/torch-base.txt" in text
        assert f"pip install --require-hashes --no-deps -r /src/requirements/{extra}.txt" in text
        assert "pip install --no-deps --no-build-isolation /src && pip check" in text
        unlocked = [line for line in text.splitlines() if re.search(r'pip install "?/src\[', line)]
        assert not unlocked, path.name
    assert "!requirements/" in (ROOT / ".dockerignore").read_text()
