"""Label recipes through the real labeler and CLIP service: a run labeled with a recipe
equals the recipe recomputed from a paper run's stored vectors, and prompt ensembles
equal open_clip's own zero-shot classifier computed here."""

from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support.same_labels import ARITHMETIC_TOLERANCE

from cdul import cli
from cdul.core.clip_models import register_project_configs
from cdul.core.method.recipes import DEFAULT_RECIPE, PAPER_RECIPE, LabelRecipe
from cdul.core.pseudo_labels import MANIFEST, read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labeler.job import label
from cdul.labels.reading import relabel

pytestmark = pytest.mark.slow


@pytest.mark.compares_runs
def test_a_recipe_run_equals_the_recipe_recomputed_from_a_paper_run(make_unbatched_config,
                                                                    tmp_path):  # fmt: skip
    make_config = make_unbatched_config  # two runs compared (see support/same_labels.py)
    _, paper, _ = label(make_config(f"file://{tmp_path}/paper", limit=60))
    assert paper.manifest.label_recipe() == LabelRecipe()
    recipe = LabelRecipe("topk:2", global_weight=0.25, debias="class-mean")
    run = f"file://{tmp_path}/topk"
    _, labeled, _ = label(make_config(run, limit=60, aggregation="topk:2", global_weight=0.25,
                                      debias="class-mean"))  # fmt: skip
    stored = open_store(run).read_json(MANIFEST)
    assert stored["recipe"] == {"aggregation": "topk:2", "global_weight": 0.25,
                                "debias": "class-mean"}  # fmt: skip
    assert len(stored["class_bias"]) == 12
    again = relabel(
        read_pseudo_labels(open_store(f"file://{tmp_path}/paper"), cosines=True), recipe
    )
    # The same cosines, the same functions: bit for bit.
    assert torch.equal(labeled["aggregate"], again["aggregate"])
    assert torch.equal(labeled["final"], again["final"])
    # By hand on one image: top-2 mean of its four snippets' probabilities, then the mix.
    labels = read_pseudo_labels(open_store(run), cosines=True)
    _, snippets, _ = labels.cosines.padded(labels.manifest.logit_scale)
    top2 = snippets[7].sort(dim=0, descending=True).values[:2].mean(dim=0)
    assert torch.allclose(labels["aggregate"][7], top2, atol=ARITHMETIC_TOLERANCE, rtol=0)
    mixed = 0.25 * labels["global"][7] + 0.75 * top2
    bias = torch.tensor(stored["class_bias"])
    debiased = (mixed * bias.mean() / bias).clamp(0, 1)
    assert torch.allclose(labels["final"][7], debiased, atol=ARITHMETIC_TOLERANCE, rtol=0)


@pytest.mark.compares_runs
def test_the_default_recipe_is_max_with_a_quarter_global_and_paper_is_one_flag_away(
    make_unbatched_config, tmp_path
):
    make_config = make_unbatched_config  # two runs compared (see support/same_labels.py)
    assert (
        LabelRecipe("max", global_weight=0.25) == DEFAULT_RECIPE and LabelRecipe() == PAPER_RECIPE
    )
    _, paper, _ = label(make_config(f"file://{tmp_path}/paper", limit=20))
    run = f"file://{tmp_path}/default"
    _, default, _ = label(make_config(run, limit=20, recipe_name="default"))
    assert open_store(run).read_json(MANIFEST)["recipe"] == {
        "aggregation": "max", "global_weight": 0.25, "debias": "none"
    }  # fmt: skip
    # max from alpha: final = 0.25 * global + 0.75 * alpha, the paper run's stored vectors.
    assert torch.equal(default["aggregate"], paper["alpha"])
    expected = 0.25 * paper["global"] + 0.75 * paper["alpha"]
    assert torch.allclose(default["final"], expected, atol=ARITHMETIC_TOLERANCE, rtol=0)
    # The recipe flags change the named recipe's parts.
    changed = make_config("x", recipe_name="default", global_weight=0.5).recipe()
    assert changed == LabelRecipe("max", global_weight=0.5)
    assert make_config("x", recipe_name="paper", zeta=0.25).recipe() == LabelRecipe(zeta=0.25)


def test_without_stored_cosines_the_sweep_says_what_it_skips(make_config, tmp_path, capsys):
    run = f"file://{tmp_path}/lean"
    # A rule that needs the snippets still gets them from the service; they are not kept.
    _, labels, _ = label(make_config(run, limit=20, aggregation="mean", store_cosines=False))
    shard = Path(tmp_path, "lean", "pseudo_labels", "shards", "shard-00000-of-00001.parquet")
    assert "snippet_cosine" not in pq.read_schema(shard).names
    assert labels.manifest.recipe["aggregation"] == "mean" and len(labels) == 20
    assert cli.main(["label-sweep", run, "--zetas", "0.5", "--global-weights", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "skipped (the run stores no cosines" in out and "mean w=0.5" in out
    assert cli.main(["label-sweep", run, "--aggregations", "mean", "--no-store"]) == 2
    assert "no recipe of the sweep can be recomputed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def open_clip_model(world_clip):
    register_project_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "cdul-tiny-rn", pretrained=str(world_clip)
    )
    return model.eval(), preprocess, open_clip.get_tokenizer("cdul-tiny-rn")


@pytest.mark.parametrize("templates", ["simple", "file"])
def test_prompt_ensembles_equal_open_clips_zero_shot_classifier(
    templates, make_config, tmp_path, world_root, open_clip_model
):
    model, preprocess, tokenizer = open_clip_model
    if templates == "file":
        path = tmp_path / "templates.txt"
        path.write_text("# two templates\na drawing of a {}\n\na {} on a plain background\n")
        formats, templates = ["a drawing of a {}", "a {} on a plain background"], str(path)
    else:
        formats = [make("{}") for make in open_clip.SIMPLE_IMAGENET_TEMPLATES]
    run = f"file://{tmp_path}/ensemble"
    _, labels, _ = label(make_config(run, limit=8, templates=templates))
    assert labels.manifest.templates == ([*formats] if templates != "simple" else ["simple"])
    # Here, by hand: per class the mean of the normalised prompt embeddings, normalised.
    with torch.no_grad():
        rows = []
        for name in labels.classes:
            text = model.encode_text(tokenizer([f.format(name) for f in formats]))
            mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=0)
            rows.append(mean / mean.norm())
        images = [Image.open(Path(world_root, "JPEGImages", f"{i}.jpg")).convert("RGB")
                  for i in labels.ids]  # fmt: skip
        feats = model.encode_image(torch.stack([preprocess(i) for i in images]))
    cos = (feats / feats.norm(dim=-1, keepdim=True)) @ torch.stack(rows).T
    expected = torch.softmax(model.logit_scale.exp() * cos, dim=-1)
    assert torch.allclose(labels["global"], expected, atol=1e-4)
    # ... and they differ from the single template's scores.
    _, single, _ = label(make_config(f"file://{tmp_path}/single", limit=8))
    assert not torch.allclose(single["global"], labels["global"], atol=1e-3)
