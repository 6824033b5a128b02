"""The CLIP similarity service on loopback: a real gRPC server, the tiny CLIP, and an
independent reference computed with open_clip directly (not through cdul's scorer)."""

import io
import random
import urllib.request

import grpc
import open_clip
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
from cdul.clip_service.client import SimilarityClient, SimilarityServiceError, label_set_ref
from cdul.clip_service.server import ServerConfig, SimilarityServer
from cdul.clip_service.servicer import Limits
from cdul.core.clip_models import register_project_configs
from cdul.core.errors import ConfigError
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES

pytestmark = pytest.mark.slow
CLASSES = list(SHAPES)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(world_clip):
    config = ServerConfig(
        model="cdul-tiny-rn",
        pretrained=str(world_clip),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        max_wait_ms=2.0,
        limits=Limits(max_pixels=4_000_000, max_snippets=200),
    )
    running = SimilarityServer(config).start()
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def client(server):
    with SimilarityClient([f"127.0.0.1:{server.port}"], deadline_s=30) as c:
        yield c


@pytest.fixture(scope="module")
def reference(world_clip):
    """open_clip's own model, preprocessing and tokenizer: the independent reference."""
    register_project_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "cdul-tiny-rn", pretrained=str(world_clip)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer("cdul-tiny-rn")
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {c}" for c in CLASSES]))
    text = text / text.norm(dim=-1, keepdim=True)

    def score(images):
        with torch.no_grad():
            feats = model.encode_image(torch.stack([preprocess(i) for i in images]))
        cos = (feats / feats.norm(dim=-1, keepdim=True)) @ text.T
        return cos, torch.softmax(model.logit_scale.exp() * cos, dim=-1)

    return score


def test_health_is_serving_and_model_info(server, client):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cdul.similarity.v1.Similarity"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    info = client.model_info()
    assert info.model_name == "cdul-tiny-rn" and info.embed_dim == 128 and info.input_size == 64
    assert info.temperature == pytest.approx(torch.tensor(info.logit_scale).exp().item(), rel=1e-5)


def test_global_and_snippet_answers_match_open_clip(client, reference):
    scenes = [make_scene(1, i, stream="val").image for i in range(4)]
    labels = label_set_ref(CLASSES)
    answer = client.global_similarity([(f"s{i}", encode(s)) for i, s in enumerate(scenes)], labels)
    cos, prob = reference(scenes)
    for i, result in enumerate(answer.results):
        assert result.id == f"s{i}"
        assert torch.allclose(torch.tensor(result.scores.cosine), cos[i], atol=1e-4)
        assert torch.allclose(torch.tensor(result.scores.probability), prob[i], atol=1e-4)
    # Snippets: the 3x3 grid of 42x42 tiles (leftover 2 px dropped), cut independently here.
    scene = scenes[0]
    tiles = [
        scene.crop((c * 42, r * 42, c * 42 + 42, r * 42 + 42)) for r in range(3) for c in range(3)
    ]
    tile_cos, tile_prob = reference(tiles)
    snippet = client.snippet_similarity("s0", encode(scene), labels, "grid:3x3", zeta=0.5,
                                        include_snippets=True)  # fmt: skip
    assert snippet.snippet_count == 9 and len(snippet.snippets) == 9
    assert (snippet.snippets[4].box.left, snippet.snippets[4].box.bottom) == (42, 84)
    for k, s in enumerate(snippet.snippets):
        assert torch.allclose(torch.tensor(s.scores.cosine), tile_cos[k], atol=1e-4)
    alpha, beta = tile_prob.max(0).values, tile_prob.min(0).values
    assert torch.allclose(torch.tensor(snippet.alpha), alpha, atol=1e-4)
    assert torch.allclose(torch.tensor(snippet.beta), beta, atol=1e-4)
    expected_agg = torch.where(alpha >= 0.5, alpha, beta)
    assert torch.allclose(torch.tensor(snippet.aggregate), expected_agg, atol=1e-4)
    assert torch.allclose(torch.tensor(getattr(snippet, "global").probability), prob[0], atol=1e-4)


