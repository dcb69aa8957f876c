"""BaseSSLMultiInputOutputModel: forward paths, feature-eval modes, freezing, classy state."""

import pytest
import torch
from torch import nn

import vissl_models
from vissl_models.config import ConfigError
from vissl_models.feature_extractor import FeatureExtractorModel
from utils import assert_same_outputs, image, registered_trunk, tiny_model

MLP_HEAD = {"PARAMS": [["mlp", {"dims": [512, 16]}]]}


def count_trunk_calls(model):
    calls = []
    handle = model.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    return calls, handle


# ----------------------------------------------------------------------------- single input
def test_several_heads_on_one_feature_run_as_a_chain_like_the_original():
    model = tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}], ["mlp", {"dims": [16, 8]}]]}).eval()
    out = model(image(2, 32))
    assert [tuple(o.shape) for o in out] == [(2, 8)]
    assert model.head_names == ["mlp", "mlp"]


def test_single_head_still_returns_a_list():
    out = tiny_model(HEAD=MLP_HEAD).eval()(image(2, 32))
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == (2, 16)


def test_head_chain_gives_one_output():
    model = tiny_model(HEAD={"PARAMS": [[
        ["mlp", {"dims": [512, 8], "use_bn": False, "use_relu": False}],
        ["siamese_concat_view", {"num_towers": 3}],
        ["mlp", {"dims": [24, 4]}],
    ]]}).eval()
    out = model(image(6, 32))
    assert len(out) == 1 and out[0].shape == (2, 4)
    assert model.head_names == ["mlp->siamese_concat_view->mlp"]


def test_heads_and_features_that_do_not_pair_raise_with_both_counts():
    model = tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}], ["mlp", {"dims": [512, 8]}]]}).eval()
    with pytest.raises(ValueError, match=r"3 trunk features cannot go to 2 heads"):
        model.heads_forward([torch.zeros(1, 512)] * 3, model.heads)


def test_bad_input_type_is_a_clear_error():
    with pytest.raises(TypeError, match="tensor"):
        tiny_model(HEAD=MLP_HEAD)("not a tensor")


# ----------------------------------------------------------------------------- multi-crop
def test_multi_crop_batches_equal_sizes_and_keeps_crop_order():
    model = tiny_model(HEAD=MLP_HEAD).eval()
    crops = [image(1, 32), image(1, 32), image(1, 16), image(1, 16), image(1, 16), image(1, 32)]
    calls, handle = count_trunk_calls(model)
    with torch.no_grad():
        out = model(crops)
    handle.remove()
    assert [c[0] for c in calls] == [2, 3, 1]  # runs of equal size share a pass
    with torch.no_grad():
        feats = [model.trunk(c)[0] for c in crops]
        expected = model.heads[0](torch.cat(feats))
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_single_pass_every_crop_gives_the_same_outputs():
    crops = [image(1, 32), image(1, 32), image(1, 16)]
    a = tiny_model(HEAD=MLP_HEAD).eval()
    b = tiny_model(HEAD=MLP_HEAD, SINGLE_PASS_EVERY_CROP=True).eval()
    b.load_state_dict(a.state_dict())
    calls, handle = count_trunk_calls(b)
    with torch.no_grad():
        assert_same_outputs(a(crops), b(crops))
    handle.remove()
    assert len(calls) == 3


def test_swav_multi_crop_output_nesting():
    model = tiny_model(HEAD={"PARAMS": [["swav_head", {"dims": [512, 32, 8], "use_bn": True, "num_clusters": [10]}]]})
    out = model.eval()([image(1, 32), image(1, 32), image(1, 16)])
    assert len(out) == 1 and [tuple(t.shape) for t in out[0]] == [(3, 8), (3, 10)]
    assert model.is_clustering_model()


# ----------------------------------------------------------------------------- multi-input
PIRL = dict(
    MULTI_INPUT_HEAD_MAPPING=[["patches", ["flatten"]], ["images", ["res5avg"]]],
    HEAD={"PARAMS": [
        [["mlp", {"dims": [512, 8]}], ["siamese_concat_view", {"num_towers": 3}], ["mlp", {"dims": [24, 4]}]],
        [["mlp", {"dims": [512, 4]}]],
    ]},
)


