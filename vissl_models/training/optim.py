"""Optimizer parameter groups with the original's semantics (``vissl.optimizers.param_groups``).

``param_group_constructor: default``: every Linear/Conv weight (``weight_g``/``weight_v`` for
weight-normalised layers) is regularised; biases follow ``regularize_bias``; BatchNorm/LayerNorm
weights follow ``regularize_bn`` and their biases ``regularize_bn and regularize_bias``; any other
module's own parameters (class token, position embeddings, ...) are regularised unless a
``non_regularized_parameters`` entry is a substring of their name. Modules whose name contains
``"head"`` go to the head groups, which take ``lr_head`` (``param_schedulers.lr_head`` when
``head_optimizer_params.use_different_lr``, else ``lr``) and the head weight decay
(``head_optimizer_params.weight_decay`` when ``use_different_wd``, else ``weight_decay``).
``MODEL.NON_TRAINABLE_PARAMS`` are frozen (``requires_grad=False``) and, like every other frozen
parameter, left out. ``construct_single_param_group_only`` gives one group of all parameters.

``param_group_constructor: dino``: biases and parameters with ``norm`` in their name are not
regularised, everything else is (the DINO repository's rule).

With ``use_larc``, every group carries ``"larc": True`` (adapt this group's learning rate) except
1-D parameters (biases, norms) when ``exclude_bias_and_norm`` is set, which go to groups marked
``"larc": False``; ``larc_step_`` applies LARC to such groups.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from ..config import AttrDict, ConfigError, load_config
from ..layers import ChannelsLayerNorm2d
from .freeze import clean_param_name

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# The original's _NORM_TYPES. GroupNorm is not among them, and neither is a channels-first
# ConvNeXt LayerNorm (a plain module there), so those parameters fall in the "remaining" groups.
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm)
PARAM_GROUP_CONSTRUCTORS = ("default", "dino")
_SCHEDULE_START_KEYS = {
    "constant": "value", "cosine": "start_value", "linear": "start_value", "cosine_warm_restart": "start_value",
    "step_with_fixed_gamma": "base_value", "inverse_sqrt": "start_value",
}


def complete_optimizer_config(optimizer_config: Optional[Mapping]) -> AttrDict:
    """``optimizer_config`` merged over the library's OPTIMIZER defaults (``None``: the defaults)."""
    return load_config({"OPTIMIZER": dict(optimizer_config or {})}).OPTIMIZER


def schedule_start_value(schedule: Mapping, where: str = "OPTIMIZER.param_schedulers.lr") -> float:
    """The value a VISSL param-scheduler config starts at (``values[0]``, ``start_value``, ...)."""
    name = schedule.get("name")
    if name in ("multistep", "step"):
        return float(schedule["values"][0])
    if name == "composite":
        subs = schedule.get("schedulers") or []
        if not subs:
            raise ConfigError(f"{where}: a composite schedule needs 'schedulers', got {subs!r}")
        return schedule_start_value(subs[0], f"{where}.schedulers[0]")
    if name in _SCHEDULE_START_KEYS:
        return float(schedule[_SCHEDULE_START_KEYS[name]])
    raise ConfigError(
        f"{where}.name: got {name!r}, allowed: {sorted(['multistep', 'step', 'composite', *_SCHEDULE_START_KEYS])} "
        "(or pass optimizer_schedulers={'lr': ...})"
    )


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrap the model; FSDP2 keeps module names as they are.
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _is_linear_or_conv(module: nn.Module) -> bool:
    # WeightNormLinear plays the part of the original's nn.utils.weight_norm(nn.Linear).
    if isinstance(module, (nn.Linear, *_CONV_TYPES)):
        return True
    return hasattr(module, "weight_g") and hasattr(module, "weight_v")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) and not isinstance(module, ChannelsLayerNorm2d)


def _freeze_non_trainable(model: nn.Module, model_config: Mapping) -> List[nn.Parameter]:
    names = list(model_config.get("NON_TRAINABLE_PARAMS", []) or [])
    if not names:
        return []
    named = {clean_param_name(n): p for n, p in model.named_parameters()}
    unknown = [n for n in names if clean_param_name(n) not in named]
    if unknown:
        hints = {n: difflib.get_close_matches(clean_param_name(n), list(named), n=3) for n in unknown}
        raise ConfigError(f"MODEL.NON_TRAINABLE_PARAMS: no parameter named {unknown} (closest: {hints})")
    frozen = []
    for n in names:
        p = named[clean_param_name(n)]
        p.requires_grad = False
        frozen.append(p)
    return frozen


