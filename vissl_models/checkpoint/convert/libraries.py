"""Library models built on the meta device, to check converted weights against their keys and shapes."""

from __future__ import annotations

from typing import Mapping, Sequence, Set

import torch

from .keymaps import State

TIMM_HINT = 'timm is not installed: pip install "vissl_models[timm]"'


def _build_on_meta(side: str, arch: str):
    """The library's model built without allocating weights, or None where the library cannot."""
    try:
        with torch.device("meta"):
            if side == "timm":
                try:
                    import timm
                except ImportError:
                    raise ImportError(TIMM_HINT) from None
                if not timm.is_model(arch.split(".")[0]):
                    raise ValueError(f"timm has no model {arch!r}")
                return timm.create_model(arch.split(".")[0], pretrained=False)
            if side == "torchvision":
                import torchvision

                if arch not in torchvision.models.list_models(module=torchvision.models):
                    raise ValueError(f"torchvision has no classification model {arch!r}")
                return torchvision.models.get_model(arch)
            if side == "classy_vision":
                from classy_vision.models import MODEL_REGISTRY, build_model

                if arch not in MODEL_REGISTRY:
                    raise ValueError(f"classy_vision has no model {arch!r}")
                return build_model({"name": arch})
    except (NotImplementedError, RuntimeError):
        # Models that read tensor values while being built (torchvision's RegNets compute their
        # widths with tensors) cannot be built on the meta device: they are not checked.
        return None
    raise ValueError(f"no {side} models to build")


def _check_against(
    side: str, arch: str, state: Mapping[str, torch.Tensor], classifier: Sequence[str], filled: Set[str]
) -> State:
    """Compare ``state`` with ``arch``'s own keys and shapes; drop filled-in keys it lacks.

    ``pos_embed`` may differ in length (another image size); classifiers are not compared.
    """
    model = _build_on_meta(side, arch)
    if model is None:
        return state
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in classifier}
    state = {k: v for k, v in state.items() if not (k in filled and k not in reference)}
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference and k not in classifier]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {reference[k]}"
        for k in reference
        if k in state and k != "pos_embed" and tuple(state[k].shape) != reference[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("not in the model", unexpected), ("shape differs", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what}: " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else ""))
        raise ValueError(f"the weights do not fit {side} {arch!r}: " + "; ".join(parts))
    return state
