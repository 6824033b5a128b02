"""Eq. 8 and the Bernoulli KL loss against numbers worked out by hand."""

import math

import pytest
import torch

from cdul.core.method.alignment import (
    align_latent,
    bernoulli_kl,
    from_latent,
    gaussian_weight,
    kl_gradient_wrt_labels,
    to_latent,
)


def test_kl_by_hand():
    labels = torch.tensor([0.5, 1.0, 0.25])
    logits = torch.tensor([0.0, 0.0, 0.0])  # p = 0.5 everywhere
    loss = bernoulli_kl(labels, logits, reduction="none")
    # 0.5 vs 0.5: 0 ; 1 vs 0.5: ln 2 ; 0.25 vs 0.5: .25 ln .5 + .75 ln 1.5 = 0.1308120
    assert torch.allclose(loss, torch.tensor([0.0, math.log(2.0), 0.13081204]), atol=1e-6)
    assert bernoulli_kl(labels, logits).item() == pytest.approx(loss.mean().item())
    assert bernoulli_kl(labels, logits, "sum").item() == pytest.approx(loss.sum().item())


def test_kl_hard_labels_and_extreme_logits_are_finite():
    loss = bernoulli_kl(torch.tensor([0.0, 1.0]), torch.tensor([80.0, -80.0]), "none")
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(80.0, rel=1e-4)  # -log(1 - sigmoid(80)) ~ 80


def test_kl_gradients_match_autograd():
    labels = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    logits = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    bernoulli_kl(labels, logits, "sum").backward()
    # dKL/dz = sigmoid(z) - y, as for BCE
    assert torch.allclose(logits.grad, torch.sigmoid(logits.detach()) - labels.detach(), atol=1e-6)
    # dKL/dy = logit(y) - z, the closed form Eq. 8 uses
    closed = kl_gradient_wrt_labels(labels.detach(), logits.detach())
    assert torch.allclose(labels.grad, closed, atol=1e-5)


def test_psi_is_normal_density_centred_at_half():
    # N(0.5; 0.5, 1) = 1/sqrt(2 pi) = 0.3989423 ; N(0.75; 0.5, 0.5) = 0.7041307
    assert gaussian_weight(torch.tensor(0.5)).item() == pytest.approx(0.3989423, abs=1e-6)
    assert gaussian_weight(torch.tensor(0.75), 0.5).item() == pytest.approx(0.7041307, abs=1e-6)
    assert gaussian_weight(torch.tensor(0.2)).item() == pytest.approx(
        gaussian_weight(torch.tensor(0.8)).item()
    )
    with pytest.raises(ValueError, match="sigma"):
        gaussian_weight(torch.tensor(0.5), 0.0)


def test_eq8_step_by_hand():
    # latent 0 (y = 0.5), network logit ln 3 (p = 0.75), step 1, sigma 1:
    # dKL/dy = 0 - ln 3 ; l' = 0 + 0.3989423 * 1.0986123 = 0.4382829 ; y' = 0.6078498
    new = align_latent(torch.tensor([[0.0]]), torch.tensor([[math.log(3.0)]]), step_size=1.0)
    assert new.item() == pytest.approx(0.4382829, abs=1e-6)
    assert from_latent(new).item() == pytest.approx(0.6078498, abs=1e-6)


def test_eq8_step_with_other_sigma_by_hand():
    # latent ln 3 (y = 0.75), logit 0, step 0.1, sigma 0.5:
    # psi = 0.7041307 ; grad = ln 3 ; l' = ln 3 - 0.1 * 0.7041307 * ln 3 = 1.0212556
    new = align_latent(
        torch.tensor([[math.log(3.0)]]), torch.tensor([[0.0]]), step_size=0.1, sigma=0.5
    )
    assert new.item() == pytest.approx(1.0212556, abs=1e-6)


def test_eq8_moves_labels_towards_the_prediction_and_stops_at_agreement():
    latent = torch.tensor([[-1.0, 0.0, 2.0]])
    logits = torch.tensor([[1.0, 0.0, -2.0]])
    new = align_latent(latent, logits, step_size=0.5)
    assert new[0, 0] > latent[0, 0]
    assert new[0, 1] == latent[0, 1]  # already agrees
    assert new[0, 2] < latent[0, 2]
    assert torch.equal(align_latent(latent, logits, step_size=0.0), latent)


def test_clamped_latent_never_infinite():
    # logit(1 - 1e-6) = ln((1 - 1e-6) / 1e-6) = 13.8155 exactly; 1 - 1e-6 rounds in float32
    # to 0.99999899, whose logit is 13.8023. Both ends of the clamp use the float32 value.
    bound = 13.8023
    latent = to_latent(torch.tensor([0.0, 1.0]))
    assert torch.isfinite(latent).all()
    assert latent[1].item() == pytest.approx(bound, abs=1e-3)
    assert latent[0].item() == pytest.approx(-13.8155, abs=1e-3)  # 1e-6 is exact enough
    # A latent pushed far past the bound comes back clamped, and its label is finite.
    new = align_latent(torch.tensor([[50.0]]), torch.tensor([[-50.0]]), step_size=1.0)
    assert new.item() == pytest.approx(bound, abs=1e-3)
    assert new.item() == latent[1].item()
    grad = kl_gradient_wrt_labels(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert torch.isfinite(grad).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        align_latent(torch.zeros(2, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        bernoulli_kl(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        bernoulli_kl(torch.zeros(2), torch.zeros(2), "max")
