"""Converting checkpoint files: read safely, pick the source side, write atomically."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import torch
import yaml

from ...fileio import atomic_write
from .detect import _detect_families, _strip_wrappers, detect_side
from .keymaps import FAMILIES, SIDES, VISSL, _pairs_text
from .trunk_config import vissl_trunk_config
from .weights import Conversion, _linear_head, convert_weights


def _choose_source(trunk: Mapping[str, torch.Tensor], layout: str, to: str, src: Optional[str]) -> str:
    """The side a file's trunk weights are in, from ``--from``, the container and the keys."""
    if src is not None:
        return src
    candidates = list(dict.fromkeys(s for s, _ in detect_side(_strip_wrappers(trunk))))
    if not candidates:
        raise ValueError(
            "cannot tell which library these weights come from (their keys fit no supported layout); "
            f"give --from and --arch; supported pairs: {_pairs_text()}"
        )
    if layout.startswith("vissl") and VISSL in candidates:
        return VISSL  # the container is a VISSL checkpoint
    others = [s for s in candidates if s != to]
    if not others:
        if to == VISSL:
            return VISSL  # VISSL key names in another container (e.g. DINO's): repackaged
        raise ValueError(f"the weights are already in the {to} layout")
    if len(others) == 1 or set(others) <= {"torchvision", "timm"}:
        return others[0]  # torchvision and timm ResNets share their keys: either reads the same
    if VISSL in others:
        # Keys shared by VISSL and a library (ViT): converting to a library means from VISSL.
        return VISSL
    raise ValueError(f"the keys fit several layouts ({', '.join(others)}); give --from")


def vissl_config_path(out_path: str) -> str:
    """Where ``convert --to vissl`` writes the model config for ``out_path``: same name, ``.yaml``."""
    return os.path.splitext(out_path)[0] + ".yaml"


def _head_params(heads: Mapping[str, torch.Tensor]) -> list:
    """``HEAD.PARAMS`` for converted heads: an identity head when there are none, else one linear ``mlp``."""
    if not heads:
        return [["identity", {}]]
    weight, bias = _linear_head(heads)
    if bias is None:
        raise ValueError("the head is a linear layer without a bias, which the mlp head cannot build; "
                         "convert without --with-head to keep the trunk only")
    return [["mlp", {"dims": [int(weight.shape[1]), int(weight.shape[0])]}]]


def model_config_for(result: Conversion, num_heads: Optional[int] = None) -> Dict[str, Any]:
    """The VISSL model config (``{"MODEL": {"TRUNK", "HEAD"}}``) that loads a ``vissl`` conversion strictly.

    The trunk settings come from the weights (:func:`vissl_trunk_config`; a library model name in
    ``result.arch`` or ``num_heads`` supply what weights do not hold); the head is the kept
    classifier as an ``mlp`` or else ``identity``. The config is built on the meta device and its
    keys and shapes compared with the weights, so a config that would not load them raises
    ``ValueError`` here rather than at ``create_model`` time.
    """
    from ...config import load_config
    from ...model import build_model

    if result.dst != VISSL:
        raise ValueError(f"a model config is written for vissl weights, not {result.dst}")
    arch = result.arch if result.arch not in FAMILIES else None
    trunk = vissl_trunk_config(result.state, result.family, arch, num_heads=num_heads)
    if result.family == "xcit" and "TOKENS_NORM" not in trunk["XCIT"] and result.src != VISSL:
        raise ValueError("XCiT's TOKENS_NORM is not in the weights and timm's models differ (its xcit_nano_12_* "
                         "normalise the class token only): give --arch with the timm model name")
    data = {"MODEL": {"TRUNK": trunk, "HEAD": {"PARAMS": _head_params(result.heads)}}}
    cfg = load_config(data)
    with torch.device("meta"):
        model = build_model(cfg.MODEL)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {f"trunk.{k}": tuple(v.shape) for k, v in result.state.items()}
    given.update({f"heads.{k}": tuple(v.shape) for k, v in result.heads.items()})
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k}: {given[k]} vs {expected[k]}" for k in set(given) & set(expected) if given[k] != expected[k])
    if missing or unexpected or shapes:
        raise ValueError(
            f"the model config read from the weights would not load them (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, shapes {shapes[:4]}); trunk settings read: {trunk}"
        )
    if result.family == "xcit" and "TOKENS_NORM" not in trunk["XCIT"]:
        result.notes.append("TOKENS_NORM is not in XCiT weights: the config keeps the trunk's default (true), "
                            "the original's; edit it if these weights were trained without")
    return data


