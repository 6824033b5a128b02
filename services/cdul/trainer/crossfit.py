"""``cdul cross-fit RUN IMAGES --folds N``: out-of-sample classifier predictions for the
review queue.

    cdul cross-fit file:///runs/demo voc:ROOT:train --folds 2 --preset world ...

Trains N classifiers, each as ``cdul train --hold-out K/N`` would (the same flags and
preset; no archive) into ``RUN/review/cross-fit/fold-K/``, and gathers each one's
predictions on the fold it never saw into ``RUN/review/out_of_fold.parquet``
(:mod:`cdul.labels.out_of_fold`): every image's probabilities from a classifier that did
not learn its label, which ``cdul label-queue`` ranks labels by. N = 2 costs about one
training on all images (each fold trains on half of them). Rerunning resumes: a finished
fold is not trained again (its prediction passes rerun), a killed one resumes from its
checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pyarrow as pa

from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import read_table, write_table
from cdul.core.storage import open_store
from cdul.labels import out_of_fold
from cdul.trainer import distributed
from cdul.trainer.config import add_arguments, from_args

log = logging.getLogger("cdul.trainer")

#: Where each fold's run goes, under the labels run.
FOLDS_PREFIX = "review/cross-fit"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Trains N classifiers with cdul train's flags, each without one fold of the images, "
        "and writes RUN/review/out_of_fold.parquet: each image's predictions from the one "
        "that did not see it (for cdul label-queue). Rerun to resume."
    )
    add_arguments(parser)
    parser.add_argument("--folds", type=int, default=2, help="N folds (default: 2)")


def run(args: argparse.Namespace) -> int:
    from cdul.trainer.loop import Trainer

    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    if args.output:
        raise ConfigError("cross-fit writes under the labels run; --output is not taken")
    base = from_args(args)
    if base.hold_out is not None:
        raise ConfigError("cross-fit sets --hold-out for each fold itself")
    store = open_store(base.labels)
    env = distributed.setup(base.device)
    try:
        tables = []
        for k in range(args.folds):
            fold_uri = store.uri_for(f"{FOLDS_PREFIX}/fold-{k}")
            config = dataclasses.replace(
                base, output=fold_uri, hold_out=f"{k}/{args.folds}", archive=False
            )
            # A finished fold resumes at its last epoch: only its prediction passes rerun
            # (and the trainer refuses changed settings, as cdul train does).
            log.info("fold %d/%d: %s", k + 1, args.folds, fold_uri)
            Trainer(config, env).run()
            if env.is_main:
                tables.append(read_table(open_store(fold_uri), out_of_fold.HELD_OUT))
        if env.is_main:
            gathered = pa.concat_tables(tables)
            write_table(store, out_of_fold.OUT_OF_FOLD, gathered)
            print(f"{store.uri_for(out_of_fold.OUT_OF_FOLD)}: out-of-fold predictions for "
                  f"{gathered.num_rows} images from {args.folds} folds; next: cdul label-queue "
                  f"{base.labels}")  # fmt: skip
        return 0
    finally:
        distributed.teardown(env)
