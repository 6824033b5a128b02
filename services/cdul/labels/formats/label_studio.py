"""``label-studio``: Label Studio tasks with pre-annotations, and its JSON export back.

Written: tasks in its "Basic Label Studio JSON format" (``predictions`` holding one
multi-label ``choices`` result), and beside them the labeling config (``OUT`` with
``.xml``, or ``--config-out``) whose ``Choices`` control (``name="labels"``,
``choice="multiple"``) the results refer to. Label Studio needs URLs: ``--image-root
DIR`` (its ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) turns an image under DIR into
``--image-url-prefix`` (``/data/local-files/?d=``) + its URL-quoted relative path;
``s3://`` URIs pass unchanged (Label Studio presigns them through a connected S3 source
storage).

Read (``cdul label-import``): Label Studio's JSON export of those tasks: a list of tasks,
each with ``data.cdul_id`` and ``annotations`` (``result``: ``choices`` of the ``labels``
control, ``was_cancelled``). A task's latest non-cancelled annotation (by ``updated_at``,
else ``created_at``, else order) is the reviewer's decision, even where it agrees with
the prediction; a task without one keeps its pseudo label.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from cdul.core.errors import ConfigError
from cdul.labels.formats.base import Decisions, Exported, LabelFormat, absolute_path
from cdul.labels.formats.json_document import json_text

if TYPE_CHECKING:
    from cdul.labels.export import ExportConfig

#: Label Studio's URL for a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.
LOCAL_FILES_PREFIX = "/data/local-files/?d="
#: Names in the labeling config; the reader finds results by them.
LS_IMAGE, LS_CHOICES = "image", "labels"


def image_url(path: str, config: ExportConfig) -> str:
    """What a Label Studio task's ``data.image`` holds for an image at ``path``."""
    if config.image_root is None:
        if path.startswith(("s3://", "http://", "https://")):
            return path
        raise ConfigError(
            f"Label Studio opens images by URL, not {path!r}: give --image-root DIR, "
            "the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT it serves them from"
        )
    root = absolute_path(config.image_root).rstrip("/")
    if not path.startswith(root + "/"):
        raise ConfigError(f"image {path!r} is not under --image-root {root!r}")
    return config.image_url_prefix + quote(path[len(root) + 1 :], safe="/")


def labeling_config(classes: list[str]) -> str:
    """The Label Studio labeling config the exported predictions refer to."""
    quoted = [escape(c, {'"': "&quot;"}) for c in classes]  # attribute values in "..."
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in quoted)
    return (
        f'<View>\n  <Image name="{LS_IMAGE}" value="${LS_IMAGE}"/>\n'
        f'  <Choices name="{LS_CHOICES}" toName="{LS_IMAGE}" choice="multiple" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def config_location(config: ExportConfig) -> str:
    if config.config_out:
        return config.config_out
    stem = config.output[:-5] if config.output.endswith(".json") else config.output
    return stem + ".xml"


def write_label_studio(exported: Exported, config: ExportConfig) -> dict[str, str]:
    xml_out = config_location(config)
    if xml_out == config.output:
        raise ConfigError(f"the tasks and the labeling config would both be {xml_out}")
    m = exported.labels.manifest
    version = f"cdul {m.clip_model} {m.snippet_spec} zeta={m.zeta} {exported.vector}"
    tasks = []
    for row in exported.rows():
        # The prediction's score sorts the Data Manager: the review score, so ascending
        # order is the review queue (the likeliest mistakes first).
        result = [
            {"from_name": LS_CHOICES, "to_name": LS_IMAGE, "type": "choices",
             "value": {"choices": row.labels}}
        ] if row.labels else []  # fmt: skip
        tasks.append(
            {
                "data": {LS_IMAGE: image_url(row.path, config), "cdul_id": row.image_id},
                "predictions": [
                    {"model_version": version, "score": row.review_score, "result": result}
                ],
            }
        )  # fmt: skip
    return {config.output: json_text(tasks), xml_out: labeling_config(exported.classes)}


def annotation_choices(annotation: dict[str, Any], where: str) -> list[str]:
    results = annotation.get("result", [])
    if not isinstance(results, list):
        raise ConfigError(f"{where}: 'result' is not a list")
    chosen: list[str] = []
    others = set()
    for item in results:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        if item.get("from_name") != LS_CHOICES:
            others.add(str(item.get("from_name")))
            continue
        choices = (item.get("value") or {}).get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError(f"{where}: value.choices is not a list of class names")
        chosen += choices
    if others and not chosen:
        # A renamed control would otherwise read as "no class at all".
        raise ConfigError(
            f"{where}: choices come from {sorted(others)}, not the {LS_CHOICES!r} control of "
            "the labeling config label-export wrote"
        )
    return list(dict.fromkeys(chosen))


def read_label_studio(text: str, source: str) -> Decisions:
    """The decisions in a Label Studio JSON export (see the module docstring)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source} is not a Label Studio JSON export: {error}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ConfigError(f"{source} is not a Label Studio JSON export (a list of tasks)")
    decisions: Decisions = {}
    for number, task in enumerate(tasks):
        where = f"{source}: task {task.get('id', f'#{number}')}"
        data = task.get("data")
        image_id = data.get("cdul_id") if isinstance(data, dict) else None
        if not isinstance(image_id, str):
            raise ConfigError(f"{where} has no data.cdul_id (not a task label-export wrote)")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise ConfigError(f"{where}: 'annotations' is not a list of annotations")
        kept = [(a.get("updated_at") or a.get("created_at") or "", k, a)
                for k, a in enumerate(annotations) if not a.get("was_cancelled")]  # fmt: skip
        if not kept:
            continue
        if image_id in decisions:
            raise ConfigError(f"{where}: image {image_id!r} is annotated in two tasks")
        decisions[image_id] = annotation_choices(max(kept, key=lambda t: t[:2])[2], where)
    return decisions


FORMAT = LabelFormat(
    "label-studio", write_label_studio, read_label_studio, reviewed=True, suffix=".json",
    looks_like=lambda text: text.lstrip().startswith("["),
)  # fmt: skip
