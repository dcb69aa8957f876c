"""Helpers shared by the tests."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Mapping

import torch

import vissl_models


def deep_update(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_update(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def model_config(**sections: Any):
    """A complete MODEL config from nested overrides: ``model_config(TRUNK={...}, HEAD={...})``."""
    return vissl_models.load_config({"MODEL": sections}).MODEL


def image(batch: int, size, chans: int = 3) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, chans, h, w)


def flat_outputs(out) -> Iterable[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, Mapping):
        for v in out.values():
            yield from flat_outputs(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from flat_outputs(v)


def assert_same_outputs(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    fa, fb = list(flat_outputs(a)), list(flat_outputs(b))
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def grads_missing(module: torch.nn.Module, allowed: Iterable[str] = ()) -> list:
    """Trainable parameters that got no (or an all-NaN) gradient."""
    allowed = list(allowed)
    return [
        n for n, p in module.named_parameters()
        if p.requires_grad and (p.grad is None) and not any(a in n for a in allowed)
    ]


TINY_RESNET = {"TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": 18}}}


def tiny_model(seed: int = 0, **sections: Any):
    """A resnet18 model (32px inputs give 512-d features) with the given MODEL sections merged."""
    torch.manual_seed(seed)
    cfg = model_config(**deep_update(TINY_RESNET, sections))
    return vissl_models.build_model(cfg)