@pytest.mark.compares_runs
def test_preprocessing_in_request_threads_gives_the_same_answers(server, world_clip):
    # A CPU server preprocesses on the batcher's worker by default; a GPU server does it in
    # the request threads. Both places must give the same numbers: bit for bit, from two
    # servers that encode every view alone (max_batch=1), since a batch's composition,
    # which depends on arrival, moves the last bits (tests/support/same_labels.py).
    assert server.preprocess_in == "batcher"
    answers = []
    for place in ("batcher", "requests"):
        config = ServerConfig(model="cdul-tiny-rn", pretrained=str(world_clip),
                              host="127.0.0.1", port=0, metrics_port=None, max_batch=1,
                              preprocess_in=place)  # fmt: skip
        running = SimilarityServer(config).start()
        try:
            assert running.preprocess_in == place
            with SimilarityClient([f"127.0.0.1:{running.port}"], deadline_s=30) as client:
                images = [(f"s{i}", encode(make_scene(2, i).image)) for i in range(3)]
                stream = client.score_stream(images, label_set_ref(CLASSES), "grid:2x2")
                answers.append({a.id: a for a in stream})
        finally:
            running.stop(grace_s=1.0)
    ours, theirs = answers
    assert sorted(ours) == sorted(theirs) == ["s0", "s1", "s2"]
    for name, a in ours.items():
        b = theirs[name]
        assert not a.error and not b.error
        assert list(a.alpha) == list(b.alpha) and list(a.beta) == list(b.beta)
        glob_a, glob_b = getattr(a, "global"), getattr(b, "global")
        assert list(glob_a.cosine) == list(glob_b.cosine)
        assert list(glob_a.probability) == list(glob_b.probability)
    with pytest.raises(ConfigError, match="--preprocess-in must be"):
        SimilarityServer(ServerConfig(port=0, metrics_port=None, preprocess_in="gpu"))


def test_streams_spread_over_every_address_of_one_target(server, world_clip):
    # One endpoint naming two servers (as dns:/// does for a Kubernetes headless Service):
    # with several streams, round-robin balancing puts them on both.
    config = ServerConfig(model="cdul-tiny-rn", pretrained=str(world_clip), host="127.0.0.1",
                          port=0, metrics_port=0)  # fmt: skip
    other = SimilarityServer(config).start()

    def stream_answers(port: int) -> float:
        url = f"http://127.0.0.1:{port}/metrics"
        return _requests(urllib.request.urlopen(url).read().decode()).get(("ScoreStream", "OK"), 0)

    try:
        before = [stream_answers(server.metrics_port), stream_answers(other.metrics_port)]
        target = f"ipv4:127.0.0.1:{server.port},127.0.0.1:{other.port}"
        images = [(f"s{i}", encode(make_scene(3, i).image)) for i in range(64)]
        with SimilarityClient([target], deadline_s=30, streams_per_endpoint=12) as spread:
            # Each stream has its own channel (its own connections, for servers run as
            # several processes on one port); each connects to every address first.
            answers = list(spread.score_stream(images, label_set_ref(CLASSES), "grid:2x2", 2))
        assert sorted(a.id for a in answers) == sorted(i for i, _ in images)
        assert not any(a.error for a in answers)
        after = [stream_answers(server.metrics_port), stream_answers(other.metrics_port)]
        served = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(served) == 64 and min(served) > 0, served
    finally:
        other.stop(grace_s=1.0)
    with pytest.raises(ValueError, match="streams_per_endpoint"):
        SimilarityClient(["127.0.0.1:1"], streams_per_endpoint=0)


def test_stream_answers_every_image_with_per_item_errors(client):
    labels = label_set_ref(CLASSES)
    images = [(f"img{i}", encode(make_scene(2, i).image, "JPEG")) for i in range(30)]
    images.insert(7, ("broken", b"\xff\xd8\xff garbage"))
    answers = {a.id: a for a in client.score_stream(images, labels, "grid:2x2", max_in_flight=8)}
    assert set(answers) == {i for i, _ in images}
    assert (
        answers["broken"].error_code == "INVALID_ARGUMENT" and "broken" in answers["broken"].error
    )
    assert all(a.snippet_count == 4 and not a.error for k, a in answers.items() if k != "broken")


