"""RN50 (open_clip's config, random weights saved to a local checkpoint) through the
service equals open_clip's own computation: the path real users take with RN50/openai."""

import io

import open_clip
import pytest
import torch

from cdul.clip_service.client import SimilarityClient, label_set_ref
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.world.generator import make_scene

pytestmark = pytest.mark.slow
CLASSES = ["circle", "star", "heart", "square"]


@pytest.fixture(scope="module")
def rn50_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model("RN50", pretrained=None)
    path = tmp_path_factory.mktemp("rn50") / "rn50-random.pt"
    torch.save(model.state_dict(), path)
    return path


def test_rn50_global_and_snippets_match_open_clip(rn50_checkpoint):
    model, _, preprocess = open_clip.create_model_and_transforms(
        "RN50", pretrained=str(rn50_checkpoint)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer("RN50")
    scene = make_scene(4, 0).image.resize((256, 192))
    tiles = [
        scene.crop((c * 128, r * 96, c * 128 + 128, r * 96 + 96))
        for r in range(2)
        for c in range(2)
    ]
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {c}" for c in CLASSES]))
        feats = model.encode_image(torch.stack([preprocess(i) for i in [scene, *tiles]]))
    cos = (
        torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    )
    prob = torch.softmax(model.logit_scale.exp() * cos, dim=-1)

    server = SimilarityServer(
        ServerConfig(
            model="RN50",
            pretrained=str(rn50_checkpoint),
            host="127.0.0.1",
            port=0,
            metrics_port=None,
        )
    ).start()
    try:
        with SimilarityClient([f"127.0.0.1:{server.port}"], deadline_s=120) as client:
            buffer = io.BytesIO()
            scene.save(buffer, format="PNG")
            labels = label_set_ref(CLASSES)
            answer = client.snippet_similarity(
                "s", buffer.getvalue(), labels, "grid:2x2", include_snippets=True
            )
    finally:
        server.stop(grace_s=1.0)
    assert torch.allclose(torch.tensor(getattr(answer, "global").cosine), cos[0], atol=1e-4)
    for k, snippet in enumerate(answer.snippets):
        assert torch.allclose(torch.tensor(snippet.scores.cosine), cos[1 + k], atol=1e-4)
    assert torch.allclose(torch.tensor(answer.alpha), prob[1:].max(0).values, atol=1e-4)
    assert torch.allclose(torch.tensor(answer.beta), prob[1:].min(0).values, atol=1e-4)
