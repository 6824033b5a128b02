"""``cdul label-export --format label-studio --push``: tasks with predictions imported
into a REAL Label Studio project in pages, authenticated with a personal access token
(Label Studio 1.2x's default), and a rerun skipping what is there already.

Needs the ``label-studio`` executable (``$CDUL_LABEL_STUDIO`` or on PATH; `.ci/run`
installs it); skips without it.
"""

from __future__ import annotations

import json

import pytest
from support import label_studio
from support.labels_run import CLASSES, IDS, LABEL_FREE, make_run

from cdul import cli
from cdul.labels.export import ExportConfig, export
from cdul.labels.formats.label_studio import labeling_config

pytestmark = label_studio.NEEDS_LABEL_STUDIO


def test_push_imports_tasks_with_predictions_in_pages_and_skips_existing(
    studio, tmp_path, monkeypatch, capsys
):
    run = make_run(tmp_path)
    token = studio.call("POST", "/api/token/", {})["token"]  # a personal access token
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    pid = studio.call(
        "POST", "/api/projects", {"title": "push", "label_config": labeling_config(CLASSES)}
    )["id"]
    args = [
        "label-export",
        run["uri"],
        "--format",
        "label-studio",
        "-o",
        str(tmp_path / "t.json"),
        "--image-root",
        str(run["images"]),
        "--push",
        studio.base,
        "--project",
        str(pid),
        "--push-page",
        "2",
        "--no-progress",
    ]
    # Two tasks there already (a push that died part way): only the third goes in.
    earlier = ExportConfig(
        run=run["uri"],
        output=str(tmp_path / "a.json"),
        format="label-studio",
        image_root=str(run["images"]),
    )
    export(earlier)
    first = json.loads((tmp_path / "a.json").read_text())
    studio.call("POST", f"/api/projects/{pid}/import", first[:2])
    assert cli.main(args) == 0
    listed = studio.call("GET", f"/api/tasks?project={pid}&fields=all")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert sorted(t["data"]["cdul_id"] for t in listed) == sorted(IDS)  # no duplicates
    pushed = json.loads((tmp_path / "t.json").read_text())
    for task in listed:
        k = IDS.index(task["data"]["cdul_id"])
        (prediction,) = studio.call("GET", f"/api/predictions?task={task['id']}")
        chosen = [c for r in prediction["result"] for c in r["value"]["choices"]]
        assert chosen == LABEL_FREE[k]
        assert prediction["score"] == pytest.approx(pushed[k]["predictions"][0]["score"])
    # A wrong key and a missing project are one-line errors.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-key")
    assert cli.main(args) == 2
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    assert cli.main([*args[:-5], "--project", "999", "--no-progress"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
