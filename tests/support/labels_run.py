"""A small merged run with hand-chosen scores (three folder images, three classes, one
of them a name XML must escape), for the export, import and Label Studio tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from cdul.core.pseudo_labels import LabelManifest, to_table, write_shard
from cdul.core.storage import open_store
from cdul.labels.export import ExportConfig, export
from cdul.labels.merge import merge_shards

# A class name XML must escape, to see the labeling config stay well-formed.
CLASSES = ["cat", "dog", 'fish & "chips" <x>']
IDS = ["a.png", "b.png", "sub/c d.png"]
FINAL = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.49, 0.7], [0.05, 0.3, 0.2]])
# The labels at one threshold 0.5 for every class: 0.5 is a label (>=), 0.49 is not.
LABELS = [["cat", "dog"], [CLASSES[2]], []]
# The run's label-free thresholds, Otsu's per class, worked out by hand on FINAL's columns
# (3 images: the split of the sorted scores with the largest w0 w1 (mu0 - mu1)^2):
#   cat  0.05 0.2 | 0.9   (2/9) * (0.125 - 0.9)^2 = 0.1335 > 0.05 | 0.2 0.9 (0.0556)
#   dog  0.3 | 0.49 0.5   (2/9) * (0.3 - 0.495)^2 = 0.0085 > 0.3 0.49 | 0.5 (0.0025), but
#        2 of 3 images is over the guard's 60%: 0.49 | 0.5 splits the upper group again
#   fish 0.1 0.2 | 0.7    (2/9) * (0.15 - 0.7)^2  = 0.0672 > 0.1 | 0.2 0.7 (0.0272)
THRESHOLDS = [0.9, 0.5, 0.7]
LABEL_FREE = [["cat", "dog"], [CLASSES[2]], []]  # as at 0.5 here


def make_run(tmp_path: Path) -> dict:
    """A merged one-shard run of three folder images with the scores above."""
    images = tmp_path / "images"
    for image_id in IDS:
        (images / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(images / image_id)
    g = torch.Generator().manual_seed(0)
    vectors = {name: torch.rand(3, 3, generator=g) for name in ("global", "alpha", "beta")}
    vectors |= {"aggregate": torch.rand(3, 3, generator=g), "final": FINAL.clone()}
    manifest = LabelManifest(
        dataset=f"folder:{images}", classes=list(CLASSES), template="a photo of a {}",
        clip_model="cdul-tiny-rn", clip_pretrained="/m.pt", snippet_spec="grid:2x2", zeta=0.5,
        num_shards=1, code_version="test", created="2024-01-01T00:00:00+00:00", shard_index=0,
    )  # fmt: skip
    uri = f"file://{tmp_path}/run"
    truth = torch.tensor([[1.0, 1, 0], [0, 0, 1], [0, 1, 0]])
    write_shard(open_store(uri), manifest, to_table(IDS, vectors, truth))
    merge_shards(open_store(uri))
    return {"uri": uri, "images": images, "tmp": tmp_path, "vectors": vectors}


def do_export(run: dict, fmt: str, out: str, **options) -> Path:
    export(ExportConfig(run=run["uri"], output=str(run["tmp"] / out), format=fmt, **options))
    return run["tmp"] / out
