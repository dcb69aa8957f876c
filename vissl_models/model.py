"""``BaseSSLMultiInputOutputModel``: a registry-built trunk plus heads, with VISSL's forward paths."""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from classy_vision.models import ClassyModel
from torch import nn

from .checkpoint.load import LoadReport, apply_weights_init
from .config import AttrDict, ConfigError, load_config
from .feature_extractor import FeatureExtractorModel
from .layers import convert_sync_batchnorm
from .model_helpers import FeatureEvalSettings, MultiInputMapping
from .registry import MODELS, get_model_head, get_model_trunk, register_model

logger = logging.getLogger(__name__)

Batch = Union[torch.Tensor, List[torch.Tensor], Dict[str, Any]]


def complete_model_config(model_config: Mapping) -> AttrDict:
    """``model_config`` merged over the defaults and validated (a full config passes unchanged)."""
    return load_config({"MODEL": model_config}).MODEL


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
    """

    # classy_vision would wrap every instance in a head-executor wrapper, which breaks
    # torch.compile; this model has no classy heads to execute.
    wrapper_cls = None

    def __init__(self, model_config: Mapping, optimizer_config: Optional[Mapping] = None) -> None:
        self.model_config = complete_model_config(model_config)
        self.optimizer_config = optimizer_config
        super().__init__()
        self.eval_settings = FeatureEvalSettings.from_config(self.model_config)
        self.eval_mode = self.eval_settings.is_feature_extractor
        self.trunk = self._get_trunk()
        self.heads = nn.ModuleList()
        self.head_names: List[str] = []
        self._output_feature_names = self.eval_settings.output_feature_names
        self._get_heads()
        self.multi_input_mapping = MultiInputMapping.from_config(self.model_config)
        self._apply_freezing()

    # ------------------------------------------------------------------ building
    def _get_trunk(self) -> nn.Module:
        if self.eval_settings.is_feature_extractor:
            return FeatureExtractorModel(self.model_config, self.eval_settings)
        name = self.model_config.TRUNK.NAME
        return get_model_trunk(name)(self.model_config, name)

    def _build_head_module(self, head_param: Sequence) -> nn.Module:
        if not isinstance(head_param, (list, tuple)) or not head_param or not isinstance(head_param[0], str):
            raise ConfigError(f"MODEL.HEAD.PARAMS: expected [name, {{options}}], got {head_param!r}")
        name = head_param[0]
        kwargs = dict(head_param[1]) if len(head_param) > 1 and head_param[1] is not None else {}
        builder = get_model_head(name)
        try:
            inspect.signature(builder).bind(self.model_config, **kwargs)
        except TypeError as e:
            params = [p for p in inspect.signature(builder).parameters][1:]
            raise ConfigError(f"MODEL.HEAD.PARAMS: head {name!r} options {sorted(kwargs)}: {e}; "
                              f"accepted options: {params}") from None
        return builder(self.model_config, **kwargs)

    def _get_heads(self) -> None:
        # Heads are initialised from their own seed (MODEL._MODEL_INIT_SEED, + i within a chain),
        # as in the original, so their initial weights do not depend on the trunk.
        seed = int(self.model_config.get("_MODEL_INIT_SEED", 0))
        for head_param in self.model_config.HEAD.PARAMS:
            if head_param and isinstance(head_param[0], (list, tuple)):
                modules = []
                for i, p in enumerate(head_param):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed + i)
                        modules.append(self._build_head_module(p))
                self.heads.append(nn.Sequential(*modules))
                self.head_names.append("->".join(p[0] for p in head_param))
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    self.heads.append(self._build_head_module(head_param))
                self.head_names.append(head_param[0])

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
        feats = []
        for start, end in _crop_groups(batch, self.model_config.SINGLE_PASS_EVERY_CROP):
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
        feats = self.trunk(batch, feature_names, **kwargs)
        if self.eval_settings.trunk_features_only:
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
            f"Mismatch in #head: {len(heads)} and #features: {len(feats)}: heads pair one to one with "
            "trunk features, or several heads chain on one feature"
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


def build_model(
    model_config: Mapping, optimizer_config: Optional[Mapping] = None, *, load_weights: bool = False
) -> nn.Module:
    """Build the model named by ``MODEL.BASE_MODEL_NAME`` (default ``multi_input_output_model``).

    ``load_weights=True`` then applies MODEL.WEIGHTS_INIT (see
    ``BaseSSLMultiInputOutputModel.init_model_from_weights_config``). It is off by default, as in
    the original, whose composed configs often carry a placeholder PARAMS_FILE that only the
    training engine resolves.
    """
    model_config = complete_model_config(model_config)
    model = MODELS.get(model_config.BASE_MODEL_NAME)(model_config, optimizer_config)
    if load_weights:
        init = getattr(model, "init_model_from_weights_config", None)
        if init is None:
            raise TypeError(f"{type(model).__name__} cannot apply MODEL.WEIGHTS_INIT (no init_model_from_weights_config)")
        model.weights_init_report = init()
    return model
