"""Stored image embeddings: bytes per image, `cdul relabel` vs a full `cdul label`, and
labeling 10% new images into a run vs labeling all of them.

The world's images (seed 0, 128 px scenes) in a folder, labeled with the tiny CLIP
(64 px, 128-d, ``grid:3x3``: 10 views per image) by ``cdul clip-serve`` in its own
process, as the demo runs it; the labeler in this process; runs on local disk. Each
timing is the median of ``--rounds`` fresh runs, side by side in one process:

- storage: the objects' bytes per image (Parquet, zstd, as stored) for the labels alone,
  the cosines (a label shard with them minus one without) and the embeddings, for class
  lists of 20 and 80 names (the world's shapes, then colour + shape names);
- relabel: ``cdul label --store-embeddings`` of all images with one class list, then
  ``cdul relabel`` of that run to another list (one class renamed, one added) against a
  full ``cdul label`` with that list;
- incremental: a run of 90% of the images, the rest added, labeled again into it
  (encodes 10%) against a fresh run of all of them;
- the relabel's scoring alone (:func:`cdul.labeler.answers.from_embeddings`) on random
  1024-d embeddings (RN50's size), which no image encoder enters.

    .venv/bin/python benchmarks/stored_embeddings.py --images 1000 \
        --results benchmarks/results/stored_embeddings_world_cpu_fp32.csv
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from results_file import add_results_option, write_results

from cdul.clip_service import launch
from cdul.core import embedding_codec, embeddings
from cdul.core.pseudo_labels import shard_key
from cdul.labeler.answers import from_embeddings
from cdul.labeler.job import LabelConfig, label
from cdul.labeler.relabel import relabel
from cdul.world.generator import write_voc_world
from cdul.world.shapes import COLOURS, SHAPES
from cdul.world.tiny_clip import ensure_tiny_clip


def class_lists() -> dict[int, list[str]]:
    names = list(SHAPES) + [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return {20: names[:20], 80: names[:80]}


def config(spec: str, output: Path, classes: list[str], endpoint: str, **changes) -> LabelConfig:
    return LabelConfig(dataset=spec, output=f"file://{output}", endpoints=(endpoint,),
                       classes=tuple(classes), snippet_spec="grid:3x3", progress=False,
                       **changes)  # fmt: skip


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    add_results_option(parser)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cdul-embeddings-"))
    try:
        world = write_voc_world(root / "world", seed=0, train=args.images, val=1, progress=False)
        jpegs = sorted(Path(world, "JPEGImages").glob("*.jpg"))[: args.images]
        folder = root / "images"
        folder.mkdir()
        for jpeg in jpegs:
            shutil.copy(jpeg, folder / jpeg.name)
        spec = f"folder:{folder}"
        process, port = launch.spawn(["--model", "cdul-tiny-rn", "--pretrained",
                                      str(ensure_tiny_clip()), "--metrics-port", "-1"])  # fmt: skip
        endpoint = f"127.0.0.1:{port}"
        try:
            rows = measure(args, root, spec, folder, endpoint)
        finally:
            launch.stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.results, rows)


def measure(args, root: Path, spec: str, folder: Path, endpoint: str) -> list[dict[str, object]]:
    n, rows = args.images, []
    lists = class_lists()
    # Storage per image, at 20 and 80 classes.
    for width, classes in lists.items():
        runs = {}
        for name, changes in (("labels", {"store_cosines": False}), ("cosines", {}),
                              ("embeddings", {"store_embeddings": True})):  # fmt: skip
            out = root / f"size-{width}-{name}"
            label(config(spec, out, classes, endpoint, **changes))
            runs[name] = out
        shard = shard_key(0, 1, "parquet")
        labels_b = size(runs["labels"] / shard) / n
        cosines_b = (size(runs["cosines"] / shard) - size(runs["labels"] / shard)) / n
        emb_b = size(runs["embeddings"] / embeddings.shard_key(0, 1)) / n
        print(
            f"{width} classes: labels {labels_b:.0f} B/image, cosines {cosines_b:.0f} B/image, "
            f"embeddings {emb_b:.0f} B/image (raw {10 * 128 * 2} B: 10 views x 128-d x fp16)"
        )
        rows.append({"measure": f"bytes_per_image_{width}_classes", "labels": round(labels_b),
                     "cosines": round(cosines_b), "embeddings": round(emb_b)})  # fmt: skip
    # Relabel vs a full run with the new list.
    first = lists[20]
    second = [("box" if c == "square" else c) for c in first] + ["pentagon"]
    full_s, relabel_s = [], []
    for k in range(args.rounds):
        source = root / f"source-{k}"
        label(config(spec, source, first, endpoint, store_embeddings=True))
        full_s.append(timed(lambda k=k: label(config(
            spec, root / f"full-{k}", second, endpoint, store_embeddings=True))))  # fmt: skip
        relabel_s.append(timed(lambda k=k, source=source: relabel(config(
            spec, root / f"relabel-{k}", second, endpoint), f"file://{source}")))  # fmt: skip
    full_m, relabel_m = statistics.median(full_s), statistics.median(relabel_s)
    print(
        f"{n} images: full cdul label {full_m:.2f} s, cdul relabel {relabel_m:.3f} s: "
        f"{full_m / relabel_m:.0f}x faster (medians of {args.rounds})"
    )
    rows.append({"measure": "relabel_vs_full_label_s", "labels": round(full_m, 3),
                 "cosines": "", "embeddings": round(relabel_m, 3)})  # fmt: skip
    # Incremental: 10% new images.
    grown_s, fresh_s = [], []
    new = sorted(folder.glob("*.jpg"))[-n // 10 :]
    for k in range(args.rounds):
        part = root / f"part-{k}"
        part.mkdir()
        for jpeg in sorted(folder.glob("*.jpg"))[: n - len(new)]:
            shutil.copy(jpeg, part / jpeg.name)
        run = root / f"grow-{k}"
        label(config(f"folder:{part}", run, first, endpoint, store_embeddings=True))
        for jpeg in new:
            shutil.copy(jpeg, part / jpeg.name)
        grown_s.append(timed(lambda part=part, run=run: label(config(
            f"folder:{part}", run, first, endpoint, store_embeddings=True))))  # fmt: skip
        fresh_s.append(timed(lambda k=k: label(config(
            spec, root / f"fresh-{k}", first, endpoint, store_embeddings=True))))  # fmt: skip
    grown_m, fresh_m = statistics.median(grown_s), statistics.median(fresh_s)
    print(
        f"{len(new)} new of {n}: labeled into the run {grown_m:.2f} s vs a full run "
        f"{fresh_m:.2f} s: {grown_m / fresh_m:.2f}x the time"
    )
    rows.append({"measure": "incremental_10pct_vs_full_s", "labels": round(fresh_m, 3),
                 "cosines": "", "embeddings": round(grown_m, 3)})  # fmt: skip
    # The relabel's scoring alone on RN50-sized embeddings (1024-d, 10 views, 80 classes).
    text = torch.randn(80, 1024)
    blobs = [embedding_codec.to_bytes(embedding_codec.rounded(torch.randn(10, 1024)))
             for _ in range(n)]  # fmt: skip
    digests = [""] * n
    score_s = statistics.median(
        timed(lambda: from_embeddings(blobs, digests, text, 4.6, "bench"))
        for _ in range(args.rounds)
    )
    print(
        f"scoring {n} stored RN50-sized embeddings (1024-d, 10 views, 80 classes): "
        f"{score_s:.3f} s = {n / score_s:.0f} images/s on this CPU"
    )
    rows.append({"measure": "score_1024d_80_classes_s", "labels": "", "cosines": "",
                 "embeddings": round(score_s, 3)})  # fmt: skip
    rows.append(rounding_effect(root, endpoint))
    return rows


def rounding_effect(root: Path, endpoint: str) -> dict[str, object]:
    """A run that stores embeddings scores them rounded to float16: its labels against a
    run without, on the world's training scenes (ground truth: mAP of each)."""
    spec = f"voc:{root / 'world'}:train"
    runs = {}
    for name, store in (("plain", False), ("embeddings", True)):
        cfg = LabelConfig(dataset=spec, output=f"file://{root / f'rounding-{name}'}",
                          endpoints=(endpoint,), snippet_spec="grid:3x3", progress=False,
                          store_embeddings=store)  # fmt: skip
        _, labels, evaluation = label(cfg)
        runs[name] = (labels, evaluation.ranking["final"].mean_ap)
    (plain, plain_map), (rounded, rounded_map) = runs["plain"], runs["embeddings"]
    delta = (plain["final"] - rounded["final"]).abs()
    print(
        f"float16 embeddings vs none: final scores differ by at most {delta.max():.2e} "
        f"(mean {delta.mean():.2e}); final mAP {plain_map:.4f} vs {rounded_map:.4f}"
    )
    return {"measure": "fp16_final_max_abs_diff_and_maps", "labels": round(plain_map, 4),
            "cosines": f"{delta.max():.2e}", "embeddings": round(rounded_map, 4)}  # fmt: skip


if __name__ == "__main__":
    main()
