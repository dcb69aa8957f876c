"""MODEL read once into typed options; config, width, memory and input errors name what is wrong."""

import pytest
import torch
from torch import nn

import vissl_models
from vissl_models import model as model_module
from vissl_models.config import ConfigError
from vissl_models.feature_extractor import FeatureExtractorModel
from vissl_models.model_helpers import FeatureEvalSettings, HeadSpec, ModelOptions
from vissl_models.trunks.base import FeatureInfo
from utils import image, model_config, registered_trunk, tiny_model

MLP_HEAD = {"PARAMS": [["mlp", {"dims": [512, 16]}]]}


class PooledTrunk(nn.Module):
    """A trunk that lists its features, as trunks following the trunk contract do."""

    def __init__(self, width=512):
        super().__init__()
        self.proj = nn.Conv2d(3, width, 1)
        self.feature_info = [FeatureInfo("res5", width, 32, "map"), FeatureInfo("res5avg", width, 32, "vector")]
        self.default_feature = "res5avg"
        self.built_on = self.proj.weight.device.type

    def forward(self, x, out_feat_keys=None):
        fmap = self.proj(x)
        feats = {"res5": fmap, "res5avg": fmap.mean(dim=(2, 3))}
        return [feats[name] for name in (out_feat_keys or ["res5avg"])]


# ----------------------------------------------------------------------------- config errors
BAD_MODELS = [
    (7, r"^MODEL: got 7, expected a mapping"),
    ({"HEAD": {"PARAMS": None}}, r"^MODEL\.HEAD\.PARAMS: got None, expected a list"),
    ({"HEAD": {"PARAMS": [7]}}, r"^MODEL\.HEAD\.PARAMS\[0\]: got 7, expected \[name, \{options\}\]"),
    ({"HEAD": {"PARAMS": [["mlp", 5]]}}, r"^MODEL\.HEAD\.PARAMS\[0\]: options of head 'mlp': got 5"),
    ({"HEAD": {"PARAMS": [["mlp", {"dims": [512, 8]}], [3, {}]]}}, r"^MODEL\.HEAD\.PARAMS\[1\]: got \[3, \{\}\]"),
    ({"HEAD": {"PARAMS": [[["mlp", {"dims": [512, 8]}], "siamese_concat_view"]]}},
     r"^MODEL\.HEAD\.PARAMS\[0\]\[1\]: got 'siamese_concat_view'"),
    ({"SINGLE_PASS_EVERY_CROP": "yes"}, r"^MODEL\.SINGLE_PASS_EVERY_CROP: got 'yes', expected true or false"),
    ({"_MODEL_INIT_SEED": "a"}, r"^MODEL\._MODEL_INIT_SEED: got 'a', expected an integer"),
    ({"MULTI_INPUT_HEAD_MAPPING": None}, r"^MODEL\.MULTI_INPUT_HEAD_MAPPING: got None"),
    ({"MULTI_INPUT_HEAD_MAPPING": [["images", "res5"]], "HEAD": MLP_HEAD},
     r"^MODEL\.MULTI_INPUT_HEAD_MAPPING\[0\] feat_names: got 'res5', expected a list of names"),
]


@pytest.mark.parametrize("cfg,message", BAD_MODELS, ids=[str(i) for i in range(len(BAD_MODELS))])
def test_bad_model_configs_raise_config_error_naming_the_key_before_building_anything(cfg, message):
    rng = torch.get_rng_state()
    with pytest.raises(ConfigError, match=message):
        vissl_models.build_model(cfg)
    assert torch.equal(torch.get_rng_state(), rng), "nothing was built (no weights drawn)"


