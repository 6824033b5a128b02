"""``cdul archive``: build the TorchServe model archive (``.mar``) of a trained classifier.

    cdul archive --weights classifier.pt --classes classes.txt --output-dir model-store
    cdul archive --weights w.pt --classes cat,dog,bird --arch resnet18 --image-size 128 \\
        --output-dir s3://cdul/run-7/model-store

``--output-dir`` is a local directory or a store URI (``file://``, ``s3://``); for a
remote store the archive is built locally and uploaded atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cdul.core.errors import ConfigError
from cdul.core.settings import add_flags, from_args, setting
from cdul.core.thresholds_file import read_thresholds_file
from cdul.serving.config import ClassifierConfig


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig(ClassifierConfig):
    """``cdul archive``: the classifier's config (its flags) and where the archive goes."""

    weights: str
    output_dir: str
    thresholds_file: str | None = setting(
        None, "each class's own threshold instead of --threshold for all: JSON {class: "
        "threshold} or CSV class,threshold lines", flag="--thresholds", metavar="FILE",
    )  # fmt: skip
    model_name: str = setting("cdul", "TorchServe model name")
    version: str = setting("1.0", "model version")
    force: bool = setting(False, "replace an existing archive")

    def classifier(self) -> ClassifierConfig:
        """The config the archive carries (this one without the command's own fields)."""
        names = [f.name for f in dataclasses.fields(ClassifierConfig)]
        values = {name: getattr(self, name) for name in names}
        if self.thresholds_file is not None:
            per_class = read_thresholds_file(self.thresholds_file, list(self.classes))
            values["thresholds"] = tuple(per_class.tolist())
            values["thresholds_from"] = f"the file {self.thresholds_file}"
        return ClassifierConfig(**values)


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
    add_flags(parser, ArchiveConfig)


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch) only once the command runs, so --help stays fast.
    from cdul.core.label_set import parse_class_names
    from cdul.serving.archive import build_archive

    config = from_args(ArchiveConfig, args, classes=parse_class_names(args.classes),
                       weights=args.weights, output_dir=args.output_dir)  # fmt: skip
    options = {"model_name": config.model_name, "version": config.version, "force": config.force}
    classifier = config.classifier()
    destination = config.output_dir
    scheme, sep, _ = destination.partition("://")
    if not sep or scheme == "file":
        local_dir = destination[len("file://") :] if sep else destination
        path = build_archive(config.weights, classifier, local_dir, **options)
        where = str(path)
    else:
        where = _build_and_upload(config.weights, classifier, destination, **options)
    decided = classifier.thresholds_from or f"threshold {classifier.threshold} for every class"
    print(
        f"wrote {where}: {classifier.arch}, {len(classifier.classes)} classes, "
        f"{classifier.image_size} px, {decided}"
    )
    return 0


def _build_and_upload(
    weights: str,
    config: ClassifierConfig,
    uri: str,
    *,
    model_name: str,
    version: str,
    force: bool,
) -> str:
    """Build in a temporary directory, then one atomic write to the store."""
    from cdul.core.storage import open_store
    from cdul.serving.archive import build_archive

    store = open_store(uri)
    key = f"{model_name}.mar"
    if store.exists(key) and not force:
        raise ConfigError(f"{store.uri_for(key)} already exists (use --force to replace it)")
    with tempfile.TemporaryDirectory(prefix="cdul-archive-") as tmp:
        path = build_archive(weights, config, Path(tmp), model_name=model_name, version=version,
                             force=force)  # fmt: skip
        store.write_file(key, path)
    return store.uri_for(key)