def _config_text(data: Mapping[str, Any], result: Conversion, weights_path: str) -> str:
    header = (
        f"# @package _global_\n"
        f"# Written by `vissl-models convert` with {os.path.basename(weights_path)}: the {result.family} trunk\n"
        f"# settings read from the weights ({result.src} -> vissl), ready for\n"
        f"# vissl_models.create_model(<this file>, weights=<the weights file>).\n"
    )
    return header + yaml.safe_dump({"config": _plain(data)}, sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def convert_checkpoint(
    in_path: str,
    out_path: str,
    to: str,
    arch: Optional[str] = None,
    src: Optional[str] = None,
    with_head: bool = False,
    num_heads: Optional[int] = None,
    write_config: bool = True,
) -> Conversion:
    """Convert a checkpoint file to ``to`` (``vissl``, ``torchvision``, ``timm``, ``classy_vision``).

    The input is read safely (VISSL consolidated/training checkpoints, ``state_dict`` /
    ``model_state_dict`` wrappers or bare state dicts). The source side is detected from the
    layout and keys; pass ``src`` (``--from``) and ``arch`` when they cannot tell. ``to="vissl"``
    writes ``{"classy_state_dict": {"base_model": {"model": {"trunk", "heads"}}}, "type":
    "consolidated"}`` (weights with VISSL key names in another container, such as DINO's
    teacher/student files, are repackaged as they are); other targets a plain state dict.
    ``with_head`` keeps a classifier: a VISSL linear head becomes the library's ``fc``/``head``
    and back.

    With ``to="vissl"`` and ``write_config`` the matching model config is written next to the
    weights (:func:`vissl_config_path`, see :func:`model_config_for`); its path is
    ``result.config_path``. A transformer whose attention head count neither the weights, ``arch``
    (a timm model name) nor ``num_heads`` give is refused. Everything is checked before anything is
    written; files are written atomically.
    """
    from ..io import load_checkpoint

    if to not in SIDES:
        raise ValueError(f"to={to!r}: expected one of {list(SIDES)}")
    config_path = vissl_config_path(out_path) if (to == VISSL and write_config) else None
    for path in filter(None, (out_path, config_path)):
        if os.path.exists(path) and os.path.exists(in_path) and os.path.samefile(in_path, path):
            raise ValueError(f"{path}: the output would overwrite the input")
    if config_path is not None and os.path.abspath(config_path) == os.path.abspath(out_path):
        raise ValueError(f"{out_path}: the weights file would be overwritten by its .yaml config; "
                         "name the weights e.g. model.torch")
    loaded = load_checkpoint(in_path)
    trunk = loaded.trunk
    source = _choose_source(trunk, loaded.layout, to, src)
    head = loaded.heads if (with_head and source == VISSL) else None
    if with_head and source == VISSL and not loaded.heads:
        raise ValueError(f"{in_path}: --with-head given but the checkpoint has no heads")
    if source == to == VISSL:
        state = _strip_wrappers(trunk)
        found, _ = _detect_families(state, VISSL)
        if not found:
            raise ValueError(f"{in_path}: the trunk keys are not a VISSL layout of a supported family")
        result = Conversion(VISSL, VISSL, found[0], arch, state, heads=dict(loaded.heads) if with_head else {},
                            notes=[f"VISSL key names already ({loaded.layout} container): repackaged"])
    else:
        result = convert_weights(trunk, source, to, arch, head=head, keep_classifier=with_head and to == VISSL)
    if source == VISSL and loaded.heads and not with_head:
        result.dropped += [f"heads.{k}" for k in loaded.heads]
    if to == VISSL:
        obj: Any = {
            "classy_state_dict": {"base_model": {"model": {"trunk": result.state, "heads": result.heads}}},
            "type": "consolidated",
        }
    else:
        obj = result.state
    config_text = None
    if config_path is not None:
        result.model_config = model_config_for(result, num_heads)
        config_text = _config_text(result.model_config, result, out_path).encode("utf-8")
    # The config is committed only once the weights are fully written, and a failed config write
    # discards the weights' temporary file: an error while writing leaves neither new file.
    with atomic_write(out_path) as f:
        torch.save(obj, f)
        if config_text is not None:
            with atomic_write(config_path) as g:
                g.write(config_text)
            result.config_path = config_path
    return result
