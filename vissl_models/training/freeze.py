"""``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``: parameters frozen for their first N iterations.

The original (``FreezeParametersHook``) reads ``[[param_name, num_iterations], ...]`` (SwAV:
``[["module.heads.0.prototypes0.weight", 313]]``) and, after every backward pass while
``iteration < num_iterations``, sets that parameter's ``.grad`` to ``None`` so the optimizer skips
it (no update, no weight decay, no momentum). Names are compared without wrapper prefixes
(``module.``, FSDP and compile artifacts), so one map works for plain, DDP, FSDP2 and compiled models.
"""

from __future__ import annotations

import bisect
import difflib
from typing import Dict, List, Mapping, Sequence, Tuple, Union

from torch import nn

from ..config import ConfigError

_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_fpw_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

IterMap = Union[Mapping[str, int], Sequence[Sequence]]


def clean_param_name(name: str) -> str:
    """``name`` without DDP/FSDP/checkpoint/compile wrapper parts (``module.heads.0.x`` -> ``heads.0.x``)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def _parse_iter_map(iter_map: IterMap) -> Dict[str, int]:
    items = iter_map.items() if isinstance(iter_map, Mapping) else iter_map
    out: Dict[str, int] = {}
    for entry in items:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ConfigError(
                f"MODEL.TEMP_FROZEN_PARAMS_ITER_MAP: expected [param_name, num_iterations] entries, got {entry!r}"
            )
        name, iters = entry
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ConfigError(
                f"MODEL.TEMP_FROZEN_PARAMS_ITER_MAP: {name!r}: num_iterations must be an integer >= 0, got {iters!r}"
            )
        out[clean_param_name(name)] = iters
    return out


class TempFrozenParams:
    """Freeze the parameters named in ``iter_map`` while ``iteration < num_iterations``.

    Name matching happens once, here; each call then touches only the named parameters.

    Two ways to apply it:

    - ``clear_grads(iteration)`` after ``backward()`` and before ``optimizer.step()``: the
      original's behaviour (``.grad = None``). Safe under DDP and FSDP2, whose gradient hooks
      expect every trainable parameter to produce a gradient.
    - ``set_requires_grad(iteration)`` before the forward: flips ``requires_grad`` only when the
      frozen set changes (a no-op on other steps), so frozen parameters cost no backward compute.
      For single-process models (plain or compiled; not for DDP/FSDP2 wrappers). Parameters that
      were already frozen at construction stay frozen.

    Raises:
        ConfigError: a malformed entry, or a name that matches no parameter of ``model``.
    """

    def __init__(self, model: nn.Module, iter_map: IterMap) -> None:
        wanted = _parse_iter_map(iter_map)
        named = {clean_param_name(n): p for n, p in model.named_parameters()}
        missing = [n for n in wanted if n not in named]
        if missing:
            hints = {n: difflib.get_close_matches(n, list(named), n=3) for n in missing}
            raise ConfigError(
                f"MODEL.TEMP_FROZEN_PARAMS_ITER_MAP: no parameter named {missing} in the model "
                f"(closest: {hints})"
            )
        self.iter_map = wanted
        # (until_iteration, params) sorted by iteration; the boundaries drive set_requires_grad.
        self._entries: List[Tuple[int, List[nn.Parameter]]] = []
        for name, until in sorted(wanted.items(), key=lambda kv: kv[1]):
            self._entries.append((until, [named[name]]))
        self._initial = {id(p): p.requires_grad for _, ps in self._entries for p in ps}
        self._boundaries = sorted({until for until, _ in self._entries})
        self.max_iteration = self._boundaries[-1] if self._boundaries else 0
        self._state = None  # index into _boundaries last applied by set_requires_grad

    @classmethod
    def from_config(cls, model: nn.Module, model_config: Mapping) -> "TempFrozenParams":
        """Built from ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``."""
        return cls(model, model_config.get("TEMP_FROZEN_PARAMS_ITER_MAP", []) or [])

    def __bool__(self) -> bool:
        return bool(self._entries)

    def frozen_names(self, iteration: int) -> List[str]:
        """Names (without wrapper prefixes) frozen at ``iteration``."""
        return [n for n, until in self.iter_map.items() if iteration < until]

    def clear_grads(self, iteration: int) -> int:
        """Set ``.grad = None`` on parameters frozen at ``iteration``; returns how many."""
        if iteration >= self.max_iteration:
            return 0
        count = 0
        for until, params in self._entries:
            if iteration < until:
                for p in params:
                    p.grad = None
                    count += 1
        return count

    def set_requires_grad(self, iteration: int) -> bool:
        """Freeze/unfreeze by ``requires_grad`` for ``iteration``; True when anything changed."""
        state = bisect.bisect_right(self._boundaries, iteration)
        if state == self._state:
            return False
        self._state = state
        for until, params in self._entries:
            frozen = iteration < until
            for p in params:
                p.requires_grad_(False if frozen else self._initial[id(p)])
        return True