def test_multi_input_pirl_one_output_per_input():
    model = tiny_model(**PIRL).eval()
    out = model({"images": image(2, 32), "patches": image(6, 16)})
    assert [tuple(o.shape) for o in out] == [(2, 4), (2, 4)]


def test_multi_input_skips_absent_inputs_like_the_original():
    model = tiny_model(**PIRL).eval()
    out = model({"images": image(2, 32)})
    assert len(out) == 1 and out[0].shape == (2, 4)


def test_multi_input_needs_a_dict():
    with pytest.raises(TypeError, match="dict"):
        tiny_model(**PIRL)(image(2, 32))


def test_multi_input_duplicate_key_raises():
    with pytest.raises(ConfigError, match=r"MULTI_INPUT_HEAD_MAPPING\[1\]: input 'images' is mapped a second time"):
        tiny_model(MULTI_INPUT_HEAD_MAPPING=[["images", ["flatten"]], ["images", ["res5"]]],
                   HEAD={"PARAMS": [["mlp", {"dims": [512, 4]}], ["mlp", {"dims": [512, 4]}]]})


def test_multi_input_head_index_out_of_range_raises():
    with pytest.raises(ConfigError, match="head index 3"):
        tiny_model(MULTI_INPUT_HEAD_MAPPING=[["images", {"feat_names": ["flatten"], "head_index": 3}]],
                   HEAD=MLP_HEAD)


