"""``cdul label-sweep``: recipe rows worked by hand, and its flags made from its config."""

import pytest
import torch
from support.shards import manifest

from cdul import cli
from cdul.core.pseudo_labels import VECTORS, to_table, write_shard
from cdul.labels.merge import merge_shards
from cdul.labels.sweep import SWEEP_JSON, recipes, sweep


def test_sweep_rows_by_hand(store):
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
    # Every vector equals final, so each rule gives final again. Otsu's thresholds: cat
    # 0.25 | 0.5 0.75 and 0.25 0.5 | 0.75 split equally well, the first wins: 0.5, but 2
    # of 3 images is over the guard's 60%: 0.5 | 0.75 splits again, 0.75; dog 0.25 0.25
    # | 0.5: 0.5. Labels (a, cat) and (b, dog), both true: F1 1 for each class.
    for row in rows:
        assert row["final_F1"] == 1.0 and row["final_microF1"] == 1.0
        assert row["ceiling_F1"] == 1.0
        assert row["labels_per_image"] == pytest.approx(2 / 3)
        assert row["classes_never_labeled"] == 0
    assert [row["zeta"] for row in rows] == [0.0, 0.5, ""]


def test_flags_come_from_the_config(store, capsys):
    write_shard(store, manifest(count=1, classes=["cat", "dog"]),
                to_table(["a"], {n: torch.full((1, 2), 0.5) for n in VECTORS}, None))  # fmt: skip
    merge_shards(store)
    with pytest.raises(SystemExit):
        cli.main(["label-sweep", "--help"])
    help_text = capsys.readouterr().out
    assert "paper (Eq. 5-6), max, mean or topk:K" in help_text  # the registry's forms
    assert "paper,max,mean,topk:2,topk:3" in help_text  # defaults as they are typed
    assert cli.main(["label-sweep", store.uri, "--zetas", "0.5,2"]) == 2
    assert "--zetas '0.5,2': give values in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["label-sweep", store.uri, "--global-weights", "half"])
    assert "expected numbers separated by commas" in capsys.readouterr().err
    assert cli.main(["label-sweep", store.uri, "--aggregations", "max", "--no-store"]) == 0
    capsys.readouterr()
    assert not store.exists(SWEEP_JSON)
    assert cli.main(["label-sweep", store.uri, "--aggregations", "max,topk:2"]) == 0
    out = capsys.readouterr().out
    assert "skipped (the run stores no cosines" in out and store.exists(SWEEP_JSON)
    rows = store.read_json(SWEEP_JSON)["rows"]  # max x 3 global weights x 2 debias modes
    assert [row["aggregation"] for row in rows] == ["max"] * 6
