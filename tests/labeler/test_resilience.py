"""The labeler survives being killed (SIGKILL, then a rerun) and an S3 outage."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from support.same_labels import assert_identical_labels

from cdul.core.pseudo_labels import MANIFEST, PREFIX, LabelManifest, read_pseudo_labels, read_table
from cdul.core.storage import open_store
from cdul.labeler.job import label

pytestmark = pytest.mark.slow
IMAGES, PART = 120, 4


def cdul_process(args: list[str], log_path) -> subprocess.Popen:
    """``cdul ARGS`` in a child process (environment inherited: S3_* from s3_env)."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "cdul.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def assert_complete_objects(store, part: int = PART):
    """Every object a killed run left behind reads whole (no half object looks complete)."""
    for key in store.list(f"{PREFIX}/"):
        if key.endswith(".parquet"):
            assert read_table(store, key).num_rows <= part or "/shards/" in key
        else:
            store.read_json(key)
    if store.exists(MANIFEST):  # only once every part and the shard are there
        assert LabelManifest.from_json(store.read_json(MANIFEST)).images == IMAGES


@pytest.mark.compares_runs
def test_sigkill_at_random_points_then_rerun_equals_an_unbroken_run(make_unbatched_config,
                                                                    s3_env, tmp_path):  # fmt: skip
    # Both runs through the unbatched service: equal bit for bit, stored thresholds and
    # all (see support/same_labels.py); the batching one moves the last bits by arrival.
    make_config = make_unbatched_config
    # Small parts and few requests in flight: the child writes a part every few ms at
    # most, so a kill a few parts after a random target lands mid-run on a slow or a
    # fast machine alike (with 4-image parts and 32 in flight a fast child finished the
    # whole shard inside the kill delay, and the resume path went untested).
    part = 2
    config = make_config(f"{s3_env}/killed", limit=IMAGES, part_size=part, max_in_flight=2)
    _, unbroken, _ = label(make_config(f"{s3_env}/unbroken", limit=IMAGES, part_size=part))
    store = open_store(config.output)
    argv = ["label", config.dataset, "-o", config.output, "--endpoint", config.endpoints[0],
            "--snippets", config.snippet_spec, "--limit", str(IMAGES), "--part-size", str(part),
            "--max-in-flight", "2", "--no-progress", "--recipe", config.recipe_name]  # fmt: skip
    parts_prefix = f"{PREFIX}/parts/"
    rng = random.Random(20231)
    for kill in range(3):
        # each run must write new parts of its own before it is killed
        target = len(store.list(parts_prefix)) + rng.randint(1, 8)
        child = cdul_process(argv, tmp_path / "label.log")
        try:
            deadline = time.monotonic() + 90
            while len(store.list(parts_prefix)) < target:
                assert child.poll() is None, (tmp_path / "label.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the labeler made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            assert child.poll() is None, f"kill {kill}: the run ended before it could be killed"
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert_complete_objects(store, part)
        assert not store.exists(MANIFEST), f"kill {kill} came after the whole run"
    child = cdul_process(argv, tmp_path / "label.log")
    assert child.wait(timeout=120) == 0, (tmp_path / "label.log").read_text()[-3000:]
    log = (tmp_path / "label.log").read_text()
    assert "resuming" in log and "from an earlier run" in log
    assert store.list(parts_prefix) == []  # the scratch parts are gone once the shard is
    assert_identical_labels(read_pseudo_labels(store), unbroken)


def test_s3_outage_of_ten_seconds_mid_run_is_survived(make_config, s3_env, s3_server):
    config = make_config(s3_env, limit=100, part_size=PART)
    watcher_store = open_store(s3_env)
    outage: dict[str, float] = {}

    def cut_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(watcher_store.list(f"{PREFIX}/parts/")) >= 2:
                s3_server.stop_listening()
                outage["start"] = time.monotonic()
                s3_server.resume_after(10.0)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=cut_when_running, daemon=True)
    watcher.start()
    result, labels, _ = label(config)
    finished = time.monotonic()
    watcher.join(timeout=5)
    assert "start" in outage, "the outage never started"
    assert finished - outage["start"] > 9.0  # the run was still writing when S3 went away
    assert result.images == len(labels) == 100 and not result.skipped
    assert labels.manifest.images == 100
