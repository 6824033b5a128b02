"""Tar shards vs one object per image, through an S3 server: images/s and requests per image.

The same world images (seed 0, 128 px JPEGs) stored twice in the S3 test server the
tests use (moto, in its own process, on loopback): one object per image
(``s3://BUCKET/objects/``, read as the ``s3://`` dataset kind) and WebDataset tar
shards of ``--shard-size`` samples (``wds:s3://BUCKET/shards/{00000..N}.tar``). Two
measurements, each the median of ``--rounds``, side by side in one process:

- the labeler's read path alone: every image's bytes as the labeler gets them (the
  ``s3://`` kind's listing and one GET per image on 4 read-ahead threads, as the
  labeler reads; the tar shards streamed one after another), with the requests the
  store counted (GETs, list pages, existence probes);
- a whole ``cdul label`` run with each (``cdul clip-serve`` with the tiny CLIP in its
  own process, ``grid:3x3``): labeling is bounded by the CLIP service, so the read
  path must not slow it down.

    .venv/bin/python benchmarks/wds_vs_objects.py --images 1000 --shard-size 250 \
        --results benchmarks/results/wds_vs_objects_moto_cpu.csv
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from results_file import add_results_option, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.s3server import S3TestServer

from cdul.clip_service import launch
from cdul.core.datasets.wds import TarShards
from cdul.labeler.config import LabelConfig
from cdul.labeler.job import label
from cdul.labeler.service import read_ahead
from cdul.labeler.sources import open_source
from cdul.world.generator import write_voc_world, write_wds_world
from cdul.world.shapes import SHAPES
from cdul.world.tiny_clip import ensure_tiny_clip


def read_objects(spec: str) -> tuple[int, float, dict[str, int]]:
    start = time.perf_counter()
    source = open_source(spec, classes=tuple(SHAPES))
    count = sum(len(f.result()) > 0 for _, f in read_ahead(source, list(range(len(source)))))
    return count, time.perf_counter() - start, dict(source.dataset.store.requests)


def read_tars(spec: str) -> tuple[int, float, dict[str, int]]:
    start = time.perf_counter()
    shards = TarShards(spec, classes=tuple(SHAPES))
    count = sum(s.data is not None for k in range(len(shards)) for s in shards.samples(k))
    requests: dict[str, int] = {}
    for store in shards.stores():
        for op, n in store.requests.items():
            requests[op] = requests.get(op, 0) + n
    return count, time.perf_counter() - start, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-label", action="store_true", help="the read path only")
    add_results_option(parser)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cdul-wds-"))
    try:
        with S3TestServer() as server:
            import os

            os.environ.update(server.env())
            server.create_bucket("bench")
            rows = run(args, root, server)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.results, rows)


def run(args, root: Path, server: S3TestServer) -> list[dict[str, object]]:
    from cdul.core.storage import open_store

    n = args.images
    voc = write_voc_world(root / "voc", seed=0, train=0, val=n, progress=False)
    tars = write_wds_world(root / "wds", seed=0, train=0, val=n, shard_size=args.shard_size,
                           progress=False)  # fmt: skip
    objects = open_store("s3://bench/objects")
    for jpeg in sorted(Path(voc, "JPEGImages").glob("*.jpg")):
        objects.write_file(jpeg.name, jpeg)
    shard_store = open_store("s3://bench/shards")
    names = sorted(p.name for p in tars.glob("val-*.tar"))
    for name in names:
        shard_store.write_file(name, tars / name)
    last = len(names) - 1
    specs = {"objects": "s3://bench/objects",
             "wds": f"wds:s3://bench/shards/val-{{00000..{last:05d}}}.tar"}  # fmt: skip
    rows = []
    measured: dict[str, tuple[float, dict[str, int]]] = {}
    for name, reader in (("objects", read_objects), ("wds", read_tars)):
        runs = [reader(specs[name]) for _ in range(args.rounds)]
        assert all(count == n for count, _, _ in runs), runs
        seconds = statistics.median(s for _, s, _ in runs)
        requests = runs[-1][2]
        measured[name] = (seconds, requests)
        total = sum(requests.values())
        print(f"read path, {name:>7}: {n / seconds:7.0f} images/s, {total} requests "
              f"({', '.join(f'{k} {v}' for k, v in sorted(requests.items()))}) = "
              f"{total / n:.4f} per image")  # fmt: skip
        rows.append({"mode": f"read_{name}", "images": n, "shard_size": args.shard_size,
                     "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
                     "requests": total, "requests_per_image": round(total / n, 5)})  # fmt: skip
    per_image = {k: sum(r.values()) / n for k, (_, r) in measured.items()}
    print(
        f"wds: {per_image['wds'] / per_image['objects']:.4f}x the requests per image "
        f"(1/{per_image['objects'] / per_image['wds']:.0f}), "
        f"{measured['objects'][0] / measured['wds'][0]:.1f}x the images/s"
    )
    if args.no_label:
        return rows
    process, port = launch.spawn(["--model", "cdul-tiny-rn", "--pretrained",
                                  str(ensure_tiny_clip()), "--metrics-port", "-1"])  # fmt: skip
    try:
        for name in ("objects", "wds"):
            times = []
            for k in range(args.rounds):
                config = LabelConfig(dataset=specs[name], output=f"s3://bench/run-{name}-{k}",
                                     endpoints=(f"127.0.0.1:{port}",), classes=tuple(SHAPES),
                                     snippet_spec="grid:3x3", progress=False)  # fmt: skip
                start = time.perf_counter()
                label(config)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            print(f"cdul label, {name:>7}: {n / seconds:6.1f} images/s ({seconds:.2f} s)")
            rows.append({"mode": f"label_{name}", "images": n, "shard_size": args.shard_size,
                         "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
                         "requests": "", "requests_per_image": ""})  # fmt: skip
    finally:
        launch.stop(process)
    return rows


if __name__ == "__main__":
    main()
