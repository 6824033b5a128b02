"""``cdul clip-serve --processes 2``: two real server processes on one port, the
labeler's client spreading its streams over them, merged metrics, and the group
stopping together (SIGTERM, or one process dying)."""

import io
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdul.clip_service import launch
from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES

pytestmark = pytest.mark.slow
TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    make_scene(5, i).image.save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def group(world_clip, tmp_path):
    metrics_port = free_port()
    log = (tmp_path / "clip-serve.log").open("w")
    process, port = launch.spawn(["--model", "cdul-tiny-rn", "--pretrained", str(world_clip),
                                  "--processes", "2", "--metrics-port", str(metrics_port),
                                  "--grace", "2"], stderr=log)  # fmt: skip
    yield process, port, metrics_port
    launch.stop(process, grace_s=10)
    log.close()


def test_two_processes_share_the_port_and_both_serve(group):
    process, port, metrics_port = group
    pids = children(process.pid)
    assert len(pids) == 2
    before = [cpu_seconds(p) for p in pids]
    images = [(f"p{i}", png(i)) for i in range(160)]
    with SimilarityClient([f"127.0.0.1:{port}"], deadline_s=30, streams_per_endpoint=8) as client:
        answers = list(client.score_stream(images, label_set_ref(list(SHAPES)), "grid:3x3", 4))
    assert sorted(a.id for a in answers) == sorted(i for i, _ in images)
    assert not any(a.error for a in answers)
    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    assert min(used) > 0.1 * max(used), used  # both processes did a share of the work
    # The supervisor's metrics port merges both processes' counters.
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    ok = sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cdul_clip_requests_total" and s.labels.get("method") == "ScoreStream"
    )
    assert ok == 160


def gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_sigterm_stops_every_process(group):
    process, _, _ = group
    pids = children(process.pid)
    assert launch.stop(process, grace_s=30) == 0
    assert gone(pids)


def test_a_dead_process_stops_the_group_for_a_restart(group):
    process, _, _ = group
    pids = children(process.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert process.wait(30) == 1  # the supervisor exits 1: the kubelet restarts the pod
    assert gone(pids)
