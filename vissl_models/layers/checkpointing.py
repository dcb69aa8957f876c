"""Activation checkpointing that updates BatchNorm running statistics once per forward.

``torch.utils.checkpoint`` runs the checkpointed function a second time during backward. A
BatchNorm in training mode would update its running statistics (and batch counter) again in that
pass; every trunk that checkpoints goes through :func:`checkpoint_without_bn_double_update`, so the
statistics come out as without checkpointing.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _bn_stats(bn: nn.Module) -> List[torch.Tensor]:
    return [t for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked) if t is not None]


class RecomputeSafeSegment:
    """Callable for ``checkpoint``: the recompute pass must not update BatchNorm statistics twice.

    Calls ``fn`` (by default: ``modules`` applied in order to a single input). From the second
    call on, the statistics of every training-mode BatchNorm inside ``modules`` are restored after
    the call rather than tracking being switched off, so both passes save the same tensors
    (non-reentrant checkpointing checks that).
    """

    def __init__(self, modules: Sequence[nn.Module], fn: Optional[Callable[..., Any]] = None) -> None:
        self.modules = modules
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        recompute = self.calls > 0
        self.calls += 1
        saved: List[Tuple[nn.Module, List[torch.Tensor]]] = []
        if recompute:
            for m in self.modules:
                for bn in m.modules():
                    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.training and bn.track_running_stats:
                        saved.append((bn, [t.clone() for t in _bn_stats(bn)]))
        try:
            return self.fn(*args) if self.fn is not None else _run_in_order(self.modules, *args)
        finally:
            with torch.no_grad():
                for bn, values in saved:
                    for t, v in zip(_bn_stats(bn), values):
                        t.copy_(v)


def _run_in_order(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


def _owners(fn: Union[Callable[..., Any], Sequence[nn.Module]]) -> Sequence[nn.Module]:
    if isinstance(fn, nn.Module):
        return [fn]
    if isinstance(fn, (list, tuple)):
        return fn
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        return [owner]
    raise TypeError("checkpoint_without_bn_double_update: pass modules= for a function that is not a module's method")


def checkpoint_without_bn_double_update(
    fn: Union[Callable[..., Any], Sequence[nn.Module]],
    *args: Any,
    modules: Optional[Sequence[nn.Module]] = None,
) -> Any:
    """``fn(*args)`` under non-reentrant ``torch.utils.checkpoint``; BatchNorm statistics updated once.

    ``fn`` is a module, a module's method, another callable (then ``modules`` names the modules it
    runs), or a list of modules applied in order to one input. Under ``torch.compile`` the
    recompute is derived from the traced graph, which applies the statistic updates once, so
    plain checkpointing is used there (the eager guard is not traceable).
    """
    if torch.compiler.is_compiling():
        if isinstance(fn, (list, tuple)):
            return checkpoint(_run_in_order, fn, *args, use_reentrant=False)
        return checkpoint(fn, *args, use_reentrant=False)
    owners = _owners(fn) if modules is None else modules
    run = None if isinstance(fn, (list, tuple)) else fn
    return checkpoint(RecomputeSafeSegment(owners, run), *args, use_reentrant=False)


def checkpoint_sequential_without_bn_double_update(
    modules: Sequence[nn.Module], segments: int, x: torch.Tensor
) -> torch.Tensor:
    """``torch.utils.checkpoint.checkpoint_sequential`` with the same segmentation (every segment
    but the last is checkpointed), each segment through :func:`checkpoint_without_bn_double_update`."""
    modules = list(modules)
    size = len(modules) // segments
    end = 0
    for start in range(0, size * (segments - 1), size):
        end = start + size
        x = checkpoint_without_bn_double_update(modules[start:end], x)
    for m in modules[end:]:
        x = m(x)
    return x


__all__ = [
    "RecomputeSafeSegment",
    "checkpoint_sequential_without_bn_double_update",
    "checkpoint_without_bn_double_update",
]
