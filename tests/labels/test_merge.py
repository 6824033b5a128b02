"""``cdul label-merge``: shards merged in order, every refusal naming its shard, the
evaluation hook, debiasing at merge (hand-written shards, no CLIP)."""

import pandas as pd
import pytest
import torch
from support.shards import manifest, write

from cdul import cli
from cdul.core.pseudo_labels import (
    MANIFEST,
    LabelManifest,
    read_pseudo_labels,
    shard_counts,
    shard_done,
    shard_key,
    to_table,
    write_shard,
)
from cdul.core.storage import open_store
from cdul.labels.merge import ShardMergeError, merge_shards


def test_shards_merge_in_order_and_pandas_reads_them(store, tmp_path):
    write(store, 1, 2, ["c", "d"], 2)
    assert shard_done(store, 0, 2) is None and shard_counts(store) == {2: {1}}
    write(store, 0, 2, ["a", "b"], 1)
    labels = merge_shards(store)
    assert labels.ids == ["a", "b", "c", "d"] and labels["final"].shape == (4, 3)
    m = LabelManifest.from_json(store.read_json(MANIFEST))
    assert m.images == 4 and m.shard_index is None and m.created.startswith("2024-01-02")
    assert m.shards == ["shard-00000-of-00002", "shard-00001-of-00002"]
    again = read_pseudo_labels(store)
    assert torch.equal(again["alpha"], labels["alpha"]) and again.ground_truth.shape == (4, 3)
    frame = pd.read_parquet(tmp_path / "run" / shard_key(0, 2, "parquet"))
    assert list(frame.columns)[:2] == ["image_id", "global"] and len(frame["final"][0]) == 3
    first = store.read_bytes(MANIFEST)
    merge_shards(store)
    assert store.read_bytes(MANIFEST) == first  # merging is deterministic


def test_merge_refuses_a_missing_shard_naming_it(store):
    write(store, 0, 3, ["a"], 1)
    write(store, 2, 3, ["c"], 3)
    with pytest.raises(ShardMergeError, match=r"shard-00001-of-00003"):
        merge_shards(store)
    assert not store.exists(MANIFEST)


def test_merge_refuses_an_unfinished_shard(store):
    write(store, 0, 2, ["a"], 1)
    write(store, 1, 2, ["b"], 2)
    store.delete(shard_key(1, 2, "json"))  # the table without its completion mark
    with pytest.raises(ShardMergeError, match=r"missing or unfinished.*shard-00001-of-00002"):
        merge_shards(store)


@pytest.mark.parametrize(
    "change, words",
    [({"zeta": 0.25}, "zeta: shard-00000-of-00002 0.5, shard-00001-of-00002 0.25"),
     ({"snippet_spec": "patch:16"}, "snippet_spec"),
     ({"clip_pretrained": "openai"}, "clip_pretrained"), ({"classes": ["a", "b", "c"]}, "classes")],
)  # fmt: skip
def test_merge_refuses_inconsistent_settings(store, change, words):
    write(store, 0, 2, ["a"], 1)
    write(store, 1, 2, ["b"], 2, **change)
    with pytest.raises(ShardMergeError, match="shard-00001-of-00002 was made with other") as info:
        merge_shards(store)
    assert words in str(info.value)
    assert not store.exists(MANIFEST)


def test_merge_refuses_duplicates_row_mismatch_and_mixed_splits(store, tmp_path):
    write(store, 0, 2, ["a", "b"], 1)
    write(store, 1, 2, ["b", "c"], 2)
    with pytest.raises(ShardMergeError, match=r"\['b'\] appear in more than one shard"):
        merge_shards(store)
    write(store, 1, 2, ["c", "d"], 2)
    m = LabelManifest.from_json(store.read_json(shard_key(1, 2, "json")))
    m.images = 5
    store.write_json(shard_key(1, 2, "json"), m.to_json())
    with pytest.raises(ShardMergeError, match="holds 2 rows but its manifest says 5"):
        merge_shards(store)
    write(store, 0, 3, ["x"], 1, num_shards=3)
    with pytest.raises(ShardMergeError, match="different splits"):
        merge_shards(store)
    with pytest.raises(ShardMergeError, match="2 of 3 shard"):
        merge_shards(store, num_shards=3)
    empty = open_store(f"file://{tmp_path}/empty")
    with pytest.raises(ShardMergeError, match="no pseudo-label shards"):
        merge_shards(empty)


def test_evaluate_hook_goes_into_the_manifest(store):
    write(store, 0, 1, ["a", "b"], 1)
    merge_shards(store, evaluate=lambda labels: {"n": len(labels)})
    assert store.read_json(MANIFEST)["evaluation"] == {"n": 2}


def test_debiasing_is_computed_at_merge_and_applied_on_reading(store):
    recipe = {"aggregation": "paper", "global_weight": 0.5, "debias": "class-mean"}
    final = torch.tensor([[0.75, 0.25], [0.25, 0.5], [0.5, 0.25]])
    vecs = {name: final for name in ("global", "alpha", "beta", "aggregate", "final")}
    write_shard(
        store,
        manifest(count=1, classes=["cat", "dog"], recipe=recipe),
        to_table(["a", "b", "c"], vecs, None),
    )
    labels = merge_shards(store)
    # top-1: class 0 for a and c (0.75, 0.5 -> bias 0.625), class 1 for b (0.5); mean 0.5625
    assert store.read_json(MANIFEST)["class_bias"] == [0.625, 0.5]
    expected = (final * torch.tensor([0.5625 / 0.625, 0.5625 / 0.5])).clamp(0, 1)
    assert torch.allclose(labels["final"], expected)
    assert torch.allclose(read_pseudo_labels(store)["final"], expected)
    assert torch.equal(read_pseudo_labels(store)["aggregate"], final)  # final only


def test_a_class_without_positive_evidence_is_named_and_never_fires(store, capsys):
    # dog scores 0.5 on every image: no split, the threshold 'never' (null in the manifest).
    final = torch.tensor([[0.9, 0.5], [0.1, 0.5], [0.2, 0.5]])
    vecs = {name: final for name in ("global", "alpha", "beta", "aggregate", "final")}
    write_shard(store, manifest(count=1, classes=["cat", "dog"]),
                to_table(["a", "b", "c"], vecs, None))  # fmt: skip
    assert cli.main(["label-merge", store.uri]) == 0
    out = capsys.readouterr().out
    assert "no positive evidence (every final score equal): dog got the threshold 'never'" in out
    assert store.read_json(MANIFEST)["thresholds"]["final"] == [pytest.approx(0.9), None]


def test_a_merge_of_thousands_of_shards_reads_each_object_once(store):
    # Tar-shard runs write one output per input shard: 10^4 at internet scale. The merge
    # lists the shards once (paged) and reads each shard's manifest and table once: no
    # per-object existence probes, nothing that grows faster than the shard count.
    count = 2000
    for index in range(count):
        write(store, index, count, [f"img{index}"], 1)
    store.requests.clear()
    labels = merge_shards(store)
    assert len(labels) == count and labels.ids[-1] == f"img{count - 1}"
    requests = dict(store.requests)
    assert requests.get("exists", 0) == 0
    assert requests["read"] == 2 * count
    assert requests["list"] <= 1 + 2 * count // 1000 and requests["write"] == 1
