"""What every head shares: ``MODEL.HEAD`` settings and reading a head's own options.

A head that knows the width of its input sets ``input_width`` (dim 1 of an N x C (x H x W) input,
the last dim of N x L x C tokens, as ``FeatureInfo.channels``); the model compares it with the
trunk feature the head receives when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError
from ..config import options as opt


@dataclass(frozen=True)
class HeadCommon:
    """``MODEL.HEAD.BATCHNORM_EPS``, ``BATCHNORM_MOMENTUM`` and ``PARAMS_MULTIPLIER``."""

    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    params_multiplier: float = 1.0

    @classmethod
    def from_config(cls, model_config: Mapping) -> "HeadCommon":
        """Read from a MODEL config; a key it lacks keeps its default (direct use of a head class)."""
        if not isinstance(model_config, Mapping):
            raise ConfigError(f"MODEL: got {model_config!r}, expected a mapping of MODEL options")
        head = model_config.get("HEAD", {})
        if not isinstance(head, Mapping):
            raise ConfigError(f"MODEL.HEAD: got {head!r}, expected a mapping")
        defaults = cls()
        return cls(
            bn_eps=opt.as_float("MODEL.HEAD.BATCHNORM_EPS", head.get("BATCHNORM_EPS", defaults.bn_eps), minimum=0.0),
            bn_momentum=opt.as_float("MODEL.HEAD.BATCHNORM_MOMENTUM",
                                     head.get("BATCHNORM_MOMENTUM", defaults.bn_momentum), minimum=0.0),
            params_multiplier=opt.as_float("MODEL.HEAD.PARAMS_MULTIPLIER",
                                           head.get("PARAMS_MULTIPLIER", defaults.params_multiplier)),
        )

    @classmethod
    def of(cls, model_config: Union[Mapping, "HeadCommon", None]) -> "HeadCommon":
        """The settings a head constructor was given: a MODEL config, ready settings, or None (defaults)."""
        if model_config is None:
            return cls()
        if isinstance(model_config, HeadCommon):
            return model_config
        return cls.from_config(model_config)

    def batchnorm1d(self, dim: int) -> nn.BatchNorm1d:
        return nn.BatchNorm1d(dim, eps=self.bn_eps, momentum=self.bn_momentum)

    def batchnorm2d(self, dim: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(dim, eps=self.bn_eps, momentum=self.bn_momentum)

    def scale_linear_weights(self, module: nn.Module) -> None:
        """Scale the initial weight and bias of every Linear in ``module`` by ``params_multiplier``."""
        if self.params_multiplier == 1.0:
            return
        with torch.no_grad():
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    for tensor in (layer.weight, layer.bias):
                        if tensor is not None:
                            tensor.mul_(self.params_multiplier)


ModelConfig = Union[Mapping, HeadCommon, None]


# ----------------------------------------------------------------------------- option parsers
def dims(key: str, value: Any) -> list:
    """Layer widths: at least two positive integers (input width first)."""
    return _positive_list(key, value, min_len=2)


def _positive_list(key: str, value: Any, min_len: int) -> list:
    values = opt.as_int_list(key, value, min_len=min_len)
    for i, v in enumerate(values):
        if v < 1:
            raise ConfigError(f"{key}[{i}]: got {v}, expected a width >= 1")
    return values


def widths(key: str, value: Any) -> list:
    """One positive integer or a list of them (possibly empty), as a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    return _positive_list(key, value, min_len=0)


def one_width(key: str, value: Any) -> int:
    """A positive integer, or a list holding exactly one."""
    values = widths(key, value)
    if len(values) != 1:
        raise ConfigError(f"{key}: got {value!r}, expected one positive integer (or a list of one)")
    return values[0]


def optional_positive_int(key: str, value: Any) -> Optional[int]:
    return None if value is None else opt.positive_int(key, value)


def positive_float(key: str, value: Any) -> float:
    number = opt.as_float(key, value)
    if number <= 0:
        raise ConfigError(f"{key}: got {number}, expected a number > 0")
    return number


def dropout_rate(key: str, value: Any) -> float:
    rate = opt.as_float(key, value, minimum=0.0)
    if rate >= 1.0:
        raise ConfigError(f"{key}: got {rate}, expected a dropout rate in [0, 1)")
    return rate


Field = Tuple[str, opt.Parser]


def read_head_options(head: str, values: Mapping[str, Any], fields: Sequence[Field]) -> Dict[str, Any]:
    """Parse a head's keyword options with ``config.options.read_options``, in ``fields`` order.

    Errors name the option as written in ``MODEL.HEAD.PARAMS``: ``head 'mlp' option 'dims'[1]``.
    """
    section = {name.upper(): value for name, value in values.items()}

    def named(name: str, parse: opt.Parser) -> opt.Parser:
        return lambda _key, value: parse(f"head {head!r} option {name!r}", value)

    return opt.read_options(section, "", [(name, named(name, parse)) for name, parse in fields])


def single_tensor(what: str, batch: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """``batch``, or its only element when it is a list/tuple; ``what`` names the head in the error."""
    if isinstance(batch, (list, tuple)):
        if len(batch) != 1:
            raise ValueError(f"{what} takes a tensor or a list of one tensor, got a list of {len(batch)}")
        batch = batch[0]
    return batch
