"""Reviewed labels stored in a run (labels/reviews.py): Label Studio's webhook bodies
parsed, events folded into decisions, decisions applied to a label vector."""

from __future__ import annotations

import pytest
import torch
from support.labels_run import CLASSES, make_run

from cdul.core.errors import CdulError, ConfigError
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labels.reading import LabelReading
from cdul.labels.reviews import (
    EVENTS,
    ReviewEvent,
    apply_decisions,
    parse_webhook,
    read_reviews,
    write_events,
)


def annotation(aid: int, task: int, names: list[str], **extra) -> dict:
    return {
        "id": aid,
        "task": task,
        "updated_at": extra.pop("at", f"2026-01-01T00:00:{aid:02d}"),
        "result": [
            {
                "from_name": "labels",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": names},
            }
        ],
        **extra,
    }


def task(tid: int, image_id: str) -> dict:
    return {"id": tid, "data": {"cdul_id": image_id, "image": "/x"}}


def test_parse_each_annotation_action():
    (created,) = parse_webhook(
        {
            "action": "ANNOTATION_CREATED",
            "annotation": annotation(1, 7, ["cat"]),
            "task": task(7, "a.png"),
        }
    )
    assert (created.annotation, created.image_id, created.task, created.choices) == (
        1,
        "a.png",
        7,
        ["cat"],
    )
    many = parse_webhook(
        {
            "action": "ANNOTATIONS_CREATED",
            "annotation": [annotation(2, 8, ["dog"]), annotation(3, 9, [])],
            "task": [task(9, "b.png"), task(8, "c.png")],
        }
    )
    assert [(e.annotation, e.image_id, e.choices) for e in many] == [
        (2, "c.png", ["dog"]),
        (3, "b.png", []),
    ]
    (deleted,) = parse_webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2}]})
    assert (deleted.annotation, deleted.choices) == (2, None)
    (cancelled,) = parse_webhook(
        {
            "action": "ANNOTATION_UPDATED",
            "task": task(7, "a.png"),
            "annotation": annotation(1, 7, [], was_cancelled=True),
        }
    )
    assert cancelled.cancelled


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object with an 'action'"),
        ({"action": "PROJECT_UPDATED"}, "not an annotation event"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}}, "integer id"),
        (
            {"action": "ANNOTATION_CREATED", "annotation": annotation(1, 7, ["cat"])},
            "without its task",
        ),
        (
            {
                "action": "ANNOTATION_CREATED",
                "annotation": annotation(1, 7, ["cat"]),
                "task": {"id": 7, "data": {"image": "/x"}},
            },
            "no data.cdul_id",
        ),
        (
            {
                "action": "ANNOTATION_CREATED",
                "annotation": {
                    "id": 1,
                    "result": [
                        {"type": "choices", "from_name": "labels", "value": {"choices": "cat"}}
                    ],
                },
                "task": task(7, "a.png"),
            },
            "not a list of class names",
        ),
        ({"action": "ANNOTATIONS_CREATED", "annotation": {}, "task": []}, "must be lists"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}]}, r"list of \{'id': N\}"),
    ],
)
def test_garbage_is_named(body, message):
    with pytest.raises(ConfigError, match=message):
        parse_webhook(body)


def test_events_fold_into_the_latest_decision_per_image(tmp_path):
    store = open_store(f"file://{tmp_path}/run")

    def event(action, aid, image_id=None, names=None, at="", cancelled=False):
        return ReviewEvent(action, aid, image_id, 1, names, cancelled, at)

    write_events(store, [event("ANNOTATION_CREATED", 1, "a.png", ["cat"], "T1")], "t")
    # A second annotator on a.png, later: theirs wins; then the first one updates, later still.
    write_events(store, [event("ANNOTATION_CREATED", 2, "a.png", ["dog"], "T2")], "t")
    write_events(store, [event("ANNOTATION_UPDATED", 1, "a.png", ["cat", "dog"], "T3")], "t")
    # b.png: annotated, then the annotation deleted -> no decision.
    write_events(
        store,
        [event("ANNOTATION_CREATED", 3, "b.png", ["cat"], "T4"), event("ANNOTATIONS_DELETED", 3)],
        "t",
    )
    # c.png: a skipped (cancelled) task -> no decision.
    write_events(store, [event("ANNOTATION_CREATED", 4, "c.png", [], "T5", cancelled=True)], "t")
    reviews = read_reviews(store)
    assert reviews.decisions == {"a.png": ["cat", "dog"]}
    assert (reviews.annotations, reviews.deliveries) == (3, 5)
    keys = store.list(EVENTS)
    assert keys == sorted(keys) and len(keys) == 5
    store.write_json(EVENTS + "99999999999999999998-zz.json", {"events": [{"action": 1}]})
    with pytest.raises(ConfigError, match="is not a review event object"):
        read_reviews(store)
    store.delete(EVENTS + "99999999999999999998-zz.json")
    store.write_text(EVENTS + "99999999999999999999-zz.json", "{not json")
    with pytest.raises(CdulError, match="is not valid JSON"):
        read_reviews(store)


def test_apply_decisions(tmp_path):
    run = make_run(tmp_path)
    labels = read_pseudo_labels(open_store(run["uri"]))
    thresholds = LabelReading(threshold=0.5).thresholds_for(labels)
    review = apply_decisions(
        labels,
        {"a.png": ["dog"], "zz.png": ["cat"]},
        "final",
        thresholds,
        marked=True,
        source="test",
        strangers_ok=True,
    )
    assert review.vector[0].tolist() == [0.0, 1.0, 0.0] and review.reviewed == ["a.png"]
    assert review.changed == [{"image_id": "a.png", "added": [], "removed": ["cat"]}]
    assert torch.equal(review.vector[1:], labels["final"][1:])
    with pytest.raises(ConfigError, match="not in the run"):
        apply_decisions(labels, {"zz.png": []}, "final", thresholds, marked=True, source="t")
    with pytest.raises(ConfigError, match=r"unknown class name\(s\) \['cow'\]"):
        apply_decisions(labels, {"a.png": ["cow"]}, "final", thresholds, marked=True, source="t")
    assert CLASSES[1] == "dog"
