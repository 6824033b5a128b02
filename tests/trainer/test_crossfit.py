"""``cdul cross-fit`` on the world's 300 scenes: each image predicted by the one fold's
classifier that did not train on it, resumable; ``label-queue`` then ranks by it; and
``--hold-out`` / reviewed labels in the trainer."""

from __future__ import annotations

import json

import pytest
import torch
from support.world_labels import write_labels

from cdul.cli import main
from cdul.core.classifier import build_classifier
from cdul.core.datasets import open_dataset
from cdul.core.errors import ConfigError
from cdul.core.storage import open_store
from cdul.core.transforms import eval_transform
from cdul.labels import out_of_fold
from cdul.labels.queue import QueueConfig, write_queue
from cdul.labels.reviews import ReviewEvent, write_events
from cdul.trainer.crossfit import FOLDS_PREFIX
from cdul.trainer.data import fold_index, load_train_data

pytestmark = pytest.mark.slow

SMALL = [
    "--arch",
    "resnet18",
    "--image-size",
    "64",
    "--batch-size",
    "32",
    "--lr",
    "1e-4",
    "--epochs",
    "1",
    "--no-progress",
    "--seed",
    "0",
]


def test_cross_fit_predicts_each_image_out_of_sample_and_resumes(
    world_labels, world_root, world_backbone, tmp_path
):
    run = write_labels(world_labels, f"file://{tmp_path / 'run'}")
    args = [
        "cross-fit",
        run,
        f"voc:{world_root}:train",
        "--folds",
        "2",
        "--backbone-weights",
        str(world_backbone),
        *SMALL,
    ]
    assert main(args) == 0
    store = open_store(run)
    found = out_of_fold.read(store)
    assert found is not None and sorted(found.ids) == sorted(world_labels.ids)
    assert found.folds.tolist() == [fold_index(i, 2) for i in found.ids]
    dataset = open_dataset(f"voc:{world_root}:train")
    position = {image_id: k for k, image_id in enumerate(dataset.ids())}
    for k in (0, 1):
        fold = open_store(store.uri_for(f"{FOLDS_PREFIX}/fold-{k}"))
        held = [i for i in found.ids if fold_index(i, 2) == k]
        # It trained on the other fold only, and no archive was built.
        assert fold.read_json("training/config.json")["images"] == len(found.ids) - len(held)
        assert not fold.exists("model-store/cdul.mar")
        # Its stored predictions are its weights' outputs on the fold it did not see.
        model = build_classifier("resnet18", len(world_labels.classes))
        model.load_state_dict(
            torch.load(_local(fold, "model-store/classifier.pt", tmp_path), weights_only=True)
        )
        model.eval()
        transform = eval_transform(64)
        with torch.inference_mode():
            pixels = torch.stack([transform(dataset.load(position[i]).image) for i in held])
            expected = torch.sigmoid(model(pixels))
        rows = [found.ids.index(i) for i in held]
        torch.testing.assert_close(found.probabilities[rows], expected, rtol=0, atol=1e-5)
        thresholds = json.loads(fold.read_text("training/thresholds.json"))
        assert thresholds["source"].startswith("label-free")
    # Rerunning resumes: no fold trains again; the predictions stay.
    metrics = store.read_text(f"{FOLDS_PREFIX}/fold-0/training/metrics.jsonl")
    assert main(args) == 0
    assert store.read_text(f"{FOLDS_PREFIX}/fold-0/training/metrics.jsonl") == metrics
    again = out_of_fold.read(store)
    torch.testing.assert_close(again.probabilities, found.probabilities, rtol=0, atol=1e-6)
    # The queue uses them; a reviewed image leaves it.
    _, rows, priorities = write_queue(QueueConfig(run=run))
    assert "out-of-fold classifier (2 folds)" in priorities.source
    assert len(rows) == len(world_labels.ids) * len(world_labels.classes)
    first = rows[0][1]
    write_events(store, [ReviewEvent("ANNOTATION_CREATED", 1, first, 1, ["circle"])], "test")
    _, rows, priorities = write_queue(QueueConfig(run=run, top=50))
    assert len(rows) == 50 and first not in {r[1] for r in rows}
    assert store.read_text("review/queue.csv").splitlines()[0].startswith("rank,image_id,class")


def test_reviewed_labels_are_kept_through_alignment(
    world_labels, world_root, world_backbone, tmp_path, capsys
):
    run = write_labels(world_labels, f"file://{tmp_path / 'run'}")
    store = open_store(run)
    image_id = world_labels.ids[5]
    chosen = [world_labels.classes[0], world_labels.classes[3]]
    write_events(store, [ReviewEvent("ANNOTATION_CREATED", 1, image_id, 1, chosen)], "test")
    data = load_train_data(run, f"voc:{world_root}:train", None, "final", 64)
    expected = torch.zeros(len(world_labels.classes))
    expected[[0, 3]] = 1.0
    assert torch.equal(data.initial_labels[5], expected) and data.reviewed.sum() == 1
    assert (
        main(
            [
                "train",
                run,
                f"voc:{world_root}:train",
                "--backbone-weights",
                str(world_backbone),
                "--no-archive",
                "--label-step",
                "1",
                *SMALL,
            ]
        )
        == 0
    )
    latent = torch.load(_local(store, "training/checkpoint.pt", tmp_path), weights_only=False)[
        "latent"
    ]
    moved = torch.sigmoid(latent)
    assert not torch.allclose(moved, data.initial_labels, atol=1e-3)  # alignment ran ...
    torch.testing.assert_close(moved[5], expected, rtol=0, atol=1e-5)  # ... but not here
    # New reviews after the run: resuming it would ignore them, so it refuses.
    write_events(store, [ReviewEvent("ANNOTATION_CREATED", 2, world_labels.ids[6], 2, [])], "test")
    train = ["train", run, f"voc:{world_root}:train", "--backbone-weights", str(world_backbone),
             "--no-archive", "--label-step", "1", *SMALL]  # fmt: skip
    assert main(train) == 2
    assert "reviewed labels changed since" in capsys.readouterr().err
    assert main([*train, "--output", f"file://{tmp_path / 'reviewed'}"]) == 0


def test_hold_out_is_checked(capsys):
    assert main(["train", "file:///x", "voc:/x:train", "--hold-out", "1of2"]) == 2
    assert "--hold-out must be K/N (e.g. 0/2), got '1of2'" in capsys.readouterr().err
    assert main(["train", "file:///x", "voc:/x:train", "--hold-out", "2/2"]) == 2
    assert "need N >= 2 folds and 0 <= K < N" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--folds must be >= 2"):
        import argparse

        from cdul.trainer.crossfit import run

        run(argparse.Namespace(folds=1))


def _local(store, key, tmp_path):
    target = tmp_path / key.replace("/", "_")
    store.read_file(key, target)
    return target
