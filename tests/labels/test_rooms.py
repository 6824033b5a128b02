"""The rooms stay apart: the tools that read runs (cdul.labels) import neither gRPC nor
the CLIP service, the labeling job, the trainer or open_clip, not even lazily inside a
function, so they run in the labeler's image and anywhere a run can be read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "services" / "cdul" / "labels"
FORBIDDEN = ("grpc", "open_clip", "cdul._proto", "cdul.clip_service", "cdul.labeler",
             "cdul.trainer")  # fmt: skip
MODULES = sorted(
    ".".join(("cdul", "labels", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(
        ".__init__"
    )
    for path in ROOT.rglob("*.py")
)


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def imported_names(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names, wherever it stands."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_names_another_room(path: Path) -> None:
    bad = [name for name in imported_names(path) if _forbidden(name)]
    assert not bad, f"{path.relative_to(ROOT.parent)} imports {bad}"


def test_importing_every_tool_loads_no_other_room() -> None:
    child = (
        "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
        f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", child, *MODULES], capture_output=True,
                          text=True, timeout=300, check=True)  # fmt: skip
    assert len(MODULES) >= 15 and done.stdout.strip() == ""


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cdul.trainer.data import load_train_data\n")
    assert [n for n in imported_names(module) if _forbidden(n)] == ["cdul.trainer.data"]
