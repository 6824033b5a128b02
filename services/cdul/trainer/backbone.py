"""The classifier's starting weights: none, torchvision's ImageNet weights, or a local
torchvision-format state_dict (the embedded world's backbone, a PVC in Kubernetes)."""

from __future__ import annotations

from torch import nn

from cdul.core.errors import ConfigError
from cdul.core.weights import load_state_dict


def load_backbone(model: nn.Module, weights: str, arch: str) -> str:
    """Load backbone weights into ``model`` (its ``fc`` head stays as initialised).

    ``weights``: ``none``, ``imagenet`` (torchvision's, fetched or from its cache) or
    the path of a torchvision-format state_dict (``fc`` of any size is dropped).
    Returns a description for the run's record.
    """
    if weights == "none":
        return "none (random initialisation)"
    if weights == "imagenet":
        import torchvision

        try:
            state = torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(
                progress=False
            )
        except Exception as error:  # no network, no cache
            raise ConfigError(
                f"could not get torchvision's ImageNet weights for {arch} ({error}); pass "
                "--backbone-weights PATH (a local state_dict) or none"
            ) from None
        source = f"torchvision {arch} ImageNet (DEFAULT)"
    else:
        state = load_state_dict(weights, "backbone weights")
        source = weights
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        sample = (missing + result.unexpected_keys)[:3]
        raise ConfigError(
            f"backbone weights {weights!r} do not fit {arch}: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {sample}"
        )
    return source
