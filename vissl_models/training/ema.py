"""Momentum (EMA) teacher for DINO, iBOT and MSN, as the original's ``MomentumTeacherInLossHook``.

The teacher is a copy of the student (same weights and buffers at the start) without gradients.
After each optimizer step every teacher *parameter* becomes ``m * teacher + (1 - m) * student``
with the cosine schedule ``m = 1 - (1 - base) * (cos(pi * iteration / max_iteration) + 1) / 2``
(``base`` is ``LOSS.dino_loss.momentum`` / ``ibot_loss.teacher_momentum`` / ``msn_loss.momentum``,
0.996 in the original's configs), rising from ``base`` to 1. Buffers are not averaged (BatchNorm
statistics come from the teacher's own forwards), as in the original.

Plain, DDP (``.module`` is used) and FSDP2 models work: with ``fully_shard``-ed student and teacher
(sharded the same way) each rank updates its own shards of the DTensor parameters, with no
communication.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..config import AttrDict


def cosine_momentum(iteration: int, max_iteration: int, base_momentum: float) -> float:
    """``1 - (1 - base) * (cos(pi * iteration / max_iteration) + 1) / 2``: ``base`` at 0, 1 at the end."""
    if max_iteration <= 0:
        raise ValueError(f"max_iteration must be > 0, got {max_iteration}")
    return 1 - 0.5 * (1 - base_momentum) * (math.cos(math.pi * iteration / max_iteration) + 1)


def teacher_model_config(model_config: Mapping) -> AttrDict:
    """The student's ``MODEL`` config for the teacher: no stochastic depth, as the original's DINO hook."""
    cfg = AttrDict(copy.deepcopy(dict(model_config)))
    vit = cfg.get("TRUNK", {}).get("VISION_TRANSFORMERS")
    if vit is not None:
        vit["DROP_PATH_RATE"] = 0.0
    return cfg


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors; their local shard shares storage with the parameter.
    return t.to_local() if hasattr(t, "to_local") else t


def _reshard(model: nn.Module) -> None:
    # FSDP2 leaves the root's parameters unsharded after a no-grad forward (no backward reshards
    # them); the update works on shards, so bring every FSDP module back to its sharded state.
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _pairs(student: nn.Module, teacher: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    _reshard(student)
    _reshard(teacher)
    s_named = list(student.named_parameters())
    t_named = list(teacher.named_parameters())
    if [n for n, _ in s_named] != [n for n, _ in t_named]:
        s_names, t_names = {n for n, _ in s_named}, {n for n, _ in t_named}
        raise ValueError(
            "teacher and student parameters differ: only in student "
            f"{sorted(s_names - t_names)[:5]}, only in teacher {sorted(t_names - s_names)[:5]}"
        )
    s_local, t_local = [], []
    for (name, s), (_, t) in zip(s_named, t_named):
        s_dt, t_dt = hasattr(s, "to_local"), hasattr(t, "to_local")
        if s_dt != t_dt or (s_dt and tuple(s.placements) != tuple(t.placements)):
            raise ValueError(
                f"{name}: student and teacher are not sharded the same way "
                f"({getattr(s, 'placements', 'not sharded')} vs {getattr(t, 'placements', 'not sharded')}); "
                "shard both with the same mesh and wrap points"
            )
        sl, tl = _local(s.detach()), _local(t.detach())
        if sl.shape != tl.shape:
            raise ValueError(f"{name}: student shard {tuple(sl.shape)} vs teacher shard {tuple(tl.shape)}")
        s_local.append(sl)
        t_local.append(tl)
    return s_local, t_local


class MomentumTeacher:
    """EMA copy of a student model.

    Args:
        student: the model being trained (plain, DDP-wrapped, or ``fully_shard``-ed).
        teacher: a model of the same architecture (for FSDP2: sharded like the student). Its
            parameters and buffers are overwritten with the student's. ``None``: a deep copy of
            the (unwrapped) student (not possible for a sharded student: FSDP2 refuses deepcopy;
            use ``from_config(..., shard=...)``).
        base_momentum: momentum at iteration 0.
        max_iteration: training length in iterations (the schedule reaches 1 there).
        cosine: the cosine schedule; ``False`` keeps ``base_momentum`` throughout.

    Call ``update(iteration)`` after each ``optimizer.step()``; run ``teacher(x)`` under
    ``torch.no_grad()``.
    """

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module] = None, base_momentum: float = 0.996,
                 max_iteration: int = 1, cosine: bool = True) -> None:
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
        if max_iteration <= 0:
            raise ValueError(f"max_iteration must be > 0, got {max_iteration}")
        self.student = _unwrap(student)
        if teacher is None:
            if any(hasattr(p, "to_local") for p in self.student.parameters()):
                # FSDP2 modules refuse deepcopy; a sharded teacher has to be built and sharded.
                raise ValueError(
                    "the student is sharded (DTensor parameters): pass a teacher sharded the same way, "
                    "e.g. MomentumTeacher.from_config(student, cfg.MODEL, ..., shard=shard_model)"
                )
            teacher = copy.deepcopy(self.student)
        self.teacher = _unwrap(teacher)
        self.base_momentum = float(base_momentum)
        self.max_iteration = int(max_iteration)
        self.cosine = cosine
        s_local, t_local = _pairs(self.student, self.teacher)
        with torch.no_grad():
            torch._foreach_copy_(t_local, s_local)
            for (name, sb), (_, tb) in zip(self.student.named_buffers(), self.teacher.named_buffers()):
                _local(tb).copy_(_local(sb))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.last_momentum: Optional[float] = None

    @classmethod
    def from_config(cls, student: nn.Module, model_config: Mapping, base_momentum: float, max_iteration: int,
                    shard: Optional[Callable[[nn.Module], nn.Module]] = None, cosine: bool = True
                    ) -> "MomentumTeacher":
        """Build the teacher from the student's ``MODEL`` config (stochastic depth off), move it to
        the student's device, apply ``shard`` (e.g. ``fully_shard``/``shard_model`` with the
        student's mesh) and copy the student into it."""
        from ..model import build_model

        teacher = build_model(teacher_model_config(model_config))
        device = next(_unwrap(student).parameters()).device
        teacher = teacher.to(device)
        if shard is not None:
            teacher = shard(teacher)
        return cls(student, teacher, base_momentum, max_iteration, cosine)

    def momentum(self, iteration: int) -> float:
        """The momentum used for the update after ``iteration``."""
        if not self.cosine:
            return self.base_momentum
        return cosine_momentum(iteration, self.max_iteration, self.base_momentum)

    @torch.no_grad()
    def update(self, iteration: int) -> float:
        """EMA step of every teacher parameter (shard-wise for DTensors); returns the momentum."""
        m = self.momentum(iteration)
        s_local, t_local = _pairs(self.student, self.teacher)
        torch._foreach_mul_(t_local, m)
        torch._foreach_add_(t_local, s_local, alpha=1 - m)
        self.last_momentum = m
        return m

    def __call__(self, *args, **kwargs):
        """The teacher's forward, without gradients."""
        with torch.no_grad():
            return self.teacher(*args, **kwargs)
