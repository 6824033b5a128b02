"""The pseudo-label artefact: shards, manifests, merge checks, re-aggregation (no CLIP)."""

import pandas as pd
import pytest
import torch

from cdul.core.errors import ConfigError, StorageError
from cdul.core.method.aggregation import aggregate, pseudo_label
from cdul.core.method.recipes import LabelRecipe
from cdul.core.pseudo_labels import (
    MANIFEST,
    Cosines,
    LabelManifest,
    ShardMergeError,
    merge_shards,
    read_pseudo_labels,
    relabel,
    shard_counts,
    shard_done,
    shard_key,
    to_table,
    write_shard,
)
from cdul.core.settings import differences
from cdul.core.storage import open_store

CLASSES = ["cat", "dog", "bird"]


def manifest(index=0, count=2, **changes):
    base = dict(
        dataset="voc:/data:val", classes=list(CLASSES), template="a photo of a {}",
        clip_model="cdul-tiny-rn", clip_pretrained="/m.pt", snippet_spec="grid:3x3", zeta=0.5,
        num_shards=count, code_version="test", created=f"2024-01-0{index + 1}T00:00:00+00:00",
        shard_index=index,
    )  # fmt: skip
    base.update(changes)
    return LabelManifest(**base)


def vectors(n, seed):
    g = torch.Generator().manual_seed(seed)
    glob, alpha = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    beta = alpha * torch.rand(n, 3, generator=g)
    agg = aggregate(alpha, beta, 0.5)
    return {"global": glob, "alpha": alpha, "beta": beta, "aggregate": agg,
            "final": pseudo_label(glob, agg)}  # fmt: skip


def write(store, index, count, ids, seed, **changes):
    m = manifest(index, count, **changes)
    truth = (torch.rand(len(ids), 3, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    write_shard(store, m, to_table(ids, vectors(len(ids), seed), truth))
    return m


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/run")


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


def test_relabel_from_alpha_beta_matches_eq_6_7_and_reading_needs_a_merge(store):
    write(store, 0, 1, ["a", "b", "c"], 4)
    with pytest.raises(StorageError, match="label-merge"):
        read_pseudo_labels(store)
    labels = merge_shards(store)
    same = relabel(labels, LabelRecipe(zeta=0.5))
    assert torch.equal(same["final"], labels["final"])
    zero = relabel(labels, LabelRecipe(zeta=0.0))
    assert torch.equal(zero["aggregate"], labels["alpha"])
    assert torch.equal(relabel(labels, LabelRecipe("max"))["aggregate"], labels["alpha"])
    one = relabel(labels, LabelRecipe(zeta=1.0))
    assert torch.equal(one["final"], (labels["global"] + labels["beta"]) / 2)
    with pytest.raises(ConfigError, match="stores none"):
        relabel(labels, LabelRecipe("mean"))


def test_cosines_round_trip_and_recipes_recompute_from_them(store):
    # Two images, two classes; image 0 has two snippets, image 1 one. logit scale 0 means
    # temperature 1: probabilities are softmax(cos).
    glob_cos = torch.tensor([[0.5, -0.5], [0.0, 0.0]])
    snip_cos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 0.25]])
    cosines = Cosines(glob_cos, snip_cos, torch.tensor([2, 1]))
    p = torch.softmax(snip_cos, dim=-1)
    glob = torch.softmax(glob_cos, dim=-1)
    alpha = torch.stack([p[:2].max(0).values, p[2]])
    beta = torch.stack([p[:2].min(0).values, p[2]])
    agg = torch.where(alpha >= 0.5, alpha, beta)
    vecs = {"global": glob, "alpha": alpha, "beta": beta, "aggregate": agg,
            "final": (glob + agg) / 2}  # fmt: skip
    m = manifest(count=1, classes=["cat", "dog"], logit_scale=0.0)
    write_shard(store, m, to_table(["x", "y"], vecs, None, cosines))
    labels = merge_shards(store)
    assert labels.cosines is None  # only read when asked for
    labels = read_pseudo_labels(store, cosines=True)
    assert torch.equal(labels.cosines.snippet_cosine, snip_cos)
    assert torch.equal(labels.cosines.counts, torch.tensor([2, 1]))
    # mean over image 0's two snippets: (p0 + p1) / 2 = (0.5, 0.5); image 1: p2 = (0.5, 0.5).
    mean = relabel(labels, LabelRecipe("mean", global_weight=0.0))
    assert torch.allclose(mean["final"], torch.full((2, 2), 0.5))
    # The paper's rule from the cosines equals the one from alpha and beta.
    g, snippets, valid = labels.cosines.padded(0.0)
    assert torch.allclose(LabelRecipe().aggregate(snippets, valid), agg)
    assert torch.allclose(g, glob) and valid.tolist() == [[True, True], [True, False]]


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


def test_table_shapes_and_manifest_checks():
    with pytest.raises(ConfigError, match="expected"):
        to_table(["a"], vectors(2, 0), None)
    with pytest.raises(StorageError, match="malformed"):
        LabelManifest.from_json({"dataset": "x"})
    changed = differences(manifest().settings(), manifest(limit=10).settings())
    assert changed == ["limit: stored None, now 10"]


def test_over_threshold_is_one_rule_with_float32_equality():
    from cdul.core.pseudo_labels import over_threshold

    scores = torch.tensor([[0.3, 0.29999998, 0.5], [0.9, 0.0, 1.0]], dtype=torch.float32)
    # A stored 0.3 is a label at threshold 0.3 (compared as float32; as float64 the
    # stored 0.30000001192... would still pass, but 0.9 stored is 0.89999998 < 0.9).
    assert over_threshold(scores, 0.3).tolist() == [[True, False, True], [True, False, True]]
    assert over_threshold(scores, 0.9).tolist() == [[False, False, False], [True, False, True]]
    assert float(scores[1, 0]) < 0.9  # why the comparison is in float32


def test_sweep_rows_by_hand(store):
    from cdul.labeler.sweep import recipes, sweep

    final = torch.tensor([[0.75, 0.25], [0.25, 0.5], [0.5, 0.25]])
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    vecs = {name: final for name in ("global", "alpha", "beta", "aggregate", "final")}
    m = manifest(count=1, classes=["cat", "dog"])
    write_shard(store, m, to_table(["a", "b", "c"], vecs, truth))
    grid = recipes(["paper", "max", "mean"], [0.0, 0.5], [0.5], ["none"])
    assert [str(r) for r in grid] == ["paper(zeta=0) w=0.5", "paper(zeta=0.5) w=0.5", "max w=0.5",
                                      "mean w=0.5"]  # fmt: skip
    rows, skipped = sweep(merge_shards(store), grid)
    assert skipped == ["mean w=0.5"]  # no stored cosines
    # Every vector equals final, so each rule gives final again. At 0.5: labels (a, cat),
    # (b, dog), (c, cat); 2 of them true, 2 true in all: F1 = 2 * 2 / (3 + 2) = 0.8.
    for row in rows:
        assert row["final_F1"] == pytest.approx(0.8)
        assert row["labels_per_image"] == 1.0 and row["classes_never_labeled"] == 0
    assert [row["zeta"] for row in rows] == [0.0, 0.5, ""]
