"""The CLIP service's request side alone (a CPU proxy, no GPU): a no-op encoder behind the
real servicer, its CPU milliseconds per image and images/s per core.

The real server (servicer, decode, snippet cutting, ``--preprocess``, batcher, gRPC
ScoreStream) runs in its own process (this file with ``--child``), where only
``ClipScorer.encode`` changes: it returns zeros ``(N, embed_dim)``. ``tensor``
preprocessing, the GPU path, runs on the CPU here. RN50 with random weights, so views are
224 px as on the GPU (the tiny CLIP's 64 px would understate preprocessing). The client is
the labeler's ``SimilarityClient.score_stream``: 32 in flight, the 20 VOC classes by
value, every snippet's cosines asked for as by the labeler (not with ``--no-cosines``).
Images: world scenes resized to 500x375 JPEGs, quality 90 (``clip_service_gpu.py``'s).

Each round streams ``--images`` (``--patch-images`` for ``patch:``) after a warm-up and
reports images/s, the server process's CPU ms per image (/proc utime + stime over the
round), the client's, the per-core feed rate 1000 / server ms and 16 times that against
the 1,000 images/s goal (medians of ``--rounds``). Then the server's CPU per image by
stage, timed exclusively with ``time.thread_time`` (decode, label set, cut + preprocess,
batcher, answer), its threads that are not Python's (the OpenMP team of the batcher's
torch ops, gRPC's C-core) and the rest (gRPC's Python, protobuf, the stream's threads).
``--profile`` adds a round under cProfile (thread CPU time, every Python thread).

    .venv/bin/python benchmarks/clip_service_request_side.py --spec grid:3x3 patch:16 \
        --preprocess tensor pil \
        --results benchmarks/results/clip_service_request_side_2core_before.csv
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from clip_service_gpu import voc_sized_images
from results_file import add_results_option, write_results

from cdul.clip_service.batcher import DynamicBatcher
from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.clip_service.launch import READY
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.clip_service.servicer import SimilarityServicer
from cdul.core.clip_preprocess import TensorPreprocess
from cdul.core.clip_scoring import ClipScorer
from cdul.core.datasets.voc import VOC_CLASSES

GOAL, CORES, TICK = 1000.0, 16, os.sysconf("SC_CLK_TCK")
# Stage -> the method that does it (timed exclusive of nested stages).
STAGES = {
    "decode": (SimilarityServicer, "_decode"),
    "label_set": (SimilarityServicer, "_label_set"),
    "cut_preprocess": (ClipScorer, "view_pixels"),
    "batcher": (DynamicBatcher, "_encode_batch"),  # torch.cat of the views, no-op encode
    "answer": (SimilarityServicer, "_snippet_finish"),  # Eq. 1-5 and the response message
}
OTHER, REST = "not_python", "rest"  # see the module's docstring
GRPC_ROOTS = {  # cProfile roots beside the stages: (file, function) -> what it is
    ("_server.py", "receive_message"): "gRPC request in (protobuf parse)",
    ("_server.py", "_send_response"): "gRPC response out (protobuf serialize)",
    ("_server.py", "_stream_response_in_pool"): "the ScoreStream call's thread",
    ("streaming.py", "_read"): "the stream's reader thread",
}
_local, _stage_cpu = threading.local(), []  # per thread: stack, since; their Counters


def _timed(stage: str, method):
    def timed(*args, **kwargs):
        if not hasattr(_local, "cpu"):
            _local.stack, _local.cpu = [], collections.Counter()
            _stage_cpu.append(_local.cpu)
        stack, now = _local.stack, time.thread_time()
        if stack:
            _local.cpu[stack[-1]] += now - _local.since
        stack.append(stage)
        _local.since = now
        try:
            return method(*args, **kwargs)
        finally:
            now = time.thread_time()
            _local.cpu[stack.pop()] += now - _local.since
            _local.since = now

    return timed


def child(settings: dict) -> None:
    """The server process: a no-op encoder, stage timers or cProfile, commands on stdin."""

    def no_op_encode(self, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.zeros(pixels.shape[0], self.clip.embed_dim)

    ClipScorer.encode = no_op_encode
    if settings.pop("device_noop"):  # crop, resize, normalise: the GPU's work there

        def no_op_on_device(self, pixels: torch.Tensor, boxes) -> torch.Tensor:
            return torch.zeros(1 + len(boxes), 1)

        TensorPreprocess.on_device = no_op_on_device
    port = settings.pop("port")
    profile_path, profiles = settings.pop("profile"), []
    if profile_path:  # one profiler per thread (Python 3.11's cProfile sees one thread)
        run = threading.Thread.run

        def profiled(self) -> None:
            profiles.append(profile := cProfile.Profile(time.thread_time))
            profile.enable()
            run(self)

        threading.Thread.run = profiled
    else:
        for stage, (owner, name) in STAGES.items():
            setattr(owner, name, _timed(stage, getattr(owner, name)))
    config = ServerConfig(**settings, host="127.0.0.1", port=port, metrics_port=None,
                          device="cpu", precision="fp32", max_queue_views=1 << 22)  # fmt: skip
    server = SimilarityServer(config).start()
    print(f"{READY} {server.port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            tids = [t.native_id for t in threading.enumerate()]
            print(json.dumps([sum(list(_stage_cpu), collections.Counter()), tids]), flush=True)
        elif line.strip() == "clear":  # the profiled window starts
            for profile in profiles:
                profile.clear()
    server.stop(1.0)
    if profile_path:  # snapshots: create_stats() would close the calls still open with
        # this thread's clock, crediting every idle thread's wait with its CPU time
        snapshots = [SimpleNamespace(stats=p.snapshot_stats() or p.stats, create_stats=int)
                     for p in profiles]  # fmt: skip
        pstats.Stats(*[s for s in snapshots if s.stats]).dump_stats(profile_path)
    os._exit(0)


class Server:
    """This file's ``--child`` as a process: its port, CPU time and stage timers."""

    def __init__(self, settings: dict) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        while READY not in (line := self.process.stdout.readline()):
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
        self.port = int(line.split(READY)[1])

    def send(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline() if command == "stats" else ""

    def stages(self) -> tuple[collections.Counter, set[int]]:
        """CPU seconds by stage so far, and the ids of the server's Python threads."""
        stages, tids = json.loads(self.send("stats"))
        return collections.Counter(stages), set(tids)

    def cpu(self, task: str = "") -> float:
        """CPU seconds (user + system) of the process, or of one of its threads."""
        fields = Path(f"/proc/{self.process.pid}{task}/stat").read_text().rsplit(")")[-1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def threads(self) -> dict[int, float]:
        """CPU seconds of each live thread, by thread id."""
        cpu = {}
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                cpu[int(task)] = self.cpu(f"/task/{task}")
        return cpu

    def close(self) -> None:
        self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(60)
        self.process.kill()  # (nothing, when it has exited)
        self.process.wait()


def stream(client: SimilarityClient, images, spec: str, args) -> None:
    cosines = {"include_cosines": True} if args.cosines else {}  # (older clients lack it)
    labels = label_set_ref(VOC_CLASSES)
    answers = list(client.score_stream(images, labels, spec, args.in_flight, **cosines))
    assert len(answers) == len(images) and not any(a.error for a in answers), answers[:1]


def measure(args, preprocess: str, spec: str, images, processes: int = 1) -> dict:
    settings = {"model": args.model, "pretrained": None, "preprocess": preprocess,
                "preprocess_in": args.preprocess_in, "max_batch": args.max_batch,
                "workers": args.workers, "profile": None, "port": 0,
                "device_noop": args.device_noop}  # fmt: skip
    servers = [Server(settings)]  # more processes on the first one's port (SO_REUSEPORT)
    servers += [Server({**settings, "port": servers[0].port}) for _ in range(processes - 1)]
    streams = args.streams or 2 * processes
    rounds, stages, other = [], collections.Counter(), 0.0
    try:
        with SimilarityClient([f"127.0.0.1:{servers[0].port}"], deadline_s=600,
                              streams_per_endpoint=streams) as client:  # fmt: skip
            stream(client, images[:16], spec, args)  # warm-up
            for _ in range(args.rounds):
                stage0 = sum((s.stages()[0] for s in servers), collections.Counter())
                thread0, cpu0 = [s.threads() for s in servers], sum(s.cpu() for s in servers)
                client0, wall0 = time.process_time(), time.perf_counter()
                stream(client, images, spec, args)
                wall, client_s = time.perf_counter() - wall0, time.process_time() - client0
                server_s = sum(s.cpu() for s in servers) - cpu0
                for server, before in zip(servers, thread0, strict=True):
                    thread1, (stage1, tids) = server.threads(), server.stages()
                    stages.update(stage1)
                    other += sum(v - before.get(t, 0.0) for t, v in thread1.items()
                                 if t not in tids)  # fmt: skip
                stages.subtract(stage0)
                rounds.append((len(images) / wall, server_s, client_s))
    finally:
        for server in servers:
            server.close()
    n, total = len(images), len(images) * args.rounds
    ips = statistics.median(r[0] for r in rounds)
    server_ms = statistics.median(1000 * r[1] / n for r in rounds)
    client_ms = statistics.median(1000 * r[2] / n for r in rounds)
    each = " ".join(f"{r[0]:.1f}" for r in rounds)
    print(f"\n{spec} {preprocess}{' (device no-op)' if args.device_noop else ''}, "
          f"{processes} server process(es), {streams} streams: "
          f"{n} images x {args.rounds} rounds ({each} images/s)\n"
          f"  {ips:.1f} images/s; server CPU {server_ms:.2f} ms/image, client "
          f"{client_ms:.2f} ms/image; per core {1000 / server_ms:.1f} images/s; "
          f"{CORES} cores {CORES * 1000 / server_ms:.0f} images/s (goal {GOAL:.0f})")  # fmt: skip
    mean_ms = 1000 * sum(r[1] for r in rounds) / total
    stage_ms = {k: 1000 * stages[k] / total for k in STAGES} | {OTHER: 1000 * other / total}
    stage_ms[REST] = mean_ms - sum(stage_ms.values())
    print(f"  server CPU by stage (ms/image, all rounds; mean {mean_ms:.2f}):")
    for name, value in stage_ms.items():
        print(f"    {name:<18}{value:8.2f}  {value / mean_ms:6.1%}")
    if preprocess == "tensor" and not args.device_noop:  # these run on the GPU there
        host = stage_ms["decode"] + stage_ms["label_set"] + stage_ms["answer"] + stage_ms[REST]
        print(f"  decode + label_set + answer + rest (the host's share with a GPU): {host:.2f} "
              f"ms/image, {CORES} cores {CORES * 1000 / host:.0f} images/s")  # fmt: skip
    if args.profile:
        profile(args, settings, spec, images)
    return {"spec": spec, "preprocess": preprocess, "images": n, "rounds": args.rounds,
            "images_per_s": round(ips, 2), "server_cpu_ms_per_image": round(server_ms, 3),
            "client_cpu_ms_per_image": round(client_ms, 3),
            "per_core_images_per_s": round(1000 / server_ms, 2),
            "projected_16_cores": round(CORES * 1000 / server_ms, 1),
            **{f"{k}_ms": round(v, 3) for k, v in stage_ms.items()},
            "model": args.model, "cosines": args.cosines, "in_flight": args.in_flight,
            "max_batch": args.max_batch, "preprocess_in": args.preprocess_in,
            "device_noop": args.device_noop, "processes": processes, "streams": streams,
            "cpus": os.cpu_count()}  # fmt: skip


def profile(args, settings: dict, spec: str, images) -> None:
    """One round under cProfile in a fresh server; each stage's root and heaviest callees."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "server.prof"
        server = Server({**settings, "profile": str(path)})
        try:
            with SimilarityClient([f"127.0.0.1:{server.port}"], deadline_s=600) as client:
                stream(client, images[:16], spec, args)
                server.send("clear")
                stream(client, images, spec, args)
        finally:
            server.close()
        stats = pstats.Stats(str(path))
    stats.calc_callees()
    n, rows = len(images), stats.stats

    def line(ms: float, key: tuple, indent: str = "    ") -> None:
        text = re.sub(r".*/(site-packages|services|python3\.\d+)/", "", pstats.func_std_string(key))
        print(f"{indent}{ms:7.2f}  {text}")

    print(
        f"  cProfile, one round: thread CPU ms/image of the Python threads "
        f"({stats.total_tt * 1000 / n:.2f} in all, inflated by profiling); cumulative:"
    )
    roots = {(f"{owner.__module__.replace('.', '/')}.py", name): stage
             for stage, (owner, name) in STAGES.items()} | GRPC_ROOTS  # fmt: skip
    for key in sorted(rows, key=lambda k: -rows[k][3]):
        stage = next((v for (f, name), v in roots.items()
                      if key[2] == name and key[0].endswith(f)), None)  # fmt: skip
        if stage is not None:
            print(f"    [{stage}]")
            line(rows[key][3] * 1000 / n, key)
            callees = sorted(stats.all_callees.get(key, {}).items(), key=lambda kv: -kv[1][3])
            for callee, value in callees[: args.top]:
                line(value[3] * 1000 / n, callee, "      ")
    print("   heaviest self time (the C calls behind the stages and gRPC):")
    for key in sorted(rows, key=lambda k: -rows[k][2])[: 2 * args.top]:
        line(rows[key][2] * 1000 / n, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--child", help=argparse.SUPPRESS)
    add("--spec", nargs="+", default=["grid:3x3"])
    add("--preprocess", nargs="+", default=["tensor"], choices=["pil", "tensor"])
    add("--preprocess-in", default="requests", choices=["requests", "batcher"],
        help="the server's --preprocess-in (requests: as on a GPU)")  # fmt: skip
    add("--images", type=int, default=300, help="per round, grid specs")
    add("--patch-images", type=int, default=16, help="per round, patch specs")
    add("--rounds", type=int, default=3, help="rounds; medians kept")
    add("--in-flight", type=int, default=32, help="as the labeler's")
    add("--max-batch", type=int, default=256)
    add("--workers", type=int, default=16, help="the server's RPC threads")
    add("--model", default="RN50", help="open_clip model (random weights)")
    add("--profile", action="store_true", help="add a cProfile round per mode")
    add("--top", type=int, default=6, help="callees shown per profiled stage")
    add(
        "--device-noop",
        action="store_true",
        help="also no-op TensorPreprocess.on_device (crop, resize, normalise: the GPU's "
        "work on a GPU server), so the server's CPU is what a GPU server's CPU does",
    )
    add(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        help="server processes on one port; several values are measured side by side",
    )
    add("--streams", type=int, default=0, help="client streams (default 2 x processes)")
    add("--cosines", action=argparse.BooleanOptionalAction, default=True,
        help="include_cosines in every request, as the labeler (default)")  # fmt: skip
    add_results_option(parser)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    count = max(args.images, args.patch_images)
    images = voc_sized_images(count)
    print(f"{os.cpu_count()} CPUs; {args.model}; 500x375 JPEG q90, "
          f"{sum(len(d) for _, d in images) / count / 1024:.0f} KiB on average")  # fmt: skip
    rows = []
    for preprocess in args.preprocess:
        for spec in args.spec:
            n = args.patch_images if spec.startswith("patch") else args.images
            for processes in args.processes:
                rows.append(measure(args, preprocess, spec, images[:n], processes))
    columns = ["spec", "preprocess", "processes", *list(rows[0])[4:9]]
    print(f"\ngoal: {GOAL:.0f} images/s on {CORES} cores\n" + " | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    if len(args.processes) > 1:
        one = {(r["spec"], r["preprocess"]): r for r in rows if r["processes"] == args.processes[0]}
        for row in rows:
            base = one[(row["spec"], row["preprocess"])]
            if row is not base:
                print(f"{row['spec']} {row['preprocess']}: {row['processes']} processes / "
                      f"{base['processes']}: {row['images_per_s'] / base['images_per_s']:.2f}x "
                      "images/s")  # fmt: skip
    write_results(args.results, rows)


if __name__ == "__main__":
    main()
