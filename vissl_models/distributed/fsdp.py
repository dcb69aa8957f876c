"""FSDP2 (``torch.distributed.fsdp.fully_shard``) at the original's wrap points.

The original wrapped its ``_fsdp`` trunks and heads in fairscale FSDP from inside the model
constructors. Here models stay plain modules and :func:`shard_model` applies PyTorch's FSDP2 from
outside, at the same places: each transformer block, each RegNet block and block group (with
BatchNorm kept in fp32 as fairscale's ``auto_wrap_bn`` did), big layers over
``FSDP_CONFIG.AUTO_WRAP_THRESHOLD`` parameters, each head, then the root.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..config import ConfigError

SECTION = "MODEL.FSDP_CONFIG"

# fairscale / VISSL options with no FSDP2 counterpart, and why. They are accepted (VISSL configs
# carry them) and listed in the report; a non-default value also warns.
_NO_FSDP2_MEANING = {
    "flatten_parameters": (True, "FSDP2 shards each parameter as a DTensor and already all-gathers a unit's "
                                 "parameters in one flat collective"),
    "bucket_cap_mb": (0, "FSDP2 reduce-scatters each unit's gradients in one collective; there is no bucket size"),
    "clear_autocast_cache": (True, "a fairscale workaround for its own autocast interplay; FSDP2 needs none"),
    "verbose": (True, "fairscale's repr option"),
    "FORCE_SYNC_CUDA": (False, "FSDP2 orders its collectives with CUDA streams and events"),
    "_TRACK_COMMUNICATIONS": (False, "VISSL's fairscale process-group tracker; use torch.profiler"),
    "AMP_TYPE": ("01", "autocast is the training loop's choice (MODEL.AMP_PARAMS), not the sharding's"),
    "AUTO_SETUP_FSDP": (False, "a VISSL engine switch; calling shard_model is the setup"),
}
_KNOWN = {"mixed_precision", "compute_dtype", "fp32_reduce_scatter", "AUTO_WRAP_THRESHOLD",
          "reshard_after_forward", "move_params_to_cpu", *_NO_FSDP2_MEANING}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ShardReport:
    """What :func:`shard_model` did: the FSDP units (module names, ``""`` the root, in wrapping
    order), those kept in fp32 (BatchNorm under low-precision parameters), the policy, and the
    config options that have no FSDP2 meaning (option -> reason)."""

    units: List[str] = field(default_factory=list)
    fp32_units: List[str] = field(default_factory=list)
    param_dtype: Optional[torch.dtype] = None
    reduce_dtype: Optional[torch.dtype] = None
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    not_applied: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        dt = self.param_dtype or torch.float32
        text = (f"{len(self.units)} FSDP units ({len(self.fp32_units)} kept fp32), params {dt}, "
                f"gradient reduction {self.reduce_dtype or dt}")
        if self.not_applied:
            text += "; no FSDP2 meaning: " + ", ".join(sorted(self.not_applied))
        return text


def _bool(cfg: Mapping, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{SECTION}.{key}: got {value!r}, expected true or false")
    return value


def fsdp_options(fsdp_config: Optional[Mapping]) -> Tuple[Dict[str, Any], ShardReport]:
    """Map a VISSL ``FSDP_CONFIG`` onto ``fully_shard`` options.

    ``mixed_precision`` with ``compute_dtype`` (``float32``, ``float16``, ``bfloat16``) gives the
    parameter dtype of ``MixedPrecisionPolicy`` (``float32`` or ``mixed_precision: false``: no
    cast); ``fp32_reduce_scatter`` reduces gradients in fp32; ``move_params_to_cpu`` gives
    ``CPUOffloadPolicy``; ``reshard_after_forward`` passes through. Options with no FSDP2 meaning
    are listed in the report. Returns ``(options, report)``; options holds ``mp_policy``,
    ``offload_policy``, ``reshard_after_forward`` and ``auto_wrap_threshold``.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    cfg = dict(fsdp_config or {})
    unknown = sorted(k for k in cfg if k not in _KNOWN)
    if unknown:
        raise ConfigError(f"{SECTION}: unknown option(s) {unknown}; accepted: {sorted(_KNOWN)}")
    report = ShardReport()
    mixed = _bool(cfg, "mixed_precision", True)
    compute = cfg.get("compute_dtype", "float32")
    if isinstance(compute, torch.dtype):
        compute = str(compute).replace("torch.", "")
    if compute not in _DTYPES:
        raise ConfigError(f"{SECTION}.compute_dtype: got {compute!r}, expected one of {sorted(_DTYPES)}")
    param_dtype = _DTYPES[compute] if mixed and compute != "float32" else None
    reduce_dtype = torch.float32 if param_dtype is not None and _bool(cfg, "fp32_reduce_scatter", False) else None
    if not mixed and compute != "float32":
        report.not_applied["compute_dtype"] = f"{compute} is ignored with mixed_precision: false (fairscale did the same)"
    threshold = cfg.get("AUTO_WRAP_THRESHOLD", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ConfigError(f"{SECTION}.AUTO_WRAP_THRESHOLD: got {threshold!r}, expected a parameter count >= 0 (0: off)")
    report.param_dtype, report.reduce_dtype = param_dtype, reduce_dtype
    report.reshard_after_forward = _bool(cfg, "reshard_after_forward", True)
    report.cpu_offload = _bool(cfg, "move_params_to_cpu", False)
    for key, (default, why) in _NO_FSDP2_MEANING.items():
        if key in cfg:
            report.not_applied[key] = why
            if cfg[key] != default:
                warnings.warn(f"{SECTION}.{key}={cfg[key]!r} has no FSDP2 meaning and is not applied: {why}",
                              stacklevel=3)
    options = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
        "offload_policy": CPUOffloadPolicy() if report.cpu_offload else OffloadPolicy(),
        "reshard_after_forward": report.reshard_after_forward,
        "auto_wrap_threshold": threshold,
    }
    return options, report


