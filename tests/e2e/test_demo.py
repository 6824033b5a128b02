"""`cdul demo`, smaller: the whole chain (world -> CLIP service -> labeler -> trainer ->
archive -> TorchServe -> HTTP) in one process tree, which must leave nothing running."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
CDUL = str(Path(sys.executable).with_name("cdul"))


def _ours(tmp_path: Path) -> set[int]:
    """Processes that belong to a demo: a CLIP service, or anything under tmp_path."""
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "clip-serve" in line or str(tmp_path) in line:
            found.add(p.pid)
    return found


def test_demo_runs_the_chain_and_stops_everything(tmp_path, world_models):
    before = _ours(tmp_path)
    command = [
        CDUL,
        "demo",
        "--workdir",
        str(tmp_path / "demo"),
        "--train-scenes",
        "160",
        "--val-scenes",
        "60",
        "--epochs",
        "2",
        "--image-size",
        "64",
        "--show",
        "3",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    for line in (
        "pseudo-label mAP, global",
        "pseudo-label mAP, final",
        "pseudo-label mAP after training",
        "val mAP of the served classifier",
        "served labels, macro-F1 (label-free thresholds)",
        "labels over each class's threshold in the archive, chosen without ground truth",
        "TorchServe READY",
        "SERVING on",
    ):
        assert line in output, line
    table = {
        line.rsplit(maxsplit=1)[0].strip(): float(line.split()[-1])
        for line in output.splitlines()
        if line.startswith("  pseudo-label mAP, ")
    }
    final = next(v for k, v in table.items() if k.startswith("pseudo-label mAP, final"))
    assert final > table["pseudo-label mAP, global (Eq. 2)"]
    assert (tmp_path / "demo" / "run" / "model-store" / "cdul.mar").is_file()
    assert (tmp_path / "demo" / "run" / "training" / "curves.png").is_file()
    # It ends by naming the gallery of the pseudo labels, which is there.
    gallery = (tmp_path / "demo" / "gallery" / "index.html").resolve()
    assert output.rstrip().splitlines()[-1].endswith(str(gallery)), output[-500:]
    assert "160 images" in gallery.read_text() and (gallery.parent / "thumbs").is_dir()
    # Nothing the demo started is still running: no CLIP service, no TorchServe/JVM.
    assert _ours(tmp_path) - before == set()
