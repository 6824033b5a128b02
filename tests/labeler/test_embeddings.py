"""Stored image embeddings: relabel and incremental labeling equal full runs; damage and
other models are refused without touching what is stored. A real CLIP service on
loopback, the real S3 test server and local folders of the embedded world's images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.same_labels import assert_identical_labels

from cdul import cli
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.core import embeddings
from cdul.core.errors import ConfigError, DatasetError, StorageError
from cdul.core.pseudo_labels import MANIFEST, LabelManifest, read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labeler.job import label
from cdul.labeler.relabel import relabel
from cdul.world.shapes import SHAPES

pytestmark = pytest.mark.slow
FIRST = list(SHAPES[:8])
# One class renamed (square -> box) and one added (hexagon).
SECOND = [("box" if c == "square" else c) for c in FIRST] + ["hexagon"]


def _folder(world_root: Path, directory: Path, count: int, start: int = 0) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    images = sorted(Path(world_root, "JPEGImages").glob("*.jpg"))[start : start + count]
    for image in images:
        shutil.copy(image, directory / image.name)
    return f"folder:{directory}"


def _config(make_config, spec: str, output: str, classes: list[str], **changes):
    settings = {"recipe_name": "default", **changes}
    return make_config(output, dataset=spec, classes=tuple(classes), store_embeddings=True,
                       **settings)  # fmt: skip


@pytest.mark.compares_runs
def test_relabel_with_a_class_added_and_one_renamed_equals_a_full_run(
    make_unbatched_config, world_root, tmp_path, s3_env, capsys
):
    make_config = make_unbatched_config  # runs compared (see support/same_labels.py)
    spec = _folder(world_root, tmp_path / "images", 60)
    first = f"file://{tmp_path / 'first'}"
    label(_config(make_config, spec, first, FIRST, num_shards=2, shard_index=0))
    label(_config(make_config, spec, first, FIRST, num_shards=2, shard_index=1))
    from cdul.labels.merge import merge_run

    merge_run(open_store(first))
    stored = read_pseudo_labels(open_store(first)).manifest.embeddings
    assert stored["model"] == "cdul-tiny-rn" and stored["dtype"] == "float16"
    # The fresh full run with the second class list (S3), and the relabel from the first.
    full_uri = f"{s3_env}/full"
    _, full, _ = label(_config(make_config, spec, full_uri, SECOND))
    new = f"file://{tmp_path / 'relabeled'}"
    labels, _ = relabel(_config(make_config, spec, new, SECOND), first)
    # A relabel's manifest says where it came from; a full run's does not.
    assert_identical_labels(labels, full, manifests=False)
    again = read_pseudo_labels(open_store(new))
    assert_identical_labels(again, full, manifests=False)
    m = again.manifest
    assert m.relabeled_from == open_store(first).uri and m.embeddings_run == m.relabeled_from
    assert m.classes == SECOND and m.embeddings == stored and len(m.shards) == 2
    # The report and the gallery say where a relabel came from.
    assert cli.main(["label-report", new]) == 0
    assert f"relabeled from {open_store(first).uri}" in capsys.readouterr().out
    pages = tmp_path / "gallery"
    assert cli.main(["label-gallery", new, "-o", str(pages)]) == 0
    assert f"relabeled from {open_store(first).uri}" in (pages / "index.html").read_text()
    # A relabel of the relabel (back to the first classes, another recipe) reads the
    # first run's embeddings; the CLI says no image was encoded.
    third = f"file://{tmp_path / 'third'}"
    code = cli.main(
        [
            "relabel",
            new,
            "-o",
            third,
            "--classes",
            ",".join(FIRST),
            "--recipe",
            "paper",
            "--endpoint",
            make_config("x").endpoints[0],
            "--no-progress",
        ]
    )
    assert code == 0 and "no image encoded" in capsys.readouterr().out
    paper = read_pseudo_labels(open_store(third))
    assert paper.manifest.embeddings_run == open_store(first).uri
    _, direct, _ = label(_config(make_config, spec, f"{s3_env}/paper", FIRST, recipe_name="paper"))
    assert_identical_labels(paper, direct, manifests=False)


@pytest.mark.compares_runs
def test_incremental_run_encodes_only_new_and_changed_images_and_equals_a_full_run(
    make_unbatched_config, world_root, tmp_path
):
    make_config = make_unbatched_config  # runs compared (see support/same_labels.py)
    directory = tmp_path / "images"
    spec = _folder(world_root, directory, 50)
    run = f"file://{tmp_path / 'run'}"
    first, _, _ = label(_config(make_config, spec, run, FIRST, part_size=16))
    assert first.labeled_now == 50 and first.reused == 0
    # A plain rerun reads the images, finds them unchanged, and does nothing.
    assert label(_config(make_config, spec, run, FIRST, part_size=16))[0].already_done
    # 10 images added, one changed in place (another scene's bytes), one removed.
    _folder(world_root, directory, 10, start=50)
    names = sorted(directory.glob("*.jpg"))
    shutil.copy(names[-1], names[3])
    names[7].unlink()
    result, grown, _ = label(_config(make_config, spec, run, FIRST, part_size=16))
    assert (result.images, result.reused, result.labeled_now) == (59, 48, 11)
    _, full, _ = label(_config(make_config, spec, f"file://{tmp_path / 'full'}", FIRST))
    assert_identical_labels(grown, full)
    assert read_pseudo_labels(open_store(run)).ids == full.ids
    held = embeddings.read(open_store(run), embeddings.shard_key(0, 1))
    fresh = embeddings.read(open_store(f"file://{tmp_path / 'full'}"), embeddings.shard_key(0, 1))
    assert held.ids == fresh.ids and held.digests == fresh.digests
    assert not open_store(run).list("pseudo_labels/parts/")


@pytest.mark.compares_runs
def test_an_interrupted_incremental_run_keeps_the_old_labels_and_resumes(
    make_unbatched_config, world_root, tmp_path
):
    make_config = make_unbatched_config  # runs compared (see support/same_labels.py)
    directory = tmp_path / "images"
    spec = _folder(world_root, directory, 40)
    run = f"file://{tmp_path / 'run'}"
    label(_config(make_config, spec, run, FIRST, part_size=8))
    old = read_pseudo_labels(open_store(run))
    # 12 images added, the last of them unreadable: the run stops there.
    _folder(world_root, directory, 12, start=40)
    (directory / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match="zz_broken"):
        label(_config(make_config, spec, run, FIRST, part_size=8))
    # The old labels still read whole; the parts done so far wait for the rerun.
    assert_identical_labels(read_pseudo_labels(open_store(run)), old)
    assert open_store(run).list("pseudo_labels/parts/")
    (directory / "zz_broken.jpg").unlink()
    result, grown, _ = label(_config(make_config, spec, run, FIRST, part_size=8))
    assert result.resumed >= 40 and result.images == 52
    _, full, _ = label(_config(make_config, spec, f"file://{tmp_path / 'full'}", FIRST))
    assert_identical_labels(grown, full)


@pytest.fixture(scope="module")
def other_preprocessing(world_clip):
    """The same weights preprocessed on tensors: other embeddings, so another model."""
    config = ServerConfig(model="cdul-tiny-rn", pretrained=str(world_clip), host="127.0.0.1",
                          port=0, metrics_port=None, max_wait_ms=2.0,
                          preprocess="tensor")  # fmt: skip
    server = SimilarityServer(config).start()
    yield f"127.0.0.1:{server.port}"
    server.stop(grace_s=1.0)


def _snapshot(uri: str) -> dict[str, bytes]:
    store = open_store(uri)
    return {key: store.read_bytes(key) for key in store.list("")}


def test_other_models_damage_and_runs_without_embeddings_are_refused_unchanged(
    make_config, world_root, tmp_path, other_preprocessing
):
    spec = _folder(world_root, tmp_path / "images", 20)
    run = f"file://{tmp_path / 'run'}"
    label(_config(make_config, spec, run, FIRST))
    before = _snapshot(run)
    other = dict(endpoints=(other_preprocessing,))
    with pytest.raises(ConfigError) as mixed:
        relabel(_config(make_config, spec, f"file://{tmp_path / 'x'}", SECOND, **other), run)
    assert "pil preprocessing" in str(mixed.value) and "tensor preprocessing" in str(mixed.value)
    with pytest.raises(ConfigError) as mixed:  # labeling again into it with the other model
        label(_config(make_config, spec, run, FIRST, **other))
    assert "tensor preprocessing" in str(mixed.value)
    both = dict(endpoints=(make_config("x").endpoints[0], other_preprocessing))
    with pytest.raises(ConfigError, match=r"serve different models: .*pil.*; .*tensor"):
        label(_config(make_config, spec, run, FIRST, **both))  # replicas that differ
    assert _snapshot(run) == before
    # A damaged, then a missing embeddings object: named; the run is left as it was.
    store, key = open_store(run), embeddings.shard_key(0, 1)
    store.write_bytes(key, b"PAR1 not parquet")
    damaged = _snapshot(run)
    for attempt in (
        lambda: relabel(_config(make_config, spec, f"file://{tmp_path / 'y'}", SECOND), run),
        lambda: label(_config(make_config, spec, run, FIRST)),
    ):
        with pytest.raises(StorageError) as broken:
            attempt()
        assert key in str(broken.value) and "not a readable embeddings object" in str(broken.value)
        assert _snapshot(run) == damaged
    assert not Path(tmp_path / "y").exists() or not open_store(f"file://{tmp_path / 'y'}").list("")
    store.delete(key)
    with pytest.raises(StorageError, match="is missing"):
        relabel(_config(make_config, spec, f"file://{tmp_path / 'z'}", SECOND), run)
    # A run labeled without embeddings says what to do instead.
    plain = f"file://{tmp_path / 'plain'}"
    label(make_config(plain, dataset=spec, classes=tuple(FIRST)))
    assert LabelManifest.from_json(open_store(plain).read_json(MANIFEST)).embeddings is None
    with pytest.raises(ConfigError, match="stores no image embeddings"):
        relabel(_config(make_config, spec, f"file://{tmp_path / 'w'}", SECOND), plain)