def _has_own_params(module: nn.Module, done: set) -> bool:
    """Parameters not already in an FSDP unit below ``module``."""
    owned = set()
    for sub in module.modules():
        if sub is not module and id(sub) in done:
            owned.update(id(p) for p in sub.parameters())
    return any(id(p) not in owned for p in module.parameters())


def wrap_points(model: nn.Module, auto_wrap_threshold: int = 0) -> List[str]:
    """Names of the submodules ``shard_model`` wraps, children before parents (root excluded).

    Big layers (``nn.Conv2d`` / ``nn.Linear`` with at least ``auto_wrap_threshold`` parameters),
    transformer blocks (children of ``blocks`` / ``cls_attn_blocks`` module lists), RegNet blocks
    then block groups, the entries of ``stages`` / ``layers`` lists and of ``_feature_blocks`` (the
    children of a Sequential entry, which trunk-wide checkpointing calls one by one), then each
    head (each module of a head chain).
    """
    from ..trunks.regnet_fsdp import BlockGroup

    names: List[str] = []
    modules = dict(model.named_modules())

    def add(name: str) -> None:
        if name and name not in names and any(True for _ in modules[name].parameters()):
            names.append(name)

    def join(a: str, b: str) -> str:
        return f"{a}.{b}" if a else b

    if auto_wrap_threshold > 0:
        for name, m in modules.items():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and sum(p.numel() for p in m.parameters()) >= auto_wrap_threshold:
                add(name)
    trunk_prefix = "trunk" if "trunk" in modules else ""
    for name, m in modules.items():
        if trunk_prefix and not name.startswith(trunk_prefix):
            continue
        last = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.ModuleList) and last in ("blocks", "cls_attn_blocks"):
            for child, _ in m.named_children():
                add(join(name, child))
        elif isinstance(m, BlockGroup):
            for child, _ in m.named_children():
                add(join(name, child))
            add(name)
    for name, m in modules.items():
        if trunk_prefix and not name.startswith(trunk_prefix):
            continue
        last = name.rsplit(".", 1)[-1]
        # A Sequential stage is never a unit itself: trunk-wide activation checkpointing runs its
        # children one by one (bypassing the stage's hooks), so its children are the units.
        if isinstance(m, nn.ModuleList) and last in ("stages", "layers"):
            for child, stage in m.named_children():
                if isinstance(stage, nn.Sequential):
                    for grandchild, _ in stage.named_children():
                        add(join(join(name, child), grandchild))
                else:
                    add(join(name, child))
        elif isinstance(m, nn.ModuleDict) and last == "_feature_blocks":
            for stage_name, stage in m.named_children():
                stage_full = join(name, stage_name)
                if isinstance(stage, nn.Sequential):
                    if not any(isinstance(c, BlockGroup) for c in stage.children()):
                        for child, _ in stage.named_children():
                            add(join(stage_full, child))
                else:
                    add(stage_full)
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.ModuleList):
        for i, head in enumerate(heads):
            if isinstance(head, nn.Sequential):
                for j, _ in enumerate(head):
                    add(f"heads.{i}.{j}")
            add(f"heads.{i}")
    return names


def _fsdp_config_of(model: nn.Module) -> Mapping:
    cfg = getattr(model, "model_config", None)
    return cfg.get("FSDP_CONFIG", {}) if isinstance(cfg, Mapping) else {}


def shard_model(model: nn.Module, mesh: Any = None, fsdp_config: Optional[Mapping] = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2 and return it (then ``model.shard_report``: a :class:`ShardReport`).

    ``fsdp_config`` defaults to the model's ``MODEL.FSDP_CONFIG`` (see :func:`fsdp_options`);
    ``mesh`` is a 1-D ``DeviceMesh`` (default: the whole world). Units are those of
    :func:`wrap_points`; with low-precision parameters each BatchNorm becomes an fp32 unit
    (its input is not cast), as the original's ``auto_wrap_bn``. Call after activation
    checkpointing is configured and before ``torch.compile`` and the optimizer. Needs an
    initialised process group.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard_model needs an initialised process group (torch.distributed.init_process_group, "
                           "e.g. under torchrun)")
    if getattr(model, "shard_report", None) is not None:
        raise RuntimeError("shard_model: this model is already sharded")
    options, report = fsdp_options(_fsdp_config_of(model) if fsdp_config is None else fsdp_config)
    threshold = options.pop("auto_wrap_threshold")
    common = {"mesh": mesh, "offload_policy": options["offload_policy"]}
    modules = dict(model.named_modules())
    done: set = set()

    if report.param_dtype is not None:
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for name, m in modules.items():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters()):
                fully_shard(m, mp_policy=fp32, reshard_after_forward=report.reshard_after_forward, **common)
                done.add(id(m))
                report.fp32_units.append(name)
                report.units.append(name)
    for name in wrap_points(model, threshold):
        m = modules[name]
        if id(m) in done or not _has_own_params(m, done):
            continue
        fully_shard(m, mp_policy=options["mp_policy"], reshard_after_forward=report.reshard_after_forward, **common)
        done.add(id(m))
        report.units.append(name)
    # The root's parameters are needed again right at the start of backward: keep them gathered.
    fully_shard(model, mp_policy=options["mp_policy"], reshard_after_forward=False, **common)
    report.units.append("")
    model.shard_report = report
    return model


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` was sharded with FSDP2 (cheap; does not import torch.distributed.fsdp)."""
    import sys

    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)
