"""Checkpoints: safe loading, layouts, WEIGHTS_INIT, bad files, round trips."""

import os
import pickle

import numpy as np
import pytest
import torch

import vissl_models
from vissl_models.checkpoint import CheckpointError, load_checkpoint, safe_torch_load
from vissl_models.checkpoint.load import StateMismatchError
from utils import assert_same_outputs, image, tiny_model

MLP_HEAD = {"PARAMS": [["mlp", {"dims": [512, 16]}]]}


def vissl_checkpoint(model, extra=True):
    """A checkpoint in the layout VISSL's trainer writes (consolidated classy state)."""
    state = model.get_classy_state(deep_copy=True)
    ckpt = {"classy_state_dict": {"base_model": state}, "type": "consolidated"}
    if extra:
        ckpt["classy_state_dict"].update({
            "train": True, "phase_idx": 3, "train_phase_idx": 1, "num_updates": 1250,
            "optimizer": {"param_groups": [{"lr": 0.1, "momentum": 0.9}], "state": {}},
            "meters": {"accuracy": np.array([0.5, 0.25]), "top1": np.float64(0.5)},
        })
    return ckpt


def save(tmp_path, obj, name="ckpt.torch"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


@pytest.fixture
def model():
    return tiny_model(0, HEAD=MLP_HEAD).eval()


def test_vissl_consolidated_round_trip(tmp_path, model):
    path = save(tmp_path, vissl_checkpoint(model))
    loaded = load_checkpoint(path)
    assert loaded.layout == "vissl_classy"
    assert set(loaded.trunk) == set(model.trunk.state_dict())
    other = tiny_model(1, HEAD=MLP_HEAD).eval()
    report = other.load_checkpoint(path)
    assert report.ok
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(model(x), other(x))


@pytest.mark.parametrize("layout,wrap", [
    ("model_state_dict", lambda sd: {"model_state_dict": sd}),
    ("state_dict", lambda sd: sd),
    ("state_dict", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
])
def test_flat_layouts(tmp_path, model, layout, wrap):
    loaded = load_checkpoint(save(tmp_path, wrap(model.state_dict())))
    assert loaded.layout == layout
    assert set(loaded.trunk) == set(model.trunk.state_dict())
    assert set(loaded.heads) == set(model.heads.state_dict())


def test_classy_state_layout(tmp_path, model):
    loaded = load_checkpoint(save(tmp_path, model.get_classy_state()))
    assert loaded.layout == "classy_state" and loaded.heads.keys() == model.heads.state_dict().keys()


def test_missing_empty_truncated_and_foreign_files(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="nope.torch"):
        load_checkpoint(str(tmp_path / "nope.torch"))
    empty = tmp_path / "empty.torch"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.torch.*empty"):
        load_checkpoint(str(empty))
    good = save(tmp_path, vissl_checkpoint(model))
    truncated = tmp_path / "truncated.torch"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated.torch"):
        load_checkpoint(str(truncated))
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_checkpoint(str(text))
    with pytest.raises(CheckpointError, match="no model weights"):
        load_checkpoint(save(tmp_path, {"epoch": 3}, "meta.torch"))


class _RunsCommandOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_runs_nothing(tmp_path, model):
    marker = tmp_path / "pwned"
    ckpt = vissl_checkpoint(model)
    ckpt["classy_state_dict"]["hooks"] = _RunsCommandOnLoad(marker)
    path = save(tmp_path, ckpt)
    # The hook state is not model weights: it becomes an inert placeholder naming what it stood for.
    loaded = load_checkpoint(path)
    assert loaded.placeholders == [f"classy_state_dict.hooks: {os.system.__module__}.system"]
    assert all(torch.equal(loaded.trunk[k], v) for k, v in model.trunk.state_dict().items())
    other = tiny_model(1, HEAD=MLP_HEAD).eval()
    assert other.load_weights(loaded).ok
    assert not marker.exists()
    # Refused outright when placeholders are not allowed.
    with pytest.raises(CheckpointError, match="refused.*nothing from it was executed"):
        safe_torch_load(path, allow_placeholders=False)
    assert not marker.exists()
    # The same object as a plain pickle file (not torch's format) is not a checkpoint; nothing runs.
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"state_dict": _RunsCommandOnLoad(marker)}))
    with pytest.raises(CheckpointError, match="raw.pkl"):
        load_checkpoint(str(raw))
    assert not marker.exists()


# ----------------------------------------------------------------------------- WEIGHTS_INIT
def built_with_weights(path, seed=1, **weights_init):
    torch.manual_seed(seed)
    cfg = vissl_models.load_config({"MODEL": {
        "TRUNK": {"RESNETS": {"DEPTH": 18}}, "HEAD": MLP_HEAD,
        "WEIGHTS_INIT": {"PARAMS_FILE": path, **weights_init},
    }}).MODEL
    return vissl_models.build_model(cfg, load_weights=True)