def _lr_and_wd(cfg: AttrDict, schedulers: Mapping[str, Any]) -> Dict[str, Any]:
    head = cfg.head_optimizer_params
    lr = schedulers["lr"] if "lr" in schedulers else schedule_start_value(cfg.param_schedulers.lr)
    if head.use_different_lr:
        lr_head = schedulers["lr_head"] if "lr_head" in schedulers else schedule_start_value(
            cfg.param_schedulers.lr_head, "OPTIMIZER.param_schedulers.lr_head")
    else:
        lr_head = lr
    wd = schedulers.get("weight_decay", cfg.weight_decay)
    if "weight_decay_head" in schedulers:
        wd_head = schedulers["weight_decay_head"]
    elif head.use_different_wd:
        if head.weight_decay < 0:
            raise ConfigError(
                f"OPTIMIZER.head_optimizer_params.weight_decay: got {head.weight_decay!r}, allowed: >= 0"
            )
        wd_head = head.weight_decay
    else:
        wd_head = wd
    return {"lr": lr, "lr_head": lr_head, "wd": wd, "wd_head": wd_head}


def _default_groups(model: nn.Module, cfg: AttrDict, v: Mapping[str, Any]) -> List[Dict[str, Any]]:
    trunk_reg, trunk_unreg, head_reg, head_unreg, other_reg = [], [], [], [], []
    seen = set()

    def add(bucket: List[nn.Parameter], p: Optional[torch.Tensor]) -> None:
        # A parameter shared by two modules (iBOT's tied prototypes) is grouped once; a buffer
        # in a parameter's place (dino_head_fsdp's frozen weight_g) is not a parameter at all.
        if isinstance(p, nn.Parameter) and id(p) not in seen:
            seen.add(id(p))
            bucket.append(p)

    for name, module in model.named_modules():
        in_head = "head" in name
        reg, unreg = (head_reg, head_unreg) if in_head else (trunk_reg, trunk_unreg)
        if _is_linear_or_conv(module):
            if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
                add(reg, module.weight_g)
                add(reg, module.weight_v)
            else:
                add(reg, module.weight)
            bias = getattr(module, "bias", None)
            add(reg if cfg.regularize_bias else unreg, bias)
        elif _is_norm(module):
            add(reg if cfg.regularize_bn else unreg, getattr(module, "weight", None))
            add(reg if cfg.regularize_bn and cfg.regularize_bias else unreg, getattr(module, "bias", None))
        else:
            for p in module.parameters(recurse=False):
                add(other_reg, p)

    other_unreg: List[nn.Parameter] = []
    patterns = list(cfg.non_regularized_parameters or [])
    if patterns:
        moved = {id(p) for n, p in model.named_parameters() if any(s in n for s in patterns)}
        for bucket in (trunk_reg, head_reg, other_reg):
            bucket[:] = [p for p in bucket if id(p) not in moved]
        skip = {id(p) for p in trunk_unreg + head_unreg}
        for n, p in model.named_parameters():
            if id(p) in moved and id(p) not in skip:
                skip.add(id(p))
                other_unreg.append(p)

    groups = [
        ("trunk_regularized", trunk_reg, v["lr"], v["wd"]),
        ("trunk_unregularized", trunk_unreg, v["lr"], 0.0),
        ("head_regularized", head_reg, v["lr_head"], v["wd_head"]),
        ("head_unregularized", head_unreg, v["lr_head"], 0.0),
        ("remaining_regularized", other_reg, v["lr"], v["wd"]),
        ("remaining_unregularized", other_unreg, v["lr"], 0.0),
    ]
    return [{"name": n, "params": ps, "lr": lr, "weight_decay": wd} for n, ps, lr, wd in groups]


def _dino_groups(model: nn.Module, cfg: AttrDict, v: Mapping[str, Any]) -> List[Dict[str, Any]]:
    reg, unreg = [], []
    for name, p in model.named_parameters():
        (unreg if name.endswith(".bias") or "norm" in name else reg).append(p)
    return [{"name": "regularized", "params": reg, "lr": v["lr"], "weight_decay": v["wd"]},
            {"name": "unregularized", "params": unreg, "lr": v["lr"], "weight_decay": 0.0}]


def _split_for_larc(groups: List[Dict[str, Any]], cfg: AttrDict) -> List[Dict[str, Any]]:
    exclude = bool(cfg.get("exclude_bias_and_norm", False) or (cfg.get("larc_config") or {}).get(
        "exclude_bias_and_norm", False))
    out = []
    for g in groups:
        if not exclude:
            out.append({**g, "larc": True})
            continue
        multi = [p for p in g["params"] if p.ndim > 1]
        single = [p for p in g["params"] if p.ndim <= 1]
        out.append({**g, "params": multi, "larc": True})
        out.append({**g, "name": g["name"] + "_larc_excluded", "params": single, "larc": False})
    return out


