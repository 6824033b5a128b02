"""``wds:`` tar shards end to end: a real CLIP service on loopback, tars on local disk and
in the S3 test server; the same images as a folder run, the same labels. A job killed
with SIGKILL resumes without labeling its finished input shards again."""

from __future__ import annotations

import shutil
import tarfile
import time
from pathlib import Path

import pytest
from support.same_labels import assert_identical_labels
from support.tars import write_tar
from test_resilience import cdul_process

from cdul.core.errors import DatasetError
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labeler.job import label
from cdul.labels.merge import merge_run
from cdul.world.generator import write_wds_world
from cdul.world.shapes import SHAPES

pytestmark = pytest.mark.slow
CLASSES = tuple(SHAPES)


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> Path:
    """The world's first 60 val scenes (the conftest world's) as 3 tars: 25, 25, 10."""
    return write_wds_world(tmp_path_factory.mktemp("wds"), seed=0, train=0, val=60,
                           shard_size=25, progress=False)  # fmt: skip


def _spec(root: Path | str, last: int = 2) -> str:
    return f"wds:{root}/val-{{00000..{last:05d}}}.tar"


@pytest.mark.compares_runs
def test_wds_local_and_s3_label_as_a_folder_run(
    make_unbatched_config, tars, world_root, tmp_path, s3_env
):
    make_config = make_unbatched_config  # three runs compared (see support/same_labels.py)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(60):
        shutil.copy(Path(world_root, "JPEGImages", f"val_{index:06d}.jpg"), folder)
    _, by_folder, _ = label(make_config(f"file://{tmp_path / 'folder'}", dataset=f"folder:{folder}",
                                        classes=CLASSES))  # fmt: skip
    local_run = f"file://{tmp_path / 'local'}"
    result, local, evaluation = label(make_config(local_run, dataset=_spec(tars),
                                                  classes=CLASSES))  # fmt: skip
    assert (result.images, result.labeled_now, len(result.shards)) == (60, 60, 3)
    # They read other datasets; a folder's id is the file name, a tar sample's its key.
    same_image = dict(manifests=False, image_key=lambda i: Path(i).stem)
    assert_identical_labels(local, by_folder, **same_image)
    assert local.ids[:2] == ["val_000000", "val_000001"]  # the sample key is the id
    assert local.manifest.shards == [f"shard-0000{k}-of-00003" for k in range(3)]
    # Ground truth from each sample's .json: evaluated like a VOC run.
    assert local.ground_truth is not None and evaluation is not None
    assert local.ground_truth.sum(1).min() >= 1
    # The same tars in the S3 test server: streamed, one GET per shard.
    store = open_store(f"{s3_env}/shards", create_bucket=True)
    for k in range(3):
        store.write_file(f"val-{k:05d}.tar", tars / f"val-{k:05d}.tar")
    _, remote, _ = label(make_config(f"{s3_env}/run", dataset=_spec(store.uri), classes=CLASSES))
    assert_identical_labels(remote, by_folder, **same_image)


@pytest.mark.compares_runs
def test_two_jobs_split_the_input_shards_and_merge_as_one(make_unbatched_config, tars, tmp_path):
    make_config = make_unbatched_config  # two runs compared (see support/same_labels.py)
    run = f"file://{tmp_path / 'run'}"
    first, _, _ = label(make_config(run, dataset=_spec(tars), classes=CLASSES, num_shards=2,
                                    shard_index=0))  # fmt: skip
    second, _, _ = label(make_config(run, dataset=_spec(tars), classes=CLASSES, num_shards=2,
                                     shard_index=1))  # fmt: skip
    assert first.shards == ["shard-00000-of-00003"]
    assert second.shards == ["shard-00001-of-00003", "shard-00002-of-00003"]
    merged, _ = merge_run(open_store(run))
    _, whole, _ = label(make_config(f"file://{tmp_path / 'one'}", dataset=_spec(tars),
                                    classes=CLASSES))  # fmt: skip
    # Bit for bit: no answer depends on how the images were split over jobs. The
    # manifests differ in their shard lists (two jobs, one job).
    assert_identical_labels(merged, whole, manifests=False)


