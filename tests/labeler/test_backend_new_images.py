"""The Label Studio backend on images its run does not hold: scored through the real CLIP
service as the run was labeled (classes, snippets, recipe), at the run's thresholds,
equal to what a labeling run gives those images."""

from __future__ import annotations

import json
import urllib.request

import pytest

from cdul.core.method import review
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.label_studio.backend import BackendConfig, serve
from cdul.labeler.job import label
from cdul.labels.formats.label_studio import labeling_config
from cdul.labels.queue import EVIDENCE_VECTORS
from cdul.labels.reading import run_thresholds

pytestmark = pytest.mark.slow


@pytest.mark.compares_runs
def test_new_images_are_scored_like_the_run(make_unbatched_config, world_root, tmp_path):
    # The runs and the backend through the unbatched service, so the backend's answers
    # are the full run's bit for bit (tests/support/same_labels.py): a score a last bit
    # from a threshold cannot change the hard labels compared below.
    make_config = make_unbatched_config
    small, full = f"file://{tmp_path}/small", f"file://{tmp_path}/full"
    label(make_config(small, limit=20, recipe_name="default"))
    label(make_config(full, limit=24, recipe_name="default"))
    run, everything = read_pseudo_labels(open_store(small)), read_pseudo_labels(open_store(full))
    endpoint = make_config(small).endpoints[0]
    server = serve(BackendConfig(run=small, host="127.0.0.1", port=0, endpoints=(endpoint,),
                                 image_root=str(world_root)))  # fmt: skip
    url = f"http://127.0.0.1:{server.server_address[1]}"
    new = everything.ids[20:24]  # not in the small run
    tasks = [{"id": k, "data": {"image": f"/data/local-files/?d=JPEGImages/{i}.jpg"}}
             for k, i in enumerate(new)]  # fmt: skip
    tasks.append({"id": 9, "data": {"image": "/data/local-files/?d=JPEGImages/missing.jpg"}})
    body = {"tasks": tasks, "label_config": labeling_config(list(run.classes))}
    request = urllib.request.Request(url + "/predict", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            results = json.loads(response.read())["results"]
    finally:
        server.shutdown()
    # Expected: the full run's vectors of those images, at the SMALL run's thresholds.
    rows = [everything.ids.index(i) for i in new]
    thresholds = run_thresholds(run, "final").values
    final = everything["final"][rows]
    hard = review.hard_labels(final, thresholds)
    pieces = [(everything[v][rows], run_thresholds(run, v).values) for v in EVIDENCE_VECTORS]
    priority = review.priority(review.distance(final, thresholds), review.evidence(hard, pieces))
    scores = review.review_score(review.image_priority(priority)).tolist()
    for k, result in enumerate(results[:4]):
        chosen = [c for r in result["result"] for c in r["value"]["choices"]]
        assert chosen == [c for c, on in zip(run.classes, hard[k].tolist(), strict=True) if on]
        # The same answers; the float64 logs behind the score run on other shapes here
        # than in the backend (vectorised and scalar loops round apart by an ulp, 1e-16).
        assert result["score"] == pytest.approx(scores[k], abs=1e-12)
    assert any(r["result"] for r in results[:4])  # some label predicted at all
    assert results[4] == {"result": [], "score": 0.0, "model_version": results[0]["model_version"]}