def test_options_are_typed_and_parsed_once():
    cfg = model_config(
        TRUNK={"NAME": "resnet", "RESNETS": {"DEPTH": 18}}, SINGLE_PASS_EVERY_CROP=True, _MODEL_INIT_SEED=3,
        HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}], [["mlp", {"dims": [512, 8]}], ["identity"]]]},
    )
    options = ModelOptions.from_config(cfg)
    assert options.trunk_name == "resnet" and options.single_pass_every_crop and options.init_seed == 3
    assert options.heads[0] == HeadSpec("mlp", {"dims": [512, 16]}, "MODEL.HEAD.PARAMS[0]")
    assert [s.key for s in options.heads[1]] == ["MODEL.HEAD.PARAMS[1][0]", "MODEL.HEAD.PARAMS[1][1]"]
    assert isinstance(options.eval_settings, FeatureEvalSettings) and not options.input_mapping


class RaisingConfig(dict):
    def __getattr__(self, name):
        raise AssertionError(f"model_config.{name} read after construction")

    def __getitem__(self, name):
        raise AssertionError(f"model_config[{name!r}] read after construction")

    get = __getitem__


@pytest.mark.parametrize("single_pass", [False, True])
def test_forward_never_reads_the_config(single_pass):
    model = tiny_model(HEAD=MLP_HEAD, SINGLE_PASS_EVERY_CROP=single_pass).eval()
    calls = []
    model.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.model_config = RaisingConfig()
    with torch.no_grad():
        out = model([image(2, 32), image(2, 32), image(3, 16)])
        model(image(2, 32))
        model.get_features(image(1, 32))
    assert out[0].shape == (7, 16)
    assert calls == ([2, 2, 3] if single_pass else [4, 3]) + [2, 1]


# ----------------------------------------------------------------------------- feature extractor
def test_feature_extractor_takes_a_built_trunk():
    trunk = PooledTrunk(8)
    settings = FeatureEvalSettings(pool_ops=(("res5", "AdaptiveAvgPool2d", ((1, 1),)),))
    extractor = FeatureExtractorModel(trunk, settings)
    assert extractor.base_model is trunk and not any(p.requires_grad for p in trunk.parameters())
    assert extractor(image(2, 8), ["res5"])[0].shape == (2, 8)
    with pytest.raises(TypeError, match="built trunk module"):
        FeatureExtractorModel(model_config(), settings)


# ----------------------------------------------------------------------------- head widths
def test_head_width_is_checked_against_the_trunk_feature():
    with registered_trunk("pooled_512", lambda cfg, name: PooledTrunk(512)):
        with pytest.raises(ConfigError, match=r"MODEL\.HEAD\.PARAMS\[0\]: head 0 \('mlp'\) expects 2048 input "
                                              r"channels, but feature 'res5avg' of this trunk \('pooled_512'\) "
                                              r"gives 512"):
            tiny_model(TRUNK={"NAME": "pooled_512"}, HEAD={"PARAMS": [["mlp", {"dims": [2048, 128]}]]})
        with pytest.raises(ConfigError, match=r"head 0 \('swav_head'\) expects 256 .* 'res5avg' .* gives 512"):
            tiny_model(TRUNK={"NAME": "pooled_512"},
                       HEAD={"PARAMS": [[["swav_head", {"dims": [256, 8], "use_bn": False, "num_clusters": 4}],
                                         ["identity"]]]})
        model = tiny_model(TRUNK={"NAME": "pooled_512"}, HEAD={"PARAMS": [["mlp", {"dims": [512, 8]}]]})
        assert model(image(2, 8))[0].shape == (2, 8)


def test_head_width_is_checked_for_each_mapped_input():
    mapping = [["images", ["res5avg"]], ["patches", ["res5"]]]
    heads = {"PARAMS": [["mlp", {"dims": [512, 8]}], ["eval_mlp", {"in_channels": 64, "dims": [64, 4]}]]}
    with registered_trunk("pooled_512", lambda cfg, name: PooledTrunk(512)):
        with pytest.raises(ConfigError, match=r"PARAMS\[1\]: head 1 \('eval_mlp'\) expects 64 .* 'res5' .* gives 512"):
            tiny_model(TRUNK={"NAME": "pooled_512"}, MULTI_INPUT_HEAD_MAPPING=mapping, HEAD=heads)


