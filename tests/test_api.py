"""create_model / list_models (vissl_models.api) and PretrainedCfg (vissl_models.pretrained)."""

import hashlib
import json
import os

import pytest
import torch

import vissl_models
from vissl_models import zoo
from vissl_models.api import resolve_model_name, shipped_config_path
from vissl_models.checkpoint import CheckpointError
from vissl_models.checkpoint.convert import convert_checkpoint
from vissl_models.config import ConfigError
from vissl_models.pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedCfg
from utils import image

TINY_YAML = """\
# @package _global_
config:
  MODEL:
    TRUNK:
      NAME: resnet
      RESNETS: {DEPTH: 18}
    HEAD:
      PARAMS: [["mlp", {"dims": [512, 8]}]]
"""


def tiny_yaml(tmp_path, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(TINY_YAML)
    return str(path)


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- names -----------------------------------------------------------------------------------


def test_list_models_lists_configs_and_zoo_entries():
    names = vissl_models.list_models()
    configs, entries = vissl_models.list_models(kind="config"), vissl_models.list_models(kind="zoo")
    assert names == sorted(names) and set(names) == set(configs) | set(entries)
    assert not set(configs) & set(entries)  # a name always means one thing
    assert "swav_resnet50" in configs and "swav_rn50_in1k_800ep" in entries
    assert len(entries) == len(zoo.list_models()) and len(configs) == len(
        [p for p in os.listdir(os.path.dirname(shipped_config_path("swav_resnet50"))) if p.endswith(".yaml")])
    swav = vissl_models.list_models("swav_*")
    assert swav and all(n.startswith("swav_") for n in swav)
    assert vissl_models.list_models(["dino_*", "ibot_*"]) == sorted(
        n for n in names if n.startswith(("dino_", "ibot_")))
    assert vissl_models.list_models("no_such_*") == []
    with pytest.raises(ValueError, match=r"kind='weights': expected None or one of \['config', 'zoo'\]"):
        vissl_models.list_models(kind="weights")


def test_names_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kind, path, entry = resolve_model_name("swav_resnet50")
    assert kind == "config" and entry is None and os.path.isabs(path)
    assert os.path.dirname(path) == os.path.join(os.path.dirname(vissl_models.__file__), "configs")
    assert resolve_model_name("swav_resnet50.yaml")[1] == path
    kind, path, entry = resolve_model_name("swav_rn50_in1k_800ep")
    assert (kind, entry.name, os.path.basename(path)) == ("zoo", "swav_rn50_in1k_800ep", "swav_resnet50.yaml")
    # A file of the same name in the working directory wins over the shipped config.
    (tmp_path / "swav_resnet50.yaml").write_text(TINY_YAML)
    assert resolve_model_name("swav_resnet50.yaml") == ("file", "swav_resnet50.yaml", None)


def test_every_zoo_entry_and_config_name_resolves():
    for name in vissl_models.list_models():
        kind, path, _ = resolve_model_name(name)
        assert kind in ("config", "zoo") and os.path.isfile(path), name


def test_unknown_names_list_the_closest(tmp_path):
    with pytest.raises(vissl_models.UnknownModelError, match=r"'swav_resnet5' is not .*did you mean swav_resnet50"):
        vissl_models.create_model("swav_resnet5")
    with pytest.raises(vissl_models.UnknownModelError, match=r"did you mean swav_rn50_in1k_800ep"):
        vissl_models.create_model("swav_rn50_in1k_800")
    with pytest.raises(vissl_models.UnknownModelError, match="does not exist"):
        vissl_models.create_model(str(tmp_path / "missing.yaml"))
    with pytest.raises(vissl_models.UnknownModelError, match="no shipped config '../setup'"):
        shipped_config_path("../setup")
    assert isinstance(vissl_models.UnknownModelError("x"), ValueError)  # the CLI reports ValueErrors
    with pytest.raises(TypeError, match="name_or_path must be"):
        vissl_models.create_model(None)


# --- create_model ----------------------------------------------------------------------------


def test_create_model_from_a_shipped_name():
    with torch.device("meta"):
        model = vissl_models.create_model("swav_resnet50")
        reference = vissl_models.build_model(*_sections(vissl_models.load_config(shipped_config_path("swav_resnet50"))))
    assert isinstance(model, vissl_models.BaseSSLMultiInputOutputModel)
    assert model.load_report is None and model.training
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    assert model.pretrained_cfg == PretrainedCfg(source="swav_resnet50.yaml")


def _sections(cfg):
    return cfg.MODEL, cfg.OPTIMIZER


def test_create_model_from_a_zoo_name_carries_its_pretrained_cfg():
    entry = zoo.get("dino_vit_s16_in1k_300ep")
    with torch.device("meta"):
        model = vissl_models.create_model(entry.name)
    assert model.model_config.TRUNK.NAME == "vision_transformer" and model.load_report is None
    cfg = model.pretrained_cfg
    assert cfg is entry.pretrained_cfg
    assert (cfg.top1, cfg.top1_eval, cfg.interpolation, cfg.source) == (73.4, "knn", "bicubic", entry.name)


def test_create_model_from_a_path_with_overrides_and_weights(tmp_path):
    path = tiny_yaml(tmp_path)
    source = vissl_models.create_model(path, overrides=["config.MODEL.HEAD.PARAMS=[[mlp,{dims:[512,4]}]]"])
    assert source.heads[0].clf[0].out_features == 4
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn_like(p))
    weights = str(tmp_path / "w.torch")
    torch.save({"classy_state_dict": {"base_model": source.get_classy_state()}}, weights)

    model = vissl_models.create_model(path, weights=weights,
                                      overrides=["config.MODEL.HEAD.PARAMS=[[mlp,{dims:[512,4]}]]"])
    assert model.load_report is not None and not model.load_report.missing and not model.load_report.unexpected
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    x = image(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_weights_that_do_not_fit_raise_and_leave_the_file(tmp_path):
    path = tiny_yaml(tmp_path)
    other = vissl_models.create_model(path, overrides=["config.MODEL.HEAD.PARAMS=[[mlp,{dims:[512,4]}]]"])
    weights = str(tmp_path / "w.torch")
    torch.save({"classy_state_dict": {"base_model": other.get_classy_state()}}, weights)
    before = digest(weights)
    with pytest.raises(CheckpointError, match=r"heads\.0\.clf\.0\.weight: checkpoint \(4, 512\) vs model \(8, 512\)"):
        vissl_models.create_model(path, weights=weights)  # head is 512 -> 8, the file's 512 -> 4
    model = vissl_models.create_model(path, weights=weights, skip=("heads.",))
    assert model.load_report.skipped and all(k.startswith("heads.") for k in model.load_report.skipped)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items() if k.startswith("trunk."))
    assert digest(weights) == before and sorted(os.listdir(tmp_path)) == ["tiny.yaml", "w.torch"]


