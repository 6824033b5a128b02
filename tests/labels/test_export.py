"""label-export and label-import: every format field by field on a run with hand-chosen
scores, the Label Studio and CSV round trips into what the trainer reads, bad input."""

import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from support.labels_run import CLASSES, FINAL, IDS, LABEL_FREE, LABELS, THRESHOLDS, do_export

from cdul import cli
from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import MANIFEST, read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labels.export import ExportConfig
from cdul.labels.formats import Exported
from cdul.labels.formats.fiftyone import write_fiftyone
from cdul.labels.formats.label_studio import write_label_studio
from cdul.labels.import_ import ImportConfig, import_review
from cdul.labels.queue import priorities
from cdul.labels.reading import LabelReading, Thresholds


def review_scores(run: dict, **reading) -> list[float]:
    """The queue's image scores (labels/queue.py; its math is tested by hand in
    tests/unit/test_method_review.py) at the export's reading."""
    store = open_store(run["uri"])
    found = priorities(read_pseudo_labels(store), store, LabelReading(**reading))
    return [float(str(np.float32(v))) for v in found.image_scores().tolist()]


def test_csv_one_row_per_image_with_labels_and_scores(run):
    rows = list(csv.reader(do_export(run, "csv", "labels.csv", threshold=0.5).open(newline="")))
    assert rows[0] == ["image_id", "path", "labels", "review_score", *CLASSES]
    expected = review_scores(run, threshold=0.5)
    for k, (row, image_id, labels, scores) in enumerate(
        zip(rows[1:], IDS, LABELS, FINAL, strict=True)
    ):
        assert row[0] == image_id and row[1] == str(run["images"] / image_id)
        assert row[2] == ";".join(labels)
        assert float(row[3]) == expected[k] and 0 < expected[k] < 1
        assert [float(v) for v in row[4:]] == [float(str(np.float32(s.item()))) for s in scores]
    assert rows[1][4:] == ["0.9", "0.5", "0.1"]  # shortest decimals, not 0.89999997…


def test_json_header_and_images(run):
    doc = json.loads(
        do_export(run, "json", "labels.json", vector="global", threshold=0.5).read_text()
    )
    assert doc["run"] == run["uri"] and doc["dataset"] == f"folder:{run['images']}"
    assert (doc["vector"], doc["classes"]) == ("global", CLASSES)
    assert doc["thresholds"] == dict.fromkeys(CLASSES, 0.5)
    assert doc["threshold_source"] == "--threshold 0.5"
    glob = run["vectors"]["global"]
    assert doc["review_score_source"].startswith("threshold distance")
    expected = review_scores(run, vector="global", threshold=0.5)
    assert [e["review_score"] for e in doc["images"]] == expected
    for entry, image_id, scores in zip(doc["images"], IDS, glob, strict=True):
        assert entry["image_id"] == image_id and entry["path"] == str(run["images"] / image_id)
        pairs = list(zip(CLASSES, scores.tolist(), strict=True))
        assert entry["scores"] == {c: pytest.approx(s) for c, s in pairs}
        assert entry["labels"] == [c for c, s in pairs if s >= 0.5]
    doc = json.loads(do_export(run, "json", "t.json", threshold=0.9).read_text())
    assert [e["labels"] for e in doc["images"]] == [["cat"], [], []]


def test_label_studio_tasks_and_labeling_config(run):
    out = do_export(run, "label-studio", "tasks.json", image_root=str(run["images"]),
                    threshold=0.5)  # fmt: skip
    tasks = json.loads(out.read_text())
    assert [t["data"]["cdul_id"] for t in tasks] == IDS
    assert tasks[2]["data"]["image"] == "/data/local-files/?d=sub/c%20d.png"
    expected = review_scores(run, threshold=0.5)
    for task, labels, score in zip(tasks, LABELS, expected, strict=True):
        path = run["images"] / unquote(task["data"]["image"].split("?d=", 1)[1])
        assert path.is_file()
        (prediction,) = task["predictions"]
        assert prediction["score"] == score  # the Data Manager's sort is the queue
        assert prediction["model_version"] == "cdul cdul-tiny-rn grid:2x2 zeta=0.5 final"
        if labels:
            (result,) = prediction["result"]
            assert result == {"from_name": "labels", "to_name": "image", "type": "choices",
                              "value": {"choices": labels}}  # fmt: skip
        else:
            assert prediction["result"] == []
    xml = (run["tmp"] / "tasks.xml").read_text()
    assert "fish &amp; &quot;chips&quot; &lt;x&gt;" in xml
    view = ET.fromstring(xml)
    assert view.find("Image").attrib == {"name": "image", "value": "$image"}
    choices = view.find("Choices")
    assert choices.attrib["toName"] == "image" and choices.attrib["choice"] == "multiple"
    assert [c.attrib["value"] for c in choices] == CLASSES


