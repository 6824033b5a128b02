"""Labeler fixtures: one real CLIP service on loopback (the world's tiny CLIP) for the
whole labeler suite, an independent open_clip reference, and helpers to run jobs."""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.core.clip_models import register_project_configs
from cdul.labeler.job import LabelConfig


def _serve(world_clip, **settings):
    config = ServerConfig(model="cdul-tiny-rn", pretrained=str(world_clip), host="127.0.0.1",
                          port=0, metrics_port=None, workers=16, **settings)  # fmt: skip
    server = SimilarityServer(config).start()
    yield f"127.0.0.1:{server.port}"
    server.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def clip_endpoint(world_clip):
    yield from _serve(world_clip, max_wait_ms=2.0)


@pytest.fixture(scope="session")
def unbatched_endpoint(world_clip):
    """The same service encoding every view alone (``max_batch=1``): its answers do not
    depend on which requests arrived together, so two runs through it are identical by
    construction (see ``tests/support/same_labels.py``). For the tests that compare two
    runs; the others use ``clip_endpoint``, batching as deployed."""
    yield from _serve(world_clip, max_batch=1, max_wait_ms=0.0)


@pytest.fixture(scope="session")
def world_spec(world_root):
    return f"voc:{world_root}:val"


@pytest.fixture
def make_config(clip_endpoint, world_spec):
    def make(output: str, **changes) -> LabelConfig:
        # The paper's recipe: these tests check Eq. 1-7 against open_clip computed here.
        base = dict(dataset=world_spec, output=output, endpoints=(clip_endpoint,),
                    snippet_spec="grid:2x2", progress=False, wait_for_service_s=10.0,
                    recipe_name="paper")  # fmt: skip
        base.update(changes)
        return LabelConfig(**base)

    return make


@pytest.fixture
def make_unbatched_config(make_config, unbatched_endpoint):
    """``make_config`` on the ``unbatched_endpoint`` service: for runs a test compares."""

    def make(output: str, **changes) -> LabelConfig:
        return make_config(output, endpoints=(unbatched_endpoint,), **changes)

    return make


@pytest.fixture(scope="session")
def reference(world_clip):
    """open_clip's own model, preprocessing and tokenizer (not cdul's scorer):
    ``score(images, classes) -> softmax probabilities (N, C)``."""
    register_project_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "cdul-tiny-rn", pretrained=str(world_clip)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer("cdul-tiny-rn")

    def score(images: list[Image.Image], classes: list[str]) -> torch.Tensor:
        with torch.no_grad():
            text = model.encode_text(tokenizer([f"a photo of a {c}" for c in classes]))
            feats = model.encode_image(torch.stack([preprocess(i) for i in images]))
        text = text / text.norm(dim=-1, keepdim=True)
        cos = (feats / feats.norm(dim=-1, keepdim=True)) @ text.T
        return torch.softmax(model.logit_scale.exp() * cos, dim=-1)

    return score