def test_bad_options_are_named():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['stric'\]; valid options: \['device', "):
        vissl_models.create_model("swav_resnet50", stric=False)
    with pytest.raises(TypeError, match="strict must be True or False"):
        vissl_models.create_model("swav_resnet50", strict="no")
    with pytest.raises(TypeError, match="skip must be a sequence"):
        vissl_models.create_model("swav_resnet50", skip="heads.")
    with pytest.raises(TypeError, match="overrides must be a list of strings"):
        vissl_models.create_model("swav_resnet50", overrides="config.MODEL.TRUNK.RESNETS.DEPTH=101")
    with pytest.raises(ConfigError, match="device='tpu0' is not a torch device"):
        vissl_models.create_model("swav_resnet50", device="tpu0")
    with pytest.raises(TypeError, match="pretrained_cfg must be"):
        vissl_models.create_model("swav_resnet50", pretrained_cfg=0.5)


def test_device_and_pretrained_cfg_options(tmp_path):
    model = vissl_models.create_model(tiny_yaml(tmp_path), device="cpu", pretrained_cfg={"crop_pct": 1.0})
    assert next(model.parameters()).device.type == "cpu"
    assert model.pretrained_cfg.crop_pct == 1.0 and model.pretrained_cfg.source == "create_model"


def test_converted_weights_and_config_load_with_create_model(tmp_path):
    vit = {"IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 32, "NUM_LAYERS": 2, "NUM_HEADS": 4, "MLP_DIM": 64,
           "QKV_BIAS": True}
    trunk = vissl_models.get_model_trunk("vision_transformer")(
        vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": vit}}})
        .MODEL, "vision_transformer").eval()
    src = str(tmp_path / "timm_vit.pth")
    torch.save({f"module.{k}": v for k, v in trunk.state_dict().items()}, src)
    result = convert_checkpoint(src, str(tmp_path / "vit.torch"), "vissl", num_heads=4)
    model = vissl_models.create_model(result.config_path, weights=str(tmp_path / "vit.torch")).eval()
    assert model.pretrained_cfg.interpolation == "bicubic"
    x = image(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trunk(x)[0], rtol=0, atol=0)


# --- PretrainedCfg ---------------------------------------------------------------------------


def test_pretrained_cfg_of_every_zoo_entry():
    for e in zoo.list_models():
        cfg = e.pretrained_cfg
        assert isinstance(cfg, PretrainedCfg) and cfg.source == e.name, e.name
        assert (cfg.top1, cfg.top1_eval) == (e.top1, e.top1_eval), e.name
        lab = e.name.startswith("colorization_")
        assert cfg.channel_order == ("lab" if lab else "rgb"), e.name
        transformer = e.trunk["NAME"] in ("vision_transformer", "xcit")
        assert cfg.interpolation == ("bicubic" if transformer else "bilinear"), e.name
        assert cfg.resize_size == 256, e.name
        assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    bvlc = zoo.get("supervised_alexnet_bvlc_in1k").pretrained_cfg
    assert (bvlc.image_size, bvlc.crop_mode) == (227, "squash")
    # The original's raw [0, 255] input minus the RGB mean [123.675, 116.28, 103.53].
    assert [round(m / s, 3) for m, s in zip(bvlc.mean, bvlc.std)] == [123.675, 116.28, 103.53]


@pytest.mark.parametrize("bad,message", [
    ({"channel_order": "grb"}, r"channel_order: got 'grb', expected one of \['rgb', 'bgr', 'lab'\]"),
    ({"std": (0.2, 0.0, 0.2)}, "std: got"),
    ({"mean": (0.5, 0.5)}, "mean: got"),
    ({"input_size": (3, 224)}, "input_size: got"),
    ({"crop_pct": 1.5}, r"crop_pct: got 1.5, expected a number in \(0, 1\]"),
    ({"interpolation": "nearest"}, "interpolation: got 'nearest'"),
    ({"top1": 120.0}, "top1: got 120.0"),
    ({"top1_eval": "finetune"}, "top1_eval: got 'finetune'"),
    ({"colour": "rgb"}, r"unknown keys \['colour'\]; valid keys: \['channel_order'"),
])
def test_pretrained_cfg_refuses_bad_values(bad, message):
    with pytest.raises(ConfigError, match=message):
        PretrainedCfg.from_dict(bad)


def test_pretrained_cfg_for_configs_follows_the_trunk():
    from vissl_models.pretrained import default_pretrained_cfg

    lab = default_pretrained_cfg(vissl_models.load_config(shipped_config_path("colorization_alexnet")).MODEL)
    assert lab.channel_order == "lab" and lab.std == (1.0, 1.0, 1.0)
    xcit = default_pretrained_cfg(vissl_models.load_config(shipped_config_path("dino_xcit_s16")).MODEL)
    assert xcit.interpolation == "bicubic" and xcit.channel_order == "rgb"
    bgr = default_pretrained_cfg(vissl_models.load_config(shipped_config_path("regnet_y_64gf_bgr_trunk")).MODEL)
    assert bgr.channel_order == "rgb"  # the RegNet trunk flips RGB input to BGR itself


def test_pretrained_cfg_transform():
    from PIL import Image
    from torchvision.transforms import functional as TF

    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(300, 400, 3, generator=g) * 255).to(torch.uint8).numpy())
    x = PretrainedCfg().transform()(img)
    ref = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(img, 256), 224)), IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (3, 224, 224) and torch.equal(x, ref)

    bvlc = zoo.get("supervised_alexnet_bvlc_in1k").pretrained_cfg
    raw = TF.pil_to_tensor(TF.center_crop(TF.resize(img, [256, 256]), 227)).float()
    expected = raw - torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    torch.testing.assert_close(bvlc.transform()(img), expected, rtol=0, atol=1e-3)

    bgr = PretrainedCfg(channel_order="bgr", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).transform()(img)
    torch.testing.assert_close(bgr, TF.to_tensor(TF.center_crop(TF.resize(img, 256), 224)).flip(0))
    with pytest.raises(ConfigError, match="OpenCV Lab"):
        zoo.get("colorization_rn50_in1k_goyal19").pretrained_cfg.transform()
