"""``cdul train``: train the classifier on a pseudo-label run (Eq. 8), export it.

    cdul train file:///runs/voc LABELS_DATASET --val voc:ROOT:val --epochs 20

Rerunning the same command resumes from the run's last checkpoint. Under
``torchrun --nproc_per_node N -m cdul.cli train ...`` it trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import logging

from cdul.trainer import distributed
from cdul.trainer.config import add_arguments, from_args

log = logging.getLogger("cdul.trainer")


def configure(parser: argparse.ArgumentParser) -> None:
    # The registry's one-line help stays the description; the details go below the options.
    parser.epilog = (
        "Trains a multi-label ResNet on pseudo labels with gradient alignment (Eq. 8); "
        "writes RUN/training/ (metrics.jsonl, curves.png, checkpoint.pt) and "
        "RUN/model-store/ (state_dict, classes, .mar). Rerun the same command to resume; "
        "start it with torchrun for DDP."
    )
    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cdul.trainer.loop import Trainer

    config = from_args(args)
    env = distributed.setup(config.device)
    try:
        if not env.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        history = Trainer(config, env).run()
        if env.is_main:
            last = history[-1]
            summary = {k: last.get(k) for k in ("epoch", "loss", "pseudo_label_map", "val_map")}
            summary["initial_pseudo_label_map"] = history[0].get("pseudo_label_map")
            summary["output"] = config.output
            print(json.dumps(summary))
        return 0
    finally:
        distributed.teardown(env)
