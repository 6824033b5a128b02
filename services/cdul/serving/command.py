"""``cdul archive``: build the TorchServe model archive (``.mar``) of a trained classifier.

    cdul archive --weights classifier.pt --classes classes.txt --output-dir model-store
    cdul archive --weights w.pt --classes cat,dog,bird --arch resnet18 --image-size 128 \\
        --output-dir s3://cdul/run-7/model-store

``--output-dir`` is a local directory or a store URI (``file://``, ``s3://``); for a
remote store the archive is built locally and uploaded atomically.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdul.core.classifier import SUPPORTED_ARCHS
from cdul.core.errors import ConfigError
from cdul.core.images import DEFAULT_MAX_PIXELS
from cdul.core.transforms import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from cdul.serving.config import ClassifierConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        required=True,
        metavar="STATE_DICT",
        help="the classifier's state_dict (torch.save(model.state_dict(), path))",
    )
    parser.add_argument(
        "--classes",
        required=True,
        metavar="FILE_OR_LIST",
        help="class names, in the order of the model's outputs: a file with one per line "
        "or a comma-separated list",
    )
    parser.add_argument(
        "--output-dir",
        required=True,
        metavar="DIR_OR_URI",
        help="where <model-name>.mar goes: a directory, file://PATH or s3://BUCKET/PREFIX",
    )
    parser.add_argument(
        "--arch", default="resnet101", choices=SUPPORTED_ARCHS, help="default: resnet101"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="side of the square the trainer's evaluation resized images to (default: 224)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="default decision threshold per class; callers may override it (default: 0.5)",
    )
    parser.add_argument(
        "--mean",
        default=",".join(map(str, IMAGENET_MEAN)),
        help="normalisation mean R,G,B (default: ImageNet's)",
    )
    parser.add_argument(
        "--std",
        default=",".join(map(str, IMAGENET_STD)),
        help="normalisation std R,G,B (default: ImageNet's)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images larger than this many pixels (default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--model-name", default="cdul", help="TorchServe model name (default: cdul)"
    )
    parser.add_argument("--version", default="1.0", help="model version (default: 1.0)")
    parser.add_argument("--force", action="store_true", help="replace an existing archive")


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch) only once the command runs, so --help stays fast.
    from cdul.core.label_set import parse_class_names
    from cdul.serving.archive import build_archive
    from cdul.serving.config import ClassifierConfig

    config = ClassifierConfig(
        arch=args.arch,
        classes=parse_class_names(args.classes),
        image_size=args.image_size,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        threshold=args.threshold,
        max_pixels=args.max_pixels,
    )
    options = {"model_name": args.model_name, "version": args.version, "force": args.force}
    destination = args.output_dir
    scheme, sep, _ = destination.partition("://")
    if not sep or scheme == "file":
        local_dir = destination[len("file://") :] if sep else destination
        path = build_archive(args.weights, config, local_dir, **options)
        where = str(path)
    else:
        where = _build_and_upload(args.weights, config, destination, **options)
    print(
        f"wrote {where}: {config.arch}, {len(config.classes)} classes, "
        f"{config.image_size} px, threshold {config.threshold}"
    )
    return 0


def _build_and_upload(
    weights: str, config: ClassifierConfig, uri: str, *, model_name: str, **options: Any
) -> str:
    """Build in a temporary directory, then one atomic write to the store."""
    from cdul.core.storage import open_store
    from cdul.serving.archive import build_archive

    store = open_store(uri)
    key = f"{model_name}.mar"
    if store.exists(key) and not options.get("force"):
        raise ConfigError(f"{store.uri_for(key)} already exists (use --force to replace it)")
    with tempfile.TemporaryDirectory(prefix="cdul-archive-") as tmp:
        path = build_archive(weights, config, Path(tmp), model_name=model_name, **options)
        store.write_file(key, path)
    return store.uri_for(key)


def _floats(text: str, option: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} must be three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise ConfigError(f"{option} must be three comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]
