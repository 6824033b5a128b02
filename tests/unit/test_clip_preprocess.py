"""CLIP preprocessing: the PIL path is open_clip's transform bit for bit; the batched
tensor path stays close to it."""

import pytest
import torch
from PIL import Image

from cdul.core.clip_models import create_clip
from cdul.core.clip_preprocess import TensorPreprocess, pil_views
from cdul.core.method.snippets import parse_snippet_spec
from cdul.world.generator import make_scene


@pytest.fixture(scope="module")
def clip():
    return create_clip("cdul-tiny-rn", None)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (128, 128)])
@pytest.mark.parametrize("spec", ["grid:3x3", "patch:32", "patch:16/8"])
def test_tensor_views_match_pil_views(clip, size, spec):
    image = make_scene(0, 3).image.resize(size)
    boxes = parse_snippet_spec(spec).boxes(*image.size)
    exact = pil_views(clip.preprocess, image, boxes)
    fast = TensorPreprocess(clip.model.visual.preprocess_cfg, torch.device("cpu"))(image, boxes)
    assert fast.shape == exact.shape == (1 + len(boxes), 3, 64, 64)
    diff = (fast - exact).abs()
    # Same geometry; torch's bicubic kernel (a = -0.75) differs slightly from PIL's (-0.5).
    assert diff.mean() < 0.01 and diff.max() < 0.1


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize("size", [(500, 375), (97, 130)])
def test_pil_views_equal_open_clips_transform_bit_for_bit(clip, mode, size):
    # pil_views runs to-tensor + normalise once on all views: the same bits as
    # open_clip's transform applied to each view, on any machine (/255, -mean and /std are
    # each one correctly rounded IEEE operation, whatever the tensor's length).
    image = make_scene(0, 5).image.resize(size).convert(mode)
    boxes = parse_snippet_spec("grid:3x3").boxes(*image.size)
    views = [image, *(image.crop(b) for b in boxes)]
    assert torch.equal(pil_views(clip.preprocess, image, boxes),
                       torch.stack([clip.preprocess(v) for v in views]))  # fmt: skip


def test_pil_views_with_any_other_transform_apply_it_per_view():
    def transform(view):
        return torch.full((3, 2, 2), float(view.width))

    image = Image.new("RGB", (40, 20))
    out = pil_views(transform, image, [(0, 0, 10, 10), (10, 0, 30, 20)])
    assert out[:, 0, 0, 0].tolist() == [40.0, 10.0, 20.0]


def test_global_only_and_unequal_boxes(clip):
    prep = TensorPreprocess(clip.model.visual.preprocess_cfg, torch.device("cpu"))
    image = Image.new("RGB", (90, 60), (200, 10, 10))
    assert prep(image, []).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="equal snippet sizes"):
        prep(image, [(0, 0, 10, 10), (0, 0, 20, 20)])


@pytest.mark.parametrize("preprocessor", ["pil", "tensor"])
def test_half_precision_models_get_inputs_in_their_weight_dtype(preprocessor):
    # open_clip's bf16/fp16 precisions convert conv/linear weights only; the model's first
    # parameter stays fp32, so the input dtype must come from the image tower's weights
    # (a bug first seen on a GPU: "Input type (FloatTensor) and weight type (BFloat16)").
    from cdul.core.clip_scoring import ClipScorer
    from cdul.core.label_set import LabelSet

    clip = create_clip("cdul-tiny-rn", None, "cpu", "bf16")
    assert next(clip.model.parameters()).dtype == torch.float32
    scorer = ClipScorer(clip, "cpu", preprocessor)
    scores = scorer.score([make_scene(0, 0).image], LabelSet(("circle", "star")),
                          parse_snippet_spec("grid:2x2"))  # fmt: skip
    assert scores.final.shape == (1, 2) and torch.isfinite(scores.final).all()
