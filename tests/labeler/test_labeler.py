"""The labeler end to end: a real CLIP service on loopback, the real S3 test server,
the embedded world; stored vectors checked against open_clip computed here."""

import io
import json
import random
import shutil
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
import torch
from PIL import Image
from support.same_labels import assert_identical_labels

from cdul import cli
from cdul.core.errors import ConfigError, DatasetError
from cdul.core.pseudo_labels import (
    EVALUATION_CSV,
    EVALUATION_JSON,
    MANIFEST,
    LabelManifest,
    read_pseudo_labels,
)
from cdul.core.storage import open_store
from cdul.labeler.job import label
from cdul.labels.export import ExportConfig, export

pytestmark = pytest.mark.slow


def test_end_to_end_on_the_world_matches_open_clip(make_config, s3_env, world_root, reference,
                                                   capsys):  # fmt: skip
    # Two streams to the one server: answers come back interleaved, matched by image id.
    config = make_config(s3_env, snippet_spec="grid:3x3", limit=300, streams_per_endpoint=2)
    result, labels, evaluation = label(config)
    assert result.images == 300 and result.labeled_now == 300 and not result.skipped
    store = open_store(s3_env)
    m = LabelManifest.from_json(store.read_json(MANIFEST))
    assert m.dataset == f"voc:{world_root}:val" and len(m.classes) == 12
    assert (m.clip_model, m.snippet_spec, m.zeta, m.images) == (
        "cdul-tiny-rn",
        "grid:3x3",
        0.5,
        300,
    )
    assert m.clip_pretrained.endswith(".pt") and m.code_version and m.created
    assert m.shards == ["shard-00000-of-00001"] and m.limit == 300
    # Evaluation, stored beside the labels: final beats global as in the world's report.
    ev = m.evaluation
    assert ev["final"]["mAP"] > ev["global"]["mAP"] + 0.1
    assert ev == store.read_json(EVALUATION_JSON)
    assert ev["final"]["mAP"] == pytest.approx(evaluation.ranking["final"].mean_ap)
    # ...and as labels: F1 at the run's label-free thresholds, below its ceiling.
    hard, best = ev["final"]["labels"], ev["final"]["ceiling"]
    assert hard["macro_f1"] == pytest.approx(evaluation.labels["final"].macro_f1)
    assert 0.3 < hard["macro_f1"] <= best["macro_f1"] and hard["truth_per_image"] > 2
    csv = store.read_text(EVALUATION_CSV).splitlines()
    assert csv[0] == "class,positives,global,aggregate,final,global_f1,aggregate_f1,final_f1"
    assert csv[-1].startswith("mAP,300,")
    # The shard is plain Parquet.
    shard = store.read_bytes("pseudo_labels/shards/shard-00000-of-00001.parquet")
    frame = pd.read_parquet(io.BytesIO(shard))
    assert len(frame) == 300 and list(frame["image_id"][:2]) == labels.ids[:2]
    # Independent reference on a sample: the image file, a 3x3 grid of 42 px tiles.
    sample = random.Random(4).sample(range(300), 6)
    images = [Image.open(Path(world_root, "JPEGImages", f"{labels.ids[i]}.jpg")).convert("RGB")
              for i in sample]  # fmt: skip
    glob = reference(images, labels.classes)
    for k, image in enumerate(images):
        tiles = [image.crop((c * 42, r * 42, c * 42 + 42, r * 42 + 42))
                 for r in range(3) for c in range(3)]  # fmt: skip
        probs = reference(tiles, labels.classes)
        alpha, beta = probs.max(0).values, probs.min(0).values
        agg = torch.where(alpha >= 0.5, alpha, beta)
        expected = {"global": glob[k], "alpha": alpha, "beta": beta, "aggregate": agg,
                    "final": (glob[k] + agg) / 2}  # fmt: skip
        for name, vector in expected.items():
            assert torch.allclose(labels[name][sample[k]], vector, atol=1e-4), name
    # The stored cosines are the answers' (probabilities again with the stored logit scale).
    labels = read_pseudo_labels(store, cosines=True)
    glob, snippets, valid = labels.cosines.padded(m.logit_scale)
    assert valid.all() and snippets.shape == (300, 9, 12)
    assert torch.allclose(glob, labels["global"], atol=1e-6)
    assert torch.allclose(snippets.amax(1), labels["alpha"], atol=1e-6)
    assert torch.allclose(snippets.amin(1), labels["beta"], atol=1e-6)
    # The recipe sweep needs no CLIP call and reproduces the stored recipe's numbers.
    assert cli.main(["label-sweep", s3_env, "--zetas", "0,0.5", "--debias", "none"]) == 0
    out = capsys.readouterr().out
    assert f"{ev['final']['mAP']:.4f}" in out and store.exists("pseudo_labels/recipe_sweep.json")
    rows = store.read_json("pseudo_labels/recipe_sweep.json")["rows"]
    assert len(rows) == (2 + 4) * 3 and {r["aggregation"] for r in rows} == {
        "paper", "max", "mean", "topk:2", "topk:3"}  # fmt: skip
    assert cli.main(["label-report", s3_env]) == 0
    assert f"{100 * ev['final']['mAP']:.1f}" in capsys.readouterr().out


