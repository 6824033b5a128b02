"""Reviewed labels stored in the run: Label Studio's annotation events, and what they decide.

``cdul label-studio-backend`` writes each annotation webhook Label Studio sends, before
it answers, as one object under ``RUN/reviews/events/`` (:func:`write_events`): a key
that sorts by arrival (nanoseconds since the epoch, then a random suffix, so two
backends never collide) holding the events of that delivery. Objects are never changed
or deleted, so a killed backend loses at most the delivery it had not yet answered,
which Label Studio was not told succeeded.

:func:`read_reviews` folds the events into decisions: per annotation its last event
(``ANNOTATIONS_DELETED`` removes it), per image the latest non-cancelled annotation
(by ``updated_at``, then arrival): the same rule ``label-import`` applies to Label
Studio's JSON export. :func:`apply_decisions` puts decisions into a label vector: a
reviewed image's row is 1.0 for the chosen classes and 0.0 for the others.
``cdul train RUN`` reads the run's reviews this way, without an export or import step.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import PseudoLabels
from cdul.core.storage import ObjectStore
from cdul.labels.formats.base import Decisions
from cdul.labels.formats.label_studio import annotation_choices
from cdul.labels.reading import Thresholds, over_threshold

#: Where the backend writes annotation events, one object per webhook delivery.
EVENTS = "reviews/events/"
#: Label Studio's annotation webhook actions the backend stores.
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                      "ANNOTATIONS_DELETED")  # fmt: skip


@dataclass(frozen=True)
class ReviewEvent:
    """One annotation's change. ``choices`` is None for a deletion."""

    action: str
    annotation: int
    image_id: str | None = None
    task: int | None = None
    choices: list[str] | None = None
    cancelled: bool = False
    updated_at: str = ""
    reviewer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _annotation_event(action: str, annotation: Any, task: Any, where: str) -> ReviewEvent:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
        raise ConfigError(f"{where}: 'annotation' is not an annotation with an integer id")
    if not isinstance(task, dict):
        task_id = annotation.get("task")
        raise ConfigError(f"{where}: annotation {annotation['id']} comes without its task "
                          f"({task_id!r}): turn the webhook's payload on")  # fmt: skip
    data = task.get("data")
    image_id = data.get("cdul_id") if isinstance(data, dict) else None
    if not isinstance(image_id, str) or not image_id:
        raise ConfigError(f"{where}: task {task.get('id')!r} has no data.cdul_id "
                          "(not a task cdul wrote)")  # fmt: skip
    return ReviewEvent(
        action=action, annotation=annotation["id"], image_id=image_id,
        task=task.get("id") if isinstance(task.get("id"), int) else None,
        choices=annotation_choices(annotation, f"{where}: annotation {annotation['id']}"),
        cancelled=bool(annotation.get("was_cancelled")),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        reviewer=annotation.get("completed_by"),
    )  # fmt: skip


def parse_webhook(payload: Any) -> list[ReviewEvent]:
    """The annotation events in one Label Studio webhook body; ConfigError on anything
    that is not one of :data:`ANNOTATION_ACTIONS` in Label Studio's payload shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise ConfigError("a webhook body is a JSON object with an 'action'")
    action = payload["action"]
    where = f"webhook {action}"
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return [_annotation_event(action, payload.get("annotation"), payload.get("task"), where)]
    if action == "ANNOTATIONS_CREATED":
        annotations, tasks = payload.get("annotation"), payload.get("task")
        if not isinstance(annotations, list) or not isinstance(tasks, list):
            raise ConfigError(f"{where}: 'annotation' and 'task' must be lists")
        by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
        return [_annotation_event(action, a, by_id.get(a.get("task")) if isinstance(a, dict)
                                  else None, where) for a in annotations]  # fmt: skip
    if action == "ANNOTATIONS_DELETED":
        deleted = payload.get("annotations")
        if not isinstance(deleted, list) or not all(
            isinstance(a, dict) and isinstance(a.get("id"), int) for a in deleted
        ):
            raise ConfigError(f"{where}: 'annotations' is not a list of {{'id': N}}")
        return [ReviewEvent(action=action, annotation=a["id"]) for a in deleted]
    raise ConfigError(f"not an annotation event: {action!r}")


def write_events(store: ObjectStore, events: list[ReviewEvent], source: str) -> str:
    """Store one delivery's events as one new object (atomic; see the module docstring)."""
    key = f"{EVENTS}{time.time_ns():020d}-{os.urandom(6).hex()}.json"
    received = datetime.datetime.now(datetime.UTC).isoformat()
    store.write_json(key, {"received": received, "source": source,
                           "events": [asdict(e) for e in events]})  # fmt: skip
    return key


