"""Feature extraction: images through a model's trunk, features saved as ``.npz`` or ``.pt``.

    result = extract_features("swav_resnet50", "photos/", layers=("res4", "res5avg"),
                              weights="model_final_checkpoint_phase799.torch")
    result.features["res5avg"].shape     # (number of images read, 2048)
    result.save("features.npz")          # atomic: a temp file in the same folder, then os.replace

Images are read with PIL and preprocessed the standard way (resize the shorter side, center crop,
to tensor, normalize), following the model's ``pretrained_cfg`` when it has one. An image that
cannot be read (or is not a regular file) is reported in ``result.skipped`` and the others go on.
On the command line: ``vissl-models extract CONFIG --weights W --images DIR --layers res5avg
--out features.npz``.

The pieces, each usable alone: ``dataset`` (which images, reading one), ``transforms``
(preprocessing), ``features`` (model, weights, which features, the extraction loop), ``writer``
(output checks, atomic write), ``cli`` (the command).
"""

from .cli import add_extract_parser, run_extract
from .dataset import IMAGE_EXTENSIONS, ImageFiles, ImagesArg, collate_images, list_images, load_image, read_image_bytes
from .features import (
    ExtractResult,
    check_device,
    default_layer,
    extract_features,
    feature_function,
    is_feature_extractor,
    load_weights,
    preprocessing,
    resolve_model,
    run_extraction,
)
from .transforms import (
    CHANNEL_ORDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    TransformSettings,
    build_transform,
    settings_for,
    transform_from,
)
from .writer import OUTPUT_FORMATS, check_output_path, save_features, undo_on_termination

__all__ = [
    "CHANNEL_ORDERS",
    "ExtractResult",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "ImageFiles",
    "ImagesArg",
    "OUTPUT_FORMATS",
    "TransformSettings",
    "add_extract_parser",
    "build_transform",
    "check_device",
    "check_output_path",
    "collate_images",
    "default_layer",
    "extract_features",
    "feature_function",
    "is_feature_extractor",
    "list_images",
    "load_image",
    "load_weights",
    "preprocessing",
    "read_image_bytes",
    "resolve_model",
    "run_extract",
    "run_extraction",
    "save_features",
    "settings_for",
    "transform_from",
    "undo_on_termination",
]
