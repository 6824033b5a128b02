"""Export a trained classifier to ``RUN/model-store/``: what TorchServe and users load.

- ``classifier.pt``: the state_dict alone (loads with ``torch.load(weights_only=True)``
  into ``cdul.core.classifier.build_classifier(arch, len(classes))``);
- ``classes.txt``: the class names, one per line, in logit order;
- ``cdul_classifier.json``: the serving config (arch, classes, image size, mean/std,
  default decision threshold);
- ``<model name>.mar``: the TorchServe archive, built by the serving package's
  :func:`cdul.serving.archive.build_archive` with its handler.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from cdul.core.storage import ObjectStore
from cdul.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from cdul.trainer.thresholds import DecisionThresholds

PREFIX = "model-store"
WEIGHTS_KEY = f"{PREFIX}/classifier.pt"
CLASSES_KEY = f"{PREFIX}/classes.txt"


def export(
    store: ObjectStore,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str,
    classes: list[str],
    image_size: int,
    model_name: str,
    thresholds: DecisionThresholds,
    archive: bool = True,
) -> list[str]:
    """Write the model store's objects; returns their keys."""
    from cdul.serving.config import CONFIG_FILE_NAME, ClassifierConfig

    config = ClassifierConfig(
        arch=arch,
        classes=tuple(classes),
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        thresholds=thresholds.for_config(),
        thresholds_from=thresholds.source,
    )
    written = []
    with tempfile.TemporaryDirectory(prefix="cdul-export-") as tmp:
        weights = Path(tmp) / "classifier.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, weights)
        store.write_file(WEIGHTS_KEY, weights)
        store.write_text(CLASSES_KEY, "".join(f"{c}\n" for c in classes))
        config_path = config.write(Path(tmp) / CONFIG_FILE_NAME)
        store.write_file(f"{PREFIX}/{CONFIG_FILE_NAME}", config_path)
        written += [WEIGHTS_KEY, CLASSES_KEY, f"{PREFIX}/{CONFIG_FILE_NAME}"]
        if archive:
            from cdul.serving.archive import build_archive

            mar = build_archive(
                weights, config, Path(tmp) / "mar", model_name=model_name, force=True
            )
            key = f"{PREFIX}/{mar.name}"
            store.write_file(key, mar)
            written.append(key)
    return written
