"""Convert trunk weights between VISSL's key layout and torchvision, timm and classy_vision.

Families and the sides each converts between (any two sides of a family form a pair):

- ``resnet``: vissl, torchvision and timm ``resnet18..152``, ``resnext*``, ``wide_resnet*`` (the
  plain 7x7 stem; timm's ``resnet50d``-style stems have other keys);
- ``regnet``: vissl (``regnet``; ``regnet_v2``/``regnet_fsdp`` block groups are read too),
  classy_vision and torchvision ``regnet_[xy]_*``, timm ``regnetx_*``/``regnety_*`` (bottleneck
  blocks with a conv1x1 shortcut);
- ``vision_transformer``: vissl, timm ``vit_*`` and ``deit_*`` (no distillation token);
- ``xcit``: vissl, timm ``xcit_*``.

A conversion renames keys (XCiT also splits or joins the class-attention ``qkv``); tensors are
passed on untouched, so ``vissl -> X -> vissl`` returns the same tensors. Every input key must be
recognised: anything else (a deep stem, a pre-activation RegNet, layer scale, a distillation
token) raises a ``ValueError`` naming the keys, rather than producing a state dict that loads
partially. Classifiers (``fc``, ``head``) go along from one library to another; to VISSL they are
dropped unless kept as an ``mlp`` head, and from VISSL a linear head can become one.

Weights do not encode every option: a trunk trained with ``STANDARDIZE_CONVOLUTIONS``, a RegNet
``res_stem_cifar`` stem or ``res_bottleneck_linear_block`` blocks, or a transformer with a
non-default ``QK_SCALE`` converts key for key but computes something other than the library's model.

The package by concern: ``keymaps`` (each side's key layout and the family tables), ``detect``
(family and side from keys or model names), ``libraries`` (library models on the meta device for
checks), ``weights`` (state dict conversion), ``trunk_config`` (``MODEL.TRUNK`` from weights),
``files`` (checkpoint files and the model config written with them) and ``command`` (the CLI).
"""

from .command import add_convert_parser, run_convert
from .detect import _detect_families, _family_of_arch, _strip_wrappers, detect_side
from .files import convert_checkpoint, model_config_for, vissl_config_path
from .keymaps import _LAYOUTS, FAMILIES, LIBRARIES, SIDES, VISSL, State, _pairs_text, supported_pairs
from .libraries import TIMM_HINT
from .trunk_config import vissl_trunk_config
from .weights import Conversion, convert_state_dict, convert_weights, feature_dim

__all__ = [
    "Conversion",
    "FAMILIES",
    "LIBRARIES",
    "SIDES",
    "TIMM_HINT",
    "VISSL",
    "add_convert_parser",
    "convert_checkpoint",
    "convert_state_dict",
    "convert_weights",
    "detect_side",
    "feature_dim",
    "model_config_for",
    "run_convert",
    "supported_pairs",
    "vissl_config_path",
    "vissl_trunk_config",
]