def _truncated_jpeg() -> bytes:
    data = encode(make_scene(0, 0).image, "JPEG")
    return data[: len(data) // 2]


def _huge_png() -> bytes:
    return encode(Image.new("RGB", (2100, 2000)))  # 4.2 MP > the 4 MP limit


@pytest.mark.parametrize(
    ("image", "classes", "template", "spec", "message"),
    [
        (b"\x00\x01garbage", CLASSES, "", "grid:3x3", "format PIL cannot identify"),
        (b"", CLASSES, "", "grid:3x3", "empty"),
        ("truncated", CLASSES, "", "grid:3x3", "truncated"),
        ("huge", CLASSES, "", "grid:3x3", "limit"),
        ("ok", [], "", "grid:3x3", "label set is empty"),
        ("ok", CLASSES, "a photo of a {shape}", "grid:3x3", "placeholder"),
        ("ok", CLASSES, "", "grid:0x0", "rows and columns must be >= 1"),
        ("ok", CLASSES, "", "patch:500", "larger than the 128x128 image"),
        ("ok", CLASSES, "", "patch:4", "over the limit of 200"),
    ],
)
def test_malformed_requests_are_invalid_argument(client, image, classes, template, spec, message):
    data = {
        "truncated": _truncated_jpeg(),
        "huge": _huge_png(),
        "ok": encode(make_scene(0, 1).image),
    }
    data = data.get(image, image) if isinstance(image, str) else image
    labels = pb.LabelSetRef(value=pb.LabelSet(classes=classes, template=template))
    with pytest.raises(SimilarityServiceError) as raised:
        client.snippet_similarity("bad-one", data, labels, spec)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.lower() in str(raised.value).lower()
    assert client.model_info().model_name == "cdul-tiny-rn"  # still up


def test_dense_spec_one_forward_global_equals_encode_image_and_cells_match_open_clip(
    client, reference, world_clip
):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from cdul.core.clip_dense import dense_embeddings

    image = make_scene(7, 3).image  # 128 x 128
    labels = label_set_ref(CLASSES)
    native = client.snippet_similarity("d", encode(image), labels, "dense", include_snippets=True)
    # 64 px tiny CLIP: a 2 x 2 map; the global score is the plain global score (Eq. 1-2).
    assert native.snippet_count == 4 and len(native.snippets) == 4
    assert [(b.box.left, b.box.top, b.box.right, b.box.bottom) for b in native.snippets][:2] == [
        (0, 0, 64, 64), (64, 0, 128, 64)]  # fmt: skip
    cos, prob = reference([image])
    glob = getattr(native, "global")
    assert torch.allclose(torch.tensor(list(glob.cosine)), cos[0], atol=1e-5)
    assert torch.allclose(torch.tensor(list(glob.probability)), prob[0], atol=1e-5)
    # The cells at 128 px (a 4 x 4 map), against open_clip's modules computed here.
    wide = client.snippet_similarity("d", encode(image), labels, "dense:128", include_snippets=True)
    assert wide.snippet_count == 16
    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms("cdul-tiny-rn", pretrained=str(world_clip))
    model.eval()
    cfg = PreprocessCfg(**{**open_clip.get_model_preprocess_cfg(model), "size": 128})
    with torch.no_grad():
        pixels = image_transform_v2(cfg, is_train=False)(image)[None]
        x = model.visual.layer4(model.visual.layer3(model.visual.layer2(model.visual.layer1(
            model.visual.stem(pixels)))))  # fmt: skip
        pool = model.visual.attnpool
        cells = pool.c_proj(pool.v_proj(x.flatten(2).transpose(1, 2)))[0]
        text = model.encode_text(open_clip.get_tokenizer("cdul-tiny-rn")(
            [f"a photo of a {c}" for c in CLASSES]))  # fmt: skip
    expected = (
        torch.nn.functional.normalize(cells, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    )
    got = torch.tensor([list(s.scores.cosine) for s in wide.snippets])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(dense_embeddings(model.visual, pixels)[0, 1:], cells, atol=1e-6)
    assert list(wide.alpha) == pytest.approx(
        [max(s.scores.probability[j] for s in wide.snippets) for j in range(len(CLASSES))]
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (pb.LabelSet(classes=CLASSES, template="a {}", templates=["simple"]), "not both"),
        (pb.LabelSet(classes=CLASSES, templates=["simple", "no placeholder"]), "placeholder"),
        (pb.LabelSet(classes=CLASSES, templates=["openai-but-not"]), "placeholder"),
    ],
)
def test_malformed_prompt_ensembles_are_invalid_argument(client, value, message):
    with pytest.raises(SimilarityServiceError) as raised:
        client.snippet_similarity("t", encode(make_scene(0, 1).image), pb.LabelSetRef(value=value))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(raised.value)


def test_unknown_digest_and_digest_reuse(server, client):
    labels = label_set_ref(CLASSES)
    first = client.snippet_similarity("a", encode(make_scene(0, 2).image), labels)
    by_digest = pb.LabelSetRef(digest=first.label_set_digest)
    again = client.snippet_similarity("a", encode(make_scene(0, 2).image), by_digest)
    assert list(again.alpha) == list(first.alpha)
    with pytest.raises(SimilarityServiceError) as raised:
        client.snippet_similarity("a", b"x", pb.LabelSetRef(digest="0" * 64))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_metrics_parse_and_count_requests(server, client):
    stub = pb_grpc.SimilarityStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    before = _requests(text)
    good = pb.SnippetRequest(
        labels=label_set_ref(CLASSES), image=pb.Image(id="m", data=encode(make_scene(0, 3).image))
    )
    sent = random.Random(0).choices([True, False], k=12)
    for ok in sent:
        request = good if ok else pb.SnippetRequest(labels=label_set_ref([]), image=good.image)
        try:
            stub.SnippetSimilarity(request, timeout=30)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    after = _requests(text)
    assert after[("SnippetSimilarity", "OK")] - before.get(("SnippetSimilarity", "OK"), 0) == sum(
        sent
    )
    assert after[("SnippetSimilarity", "INVALID_ARGUMENT")] - before.get(
        ("SnippetSimilarity", "INVALID_ARGUMENT"), 0
    ) == len(sent) - sum(sent)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"cdul_clip_batch_views", "cdul_clip_queue_views", "cdul_clip_snippets_encoded"} <= names