def test_weights_init_from_vissl_checkpoint(tmp_path, model):
    path = save(tmp_path, vissl_checkpoint(model))
    other = built_with_weights(path).eval()
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(model(x), other(x))
    report = other.weights_init_report
    assert not report.missing and all("num_batches_tracked" in k for k in report.skipped)


def test_weights_init_not_applied_unless_asked(tmp_path):
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"RESNETS": {"DEPTH": 18}}, "HEAD": MLP_HEAD,
                                              "WEIGHTS_INIT": {"PARAMS_FILE": "specify the model weights"}}}).MODEL
    vissl_models.build_model(cfg)  # the original's composed configs carry placeholders like this one
    with pytest.raises(FileNotFoundError, match="specify the model weights"):
        vissl_models.build_model(cfg, load_weights=True)


def test_weights_init_torchvision_resnet_with_append_prefix(tmp_path):
    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.resnet18().eval()
    path = save(tmp_path, tv.state_dict(), "resnet18_tv.pth")
    ours = built_with_weights(path, STATE_DICT_KEY_NAME="", APPEND_PREFIX="trunk._feature_blocks.").eval()
    report = ours.weights_init_report
    assert report.unexpected == ["trunk._feature_blocks.fc.weight", "trunk._feature_blocks.fc.bias"]
    assert [k for k in report.missing if k.startswith("trunk.")] == []
    x = image(2, 32)
    with torch.no_grad():
        expected = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
            tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
        (ours_feat,) = ours.trunk(x)
    torch.testing.assert_close(ours_feat, expected, rtol=1e-4, atol=1e-5)


def test_weights_init_remove_prefix_and_skip_layers(tmp_path, model):
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    state["module.heads.0.clf.0.weight"].fill_(7.0)  # heads start from a fixed seed: make them differ
    path = save(tmp_path, {"model": state}, "prefixed.torch")
    other = built_with_weights(path, STATE_DICT_KEY_NAME="model", REMOVE_PREFIX="module.",
                               SKIP_LAYERS=["num_batches_tracked", "heads."])
    torch.testing.assert_close(other.trunk._feature_blocks.conv1.weight, model.trunk._feature_blocks.conv1.weight)
    assert not (other.heads[0].clf[0].weight == 7.0).any()
    assert "heads.0.clf.0.weight" in other.weights_init_report.skipped


def test_weights_init_without_trunk_or_heads_prefix_is_refused(tmp_path, model):
    path = save(tmp_path, model.trunk.state_dict(), "bare_trunk.torch")
    with pytest.raises(CheckpointError, match="APPEND_PREFIX"):
        built_with_weights(path, STATE_DICT_KEY_NAME="")
    with pytest.raises(CheckpointError, match="no key 'classy_state_dict'"):
        built_with_weights(path)


def test_weights_init_shape_mismatch_raises_and_head_check_can_be_relaxed(tmp_path):
    src = tiny_model(0, HEAD={"PARAMS": [["mlp", {"dims": [512, 8]}]]})
    path = save(tmp_path, vissl_checkpoint(src))
    with pytest.raises(ValueError, match=r"heads\.0\.clf\.0\.weight: checkpoint \(8, 512\) vs model \(16, 512\)"):
        built_with_weights(path)
    torch.manual_seed(1)
    cfg = vissl_models.load_config({"MODEL": {
        "TRUNK": {"RESNETS": {"DEPTH": 18}}, "HEAD": MLP_HEAD,
        "FEATURE_EVAL_SETTINGS": {"ASSERT_HEAD_LAYER_SHAPE_INIT": False},
        "WEIGHTS_INIT": {"PARAMS_FILE": path}}}).MODEL
    model = vissl_models.build_model(cfg, load_weights=True)
    assert model.weights_init_report.shape_mismatch_skipped == ["heads.0.clf.0.weight", "heads.0.clf.0.bias"]


def test_weights_init_into_linear_eval_model(tmp_path, model):
    """A pre-training checkpoint loads into a feature-extractor model (trunk.base_model.*); heads do not."""
    ckpt = vissl_checkpoint(model)
    ckpt["classy_state_dict"]["base_model"]["model"]["heads"]["0.clf.0.weight"].fill_(7.0)
    path = save(tmp_path, ckpt)
    torch.manual_seed(1)
    cfg = vissl_models.load_config({"MODEL": {
        "TRUNK": {"RESNETS": {"DEPTH": 18}},
        "FEATURE_EVAL_SETTINGS": {"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True,
                                  "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res5avg", ["Identity", []]]]},
        "HEAD": {"PARAMS": [["mlp", {"dims": [512, 16]}]]},
        "WEIGHTS_INIT": {"PARAMS_FILE": path}}}).MODEL
    lin = vissl_models.build_model(cfg, load_weights=True)
    torch.testing.assert_close(lin.trunk.base_model._feature_blocks.conv1.weight,
                               model.trunk._feature_blocks.conv1.weight)
    assert not (lin.heads[0].clf[0].weight == 7.0).any()
    assert "heads.0.clf.0.weight" in lin.weights_init_report.skipped


