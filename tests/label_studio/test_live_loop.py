"""The live review loop against a REAL Label Studio: the backend connected to a project
(Label Studio calls /health and /setup), Label Studio asking it for predictions, a
reviewer's annotations created, updated and deleted through Label Studio's API, and the
webhooks' reviewed labels landing in the run and changing what the trainer reads.

Needs the ``label-studio`` executable (``$CDUL_LABEL_STUDIO`` or on PATH; `.ci/run`
installs it into a venv of its own); the ``studio`` fixture (conftest.py) starts it.
"""

from __future__ import annotations

import json

import pytest
import torch
from support import label_studio
from support.labels_run import CLASSES, IDS, LABEL_FREE, do_export, make_run

from cdul.core.storage import open_store
from cdul.label_studio.backend import BackendConfig, serve
from cdul.labels.formats.label_studio import labeling_config
from cdul.labels.queue import priorities
from cdul.labels.reviews import EVENTS, read_reviews
from cdul.trainer.data import load_train_data

pytestmark = label_studio.NEEDS_LABEL_STUDIO


def choices(names: list[str]) -> list[dict]:
    return [
        {"from_name": "labels", "to_name": "image", "type": "choices", "value": {"choices": names}}
    ]


def test_label_studio_asks_the_backend_and_its_annotations_reach_the_trainer(studio, tmp_path):
    run = make_run(tmp_path)
    store = open_store(run["uri"])
    labels_before = load_train_data(run["uri"], f"folder:{run['images']}", None, "final", 32)
    server = serve(BackendConfig(run=run["uri"], host="127.0.0.1", port=0))
    backend = server.backend  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    tasks = json.loads(
        do_export(run, "label-studio", "tasks.json", image_root=str(run["images"])).read_text()
    )
    try:
        pid = studio.call(
            "POST", "/api/projects", {"title": "live", "label_config": labeling_config(CLASSES)}
        )["id"]
        ml = studio.call("POST", "/api/ml", {"url": url, "project": pid, "title": "cdul"})
        assert ml["state"] in ("CO", "CONNECTED"), ml  # it called /health and /setup
        seen = {s.labels["route"] for s in _samples(backend, "cdul_ls_backend_requests")}
        assert {"/health", "/setup"} <= seen
        # Tasks without predictions; Label Studio asks the backend for them.
        bare = [{"data": t["data"]} for t in tasks]
        studio.call("POST", f"/api/projects/{pid}/import", bare)
        listed = studio.call("GET", f"/api/tasks?project={pid}&fields=all")
        listed = listed["tasks"] if isinstance(listed, dict) else listed
        task_of = {t["data"]["cdul_id"]: t["id"] for t in listed}
        studio.call(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
            {"selectedItems": {"all": True, "excluded": []}},
        )
        expected_scores = priorities(*_labels_and_store(run)).image_scores().tolist()
        for k, image_id in enumerate(IDS):
            (prediction,) = studio.call("GET", f"/api/predictions?task={task_of[image_id]}")
            chosen = [c for r in prediction["result"] for c in r["value"]["choices"]]
            assert chosen == LABEL_FREE[k], image_id
            assert prediction["score"] == pytest.approx(expected_scores[k])
        # The reviewer: a.png is a dog only; b.png first all three, then corrected to
        # cat; sub/c d.png annotated, then the annotation deleted.
        studio.call(
            "POST", f"/api/tasks/{task_of['a.png']}/annotations", {"result": choices(["dog"])}
        )
        b = studio.call(
            "POST",
            f"/api/tasks/{task_of['b.png']}/annotations",
            {"result": choices(list(CLASSES))},
        )
        studio.call("PATCH", f"/api/annotations/{b['id']}", {"result": choices(["cat"])})
        c = studio.call(
            "POST",
            f"/api/tasks/{task_of['sub/c d.png']}/annotations",
            {"result": choices(['fish & "chips" <x>'])},
        )
        studio.call("DELETE", f"/api/annotations/{c['id']}")
    finally:
        server.shutdown()
    # Every webhook is an object in the run; together they decide a.png and b.png.
    assert len(store.list(EVENTS)) >= 5
    assert read_reviews(store).decisions == {"a.png": ["dog"], "b.png": ["cat"]}
    # The trainer reads them: the reviewed rows are 1.0 / 0.0, the other one unchanged.
    after = load_train_data(run["uri"], f"folder:{run['images']}", None, "final", 32)
    assert after.initial_labels[0].tolist() == [0.0, 1.0, 0.0]
    assert after.initial_labels[1].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(after.initial_labels[2], labels_before.initial_labels[2])
    assert after.reviewed.tolist() == [True, True, False]


def _labels_and_store(run: dict):
    from cdul.core.pseudo_labels import read_pseudo_labels

    store = open_store(run["uri"])
    return read_pseudo_labels(store), store


def _samples(backend, name: str):
    for metric in backend.metrics.registry.collect():
        if metric.name == name:
            yield from metric.samples
