"""The trainer's pieces on toy problems: label updates whose right direction is known,
the update schedule, the gather of per-image rows, backbone loading, RNG round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from cdul.core.classifier import build_classifier
from cdul.core.errors import ConfigError
from cdul.core.evaluation import evaluate
from cdul.core.method.alignment import align_latent, from_latent, to_latent
from cdul.trainer import checkpoint
from cdul.trainer.backbone import load_backbone
from cdul.trainer.config import TrainConfig
from cdul.trainer.distributed import DistEnv, gather_rows
from cdul.trainer.loop import train_step

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def toy_problem(seed: int = 0, n: int = 400, d: int = 16, c: int = 4):
    """Features, true multi-hot labels from a linear rule, and noisy soft pseudo labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g)
    truth = (x @ w > 0.5).float()
    noise = torch.rand(n, c, generator=g)
    flipped = torch.where(noise < 0.25, 1 - truth, truth)  # a quarter of the labels wrong
    pseudo = (0.7 * flipped + 0.3 * torch.rand(n, c, generator=g)).clamp(0.02, 0.98)
    return x, truth, pseudo


def test_update_moves_each_label_towards_the_networks_prediction():
    latent = to_latent(torch.tensor([[0.2, 0.8, 0.5, 0.5]]))
    logits = torch.tensor([[3.0, -3.0, 0.0, 2.0]])  # confident the other way / agrees / up
    new = from_latent(align_latent(latent, logits, step_size=0.5))
    old = from_latent(latent)
    assert new[0, 0] > old[0, 0] and new[0, 1] < old[0, 1]  # both move towards p
    assert new[0, 2] == pytest.approx(0.5, abs=1e-6)  # already equal: no move
    assert new[0, 3] > 0.5
    # never past the prediction with a step <= 1/psi_max (the label-side fixed point is p)
    assert new[0, 0] < torch.sigmoid(logits[0, 0])


def test_trained_network_denoises_toy_pseudo_labels():
    """A linear model trained on noisy pseudo labels learns the rule; aligning the labels
    with its logits (the trainer's train_step + Eq. 8) moves them towards the truth."""
    torch.manual_seed(0)
    x, truth, pseudo = toy_problem()
    classes = [f"c{i}" for i in range(truth.shape[1])]
    model = nn.Linear(x.shape[1], truth.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    latent = to_latent(pseudo)
    before = evaluate(from_latent(latent), truth, classes).mean_ap
    for _ in range(60):
        _, logits = train_step(model, optimiser, scaler, x, from_latent(latent), amp=False)
    latent = align_latent(latent, logits, step_size=1.0)
    after = evaluate(from_latent(latent), truth, classes).mean_ap
    network = evaluate(torch.sigmoid(logits), truth, classes).mean_ap
    assert network > before  # the network denoised the labels it was trained on
    assert after >= before + 0.02


def test_epoch_update_equals_per_batch_updates():
    """Updating every image once at the epoch's end from the logits of its own step equals
    updating each batch's labels right after that step (each label is used once)."""
    latent = torch.randn(10, 3)  # seeded per test by tests/conftest.py (--seeds varies it)
    logits = torch.randn(10, 3)
    order = torch.randperm(10)
    per_batch = latent.clone()
    for batch in order.split(4):
        per_batch[batch] = align_latent(per_batch[batch], logits[batch], 0.7)
    # Not bit-equal: sigmoid, logit and exp take a vectorised body or a scalar tail by the
    # tensor's length (4 rows here, 10 there), which may round an ulp apart. logit
    # magnifies an ulp of y by 1/(y(1-y)) (<= ~60 for |latent| <= 4) and the step scales
    # it by step * psi <= 0.28: ~1e-6 at worst (3.6e-7 measured over 2,000 seeds with
    # ATEN_CPU_CAPABILITY=avx2, under which 69 of 200 seeds were not bit-equal). A wrong
    # update (a row skipped, updated twice, another row's logits) moves a latent >= 1e-2.
    torch.testing.assert_close(per_batch, align_latent(latent, logits, 0.7), rtol=0, atol=1e-5)


def test_update_schedule():
    base = {"labels": "file:///x", "images": "voc:/x:train", "output": "file:///x"}
    every = TrainConfig(**base, update_every=1)
    assert [e for e in range(5) if every.updates_labels_in(e)] == [0, 1, 2, 3, 4]
    study = TrainConfig(**base, update_every=10, warmup_epochs=10, epochs=100)
    assert [e for e in range(100) if study.updates_labels_in(e)] == list(range(10, 100, 10))
    assert not any(TrainConfig(**base, align=False).updates_labels_in(e) for e in range(5))
    assert not any(TrainConfig(**base, label_step=0).updates_labels_in(e) for e in range(5))
    with pytest.raises(ConfigError):
        TrainConfig(**base, update_every=0)


def test_gather_rows_scatters_by_index_and_keeps_the_last_duplicate():
    rows = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    out = gather_rows(CPU, torch.tensor([2, 0, 3, 2]), rows, total=5)
    assert torch.equal(out[0], rows[1]) and torch.equal(out[3], rows[2])
    assert torch.equal(out[2], rows[3])  # the later of the two rows for index 2
    assert torch.equal(out[1], torch.zeros(3)) and torch.equal(out[4], torch.zeros(3))


def test_backbone_weights_load_everything_but_the_head(world_backbone):
    model = build_classifier("resnet18", 5)
    head = model.fc.weight.clone()
    load_backbone(model, str(world_backbone), "resnet18")
    state = torch.load(world_backbone, weights_only=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert torch.equal(model.fc.weight, head) and model.fc.out_features == 5
    with pytest.raises(ConfigError, match="do not fit resnet34"):
        load_backbone(build_classifier("resnet34", 5), str(world_backbone), "resnet34")
    with pytest.raises(ConfigError, match=r"backbone weights .* does not exist"):
        load_backbone(model, "/nonexistent/weights.pt", "resnet18")


def test_rng_state_round_trip():
    generator = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = checkpoint.rng_state(generator)
    first = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    checkpoint.restore_rng(state, generator)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
