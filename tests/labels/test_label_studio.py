"""The review loop through a REAL Label Studio: the exported labeling config and tasks
with predictions go in through its API, a reviewer's annotations are added, its JSON
export comes out, and ``cdul label-import`` turns it into the labels the trainer reads.

Needs the ``label-studio`` executable (``$CDUL_LABEL_STUDIO`` or on PATH; `.ci/run`
installs it into a venv of its own): it is a large Django application, not one of the
project's dependencies. Skips, saying so, without it.
"""

from __future__ import annotations

import json

import torch
from support import label_studio
from support.labels_run import CLASSES, IDS, LABELS, do_export

from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labels.import_ import ImportConfig, import_review

pytestmark = label_studio.NEEDS_LABEL_STUDIO


def test_label_studio_takes_the_export_and_its_review_comes_back(run, tmp_path):
    tasks_file = do_export(run, "label-studio", "tasks.json", image_root=str(run["images"]),
                           threshold=0.5)  # fmt: skip
    xml = tasks_file.with_suffix(".xml").read_text()
    tasks = json.loads(tasks_file.read_text())
    workdir = tmp_path / "label-studio"
    workdir.mkdir()
    with label_studio.running(workdir) as studio:
        project = studio.call(
            "POST", "/api/projects", {"title": "cdul review", "label_config": xml}
        )
        pid = project["id"]
        # Label Studio parsed our config: the choices are the run's classes, escaping undone.
        parsed = studio.call("GET", f"/api/projects/{pid}")["parsed_label_config"]
        assert parsed["labels"]["labels"] == CLASSES and parsed["labels"]["type"] == "Choices"
        imported = studio.call("POST", f"/api/projects/{pid}/import", tasks)
        assert (imported["task_count"], imported["prediction_count"]) == (3, 3)
        listed = studio.call("GET", f"/api/tasks?project={pid}&fields=all")
        listed = listed["tasks"] if isinstance(listed, dict) else listed
        by_id = {task["data"]["cdul_id"]: task for task in listed}
        assert sorted(by_id) == sorted(IDS)
        for image_id, labels in zip(IDS, LABELS, strict=True):
            (prediction,) = studio.call("GET", f"/api/predictions?task={by_id[image_id]['id']}")
            chosen = [c for r in prediction["result"] for c in r["value"]["choices"]]
            assert chosen == labels, image_id
        # The reviewer: a.png is a dog only; b.png accepted as predicted; c untouched.
        for image_id, choices in (("a.png", ["dog"]), ("b.png", [CLASSES[2]])):
            result = [{"from_name": "labels", "to_name": "image", "type": "choices",
                       "value": {"choices": choices}}]  # fmt: skip
            studio.call("POST", f"/api/tasks/{by_id[image_id]['id']}/annotations",
                        {"result": result})  # fmt: skip
        export = studio.call("GET", f"/api/projects/{pid}/export?exportType=JSON")
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(export))

    new = f"file://{tmp_path}/reviewed-run"
    import_review(ImportConfig(reviewed=str(reviewed), run=run["uri"], output=new, threshold=0.5))
    before = read_pseudo_labels(open_store(run["uri"]))
    after = read_pseudo_labels(open_store(new))
    assert after.ids == before.ids
    assert after["final"][0].tolist() == [0.0, 1.0, 0.0]  # a.png: dog only
    assert after["final"][1].tolist() == [0.0, 0.0, 1.0]  # b.png: as predicted, now certain
    assert torch.equal(after["final"][2], before["final"][2])  # not reviewed
    assert after.manifest.review["changed"] == [
        {"image_id": "a.png", "added": [], "removed": ["cat"]}
    ]
