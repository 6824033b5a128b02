"""Read a dataset spec: image count, positives per class, unreadable items.

A ``wds:`` spec (tar shards) has no index to read: its shards are streamed, once, and
counted (samples, images, label files, positives per class, bad samples, broken shards).
"""

from __future__ import annotations

import argparse
from collections import Counter

from tqdm import tqdm

from cdul.core.datasets import DIFFICULT_MODES, SPEC_FORMS, open_dataset
from cdul.core.datasets.wds import FORM as WDS_FORM


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help=" | ".join((*SPEC_FORMS, WDS_FORM)))
    parser.add_argument(
        "--classes", default=None,
        help="wds: the class list the label files name (a file or a comma-separated list)",
    )  # fmt: skip
    parser.add_argument(
        "--difficult",
        choices=DIFFICULT_MODES,
        default=None,
        help="VOC only: whether objects marked difficult make an image positive",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image (finds corrupt files; slower)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="with --decode: skip unreadable items and list them at the end instead of failing",
    )


def run(args: argparse.Namespace) -> int:
    if args.spec.startswith("wds:"):
        return _describe_tars(args)
    options: dict[str, object] = {"skip_bad": args.skip_bad}
    if args.difficult is not None:
        options["difficult"] = args.difficult
    dataset = open_dataset(args.spec, **options)
    print(f"{dataset.spec}: {len(dataset)} images, {len(dataset.classes)} classes")
    truth = dataset.ground_truth_matrix()
    if truth is not None:
        counts = truth.sum(dim=0).tolist()
        width = max((len(c) for c in dataset.classes), default=5)
        for name, count in zip(dataset.classes, counts, strict=True):
            print(f"  {name.ljust(width)}  {int(count)}")
        empty = int((truth.sum(dim=1) == 0).sum())
        print(f"  images without any positive label: {empty}")
    else:
        print("  no ground truth (unlabeled)")
    if args.decode:
        decoded = sum(1 for _ in tqdm(dataset, total=len(dataset), desc="decoding", unit="img"))
        print(f"decoded {decoded} of {len(dataset)} images")
    if dataset.skipped:
        print(dataset.skip_report())
    return 0


def _describe_tars(args: argparse.Namespace) -> int:
    from cdul.core.datasets.wds import TarShards
    from cdul.core.errors import DatasetError
    from cdul.core.label_set import parse_class_names

    classes = parse_class_names(args.classes) if args.classes else ()
    shards = TarShards(args.spec, classes=classes)
    samples = images = labeled = 0
    positives: Counter[str] = Counter()
    problems: list[str] = []
    for k in tqdm(range(len(shards)), desc="reading shards", unit="shard"):
        try:
            for sample in shards.samples(k):
                samples += 1
                if sample.problem:
                    problems.append(sample.problem)
                    continue
                images += 1
                if sample.labels is not None:
                    labeled += 1
                    positives.update(set(sample.labels))
        except DatasetError as error:
            problems.append(str(error))
    print(f"{shards.spec}: {len(shards)} tar shards, {samples} samples, {images} images, "
          f"{labeled} with a label file, {len(classes)} classes")  # fmt: skip
    if labeled:
        width = max(len(c) for c in classes)
        for name in classes:
            print(f"  {name.ljust(width)}  {positives[name]}")
    if problems:
        print(f"{len(problems)} problem(s):")
        print("\n".join(f"  {p}" for p in problems[:50]))
    return 0
