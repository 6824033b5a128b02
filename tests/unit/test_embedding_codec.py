"""Stored image embeddings, by hand: rounding and bytes, Eq. 1-5 from stored vectors
(:func:`view_scores`, :func:`from_embeddings`), the model identity that keeps two models'
embeddings apart."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cdul.core.embedding_codec import (
    check_same_model,
    content_digest,
    from_bytes,
    model_identity,
    rounded,
    to_bytes,
)
from cdul.core.errors import ConfigError, StorageError
from cdul.core.method.similarity import view_scores
from cdul.labeler.answers import from_embeddings

E = math.e


def test_rounding_and_bytes_by_hand():
    # (3, 4) / 5 = (0.6, 0.8); float16 0.6 is 0x38CD, 0.8 is 0x3A66, little-endian.
    views = rounded(torch.tensor([[3.0, 4.0]]))
    assert views.dtype == torch.float16
    assert to_bytes(views) == b"\xcd\x38\x66\x3a"
    back = from_bytes(b"\xcd\x38\x66\x3a", 2, "here")
    assert back.tolist() == [[0.60009765625, 0.7998046875]]  # the float16 values exactly
    for bad in (b"", b"\x00\x00\x00", b"\x00" * 6):
        with pytest.raises(StorageError, match=r"here: .* not 2-d float16"):
            from_bytes(bad, 2, "here")
    assert content_digest(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_view_scores_by_hand():
    # Global view (1, 0), snippets (0, 1) and (1, 0); classes (1, 0) and (0, 1);
    # logit_scale 0: temperature 1, softmax of the cosines.
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    s = view_scores(views, text, 0.0)
    hi, lo = E / (E + 1), 1 / (E + 1)
    assert s.global_cosine.tolist() == [1.0, 0.0]
    assert s.global_scores.tolist() == pytest.approx([hi, lo])
    assert s.snippet_scores.flatten().tolist() == pytest.approx([lo, hi, hi, lo])
    assert s.alpha.tolist() == pytest.approx([hi, hi])
    assert s.beta.tolist() == pytest.approx([lo, lo])
    # logit_scale log(2): temperature 2.
    s2 = view_scores(views, text, math.log(2.0))
    assert s2.global_scores[0].item() == pytest.approx(E**2 / (E**2 + 1))


def test_from_embeddings_equals_view_scores_per_image_in_order():
    torch.manual_seed(0)
    text = torch.randn(5, 8)
    # Two view counts (a grid and a dense spec's cells), interleaved.
    views = [rounded(torch.randn(n, 8)) for n in (10, 5, 10, 5)]
    answers = from_embeddings([to_bytes(v) for v in views], ["a", "b", "c", "d"], text, 2.0, "x")
    assert [a.content_digest for a in answers] == ["a", "b", "c", "d"]
    for v, a in zip(views, answers, strict=True):
        one = view_scores(v.float(), text, 2.0)
        assert torch.allclose(torch.tensor(a.glob), one.global_scores, atol=1e-6)
        assert torch.allclose(torch.tensor(a.alpha), one.alpha, atol=1e-6)
        assert torch.allclose(torch.tensor(a.beta), one.beta, atol=1e-6)
        assert len(a.snippet_cosine) == (len(v) - 1) * 5 and a.view_embeddings == to_bytes(v)


def _info(**changes):
    base = dict(model_name="RN50", pretrained="openai", weights_digest="", preprocess="pil",
                precision="fp32", input_size=224, embed_dim=1024)  # fmt: skip
    return SimpleNamespace(**{**base, **changes})


def test_other_models_are_refused_naming_both():
    stored = model_identity(_info())
    check_same_model(stored, model_identity(_info()), "RUN", "the service")  # same: fine
    for change, word in ((dict(pretrained="yfcc15m"), "yfcc15m"),
                         (dict(preprocess="tensor"), "tensor preprocessing"),
                         (dict(precision="bf16"), "bf16"),
                         (dict(weights_digest="ab" * 32), "sha256 abababababab")):  # fmt: skip
        with pytest.raises(ConfigError) as raised:
            check_same_model(stored, model_identity(_info(**change)), "RUN", "the service")
        message = str(raised.value)
        assert "RUN holds image embeddings of RN50 (openai" in message
        assert "the service is RN50" in message and word in message