# ----------------------------------------------------------------------------- load_weights
def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_strict_round_trip_from_path_loaded_and_dict(tmp_path, model):
    path = save(tmp_path, vissl_checkpoint(model))
    x = image(2, 32)
    for source in (path, load_checkpoint(path), vissl_checkpoint(model)):
        other = tiny_model(1, HEAD=MLP_HEAD).eval()
        report = other.load_weights(source)
        assert report.ok and len(report.loaded) == len(other.state_dict()) and "vissl_classy" in report.checkpoint
        with torch.no_grad():
            assert_same_outputs(model(x), other(x))


def test_load_weights_strict_reports_every_problem_and_changes_nothing(tmp_path, model):
    ckpt = vissl_checkpoint(model)
    state = ckpt["classy_state_dict"]["base_model"]["model"]
    del state["trunk"]["_feature_blocks.layer1.0.bn1.running_var"]
    state["trunk"]["_feature_blocks.extra.weight"] = torch.zeros(2)
    state["heads"]["0.clf.0.weight"] = torch.zeros(8, 512)
    path = save(tmp_path, ckpt)
    other = tiny_model(1, HEAD=MLP_HEAD)
    before = snapshot(other)
    with pytest.raises(StateMismatchError, match="nothing was loaded") as info:
        other.load_weights(path)
    report = info.value.report
    assert report.missing == ["trunk._feature_blocks.layer1.0.bn1.running_var"]
    assert report.unexpected == ["trunk._feature_blocks.extra.weight"]
    assert report.shape_mismatch == ["heads.0.clf.0.weight: checkpoint (8, 512) vs model (16, 512)"]
    assert unchanged(other, before)
    # Not strict: what fits is loaded, the rest is reported.
    report = other.load_weights(path, strict=False)
    assert not report.ok and report.shape_mismatch_skipped == ["heads.0.clf.0.weight"]
    torch.testing.assert_close(other.trunk._feature_blocks.conv1.weight, model.trunk._feature_blocks.conv1.weight)
    assert torch.equal(other.heads[0].clf[0].weight, before["heads.0.clf.0.weight"])


def test_load_weights_skip_leaves_keys_alone_on_purpose(tmp_path, model):
    ckpt = vissl_checkpoint(model)
    ckpt["classy_state_dict"]["base_model"]["model"]["heads"] = {"0.clf.0.weight": torch.zeros(3, 3)}
    path = save(tmp_path, ckpt)
    other = tiny_model(1, HEAD=MLP_HEAD)
    before = snapshot(other)
    report = other.load_weights(path, skip=("heads.",))
    assert report.ok and set(report.skipped) == {"heads.0.clf.0.weight", "heads.0.clf.0.bias"}
    assert torch.equal(other.heads[0].clf[0].weight, before["heads.0.clf.0.weight"])
    torch.testing.assert_close(other.trunk._feature_blocks.conv1.weight, model.trunk._feature_blocks.conv1.weight)


def test_load_weights_into_a_linear_eval_model_adds_the_base_model_prefix(tmp_path, model):
    path = save(tmp_path, vissl_checkpoint(model))
    cfg = vissl_models.load_config({"MODEL": {
        "TRUNK": {"RESNETS": {"DEPTH": 18}},
        "FEATURE_EVAL_SETTINGS": {"EVAL_MODE_ON": True, "FREEZE_TRUNK_ONLY": True,
                                  "LINEAR_EVAL_FEAT_POOL_OPS_MAP": [["res5avg", ["Identity", []]]]},
        "HEAD": {"PARAMS": [["mlp", {"dims": [512, 10]}]]}}}).MODEL
    lin = vissl_models.build_model(cfg)
    report = lin.load_weights(path, skip=("heads.",))
    assert report.ok and all(k.startswith("trunk.base_model.") for k in report.loaded)
    torch.testing.assert_close(lin.trunk.base_model._feature_blocks.conv1.weight, model.trunk._feature_blocks.conv1.weight)


def test_bad_files_name_the_file_and_leave_the_model_alone(tmp_path, model):
    good = save(tmp_path, vissl_checkpoint(model))
    truncated = tmp_path / "truncated.torch"
    truncated.write_bytes(open(good, "rb").read()[: os.path.getsize(good) // 2])
    empty = tmp_path / "empty.torch"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    other = tiny_model(1, HEAD=MLP_HEAD)
    before = snapshot(other)
    for path, error, what in ((tmp_path / "nope.torch", FileNotFoundError, "not found"),
                              (empty, CheckpointError, "empty"),
                              (truncated, CheckpointError, "truncated"),
                              (notes, CheckpointError, "not a readable PyTorch checkpoint")):
        with pytest.raises(error, match=f"{path.name}.*{what}"):
            other.load_weights(str(path))
        assert unchanged(other, before)
