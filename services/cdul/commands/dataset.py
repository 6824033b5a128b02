"""Read a dataset spec: image count, positives per class, unreadable items."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from cdul.core.datasets import DIFFICULT_MODES, SPEC_FORMS, open_dataset


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help=" | ".join(SPEC_FORMS))
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