@pytest.mark.compares_runs
def test_two_shards_and_merge_equal_one_run(make_unbatched_config, s3_env, monkeypatch, capsys):
    make_config = make_unbatched_config  # two runs compared (see support/same_labels.py)
    _, whole, _ = label(make_config(f"{s3_env}/whole", limit=60))
    sharded = f"{s3_env}/sharded"
    first, _, _ = label(make_config(sharded, limit=60, num_shards=2, shard_index=0))
    assert first.images == 30
    assert cli.main(["label-merge", sharded]) == 2
    assert "1 of 2 shard(s) missing or unfinished (shard-00001-of-00002)" in capsys.readouterr().err
    # Shard 1 as a Kubernetes Indexed Job pod sees it: the index from the environment.
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    argv = ["label", make_config("").dataset, "-o", sharded, "--endpoint",
            make_config("").endpoints[0], "--snippets", "grid:2x2", "--limit", "60",
            "--recipe", "paper",
            "--num-shards", "2", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "cdul label-merge" in capsys.readouterr().out
    assert cli.main(["label-merge", sharded]) == 0
    assert "60 images in 2 shard(s)" in capsys.readouterr().out
    merged = read_pseudo_labels(open_store(sharded))
    # Bit for bit, thresholds and evaluation too; the shard lists differ (two, one).
    assert_identical_labels(merged, whole, manifests=False)
    assert merged.manifest.evaluation == whole.manifest.evaluation
    # A shard made with another zeta is refused by the merge, naming it and the setting.
    mixed = f"{s3_env}/mixed"
    label(make_config(mixed, limit=60, num_shards=2, shard_index=0))
    label(make_config(mixed, limit=60, num_shards=2, shard_index=1, zeta=0.25))
    assert cli.main(["label-merge", mixed]) == 2
    err = capsys.readouterr().err
    assert "shard-00001-of-00002 was made with other settings" in err
    assert "zeta: shard-00000-of-00002 0.5, shard-00001-of-00002 0.25" in err
    assert not open_store(mixed).exists(MANIFEST)
    # The job itself refuses to add to a run made with other settings.
    with pytest.raises(ConfigError, match=r"other settings.*snippet_spec"):
        label(make_config(f"{s3_env}/whole", limit=60, snippet_spec="grid:3x3"))


@pytest.fixture
def damaged_world(world_root, tmp_path):
    """A copy of the world with image 5 missing."""
    root = Path(shutil.copytree(world_root, tmp_path / "world"))
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()
    (root / "JPEGImages" / f"{ids[5]}.jpg").unlink()
    return root, ids


def test_corrupt_image_is_named_or_skipped_and_reported(make_config, damaged_world, tmp_path,
                                                        capsys):  # fmt: skip
    root, ids = damaged_world
    spec = f"voc:{root}:val"
    with pytest.raises(DatasetError, match=rf"{ids[5]}\.jpg' does not exist.*--skip-bad"):
        label(make_config(f"file://{tmp_path}/strict", dataset=spec, limit=12))
    bad = root / "JPEGImages" / f"{ids[2]}.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: only the service's decoder notices
    with pytest.raises(DatasetError, match=rf"{ids[2]}\.jpg: the CLIP service refused.*--skip"):
        label(make_config(f"file://{tmp_path}/strict", dataset=spec, limit=4))
    endpoint = make_config("").endpoints[0]
    argv = ["label", spec, "-o", f"file://{tmp_path}/skip", "--endpoint", endpoint,
            "--limit", "12", "--skip-bad", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "10 images labeled, 2 skipped" in out and f"skipped {ids[2]} (" in out
    labels = read_pseudo_labels(open_store(f"file://{tmp_path}/skip"))
    assert len(labels) == 10 and ids[2] not in labels.ids and ids[5] not in labels.ids
    skipped = {s["image_id"]: s for s in labels.manifest.skipped}
    assert set(skipped) == {ids[2], ids[5]}
    assert skipped[ids[2]]["path"].endswith(f"{ids[2]}.jpg")
    assert "does not exist" in skipped[ids[5]]["reason"]


def test_images_under_an_s3_prefix(make_config, s3_env, world_root, tmp_path):
    images = open_store(f"{s3_env}-images")
    names = sorted(Path(world_root, "JPEGImages").glob("val_*.jpg"))[:6]
    for path in names:
        images.write_bytes(f"batch/{path.name}", path.read_bytes())
    images.write_text("batch/notes.txt", "not an image")
    classes = (Path(world_root) / "classes.txt").read_text().split()
    _, labels, evaluation = label(
        make_config(s3_env, dataset=f"{s3_env}-images", classes=tuple(classes))
    )
    assert labels.ids == [f"batch/{p.name}" for p in names] and evaluation is None
    assert labels.ground_truth is None and labels.manifest.dataset == f"{s3_env}-images"


def test_export_a_real_labeled_run(make_config, world_root, tmp_path):
    uri = f"file://{tmp_path}/run"
    label(make_config(uri, limit=6))
    out = tmp_path / "tasks.json"
    export(ExportConfig(run=uri, output=str(out), format="label-studio",
                        image_root=str(world_root), threshold=0.2))  # fmt: skip
    tasks = json.loads(out.read_text())
    assert len(tasks) == 6
    for task in tasks:
        relative = unquote(task["data"]["image"].removeprefix("/data/local-files/?d="))
        assert relative == f"JPEGImages/{task['data']['cdul_id']}.jpg"
        assert (world_root / relative).is_file()
    assert any(task["predictions"][0]["result"] for task in tasks)
    export(ExportConfig(run=uri, output=str(tmp_path / "fo.json"), format="fiftyone"))
    paths = json.loads((tmp_path / "fo.json").read_text())["labels"]
    assert len(paths) == 6 and all(Path(p).is_file() for p in paths)
