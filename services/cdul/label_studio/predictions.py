"""What the backend answers Label Studio's ``/predict`` with: a run's labels by image.

A task's image is found by ``data.cdul_id`` (tasks ``cdul label-export --format
label-studio`` wrote carry it), else by its image URL's path: its trailing parts, then
without the suffix (``/data/local-files/?d=images/sub/a.png`` -> ``sub/a.png`` of a folder
run; ``.../JPEGImages/000123.jpg`` -> ``000123`` of a VOC run). Such an
image is answered from the run in memory: its labels at the run's thresholds, and
``score`` its review score (:mod:`cdul.labels.queue`: lowest = its most doubtful label
is the most likely wrong), so sorting the Data Manager by prediction score ascending is
the review queue. An image the run does not hold is scored by the CLIP service
(:mod:`cdul.label_studio.new_images`) with the run's classes, prompts, snippets and
recipe, at the run's thresholds.

The labeling config the request carries says where the result goes: the first
``<Choices>`` control (its ``name`` and ``toName``), and only the classes it lists.
"""

from __future__ import annotations

import functools
import posixpath
import urllib.parse
from dataclasses import dataclass
from xml.etree import ElementTree

import torch

from cdul.core.errors import ConfigError
from cdul.core.method import review
from cdul.core.pseudo_labels import PseudoLabels
from cdul.core.storage import ObjectStore
from cdul.labels.queue import Priorities, evidence_thresholds, label_free_priority, priorities
from cdul.labels.reading import LabelReading


@dataclass(frozen=True)
class Control:
    """The labeling config's ``<Choices>`` control: where results go, which classes exist."""

    from_name: str
    to_name: str
    choices: frozenset[str]


@functools.lru_cache(maxsize=64)  # one parse per labeling config, not per request
def choices_control(label_config: str) -> Control:
    """The first ``<Choices>`` of a Label Studio labeling config."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise ConfigError(f"the labeling config is not XML: {error}") from None
    control = next(iter(root.iter("Choices")), None)
    if control is None or not control.get("name") or not control.get("toName"):
        raise ConfigError("the labeling config has no <Choices name=... toName=...> control "
                          "for multi-label classes (cdul label-export writes one)")  # fmt: skip
    values = frozenset(c.get("value") or c.get("alias") or "" for c in control.iter("Choice"))
    return Control(control.get("name", ""), control.get("toName", ""), values - {""})


def result(control: Control, chosen: list[str]) -> list[dict]:
    """One ``choices`` result (nothing when no class is chosen)."""
    kept = [c for c in chosen if c in control.choices]
    if not kept:
        return []
    return [{"from_name": control.from_name, "to_name": control.to_name, "type": "choices",
             "value": {"choices": kept}}]  # fmt: skip


def image_url(task: dict) -> str | None:
    """The task's image URL: ``data.image``, else the only string value in ``data``."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for k, v in data.items() if isinstance(v, str) and k != "cdul_id"]
    return strings[0] if len(strings) == 1 else None


def id_candidates(url: str) -> list[str]:
    """The image ids an image URL may stand for, the most specific first: its path's
    trailing parts (``images/sub/a.png``, ``sub/a.png``, ``a.png``: a folder run's ids are
    relative paths), then the same without the suffix (``a``: a VOC run's ids)."""
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    path = query["d"][0] if "d" in query else urllib.parse.unquote(parsed.path)
    parts = [p for p in path.split("/") if p]
    tails = ["/".join(parts[k:]) for k in range(len(parts))]
    return tails + [posixpath.splitext(t)[0] for t in tails]


class RunPredictions:
    """A run's labels and review scores by image id, in memory."""

    def __init__(self, labels: PseudoLabels, store: ObjectStore, reading: LabelReading) -> None:
        self.labels = labels
        self.reading = reading
        self.found: Priorities = priorities(labels, store, reading)
        self.scores = self.found.image_scores().tolist()
        self.position = {image_id: i for i, image_id in enumerate(labels.ids)}
        self.hard = self.found.labels.numpy()
        self.evidence = evidence_thresholds(labels)  # once: new images reuse them
        m = labels.manifest
        self.model_version = f"cdul {m.clip_model} {m.snippet_spec} {reading.vector} ({m.created})"

    def find(self, task: dict) -> int | None:
        """The run's row of the task's image, None when the run does not hold it."""
        data = task.get("data")
        if isinstance(data, dict) and isinstance(data.get("cdul_id"), str):
            return self.position.get(data["cdul_id"])
        url = image_url(task)
        if url is None:
            return None
        return next((self.position[c] for c in id_candidates(url) if c in self.position), None)

    def chosen(self, i: int) -> list[str]:
        return [c for c, on in zip(self.labels.classes, self.hard[i], strict=True) if on]

    def prediction(self, control: Control, i: int) -> dict:
        return {"result": result(control, self.chosen(i)), "score": self.scores[i],
                "model_version": self.model_version}  # fmt: skip

    def scored(self, scores: dict[str, torch.Tensor]) -> tuple[list[list[str]], list[float]]:
        """Labels and review scores of new images' vectors (``(M, C)`` each, the run's
        names), at the run's thresholds; priority from distance and evidence."""
        hard, value = label_free_priority(scores, self.reading.vector,
                                          self.found.thresholds.values, self.evidence)  # fmt: skip
        image_scores = review.review_score(review.image_priority(value)).tolist()
        chosen = [[c for c, on in zip(self.labels.classes, row, strict=True) if on]
                  for row in hard.tolist()]  # fmt: skip
        return chosen, image_scores