def test_trunks_without_feature_info_are_not_checked():
    class Unlisted(PooledTrunk):
        def __init__(self):
            super().__init__(512)
            del self.feature_info

    with registered_trunk("unlisted", lambda cfg, name: Unlisted()):
        model = tiny_model(TRUNK={"NAME": "unlisted"}, HEAD={"PARAMS": [["mlp", {"dims": [2048, 8]}]]}).eval()
    with pytest.raises(RuntimeError):  # the mismatch only shows at forward
        model(image(1, 8))


def test_a_real_trunk_reports_the_mismatch():
    with pytest.raises(ConfigError, match=r"head 0 \('mlp'\) expects 2048 input channels, but feature 'res5avg' of "
                                          r"this trunk \('resnet'\) gives 512"):
        tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [2048, 8]}]]})


# ----------------------------------------------------------------------------- memory
def test_a_model_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    built_on = []

    def builder(cfg, name):
        trunk = PooledTrunk(64)
        built_on.append(trunk.built_on)
        return trunk

    monkeypatch.setattr(model_module, "available_memory_bytes", lambda: 1000)
    cfg = {"TRUNK": {"NAME": "pooled_64"}, "HEAD": {"PARAMS": [["mlp", {"dims": [64, 8]}]]}}
    with registered_trunk("pooled_64", builder):
        rng = torch.get_rng_state()
        with pytest.raises(model_module.ModelTooLargeError, match=r"take 0\.0 GiB \(3104 bytes\) but this machine "
                                                                  r"has 0\.0 GiB available.*check_memory=False"):
            vissl_models.build_model(cfg)
        assert built_on == ["meta"] and torch.equal(torch.get_rng_state(), rng)
        model = vissl_models.build_model(cfg, check_memory=False)
    assert built_on == ["meta", "cpu"] and model(image(2, 4))[0].shape == (2, 8)
    assert isinstance(model_module.ModelTooLargeError("x"), (ConfigError, MemoryError))


def test_the_meta_pass_does_not_change_the_weights():
    torch.manual_seed(5)
    checked = vissl_models.build_model(model_config(TRUNK={"RESNETS": {"DEPTH": 18}}, HEAD=MLP_HEAD))
    torch.manual_seed(5)
    unchecked = vissl_models.build_model(model_config(TRUNK={"RESNETS": {"DEPTH": 18}}, HEAD=MLP_HEAD),
                                         check_memory=False)
    for (ka, va), (kb, vb) in zip(checked.state_dict().items(), unchecked.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


# ----------------------------------------------------------------------------- forward inputs
def test_a_dict_without_any_mapped_input_raises():
    model = tiny_model(MULTI_INPUT_HEAD_MAPPING=[["images", ["res5avg"]], ["patches", ["res5avg"]]],
                       HEAD={"PARAMS": [["mlp", {"dims": [512, 4]}], ["mlp", {"dims": [512, 4]}]]}).eval()
    with pytest.raises(ValueError, match=r"none of this model's inputs \['images', 'patches'\].*keys are \['img'\]"):
        model({"img": image(2, 32)})
    assert len(model({"patches": image(2, 32)})) == 1


@pytest.mark.parametrize("trunk", [
    {"NAME": "resnet", "RESNETS": {"DEPTH": 18}},
    {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 1,
                                                            "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32}},
], ids=["resnet", "vit"])
def test_an_image_without_batch_dimension_says_what_is_expected(trunk):
    model = tiny_model(TRUNK=trunk, HEAD={"PARAMS": [["identity"]]}).eval()
    with pytest.raises(ValueError, match=r"the input must be an N x C x H x W image batch, got shape \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"multi-crop input 1 must be an N x C x H x W image batch"):
        model([image(1, 32), torch.randn(3, 32, 32)])
