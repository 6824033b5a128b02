"""The world generator: deterministic bytes, and the VOC reader reads back what was drawn."""

import hashlib
from pathlib import Path

import torch

from cdul.core.datasets import open_dataset
from cdul.world.generator import make_scene, make_single, write_voc_world
from cdul.world.shapes import SHAPES


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_voc_world(tmp_path / "a", seed=7, train=20, val=10, progress=False)
    b = write_voc_world(tmp_path / "b", seed=7, train=20, val=10, progress=False)
    digests = _digest_tree(a)
    assert len(digests) == 2 * 30 + 3  # images + xml + classes.txt + two split files
    assert digests == _digest_tree(b)
    c = write_voc_world(tmp_path / "c", seed=8, train=20, val=10, progress=False)
    assert _digest_tree(c) != digests


def test_voc_reader_reads_back_the_drawn_labels(tmp_path):
    root = write_voc_world(tmp_path / "w", seed=3, train=5, val=40, progress=False)
    dataset = open_dataset(f"voc:{root}:val", difficult="include")
    assert dataset.classes == SHAPES
    assert len(dataset) == 40
    truth = dataset.ground_truth_matrix()
    for i, image_id in enumerate(dataset.ids()):
        drawn = make_scene(3, int(image_id.split("_")[1]), stream="val")
        expected = torch.tensor([float(s in drawn.labels) for s in SHAPES])
        assert torch.equal(truth[i], expected), image_id
    # The default excludes difficult objects (VOC devkit): never more positives.
    default = open_dataset(f"voc:{root}:val").ground_truth_matrix()
    assert bool((default <= truth).all())


def test_scenes_have_one_to_four_distinct_objects_and_flags():
    scenes = [make_scene(0, i) for i in range(300)]
    counts = [len(s.objects) for s in scenes]
    assert set(counts) == {1, 2, 3, 4}
    assert 2.1 < sum(counts) / len(counts) < 2.7  # about 2.4 per scene
    assert all(len(s.labels) == len(s.objects) for s in scenes)  # distinct classes
    flags = [o for s in scenes for o in s.objects]
    assert any(o.occluded for o in flags) and any(o.truncated for o in flags)
    assert sum(o.difficult for o in flags) < 0.05 * len(flags)  # rare
    assert all(s.image.size == (128, 128) for s in scenes[:5])


def test_singles_have_captions_mostly_in_the_prompt_form():
    singles = [make_single(0, i) for i in range(400)]
    assert {s.shape for s in singles} == set(SHAPES)
    assert all(s.shape in s.caption for s in singles)
    share = sum(s.caption == f"a photo of a {s.shape}" for s in singles) / len(singles)
    assert 0.4 < share < 0.6
    assert singles[0].image.size == (64, 64)
    assert make_single(0, 5).image.tobytes() == make_single(0, 5).image.tobytes()