def test_label_studio_image_urls(run, tmp_path):
    with pytest.raises(ConfigError, match="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        do_export(run, "label-studio", "t.json")
    with pytest.raises(ConfigError, match="is not under --image-root"):
        do_export(run, "label-studio", "t.json", image_root=str(tmp_path / "elsewhere"))
    prefix, xml = "http://files:8081/", str(tmp_path / "c.xml")
    do_export(run, "label-studio", "t.json", image_root=str(tmp_path), image_url_prefix=prefix,
              config_out=xml)  # fmt: skip
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert tasks[0]["data"]["image"] == "http://files:8081/images/a.png"
    assert (tmp_path / "c.xml").is_file()
    # Remote images pass as they are (Label Studio presigns s3:// via a source storage).
    config = ExportConfig(run="r", output=str(tmp_path / "s3.json"), format="label-studio")
    labels = read_pseudo_labels(open_store(run["uri"]))
    at_half = Thresholds(torch.full((3,), 0.5), "0.5")
    s3 = Exported(
        "r", labels, "final", at_half, [f"s3://bucket/{i}" for i in IDS], [0.5] * 3, "test"
    )
    tasks = json.loads(write_label_studio(s3, config)[str(tmp_path / "s3.json")])
    assert tasks[2]["data"]["image"] == "s3://bucket/sub/c d.png"


def test_fiftyone_multilabel_classification_json(run):
    doc = json.loads(do_export(run, "fiftyone", "labels.json", threshold=0.5).read_text())
    assert doc["classes"] == CLASSES
    assert list(doc["labels"]) == [str(run["images"] / i) for i in IDS]
    targets = list(doc["labels"].values())
    assert targets[0] == [{"label": 0, "confidence": 0.9}, {"label": 1, "confidence": 0.5}]
    assert targets[1] == [{"label": 2, "confidence": 0.7}] and targets[2] == []
    labels = read_pseudo_labels(open_store(run["uri"]))
    remote = Exported("r", labels, "final", Thresholds(torch.full((3,), 0.5), "0.5"),
                      [f"s3://b/{i}" for i in IDS], [0.5] * 3, "test")  # fmt: skip
    with pytest.raises(ConfigError, match="FiftyOne reads images from local files"):
        write_fiftyone(remote, ExportConfig(run="r", output="x.json", format="fiftyone"))


def test_export_refusals(run):
    with pytest.raises(ConfigError, match="--threshold must be within"):
        ExportConfig(run="r", output="o", threshold=1.5)
    os.rename(run["images"] / "a.png", run["images"] / "z.png")
    with pytest.raises(ConfigError, match=r"1 pseudo-labelled images are not in folder:"):
        do_export(run, "csv", "x.csv")


def reviewed_tasks(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export gives after a reviewer's pass over our tasks."""
    exported = []
    for number, task in enumerate(tasks):
        exported.append({"id": number + 1, "data": task["data"], "annotations": [],
                         "predictions": task["predictions"]})  # fmt: skip

    def annotation(choices, when, cancelled=False):
        result = [{"id": "x", "from_name": "labels", "to_name": "image", "type": "choices",
                   "value": {"choices": choices}}] if choices else []  # fmt: skip
        return {"id": when, "result": result, "was_cancelled": cancelled,
                "created_at": when, "updated_at": when, "completed_by": 1}  # fmt: skip

    # a.png: a first pass, then a later correction (the later one counts).
    exported[0]["annotations"] = [annotation(["dog"], "2024-05-02T10:00:00Z"),
                                  annotation(["cat"], "2024-05-01T10:00:00Z")]  # fmt: skip
    # b.png: only a skipped (cancelled) annotation: keeps its pseudo label.
    exported[1]["annotations"] = [annotation(["cat"], "2024-05-01T10:00:00Z", cancelled=True)]
    # sub/c d.png: not annotated at all.
    return exported


def test_label_studio_round_trip_into_what_the_trainer_reads(run, capsys):
    from cdul.trainer.data import load_train_data

    tmp = run["tmp"]
    images = str(run["images"])
    assert cli.main(["label-export", run["uri"], "--format", "label-studio", "--threshold", "0.5",
                     "--image-root", images, "-o", str(tmp / "tasks.json")]) == 0  # fmt: skip
    tasks = json.loads((tmp / "tasks.json").read_text())
    (tmp / "export.json").write_text(json.dumps(reviewed_tasks(tasks)))
    new = f"file://{tmp}/reviewed"
    assert cli.main(["label-import", str(tmp / "export.json"), "--run", run["uri"],
                     "--threshold", "0.5", "-o", new]) == 0  # fmt: skip
    assert "1 image(s) reviewed (label-studio), 1 changed: +0 -1" in capsys.readouterr().out
    before, after = read_pseudo_labels(open_store(run["uri"])), read_pseudo_labels(open_store(new))
    assert after.ids == IDS and after.manifest.shards == ["shard-00000-of-00001"]
    assert torch.equal(after["final"][0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(after["final"][1:], before["final"][1:])
    for name in ("global", "alpha", "beta", "aggregate"):
        assert torch.equal(after[name], before[name]), name
    assert torch.equal(after.ground_truth, before.ground_truth)
    assert after.manifest.evaluation["final"]["mAP"] is not None
    record = after.manifest.review
    assert record["run"] == run["uri"] and record["source"].endswith("/export.json")
    assert (record["images_reviewed"], record["images_changed"]) == (1, 1)
    assert record["changed"] == [{"image_id": "a.png", "added": [], "removed": ["cat"]}]
    # The trainer's own loader reads the reviewed row, and the others as they were.
    data = load_train_data(new, f"folder:{run['images']}", None, "final", 32)
    assert torch.equal(data.initial_labels[0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(data.initial_labels[2], before["final"][2])


def test_csv_round_trip_takes_the_edited_rows(run):
    out = do_export(run, "csv", "labels.csv", threshold=0.5)
    rows = list(csv.reader(out.open(newline="")))
    rows[2][2] = "cat;dog"  # b.png: fish -> cat, dog
    rows[3][2] = ""  # sub/c d.png: none, as exported: unchanged
    del rows[1]  # a.png: removed from the file: keeps its pseudo label
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    edited = run["tmp"] / "edited.csv"
    edited.write_text("\ufeff" + buffer.getvalue())  # as a spreadsheet saves it
    new = f"file://{run['tmp']}/reviewed"
    result = import_review(
        ImportConfig(reviewed=str(edited), run=run["uri"], output=new, threshold=0.5)
    )
    assert result.review.reviewed == ["b.png"]
    assert result.record["changed"] == [
        {"image_id": "b.png", "added": ["cat", "dog"], "removed": [CLASSES[2]]}
    ]
    after = read_pseudo_labels(open_store(new))
    assert torch.equal(after["final"][1], torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(after["final"][[0, 2]], FINAL[[0, 2]])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.json", '[{"data": {"cdul_id": "a.png"}, "annotations": [{"result": [{"type": '
         '"choices", "from_name": "labels", "value": {"choices": ["cow"]}}]}]}]',
         r"unknown class name\(s\) \['cow'\]"),
        ("r.json", '[{"data": {"cdul_id": "zz.png"}, "annotations": [{"result": []}]}]',
         r"1 image id\(s\) are not in .* \(e.g. 'zz.png'\)"),
        ("r.json", '[{"data": {"image": "x"}}]', "has no data.cdul_id"),
        ("r.json", '{"tasks": []}', "not a Label Studio JSON export"),
        ("r.json", "\x89PNG garbage", "not a Label Studio JSON export"),
        ("r.csv", "image_id,labels\na.png,cat;unicorn\n", r"unknown class name\(s\) \['unicorn'\]"),
        ("r.csv", "hello,world\n1,2\n", "not a label-export CSV: no image_id, labels column"),
        ("r.bin", b"\xff\xfe\x00 garbage", "not a UTF-8 text file"),
    ],
)  # fmt: skip
def test_import_refuses_bad_reviews(run, name, text, message):
    path = run["tmp"] / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    config = ImportConfig(reviewed=str(run["tmp"] / name), run=run["uri"],
                          output=f"file://{run['tmp']}/new")  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        import_review(config)
    assert not (run["tmp"] / "new").exists()  # nothing written


def test_import_refuses_the_run_itself_or_a_run_with_labels(run, capsys):
    (run["tmp"] / "r.csv").write_text("image_id,labels\n")
    argv = ["label-import", str(run["tmp"] / "r.csv"), "--run", run["uri"], "-o"]
    assert cli.main([*argv, f"{run['uri']}/"]) == 2
    assert "is the run being reviewed" in capsys.readouterr().err
    assert cli.main([*argv, f"file://{run['tmp']}/second"]) == 0
    assert open_store(f"file://{run['tmp']}/second").exists(MANIFEST)
    assert cli.main([*argv, f"file://{run['tmp']}/second"]) == 2
    assert "already holds pseudo labels" in capsys.readouterr().err


def test_by_default_each_class_has_the_runs_label_free_threshold(run, capsys):
    # Stored at merge (the manifest), used by every format, named in the JSON.
    manifest = read_pseudo_labels(open_store(run["uri"])).manifest
    assert manifest.threshold_rule == "otsu"
    assert manifest.thresholds["final"] == pytest.approx(THRESHOLDS)
    doc = json.loads(do_export(run, "json", "labels.json").read_text())
    assert doc["thresholds"] == dict(zip(CLASSES, THRESHOLDS, strict=True))
    assert doc["threshold_source"] == "the run's label-free (otsu)"
    assert [entry["labels"] for entry in doc["images"]] == LABEL_FREE
    rows = list(csv.reader(do_export(run, "csv", "labels.csv").open(newline="")))
    assert [row[2].split(";") if row[2] else [] for row in rows[1:]] == LABEL_FREE
    assert cli.main(["label-export", run["uri"], "-o", str(run["tmp"] / "l.csv")]) == 0
    assert "3 labels with final >= each class's threshold" in capsys.readouterr().out


def test_a_thresholds_file_per_class(run):
    (run["tmp"] / "t.json").write_text(json.dumps({"cat": 0.95, "dog": 0.0, CLASSES[2]: None}))
    doc = json.loads(do_export(run, "json", "a.json", thresholds=str(run["tmp"] / "t.json"))
                     .read_text())  # fmt: skip
    assert [entry["labels"] for entry in doc["images"]] == [["dog"], ["dog"], ["dog"]]
    assert doc["thresholds"] == {"cat": 0.95, "dog": 0.0, CLASSES[2]: None}  # null: never
    with (run["tmp"] / "t.csv").open("w", newline="") as out:  # the fish's name quoted
        csv.writer(out).writerows([["class", "threshold"], *([c, "0.5"] for c in CLASSES)])
    doc = json.loads(do_export(run, "json", "b.json", thresholds=str(run["tmp"] / "t.csv"))
                     .read_text())  # fmt: skip
    assert [entry["labels"] for entry in doc["images"]] == LABELS


FISH = CLASSES[2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps({"cat": 0.5, "dog": 0.5}), r"missing \['fish"),
        (json.dumps({"cat": 0.5, "dog": 0.5, FISH: 0.5, "cow": 0.5}), r"unknown \['cow'\]"),
        (json.dumps({"cat": 1.5, "dog": 0.5, FISH: 0.5}), r"'cat': 1.5 is outside \[0, 1\]"),
        (json.dumps({"cat": "high", "dog": 0.5, FISH: 0.5}), "'high' is not a number"),
        ("{not json", "is not JSON"),
        ("cat;0.5\n", "expected CSV lines 'class,threshold'"),
    ],
)
def test_bad_thresholds_files_are_refused(run, text, message):
    (run["tmp"] / "t.txt").write_text(text)
    with pytest.raises(ConfigError, match=message):
        do_export(run, "csv", "x.csv", thresholds=str(run["tmp"] / "t.txt"))
    with pytest.raises(ConfigError, match="not both"):
        ExportConfig(run="r", output="o", threshold=0.5, thresholds="t.json")


def test_push_flags_are_checked(run):
    with pytest.raises(ConfigError, match="--push takes --format label-studio"):
        ExportConfig(run=run["uri"], output="x", format="csv", push="http://x", project=1)
    with pytest.raises(ConfigError, match="together"):
        ExportConfig(run=run["uri"], output="x", format="label-studio", push="http://x")
    with pytest.raises(ConfigError, match="--push-page must be >= 1"):
        ExportConfig(run="r", output="x", format="label-studio", push="http://x", project=1,
                     push_page=0)  # fmt: skip