def _requests(text: str) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "cdul_clip_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["method"], sample.labels["code"])] = sample.value
    return counts


def test_text_embeddings_and_view_embeddings_score_as_the_service_scores(server, client,
                                                                          reference):  # fmt: skip
    from cdul.core.embedding_codec import from_bytes
    from cdul.core.method.similarity import view_scores

    labels = label_set_ref(CLASSES)
    text = client.text_embeddings(labels)
    info = client.model_info()
    assert text.shape == (len(CLASSES), info.embed_dim)
    image = make_scene(3, 5).image
    stub = pb_grpc.SimilarityStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    for spec, views in (("grid:2x2", 5), ("dense", 5)):
        answer = stub.SnippetSimilarity(pb.SnippetRequest(
            labels=labels, image=pb.Image(id="e", data=encode(image)), snippet_spec=spec,
            include_embeddings=True, include_cosines=True))  # fmt: skip
        assert len(answer.view_embeddings) == views * info.embed_dim * 2, spec
        stored = from_bytes(answer.view_embeddings, info.embed_dim, "answer")
        assert stored.dtype == torch.float16 and stored.shape == (views, info.embed_dim)
        assert torch.allclose(stored.float().norm(dim=-1), torch.ones(views), atol=1e-3)
        # Scored from exactly the stored vectors: a client gets the answer back from them.
        again = view_scores(stored.float(), text, info.logit_scale)
        glob = getattr(answer, "global")
        assert torch.allclose(again.global_scores, torch.tensor(list(glob.probability)), atol=1e-6)
        assert torch.allclose(again.alpha, torch.tensor(list(answer.alpha)), atol=1e-6)
        assert torch.allclose(again.beta, torch.tensor(list(answer.beta)), atol=1e-6)
        assert torch.allclose(again.snippet_cosine.flatten(),
                              torch.tensor(list(answer.snippet_cosine)), atol=1e-6)  # fmt: skip
    # ...and within float16 rounding of the unrounded answer and of open_clip's own.
    plain = stub.SnippetSimilarity(pb.SnippetRequest(
        labels=labels, image=pb.Image(id="e", data=encode(image)),
        snippet_spec="grid:2x2"))  # fmt: skip
    cos, _ = reference([image])
    assert torch.allclose(again.global_cosine, torch.tensor(list(getattr(plain, "global").cosine)),
                          atol=2e-3)  # fmt: skip
    assert torch.allclose(again.global_cosine, cos[0], atol=2e-3)
    # The text embeddings are the prompts' (open_clip's tokenizer and text tower).
    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms(
        "cdul-tiny-rn", pretrained=str(server.config.pretrained)
    )
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer("cdul-tiny-rn")(
            [f"a photo of a {c}" for c in CLASSES]))  # fmt: skip
    assert torch.allclose(text, expected, atol=1e-5)
    import hashlib
    from pathlib import Path

    checkpoint = Path(server.config.pretrained).read_bytes()
    assert info.weights_digest == hashlib.sha256(checkpoint).hexdigest()


@pytest.mark.parametrize(
    ("labels", "code", "message"),
    [
        (pb.LabelSetRef(), grpc.StatusCode.INVALID_ARGUMENT, "no label set"),
        (pb.LabelSetRef(digest="0" * 64), grpc.StatusCode.NOT_FOUND, "unknown label set digest"),
        (pb.LabelSetRef(value=pb.LabelSet(classes=[])), grpc.StatusCode.INVALID_ARGUMENT, ""),
        (
            pb.LabelSetRef(value=pb.LabelSet(classes=["a"] * 3000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "over the limit",
        ),
    ],
)
def test_text_embeddings_refuses_bad_label_sets(client, labels, code, message):
    with pytest.raises(SimilarityServiceError) as raised:
        client.text_embeddings(labels)
    assert raised.value.code == code and message in str(raised.value)