@pytest.mark.compares_runs
def test_killed_job_resumes_without_relabeling_finished_input_shards(
    make_unbatched_config, tmp_path, unbatched_endpoint
):
    make_config = make_unbatched_config  # two runs compared (see support/same_labels.py)
    root = write_wds_world(tmp_path / "tars", seed=0, train=0, val=48, shard_size=8,
                           progress=False)  # fmt: skip
    spec, run = _spec(root, last=5), tmp_path / "run"
    child = cdul_process(["label", spec, "-o", f"file://{run}", "--endpoint", unbatched_endpoint,
                          "--classes", ",".join(CLASSES), "--snippets", "grid:2x2",
                          "--recipe", "paper", "--max-in-flight", "2", "--no-progress"],
                         tmp_path / "child.log")  # fmt: skip
    shards = run / "pseudo_labels" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("*.json"))) < 2:
        assert child.poll() is None, (tmp_path / "child.log").read_text()
        time.sleep(0.02)
    child.kill()
    child.wait()
    finished = {p.name: p.read_bytes() for p in shards.glob("*.json")}
    assert 2 <= len(finished) < 6, "the kill landed mid-run"
    result, labels, _ = label(make_config(f"file://{run}", dataset=spec, classes=CLASSES))
    assert sorted(result.already_done) == sorted(n.removesuffix(".json") for n in finished)
    assert result.labeled_now == 48 - 8 * len(finished)
    for name, data in finished.items():  # not written again
        assert (shards / name).read_bytes() == data
    _, unbroken, _ = label(make_config(f"file://{tmp_path / 'unbroken'}", dataset=spec,
                                       classes=CLASSES))  # fmt: skip
    assert_identical_labels(labels, unbroken)


def test_bad_samples_and_a_truncated_tar_are_named_or_skipped(make_config, tars, tmp_path):
    with tarfile.open(tars / "val-00000.tar") as source:
        good = [(m.name, source.extractfile(m).read()) for m in source.getmembers()][:8]
    bad = tmp_path / "bad"
    bad.mkdir()
    write_tar(bad / "a-00000.tar", [*good[:4], ("lonely.json", b'{"labels": ["circle"]}'),
                               ("wrong.jpg", good[0][1]), ("wrong.json", b'{"labels": ["dragon"]}'),
                               ("junk.jpg", b"not an image")])  # fmt: skip
    padded = [512 + -(-len(data) // 512) * 512 for _, data in good[4:]]
    write_tar(bad / "a-00001.tar", good[4:], cut=sum(padded[:2]) + 512 + 100)  # in sample 3's jpg
    spec = f"wds:{bad}/a-{{00000..00001}}.tar"
    with pytest.raises(DatasetError) as strict:
        label(make_config(f"file://{tmp_path / 'strict'}", dataset=spec, classes=CLASSES))
    assert str(strict.value) == (f"{bad}/a-00000.tar#lonely: no image member (has json) "
                                 "(--skip-bad skips such samples and reports them)")  # fmt: skip
    result, labels, _ = label(make_config(f"file://{tmp_path / 'run'}", dataset=spec,
                                          classes=CLASSES, skip_bad=True))  # fmt: skip
    reasons = {s["image_id"]: s["reason"] for s in result.skipped}
    assert "no image member" in reasons["lonely"]
    assert "'dragon' is not one of the run's classes" in reasons["wrong"]
    assert "refused" in reasons["junk"]
    rest = next(v for k, v in reasons.items() if k.endswith("#rest"))
    assert "a-00001.tar: unreadable tar shard after sample 'val_000002'" in rest
    assert labels.ids == ["val_000000", "val_000001", "val_000002"]
    assert read_pseudo_labels(open_store(f"file://{tmp_path / 'run'}")).manifest.images == 3