@dataclass(frozen=True)
class Reviews:
    """What a run's stored events decide: image id -> the chosen classes."""

    decisions: Decisions
    annotations: int  # annotations alive (not deleted), cancelled ones included
    deliveries: int


def read_reviews(store: ObjectStore) -> Reviews:
    """Fold the run's events (see the module docstring); an unreadable object is named."""
    latest: dict[int, tuple[int, ReviewEvent]] = {}
    keys = sorted(store.list(EVENTS))
    for order, key in enumerate(keys):
        try:
            events = [ReviewEvent(**e) for e in store.read_json(key)["events"]]
        except (KeyError, TypeError, ValueError) as error:  # unreadable JSON: read_json names it
            where = store.uri_for(key)
            raise ConfigError(f"{where} is not a review event object: {error}") from None
        for event in events:
            latest[event.annotation] = (order, event)
    alive = [(e.updated_at, order, e) for order, e in latest.values()
             if e.action != "ANNOTATIONS_DELETED"]  # fmt: skip
    decisions: Decisions = {}
    for _, _, event in sorted(alive, key=lambda t: t[:2]):
        if not event.cancelled and event.image_id is not None and event.choices is not None:
            decisions[event.image_id] = event.choices  # later ones overwrite earlier ones
    return Reviews(decisions, len(alive), len(keys))


@dataclass
class Review:
    """The reviewed vector and what changed, against the run's labels at ``thresholds``."""

    vector: torch.Tensor
    reviewed: list[str]
    changed: list[dict[str, Any]]
    thresholds: Thresholds

    def counts(self) -> dict[str, int]:
        return {
            "images_reviewed": len(self.reviewed),
            "images_changed": len(self.changed),
            "labels_added": sum(len(c["added"]) for c in self.changed),
            "labels_removed": sum(len(c["removed"]) for c in self.changed),
        }


def apply_decisions(
    labels: PseudoLabels, decisions: Decisions, vector: str, thresholds: Thresholds,
    *, marked: bool, source: str, strangers_ok: bool = False,
) -> Review:  # fmt: skip
    """``labels[vector]`` with the decisions in; refuses unknown classes, and unknown
    image ids unless ``strangers_ok`` (they are skipped). ``marked``: each decision is a
    reviewer's; otherwise only those that change a row's labels count as reviewed."""
    position = {image_id: i for i, image_id in enumerate(labels.ids)}
    strangers = [image_id for image_id in decisions if image_id not in position]
    if strangers and not strangers_ok:
        raise ConfigError(
            f"{source}: {len(strangers)} image id(s) are not in the run "
            f"(e.g. {strangers[0]!r}): was it exported from this run?"
        )
    index = {c: j for j, c in enumerate(labels.classes)}
    unknown = sorted({c for chosen in decisions.values() for c in chosen if c not in index})
    if unknown:
        raise ConfigError(
            f"{source}: unknown class name(s) {unknown}; the run has {labels.classes}"
        )
    before = over_threshold(labels[vector], thresholds.values)
    out = labels[vector].clone()
    reviewed, changed = [], []
    for image_id, chosen in decisions.items():
        if image_id not in position:
            continue
        i = position[image_id]
        had = {labels.classes[j] for j in before[i].nonzero()[0]}
        if not marked and set(chosen) == had:
            continue
        out[i] = 0.0
        out[i, [index[c] for c in chosen]] = 1.0
        reviewed.append(image_id)
        if set(chosen) != had:
            added = [c for c in chosen if c not in had]
            removed = [c for c in labels.classes if c in had and c not in chosen]
            changed.append({"image_id": image_id, "added": added, "removed": removed})
    return Review(out, reviewed, changed, thresholds)