def get_optimizer_param_groups(
    model: nn.Module,
    model_config: Mapping,
    optimizer_config: Optional[Mapping] = None,
    optimizer_schedulers: Optional[Mapping[str, Any]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for ``torch.optim`` from the ``MODEL`` and ``OPTIMIZER`` config sections.

    Args:
        model: the model (DDP and ``torch.compile`` wrappers are looked through).
        model_config: the ``MODEL`` section (``NON_TRAINABLE_PARAMS`` is read).
        optimizer_config: the ``OPTIMIZER`` section (missing keys take the defaults).
        optimizer_schedulers: optional values (floats, or scheduler objects your loop reads) for
            ``lr``, ``lr_head``, ``weight_decay``, ``weight_decay_head``, as the original's
            trainer passed them; by default ``lr``/``lr_head`` are the schedules' start values.

    Returns:
        Non-empty groups, each ``{"name", "params", "lr", "weight_decay"}`` (+ ``"larc"`` with
        ``use_larc``), holding trainable parameters only.

    Raises:
        ConfigError: unknown ``param_group_constructor`` or schedule name, a negative head weight
            decay, or a ``NON_TRAINABLE_PARAMS`` name the model does not have.
    """
    cfg = complete_optimizer_config(optimizer_config)
    schedulers = dict(optimizer_schedulers or {})
    constructor = cfg.get("param_group_constructor", "default")
    if constructor not in PARAM_GROUP_CONSTRUCTORS:
        raise ConfigError(
            f"OPTIMIZER.param_group_constructor: got {constructor!r}, allowed: {list(PARAM_GROUP_CONSTRUCTORS)}"
        )
    model = _unwrap(model)
    values = _lr_and_wd(cfg, schedulers)
    _freeze_non_trainable(model, model_config)
    if cfg.construct_single_param_group_only:
        groups = [{"name": "all", "params": list(model.parameters()), "lr": values["lr"], "weight_decay": values["wd"]}]
    elif constructor == "dino":
        groups = _dino_groups(model, cfg, values)
    else:
        groups = _default_groups(model, cfg, values)
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    if cfg.use_larc:
        groups = _split_for_larc(groups, cfg)
    return [g for g in groups if g["params"]]


@torch.no_grad()
def larc_step_(param_groups: List[Dict[str, Any]], trust_coefficient: float = 0.001, clip: bool = False,
               eps: float = 1e-8) -> None:
    """Apply LARC (apex's ``LARC``) to the gradients of groups marked ``"larc": True``, in place.

    Call after ``backward`` and before ``optimizer.step()``. Each gradient becomes
    ``(grad + wd * p) * local_lr`` with ``local_lr = trust * ||p|| / (||grad|| + wd * ||p|| + eps)``
    (``min(local_lr / lr, 1)`` with ``clip``), and the group's weight decay is then folded in,
    so run the optimizer with the returned groups' ``weight_decay`` temporarily 0: this function
    does that by storing it in ``group["larc_weight_decay"]``; ``restore_weight_decay_`` puts it back.
    """
    for g in param_groups:
        if not g.get("larc", False):
            continue
        wd = g["weight_decay"]
        for p in g["params"]:
            if p.grad is None:
                continue
            p_norm = torch.linalg.vector_norm(p)
            g_norm = torch.linalg.vector_norm(p.grad)
            local_lr = trust_coefficient * p_norm / (g_norm + p_norm * wd + eps)
            if clip:
                local_lr = torch.clamp(local_lr / g["lr"], max=1.0)
            # Where the weights or the gradient are all zero apex leaves the gradient as it is
            # (and applies no weight decay).
            ok = (p_norm > 0) & (g_norm > 0)
            p.grad.add_(p * torch.where(ok, wd, 0.0)).mul_(torch.where(ok, local_lr, torch.ones_like(local_lr)))
        g["larc_weight_decay"] = wd
        g["weight_decay"] = 0.0


def restore_weight_decay_(param_groups: List[Dict[str, Any]]) -> None:
    """Undo the weight-decay swap ``larc_step_`` made (call after ``optimizer.step()``)."""
    for g in param_groups:
        if "larc_weight_decay" in g:
            g["weight_decay"] = g.pop("larc_weight_decay")
