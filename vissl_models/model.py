"""``BaseSSLMultiInputOutputModel``: a registry-built trunk plus heads, with VISSL's forward paths."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from classy_vision.models import ClassyModel
from torch import nn

from .checkpoint.load import LoadReport, apply_weights_init, check_module_state, load_module_state
from .config import AttrDict, ConfigError, load_config
from .feature_extractor import FeatureExtractorModel
from .layers import convert_sync_batchnorm
from .model_helpers import HeadSpec, ModelOptions
from .registry import MODELS, get_model_head, get_model_trunk, register_model

logger = logging.getLogger(__name__)

Batch = Union[torch.Tensor, List[torch.Tensor], Dict[str, Any]]


def complete_model_config(model_config: Mapping) -> AttrDict:
    """``model_config`` merged over the defaults and validated (a full config passes unchanged)."""
    if not isinstance(model_config, Mapping):
        raise ConfigError(f"MODEL: got {model_config!r}, expected a mapping of MODEL options")
    return load_config({"MODEL": model_config}).MODEL


def _check_images(batch: torch.Tensor, what: str) -> None:
    # Every registered trunk takes image batches; a missing batch dimension fails here with the
    # shape instead of deep inside a convolution or a patch embedding.
    if batch.ndim != 4:
        raise ValueError(f"{what} must be an N x C x H x W image batch, got shape {tuple(batch.shape)}")


def _crop_groups(batch: Sequence[torch.Tensor], single_pass_every_crop: bool) -> List[Tuple[int, int]]:
    """[start, end) ranges of consecutive crops that share a spatial size (one trunk pass each)."""
    if single_pass_every_crop:
        return [(i, i + 1) for i in range(len(batch))]
    groups, start = [], 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or batch[i].shape[-2:] != batch[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


@register_model("multi_input_output_model")
class BaseSSLMultiInputOutputModel(ClassyModel):
    """A self-supervised model: ``trunk`` computes features, ``heads`` compute outputs.

    Forward takes a tensor (one input), a list of tensors (multi-crop: consecutive crops of the
    same size share one trunk pass, features are concatenated in crop order, heads run once), or
    a dict of inputs routed by ``MULTI_INPUT_HEAD_MAPPING`` (PIRL images + patches). It returns a
    list with one output per head (a head chain gives one output).

    ``MODEL`` is read once, into ``options`` (a ``ModelOptions``); ``model_config`` stays as the
    complete config it was built from, for users and saving, but nothing reads it afterwards.
    """

    # classy_vision would wrap every instance in a head-executor wrapper, which breaks
    # torch.compile; this model has no classy heads to execute.
    wrapper_cls = None

    def __init__(self, model_config: Mapping, optimizer_config: Optional[Mapping] = None) -> None:
        self.model_config = complete_model_config(model_config)
        self.optimizer_config = optimizer_config
        super().__init__()
        self.options = ModelOptions.from_config(self.model_config)
        self.eval_settings = self.options.eval_settings
        self.eval_mode = self.eval_settings.is_feature_extractor
        self.multi_input_mapping = self.options.input_mapping
        self._output_feature_names = self.eval_settings.output_feature_names
        self._trunk_features_only = self.eval_settings.trunk_features_only
        self._single_pass_every_crop = self.options.single_pass_every_crop
        self.trunk = self._get_trunk()
        self.heads = nn.ModuleList()
        self.head_names: List[str] = []
        self._get_heads()
        self._check_head_widths()
        self._apply_freezing()

    # ------------------------------------------------------------------ building
    def _get_trunk(self) -> nn.Module:
        name = self.options.trunk_name
        trunk = get_model_trunk(name)(self.model_config, name)
        if self.eval_settings.is_feature_extractor:
            return FeatureExtractorModel(trunk, self.eval_settings)
        return trunk

    def _build_head_module(self, spec: HeadSpec) -> nn.Module:
        builder = get_model_head(spec.name)
        try:
            inspect.signature(builder).bind(self.model_config, **spec.options)
        except TypeError as e:
            params = [p for p in inspect.signature(builder).parameters][1:]
            raise ConfigError(f"{spec.key}: head {spec.name!r} options {sorted(spec.options)}: {e}; "
                              f"accepted options: {params}") from None
        try:
            return builder(self.model_config, **spec.options)
        except ConfigError as e:
            raise ConfigError(f"{spec.key}: {e}") from None

    def _get_heads(self) -> None:
        # Each head starts from its own seed (MODEL._MODEL_INIT_SEED, plus the position within a
        # chain), so its initial weights are the same whatever trunk comes before it.
        seed = self.options.init_seed
        for entry in self.options.heads:
            if isinstance(entry, HeadSpec):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    self.heads.append(self._build_head_module(entry))
                self.head_names.append(entry.name)
            else:
                modules = []
                for i, spec in enumerate(entry):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed + i)
                        modules.append(self._build_head_module(spec))
                self.heads.append(nn.Sequential(*modules))
                self.head_names.append("->".join(spec.name for spec in entry))

    def _check_head_widths(self) -> None:
        """Compare each head's input width with the width of the trunk feature it will receive,
        where the trunk lists its features (``feature_info``) and the head states its width
        (``input_width``); a mismatch raises ``ConfigError`` naming both."""
        info = getattr(self.trunk, "feature_info", None)
        if isinstance(self.trunk, FeatureExtractorModel) or not info or not len(self.heads):
            return
        by_name = {f.name: f for f in info}
        m = self.multi_input_mapping
        if m:
            pairs = [(head, names) for names, head in zip(m.feat_names, m.head_index)]
        else:
            # Without names the trunk returns its default feature, which goes to the first head
            # (several heads on one feature run as a chain).
            pairs = [(0, self._output_feature_names)]
        for head_index, names in pairs:
            if len(names) > 1:
                continue
            name = names[0] if names else getattr(self.trunk, "default_feature", None)
            feature = by_name.get(name)
            entry = self.options.heads[head_index]
            spec = entry if isinstance(entry, HeadSpec) else entry[0]
            head = self.heads[head_index]
            first = head if isinstance(entry, HeadSpec) else head[0]
            width = getattr(first, "input_width", None)
            if feature is None or width is None or width == feature.channels:
                continue
            raise ConfigError(
                f"{spec.key}: head {head_index} ({spec.name!r}) expects {width} input channels, but feature "
                f"{feature.name!r} of this trunk ({self.options.trunk_name!r}) gives {feature.channels}"
            )

    def _apply_freezing(self) -> None:
        s = self.eval_settings
        if s.eval_mode_on and s.freeze_trunk_only:
            self.freeze_trunk()
        elif s.eval_mode_on and s.freeze_trunk_and_head:
            self.freeze_head_and_trunk()

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> List[Any]:
        """Dispatch on the input: dict (multi-input), list (multi-crop) or tensor."""
        if self.multi_input_mapping:
            return self.multi_input_with_head_mapping_forward(batch)
        if isinstance(batch, (list, tuple)):
            return self.multi_res_input_forward(list(batch), self._output_feature_names)
        return self.single_input_forward(batch, self._output_feature_names, self.heads)

    def multi_input_with_head_mapping_forward(self, batch: Mapping[str, Any]) -> List[Any]:
        """Trunk + mapped head on each input of the dict that is present; one output per input.

        Inputs named in MULTI_INPUT_HEAD_MAPPING but absent from the batch are skipped, as in the
        original (e.g. evaluating on global views only).
        """
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"this model takes a dict with keys {list(self.multi_input_mapping.input_keys)} "
                f"(MODEL.MULTI_INPUT_HEAD_MAPPING), got {type(batch).__name__}"
            )
        m = self.multi_input_mapping
        if not any(key in batch for key in m.input_keys):
            raise ValueError(
                f"none of this model's inputs {list(m.input_keys)} (MODEL.MULTI_INPUT_HEAD_MAPPING) is in the "
                f"batch, whose keys are {list(batch)}"
            )
        outputs = []
        for key, names, head_idx, extra in zip(m.input_keys, m.feat_names, m.head_index, m.additional_keys):
            if key not in batch:
                continue
            kwargs = {k: batch[k] for k in extra if k in batch}
            out = self.single_input_forward(batch[key], names, [self.heads[head_idx]], **kwargs)
            outputs.append(out[0] if len(out) == 1 else out)
        return outputs

    def multi_res_input_forward(self, batch: List[torch.Tensor], feature_names: Sequence[str]) -> List[Any]:
        """Multi-crop: one trunk pass per run of equal-size crops, features concatenated, heads once."""
        for i, crop in enumerate(batch):
            if not isinstance(crop, torch.Tensor):
                raise TypeError(f"multi-crop input {i} is a {type(crop).__name__}, expected a tensor")
            _check_images(crop, f"multi-crop input {i}")
        feats = []
        for start, end in _crop_groups(batch, self._single_pass_every_crop):
            feat = self.trunk(torch.cat(batch[start:end]), feature_names)
            if len(feat) != 1:
                raise ValueError(f"multi-crop input needs one trunk feature per crop, the trunk returned {len(feat)}")
            feats.append(feat[0])
        return self.heads_forward([torch.cat(feats)], self.heads)

    def single_input_forward(
        self, batch: torch.Tensor, feature_names: Sequence[str], heads: Sequence[nn.Module], **kwargs: Any
    ) -> List[Any]:
        """Trunk then heads; only the trunk with EVAL_MODE_ON and EXTRACT_TRUNK_FEATURES_ONLY.

        ``kwargs`` (e.g. an iBOT ``mask``) go to the trunk.
        """
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"expected a tensor input, got {type(batch).__name__}")
        _check_images(batch, "the input")
        feats = self.trunk(batch, feature_names, **kwargs)
        if self._trunk_features_only:
            return feats
        return self.heads_forward(feats, heads)

    def heads_forward(self, feats: Sequence[torch.Tensor], heads: Sequence[nn.Module]) -> List[Any]:
        """One head per feature, or one feature through a chain of several head modules."""
        if len(feats) == len(heads):
            return [head(feat) for feat, head in zip(feats, heads)]
        if len(heads) > 1 and len(feats) == 1:
            out = feats[0]
            for head in heads:
                out = head(out)
            return [out]
        raise ValueError(
            f"{len(feats)} trunk features cannot go to {len(heads)} heads: each feature needs its own head, "
            "or one feature runs through all the heads as a chain"
        )

    def get_features(self, batch: torch.Tensor) -> List[torch.Tensor]:
        """The trunk's output features: the configured pooled features in feature-extractor mode,
        else the trunk's last feature."""
        return self.trunk(batch, self._output_feature_names)

    # ------------------------------------------------------------------ freezing
    def freeze_head(self) -> None:
        for p in self.heads.parameters():
            p.requires_grad = False

    def freeze_trunk(self) -> None:
        for p in self.trunk.parameters():
            p.requires_grad = False

    def freeze_head_and_trunk(self) -> None:
        self.freeze_trunk()
        self.freeze_head()

    def is_clustering_model(self) -> bool:
        """One head containing a SwAV prototypes head."""
        from .heads.swav import SwAVPrototypesHead

        return len(self.heads) == 1 and any(isinstance(m, SwAVPrototypesHead) for m in self.heads[0].modules())

    def is_fully_frozen_model(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def convert_sync_batchnorm(self, process_group=None, force: bool = False) -> "BaseSSLMultiInputOutputModel":
        """Convert BatchNorm layers to SyncBatchNorm as MODEL.SYNC_BN_CONFIG asks (call before DDP/FSDP).

        The statistics are reduced over ``process_group``, by default this rank's group of
        ``SYNC_BN_CONFIG.GROUP_SIZE`` (-1: the ranks of this machine, 0: all ranks, > 0: groups of
        that size; building the subgroups is a collective). With ``CONVERT_BN_TO_SYNC_BN`` false
        nothing is converted and a warning says so, unless ``force``.
        """
        cfg = self.model_config.SYNC_BN_CONFIG
        if not (cfg.CONVERT_BN_TO_SYNC_BN or force):
            warnings.warn("convert_sync_batchnorm: MODEL.SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN is false, BatchNorm "
                          "layers are left as they are (set it, or pass force=True)", stacklevel=2)
            return self
        if process_group is None:
            from .distributed.sync_bn import sync_bn_group_ranks, sync_bn_process_group

            if torch.distributed.is_available() and torch.distributed.is_initialized():
                process_group = sync_bn_process_group(int(cfg.GROUP_SIZE))
            else:
                sync_bn_group_ranks(1, int(cfg.GROUP_SIZE), 1)  # one process: one group, still checked
        convert_sync_batchnorm(self, cfg.SYNC_BN_TYPE, process_group)
        return self

    def get_optimizer_param_groups(self, optimizer_schedulers: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
        """``torch.optim`` parameter groups from the OPTIMIZER config given to ``build_model``
        (the defaults when none was), with the original's semantics; see
        ``vissl_models.training.get_optimizer_param_groups``."""
        from .training.optim import get_optimizer_param_groups

        return get_optimizer_param_groups(self, self.model_config, self.optimizer_config, optimizer_schedulers)

    # ------------------------------------------------------------------ checkpoints
    def get_classy_state(self, deep_copy: bool = False) -> Dict[str, Any]:
        """``{"model": {"trunk": trunk.state_dict(), "heads": heads.state_dict()}}``."""
        from .distributed.fsdp import is_sharded

        if is_sharded(self):
            # A collective: full tensors on rank 0, same keys as unsharded (other ranks: empty parts).
            from .distributed.checkpoint import sharded_get_classy_state

            return sharded_get_classy_state(self)
        state = {"model": {"trunk": self.trunk.state_dict(), "heads": self.heads.state_dict()}}
        return copy.deepcopy(state) if deep_copy else state

    def set_classy_state(self, state: Mapping[str, Any], strict_heads: bool = False) -> LoadReport:
        """Load ``state["model"]["trunk"]`` (strict) and ``["heads"]`` (partial allowed, reported).

        Every value is validated before the first copy and the copy is all or nothing: a bad
        state raises a ``CheckpointError`` (``StateMismatchError`` for keys and shapes, also a
        ``KeyError``) and leaves the model as it was.
        """
        from .checkpoint.core import LoadPolicy, load_parts
        from .checkpoint.errors import StateMismatchError

        try:
            trunk_state, heads_state = state["model"]["trunk"], state["model"]["heads"]
        except (KeyError, TypeError):
            raise StateMismatchError("set_classy_state expects {'model': {'trunk': ..., 'heads': ...}}",
                                     path="<classy state>") from None
        if not isinstance(trunk_state, Mapping) or not isinstance(heads_state, Mapping):
            raise StateMismatchError("set_classy_state: 'trunk' and 'heads' must be state dicts, got "
                                     f"{type(trunk_state).__name__} and {type(heads_state).__name__}",
                                     path="<classy state>")
        # One plan for both parts, validated before the first copy: a failure leaves the model as it was.
        policy = LoadPolicy(strict=True, partial=() if strict_heads else ("heads.",), convert=False,
                            advice="heads may be partial unless strict_heads=True; the trunk must match")
        report = load_parts(self, trunk_state, heads_state, policy=policy, path="<classy state>")
        if not report.ok:
            logger.warning("set_classy_state: %s", report.summary())
        return report

    def init_model_from_weights_config(self) -> Optional[LoadReport]:
        """Apply MODEL.WEIGHTS_INIT (PARAMS_FILE, STATE_DICT_KEY_NAME, SKIP_LAYERS, prefixes).

        Returns ``None`` when PARAMS_FILE is empty. A missing file raises ``FileNotFoundError``.
        """
        weights_init = self.model_config.WEIGHTS_INIT
        if not weights_init.PARAMS_FILE:
            return None
        report = apply_weights_init(self, weights_init)
        logger.info("initialised from %s: %s", weights_init.PARAMS_FILE, report)
        return report

    def load_checkpoint(self, path: str, strict_heads: bool = False, which: Optional[str] = None) -> LoadReport:
        """Load a checkpoint file (any layout ``load_checkpoint`` knows) with ``set_classy_state``'s
        policy: trunk strict, heads partial unless ``strict_heads``; weights that belong to neither
        are not used. ``which``: teacher/student/ema. Validated first, all or nothing."""
        from .checkpoint.core import LoadPolicy, load_parts
        from .checkpoint.io import load_checkpoint

        loaded = load_checkpoint(path, which=which)
        policy = LoadPolicy(strict=True, partial=() if strict_heads else ("heads.",),
                            advice="heads may be partial unless strict_heads=True; the trunk must match")
        return load_parts(self, loaded.trunk, loaded.heads, policy=policy, path=loaded.path,
                          checkpoint=loaded.describe())

    def load_weights(self, loaded_or_path: Any, strict: bool = True, skip: Sequence[str] = (),
                     which: Optional[str] = None, partial: Sequence[str] = ()) -> LoadReport:
        """Load a ``LoadedCheckpoint``, a checkpoint path or a checkpoint dict into this model.

        Every key is checked before anything changes. ``strict=True``: any missing, unexpected or
        shape-mismatched key raises ``StateMismatchError`` (a ``CheckpointError`` whose ``report``
        lists them) and the model is left as it was. ``strict=False``: what fits is loaded and the
        rest reported. Keys containing any ``skip`` entry (e.g. ``"heads."``,
        ``"num_batches_tracked"``) are left alone on purpose and listed in ``report.skipped``; keys
        under a ``partial`` prefix (``("heads.",)``) may be missing or unexpected (reported). Every
        value is validated before the first copy and the copy is all or nothing. A torchvision,
        timm or classy_vision trunk is converted on the fly when that matches the model
        (``report.converted``). This is the one door every loading route goes through.
        """
        from .checkpoint.load import load_weights

        return load_weights(self, loaded_or_path, strict=strict, skip=skip, which=which, partial=partial)


class ModelTooLargeError(ConfigError, MemoryError):
    """A model whose parameters and buffers alone would not fit in this machine's memory."""


def available_memory_bytes() -> Optional[int]:
    """Memory this process could still allocate: ``MemAvailable`` on Linux, else the physical
    memory size, else None (unknown: no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _state_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _on_meta_already() -> bool:
    return torch.empty(0).device.type == "meta"


def build_model(
    model_config: Mapping, optimizer_config: Optional[Mapping] = None, *, load_weights: bool = False,
    check_memory: bool = True,
) -> nn.Module:
    """Build the model named by ``MODEL.BASE_MODEL_NAME`` (default ``multi_input_output_model``).

    ``load_weights=True`` then applies MODEL.WEIGHTS_INIT (see
    ``BaseSSLMultiInputOutputModel.init_model_from_weights_config``). It is off by default, as in
    the original, whose composed configs often carry a placeholder PARAMS_FILE that only the
    training engine resolves.

    With ``check_memory`` (the default) the model is first built on the meta device, which
    allocates nothing, and a model whose parameters and buffers alone exceed the memory this
    machine has available is refused with ``ModelTooLargeError`` naming both sizes.
    ``check_memory=False`` builds it regardless.
    """
    model_config = complete_model_config(model_config)
    model_cls = MODELS.get(model_config.BASE_MODEL_NAME)
    if check_memory and not _on_meta_already():
        limit = available_memory_bytes()
        if limit is not None:
            # The real build reseeds from the same global state as if this pass had not run.
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                size = _state_bytes(model_cls(model_config, optimizer_config))
            if size > limit:
                raise ModelTooLargeError(
                    f"MODEL ({model_config.TRUNK.NAME} trunk): its parameters and buffers take {size / 2**30:.1f} GiB "
                    f"({size} bytes) but this machine has {limit / 2**30:.1f} GiB available; build it on the meta "
                    "device, shard it, or pass check_memory=False to build it anyway"
                )
    model = model_cls(model_config, optimizer_config)
    if load_weights:
        init = getattr(model, "init_model_from_weights_config", None)
        if init is None:
            raise TypeError(f"{type(model).__name__} cannot apply MODEL.WEIGHTS_INIT (no init_model_from_weights_config)")
        model.weights_init_report = init()
    return model
