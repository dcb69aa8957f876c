"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, Iterable, Mapping, Optional

import torch

import vissl_models
from vissl_models.registry import TRUNKS


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
    for x, y in zip(fa, fb, strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def grads_missing(module: torch.nn.Module, allowed: Iterable[str] = ()) -> list:
    """Trainable parameters that got no (or an all-NaN) gradient."""
    allowed = list(allowed)
    return [
        n for n, p in module.named_parameters()
        if p.requires_grad and (p.grad is None) and not any(a in n for a in allowed)
    ]


def build_trunk(name: str, seed: Optional[int] = 0, section: Optional[str] = None,
                options: Optional[Mapping[str, Any]] = None, **model: Any) -> torch.nn.Module:
    """Trunk ``name`` from a complete MODEL config, built after seeding the RNG with ``seed``.

    ``section``/``options`` fill ``MODEL.TRUNK.<section>``; keywords are other MODEL overrides,
    nested like the YAML (a ``TRUNK`` keyword is merged with the name and section).
    """
    if seed is not None:
        torch.manual_seed(seed)
    trunk = {"NAME": name}
    if section is not None:
        trunk[section] = dict(options or {})
    cfg = model_config(**deep_update(model, {"TRUNK": trunk}))
    return vissl_models.get_model_trunk(name)(cfg, name)


def build_spec_trunk(spec, seed: Optional[int] = 0) -> torch.nn.Module:
    """The trunk of a ``tests/specs`` ``TrunkSpec``."""
    return build_trunk(spec.name, seed, **spec.model)


def randomize(module: torch.nn.Module, seed: int = 1, scale: float = 0.3, one_d_offset: float = 0.0,
              buffers: bool = False) -> torch.nn.Module:
    """Non-trivial weights everywhere, so outputs depend on every parameter: N(0, scale) draws,
    ``one_d_offset`` added to 1-d parameters (norm weights near 1 when it is 1). With ``buffers``,
    floating buffers are drawn too (running variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = module.state_dict(keep_vars=True).items() if buffers else module.named_parameters()
        for name, t in tensors:
            if not t.is_floating_point():
                continue
            v = torch.randn(t.shape, generator=g) * scale
            if name.endswith("running_var"):
                v = v.abs() + 0.5
            elif t.dim() == 1 and isinstance(t, torch.nn.Parameter):
                v = v + one_d_offset
            t.copy_(v)
    return module


def randomize_batchnorm(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random BatchNorm2d statistics and affine parameters, so eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module


TINY_RESNET = {"TRUNK": {"NAME": "resnet", "RESNETS": {"DEPTH": 18}}}


def tiny_model(seed: int = 0, **sections: Any):
    """A resnet18 model (32px inputs give 512-d features) with the given MODEL sections merged."""
    torch.manual_seed(seed)
    cfg = model_config(**deep_update(TINY_RESNET, sections))
    return vissl_models.build_model(cfg)


# A YAML file as the original writes them: a tiny resnet18 with one mlp head (512 -> 16).
TINY_CONFIG = """\
# @package _global_
config:
  MODEL:
    TRUNK:
      NAME: resnet
      RESNETS:
        DEPTH: 18
    HEAD:
      PARAMS: [["mlp", {"dims": [512, 16]}]]
"""


@contextlib.contextmanager
def registered_trunk(name: str, builder):
    """Register ``builder`` as trunk ``name`` for the duration of the block."""
    vissl_models.register_model_trunk(name)(builder)
    try:
        yield
    finally:
        TRUNKS.unregister(name)
