"""Each image installs only its component's extra (pyproject.toml): check, without Docker,
that every component's entry modules import with nothing else than that extra (and what
it pulls in) available, and that the groups keep what the issue forbids out.

A child interpreter sees a site-packages holding only the files of the distributions
`pip install cdul[EXTRA]` installs (symlinks into the venv's), then imports the modules.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

# component extra -> the modules its image runs (entry points and what they load at run time)
ENTRY_MODULES = {
    "clip-service": [
        "cdul.clip_service.command", "cdul.clip_service.server", "cdul.clip_service.servicer",
        "cdul.core.clip_models",
        "cdul.core.clip_preprocess", "cdul.core.storage", "grpc_health.v1.health",
    ],
    "labeler": [
        "cdul.labeler.command", "cdul.labeler.job", "cdul.labeler.relabel", "cdul.core.evaluation",
        "cdul.labels.merge", "cdul.labels.sweep", "cdul.labels.report",
        "cdul.labels.gallery.command", "cdul.labels.export", "cdul.labels.import_",
        "cdul.labels.queue", "cdul.label_studio.backend",
    ],
    "trainer": [
        "cdul.trainer.command", "cdul.trainer.loop", "cdul.serving.archive",
        "model_archiver.model_packaging",
    ],
    "serving": [
        "cdul.serving.handler", "cdul.serving.command", "cdul.core.storage", "ts.model_server",
        # the backend worker TorchServe's frontend starts for each model worker
        "ts.model_service_worker", "ts.torch_handler.base_handler",
    ],
}  # fmt: skip
# component extra -> packages its entry modules must not load (the labeler's image runs
# the job and the tools that read runs, never the trainer's code)
KEPT_OUT = {"labeler": ("cdul.trainer",)}


def _closure(extra: str) -> set[str]:
    """Normalised names of the distributions `pip install cdul[extra]` would install."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [("cdul", (extra,))]
    while todo:
        name, extras = todo.pop()
        if (_norm(name), extras) in seen:
            continue
        seen.add((_norm(name), extras))
        for text in metadata.distribution(name).requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {name for name, _ in seen}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _site_with_only(extra: str, site: Path) -> Path:
    """A site-packages holding only the closure's files (symlinks), as an image would."""
    site.mkdir()
    (site / "cdul").symlink_to(REPO / "services" / "cdul")
    for dist in metadata.distributions():
        if _norm(dist.metadata["Name"]) not in _closure(extra) - {"cdul"}:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            source = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and source.exists():
                with contextlib.suppress(FileExistsError):
                    (site / top).symlink_to(source)
    return site


@pytest.mark.parametrize("extra", sorted(ENTRY_MODULES))
def test_each_component_imports_with_only_its_extra(extra: str, tmp_path: Path) -> None:
    site = _site_with_only(extra, tmp_path / "site-packages")
    kept_out = KEPT_OUT.get(extra, ())
    child = (
        "import importlib, sys; "
        f"sys.path[:] = [p for p in sys.path if 'packages' not in p] + [{str(site)!r}]; "
        "[importlib.import_module(m) for m in sys.argv[1:]]; "
        f"loaded = sorted(m for m in sys.modules if m.startswith({kept_out!r})); "
        "sys.exit(f'loaded {loaded}') if loaded else None"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", child, *ENTRY_MODULES[extra]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _names(extra: str) -> set[str]:
    return {req.split("==")[0].split("[")[0].lower() for req in EXTRAS[extra]}


def test_groups_keep_other_components_out() -> None:
    serving = _names("serving")
    assert not serving & {"grpcio", "open_clip_torch", "matplotlib"}, serving
    assert "torchserve" not in _names("labeler")
    assert "open_clip_torch" not in _names("labeler") | _names("trainer")
    # dev installs every component (the suite tests them all)
    assert "cdul[world]" in EXTRAS["dev"]
    assert EXTRAS["world"][0] == "cdul[clip-service,labeler,trainer,serving]"
