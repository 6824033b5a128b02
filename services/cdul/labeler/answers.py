"""One image's answer (Eq. 2 and 5 scores, cosines, embeddings) and the table of a range.

The labeler gets answers from the CLIP service; an image whose embeddings a run stores
gets its answer computed again from them (:func:`from_embeddings`: Eq. 1-5 with the label
set's text embeddings, as the service computes them), with no image encoded. Either
way :func:`answers_table` turns a range of answers into the rows of a shard: the run's
label recipe applied (Eq. 6-7), the cosines and embeddings kept when the run keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch

from cdul.core import embedding_codec
from cdul.core import embeddings as stored
from cdul.core.method.aggregation import alpha_beta
from cdul.core.method.recipes import LabelRecipe
from cdul.core.method.similarity import class_scores, cosine_similarity
from cdul.core.pseudo_labels import Cosines, to_table

#: Columns only the labeler's parts and the embeddings objects hold, never a label shard.
EMBEDDING_COLUMNS = ("content_digest", "views", "view_embeddings")


@dataclass(frozen=True)
class Answer:
    """One image's answer: Eq. 2 and 5 scores, and (when asked for) cosines and embeddings."""

    glob: list[float]
    alpha: list[float]
    beta: list[float]
    global_cosine: list[float]
    snippet_cosine: list[float]
    view_embeddings: bytes = b""
    content_digest: str = ""


def from_embeddings(
    blobs: Sequence[bytes], digests: Sequence[str], text: torch.Tensor, logit_scale: float,
    where: str,
) -> list[Answer]:  # fmt: skip
    """Eq. 1-5 again from stored view embeddings (images with equal view counts scored
    together) and the label set's ``(C, D)`` text embeddings."""
    dim = text.shape[1]
    views = [embedding_codec.from_bytes(b, dim, where) for b in blobs]
    answers: list[Answer | None] = [None] * len(views)
    for count in sorted({len(v) for v in views}):
        rows = [i for i, v in enumerate(views) if len(v) == count]
        cosine = cosine_similarity(torch.stack([views[i] for i in rows]).float(), text)
        scores = class_scores(cosine, logit_scale)  # (n, 1 + S, C)
        alpha, beta = alpha_beta(scores[:, 1:])
        for k, i in enumerate(rows):
            answers[i] = Answer(
                scores[k, 0].tolist(), alpha[k].tolist(), beta[k].tolist(),
                cosine[k, 0].tolist(), cosine[k, 1:].flatten().tolist(), blobs[i], digests[i],
            )  # fmt: skip
    return [a for a in answers if a is not None]


def answers_table(
    ids: list[str],
    answers: list[Answer],
    width: int,
    recipe: LabelRecipe,
    logit_scale: float,
    ground_truth: torch.Tensor | None,
    *,
    store_cosines: bool,
    embed_dim: int | None,
) -> pa.Table:
    """The rows of ``answers`` (aligned with ``ids``): the stored vectors by ``recipe``,
    ground truth, the cosines when kept and, with ``embed_dim``, the embedding columns."""

    def stack(name: str) -> torch.Tensor:
        rows = [getattr(a, name) for a in answers]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(answers), width)

    glob, alpha, beta = stack("glob"), stack("alpha"), stack("beta")
    cosines = None
    if store_cosines or recipe.needs_snippets:
        flat = [v for a in answers for v in a.snippet_cosine]
        snippets = torch.tensor(flat, dtype=torch.float32).reshape(-1, width)
        counts = torch.tensor([len(a.snippet_cosine) // width for a in answers])
        cosines = Cosines(stack("global_cosine"), snippets, counts.long())
    padded = valid = None
    if recipe.needs_snippets:
        assert cosines is not None
        _, padded, valid = cosines.padded(logit_scale)
    vectors = {"global": glob, "alpha": alpha, "beta": beta,
               **recipe.apply(glob, alpha, beta, padded, valid)}  # fmt: skip
    table = to_table(ids, vectors, ground_truth, cosines if store_cosines else None)
    if embed_dim is not None:
        extra = stored.to_table(
            ids,
            [a.content_digest for a in answers],
            [a.view_embeddings for a in answers],
            embed_dim,
        )
        for name in EMBEDDING_COLUMNS:
            table = table.append_column(name, extra.column(name))
    return table


def split(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """A part's or shard's rows as (label columns, embeddings columns or None)."""
    if "view_embeddings" not in table.column_names:
        return table, None
    labels = table.drop_columns(list(EMBEDDING_COLUMNS))
    return labels, table.select(["image_id", *EMBEDDING_COLUMNS])
