"""Out-of-sample classifier predictions on a run's images (``cdul cross-fit``'s output).

A classifier trained with ``--hold-out K/N`` predicts the images of fold K, which it
never saw, and writes them with the per-class thresholds it chose without ground truth
on its own training images (``training/held_out.parquet`` of the fold's run);
``cdul cross-fit`` gathers the N folds into ``RUN/review/out_of_fold.parquet``: every
image's probabilities from the one classifier that did not learn its label. The review
queue reads it (:mod:`cdul.labels.queue`).

Columns: ``image_id``; ``probability`` and ``threshold``, ``C`` float32 each (infinity:
a class that never fires); ``fold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from cdul.core.errors import ConfigError
from cdul.core.pseudo_labels import read_table, write_table
from cdul.core.storage import ObjectStore

#: A fold run's held-out predictions, and the run's gathered out-of-fold ones.
HELD_OUT = "training/held_out.parquet"
OUT_OF_FOLD = "review/out_of_fold.parquet"


@dataclass(frozen=True)
class OutOfFold:
    ids: list[str]
    probabilities: torch.Tensor  # (N, C)
    thresholds: torch.Tensor  # (N, C): each image's fold's thresholds
    folds: torch.Tensor  # (N,)

    def aligned(self, ids: list[str], where: str) -> OutOfFold:
        """Rows in the order of ``ids``; ConfigError when an image has none."""
        position = {image_id: k for k, image_id in enumerate(self.ids)}
        missing = [image_id for image_id in ids if image_id not in position]
        if missing:
            raise ConfigError(
                f"{where} has no out-of-fold prediction for {len(missing)} image(s) of the "
                f"run (e.g. {missing[0]!r}): rerun cdul cross-fit on this run"
            )
        rows = torch.tensor([position[image_id] for image_id in ids], dtype=torch.long)
        return OutOfFold(
            list(ids), self.probabilities[rows], self.thresholds[rows], self.folds[rows]
        )


def _matrix(column: pa.ChunkedArray, n: int) -> torch.Tensor:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.asarray(flat, dtype=np.float32).reshape(n, -1).copy())


def to_table(
    ids: list[str], probabilities: torch.Tensor, thresholds: torch.Tensor, fold: torch.Tensor
) -> pa.Table:
    n, c = probabilities.shape
    if thresholds.shape != (n, c) or fold.shape != (n,) or len(ids) != n:
        raise ValueError("ids, probabilities (N, C), thresholds (N, C) and fold (N,) disagree")

    def fixed(matrix: torch.Tensor) -> pa.Array:
        flat = pa.array(matrix.float().contiguous().numpy().reshape(-1), type=pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, c)

    return pa.table({
        "image_id": pa.array(ids, type=pa.string()), "probability": fixed(probabilities),
        "threshold": fixed(thresholds), "fold": pa.array(fold.numpy().astype(np.int32)),
    })  # fmt: skip


def write_held_out(
    store: ObjectStore, ids: list[str], probabilities: torch.Tensor, thresholds: torch.Tensor,
    fold: int,
) -> None:  # fmt: skip
    """A fold run's :data:`HELD_OUT`: its predictions and its ``(C,)`` thresholds."""
    n = len(ids)
    table = to_table(ids, probabilities, thresholds.float()[None, :].expand(n, -1),
                     torch.full((n,), fold))  # fmt: skip
    write_table(store, HELD_OUT, table)


def read(store: ObjectStore, key: str = OUT_OF_FOLD) -> OutOfFold | None:
    """The predictions at ``key``, None when there are none."""
    if not store.exists(key):
        return None
    table = read_table(store, key)
    expected = {"image_id", "probability", "threshold", "fold"}
    lacking = sorted(expected - set(table.column_names))
    if lacking or table.num_rows == 0:
        raise ConfigError(f"{store.uri_for(key)} is not out-of-fold predictions: "
                          f"{f'lacks {lacking}' if lacking else 'no rows'}")  # fmt: skip
    n = table.num_rows
    return OutOfFold(
        ids=table.column("image_id").to_pylist(),
        probabilities=_matrix(table.column("probability"), n),
        thresholds=_matrix(table.column("threshold"), n),
        folds=torch.tensor(table.column("fold").to_pylist(), dtype=torch.long),
    )