class MaskRecordingTrunk(nn.Module):
    """A trunk that records the keyword arguments it receives (additional_keys)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.seen = []

    def forward(self, x, out_feat_keys=None, mask=None):
        self.seen.append(mask)
        return [self.proj(x.mean(dim=(2, 3)))]


def test_multi_input_dict_form_passes_additional_keys_and_shares_a_head():
    with registered_trunk("mask_recorder", lambda cfg, name: MaskRecordingTrunk()):
        model = tiny_model(
            TRUNK={"NAME": "mask_recorder"},
            MULTI_INPUT_HEAD_MAPPING=[
                ["global_views", {"feat_names": ["last"], "additional_keys": ["mask"]}],
                ["local_views", {"feat_names": ["last"]}],
            ],
            HEAD={"PARAMS": [["mlp", {"dims": [4, 2]}]]},
        ).eval()
        mask = torch.ones(2, 3, 3, dtype=torch.bool)
        out = model({"global_views": image(2, 8), "local_views": image(5, 4), "mask": mask})
    assert [tuple(o.shape) for o in out] == [(2, 2), (5, 2)]
    assert model.trunk.seen[0] is mask and model.trunk.seen[1] is None


# ----------------------------------------------------------------------------- feature eval
POOL_OPS = [["res4", ["AdaptiveAvgPool2d", [[2, 2]]]], ["res5", ["AvgPool2d", [[1, 1], 1, 0]]],
            ["res5avg", ["Identity", []]]]
EVAL_HEADS = {"PARAMS": [["eval_mlp", {"in_channels": 256, "dims": [1024, 10]}],
                         ["eval_mlp", {"in_channels": 512, "dims": [512, 10]}],
                         ["mlp", {"dims": [512, 10]}]]}


def eval_model(**settings):
    fes = {"EVAL_MODE_ON": True, "SHOULD_FLATTEN_FEATS": False, "LINEAR_EVAL_FEAT_POOL_OPS_MAP": POOL_OPS, **settings}
    return tiny_model(FEATURE_EVAL_SETTINGS=fes, HEAD=EVAL_HEADS)


def test_freeze_trunk_only_builds_a_frozen_feature_extractor():
    model = eval_model(FREEZE_TRUNK_ONLY=True)
    assert isinstance(model.trunk, FeatureExtractorModel) and model.eval_mode
    assert all(k.startswith(("trunk.base_model.", "heads.")) for k in model.state_dict())
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    model.train()
    assert not model.trunk.base_model.training and model.heads.training
    out = model(image(2, 32))
    assert [tuple(o.shape) for o in out] == [(2, 10)] * 3


def test_pooled_features_flatten_or_not():
    feats = eval_model(FREEZE_TRUNK_ONLY=True, SHOULD_FLATTEN_FEATS=True).eval().get_features(image(2, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 1024), (2, 512), (2, 512)]
    feats = eval_model(FREEZE_TRUNK_ONLY=True).eval().get_features(image(2, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 256, 2, 2), (2, 512, 1, 1), (2, 512, 1, 1)]


def test_freeze_trunk_and_head_freezes_everything():
    model = eval_model(FREEZE_TRUNK_AND_HEAD=True)
    assert model.is_fully_frozen_model()


def test_extract_trunk_features_only_skips_heads_but_builds_them():
    model = eval_model(FREEZE_TRUNK_ONLY=True, EXTRACT_TRUNK_FEATURES_ONLY=True).eval()
    assert any(k.startswith("heads.") for k in model.state_dict())
    out = model(image(2, 32))
    assert [tuple(o.shape) for o in out] == [(2, 256, 2, 2), (2, 512, 1, 1), (2, 512, 1, 1)]


def test_extract_without_freezing_is_a_plain_trunk_as_in_the_original():
    model = tiny_model(FEATURE_EVAL_SETTINGS={"EVAL_MODE_ON": True, "EXTRACT_TRUNK_FEATURES_ONLY": True,
                                              "LINEAR_EVAL_FEAT_POOL_OPS_MAP": POOL_OPS}, HEAD=MLP_HEAD).eval()
    assert not isinstance(model.trunk, FeatureExtractorModel)
    (feat,) = model(image(2, 32))
    assert feat.shape == (2, 512)


def test_pool_ops_must_match_features():
    model = eval_model(FREEZE_TRUNK_ONLY=True)
    with pytest.raises(ValueError, match="3 pooling ops"):
        model.trunk(image(1, 32), ["res5"])


def test_unknown_pool_op_is_a_config_error():
    with pytest.raises(ConfigError, match="AvgPool3d"):
        tiny_model(FEATURE_EVAL_SETTINGS={"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True,
                                          "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res5", ["AvgPool3d", [1]]]]})


# ----------------------------------------------------------------------------- freezing
def test_freeze_methods():
    model = tiny_model(HEAD=MLP_HEAD)
    assert not model.is_fully_frozen_model()
    model.freeze_head()
    assert not any(p.requires_grad for p in model.heads.parameters())
    assert all(p.requires_grad for p in model.trunk.parameters())
    model.freeze_trunk()
    assert model.is_fully_frozen_model()
    model = tiny_model(HEAD=MLP_HEAD)
    model.freeze_head_and_trunk()
    assert model.is_fully_frozen_model()


# ----------------------------------------------------------------------------- classy state
def test_classy_state_round_trip_gives_identical_outputs():
    a, b = tiny_model(0, HEAD=MLP_HEAD).eval(), tiny_model(1, HEAD=MLP_HEAD).eval()
    x = image(2, 32)
    state = a.get_classy_state(deep_copy=True)
    assert set(state) == {"model"} and set(state["model"]) == {"trunk", "heads"}
    assert "_feature_blocks.conv1.weight" in state["model"]["trunk"] and "0.clf.0.weight" in state["model"]["heads"]
    report = b.set_classy_state(state)
    assert report.ok
    with torch.no_grad():
        assert_same_outputs(a(x), b(x))


def test_deep_copy_state_is_independent():
    model = tiny_model(HEAD=MLP_HEAD)
    state = model.get_classy_state(deep_copy=True)
    state["model"]["heads"]["0.clf.0.weight"].zero_()
    assert model.heads[0].clf[0].weight.abs().sum() > 0


def test_partial_heads_load_and_are_reported():
    a, b = tiny_model(0, HEAD=MLP_HEAD), tiny_model(1, HEAD=MLP_HEAD)
    state = a.get_classy_state(deep_copy=True)
    del state["model"]["heads"]["0.clf.0.bias"]
    report = b.set_classy_state(state)
    assert report.missing == ["heads.0.clf.0.bias"]
    torch.testing.assert_close(b.heads[0].clf[0].weight, a.heads[0].clf[0].weight)


def test_shape_mismatch_raises_naming_the_key_and_changes_nothing():
    a = tiny_model(0, HEAD={"PARAMS": [["mlp", {"dims": [512, 8]}]]})
    b = tiny_model(1, HEAD=MLP_HEAD)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match=r"0\.clf\.0\.weight: checkpoint \(8, 512\) vs model \(16, 512\)"):
        b.set_classy_state(a.get_classy_state())
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())


def test_trunk_keys_must_match():
    model = tiny_model(HEAD=MLP_HEAD)
    state = model.get_classy_state(deep_copy=True)
    state["model"]["trunk"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra.weight"):
        model.set_classy_state(state)


# ----------------------------------------------------------------------------- helpers
def test_bgr_and_lab_inputs():
    rgb = tiny_model(HEAD=MLP_HEAD).eval()
    bgr = tiny_model(HEAD=MLP_HEAD, INPUT_TYPE="bgr").eval()
    bgr.load_state_dict(rgb.state_dict())
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(rgb(x.flip(1)), bgr(x))
    lab = tiny_model(HEAD=MLP_HEAD, INPUT_TYPE="lab").eval()
    assert lab.trunk._feature_blocks.conv1.in_channels == 1
    assert lab(image(2, 32))[0].shape == (2, 16)


def test_output_nan_check():
    from vissl_models.layers import model_output_has_nan

    assert not model_output_has_nan([[torch.zeros(2)], torch.ones(3)])
    assert model_output_has_nan([[torch.zeros(2), torch.tensor([float("nan")])]])
    assert model_output_has_nan({"a": torch.tensor([float("inf")])})


def test_sync_batchnorm_conversion():
    model = tiny_model(HEAD=MLP_HEAD, SYNC_BN_CONFIG={"CONVERT_BN_TO_SYNC_BN": True, "SYNC_BN_TYPE": "apex"})
    with pytest.warns(UserWarning, match="apex"):
        model.convert_sync_batchnorm()
    assert isinstance(model.trunk._feature_blocks.bn1, nn.SyncBatchNorm)
    with pytest.warns(UserWarning, match="CONVERT_BN_TO_SYNC_BN is false"):
        untouched = tiny_model(HEAD=MLP_HEAD).convert_sync_batchnorm()
    assert type(untouched.trunk._feature_blocks.bn1) is nn.BatchNorm2d


def test_activation_checkpointing_matches_plain_training_step():
    plain = tiny_model(HEAD=MLP_HEAD)
    ckpt = tiny_model(HEAD=MLP_HEAD, ACTIVATION_CHECKPOINTING={
        "USE_ACTIVATION_CHECKPOINTING": True, "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 4})
    ckpt.load_state_dict(plain.state_dict())
    x = image(4, 32)
    for m in (plain, ckpt):
        m.train()
        m(x)[0].pow(2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    # Recomputation must not update BatchNorm statistics a second time.
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


def test_build_model_uses_the_model_registry():
    @vissl_models.register_model("tiny_custom_model")
    class Custom(vissl_models.BaseSSLMultiInputOutputModel):
        pass

    try:
        model = vissl_models.build_model({"BASE_MODEL_NAME": "tiny_custom_model", **vissl_models.load_config(
            {"MODEL": {"TRUNK": {"RESNETS": {"DEPTH": 18}}, "HEAD": MLP_HEAD}}).MODEL,
            "BASE_MODEL_NAME": "tiny_custom_model"})
        assert type(model) is Custom
    finally:
        from vissl_models.registry import MODELS

        MODELS.unregister("tiny_custom_model")
    with pytest.raises(KeyError, match="multi_input_output_model"):
        vissl_models.build_model({"BASE_MODEL_NAME": "nope"})
