"""Loading never executes code from a checkpoint; non-model objects become inert placeholders."""

import argparse
import copyreg
import os
import pickle

import numpy as np
import pytest
import torch

from vissl_models.checkpoint import CheckpointError, load_checkpoint, safe_torch_load
from vissl_models.checkpoint.safe_pickle import RESTRICTED_PICKLE, Placeholder, find_placeholders
from utils import tiny_model

MLP_HEAD = {"PARAMS": [["mlp", {"dims": [512, 16]}]]}
SYSTEM = f"{os.system.__module__}.system"  # posix.system here; nt.system on Windows
SIDE_EFFECTS = []


class RunsCommand:
    """Pickles as a call to ``os.system``: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class MeterWithHooks:
    """A custom class whose unpickling hooks would record a side effect if they ever ran."""

    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        SIDE_EFFECTS.append(state)
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def model():
    return tiny_model(0, HEAD=MLP_HEAD).eval()


def training_checkpoint(model, **extra):
    classy = {"base_model": model.get_classy_state(deep_copy=True), "train": True, "phase_idx": 1,
              "meters": [{"top1": np.float64(0.5), "confusion": np.arange(4).reshape(2, 2)}]}
    classy.update(extra)
    return {"classy_state_dict": classy, "type": "consolidated"}


def exact(loaded, model) -> bool:
    sd = model.state_dict()
    got = {**{f"trunk.{k}": v for k, v in loaded.trunk.items()}, **{f"heads.{k}": v for k, v in loaded.heads.items()}}
    return got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd)


def test_command_in_the_training_state_becomes_a_placeholder(tmp_path, model):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "ckpt.torch")
    torch.save(training_checkpoint(model, hooks={"evil": RunsCommand(marker)}), path)
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert exact(loaded, model)
    assert loaded.placeholders == [f"classy_state_dict.hooks.evil: {SYSTEM}"]
    raw = safe_torch_load(path)
    ph = raw["classy_state_dict"]["hooks"]["evil"]
    assert isinstance(ph, Placeholder) and ph.class_name == SYSTEM and ph.args == (f"touch {marker}",)
    # numpy meters came through the second pass intact
    meters = raw["classy_state_dict"]["meters"][0]
    assert meters["top1"] == 0.5 and np.array_equal(meters["confusion"], np.arange(4).reshape(2, 2))


def test_custom_classes_are_recorded_but_never_run(tmp_path, model):
    SIDE_EFFECTS.clear()
    path = str(tmp_path / "ckpt.torch")
    torch.save(training_checkpoint(model, meters=[MeterWithHooks(3)],
                                   args=argparse.Namespace(lr=0.1, arch="resnet")), path)
    loaded = load_checkpoint(path)
    assert SIDE_EFFECTS == [] and exact(loaded, model)
    raw = safe_torch_load(path)
    meter = raw["classy_state_dict"]["meters"][0]
    assert meter.class_name == f"{MeterWithHooks.__module__}.MeterWithHooks" and meter.state == {"value": 3}
    assert raw["classy_state_dict"]["args"].state == {"lr": 0.1, "arch": "resnet"}
    assert sorted(c for _, c in find_placeholders(raw)) == ["argparse.Namespace", meter.class_name]


def test_strict_mode_refuses_the_file(tmp_path, model):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "ckpt.torch")
    torch.save(training_checkpoint(model, hooks=RunsCommand(marker)), path)
    with pytest.raises(CheckpointError, match="ckpt.torch: refused.*nothing from it was executed"):
        safe_torch_load(path, allow_placeholders=False)
    assert not marker.exists()


def test_model_weights_needing_a_foreign_object_are_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    ckpt = training_checkpoint(model)
    ckpt["classy_state_dict"]["base_model"]["model"]["trunk"]["_feature_blocks.conv1.weight"] = RunsCommand(marker)
    path = str(tmp_path / "ckpt.torch")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=rf"ckpt.torch: the model weights hold 1 object.*"
                                              rf"trunk._feature_blocks.conv1.weight is a {SYSTEM}"):
        load_checkpoint(path)
    # The same refusal through MODEL.WEIGHTS_INIT and load_weights, and nothing changes.
    target = tiny_model(3, HEAD=MLP_HEAD)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="not allowlisted"):
        target.load_weights(path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused(tmp_path, model):
    path = str(tmp_path / "model.pt")
    torch.save(model, path)
    with pytest.raises(CheckpointError, match=r"model.pt: the whole file is an object of class "
                                              r"vissl_models.model.BaseSSLMultiInputOutputModel"):
        load_checkpoint(path)


def test_bare_state_dict_with_a_foreign_value_is_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    sd = dict(model.trunk.state_dict())
    sd["_feature_blocks.bn1.weight"] = RunsCommand(marker)
    path = str(tmp_path / "sd.pth")
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=f"bn1.weight is a {SYSTEM}"):
        load_checkpoint(path)
    assert not marker.exists()


def test_parameters_and_dtypes_come_through_the_second_pass_exactly(tmp_path):
    values = {"p": torch.nn.Parameter(torch.randn(3, 2)), "h": torch.randn(4).half(),
              "i": torch.arange(5), "b": torch.tensor([True, False]), "view": torch.arange(10.0)[2:6]}
    path = str(tmp_path / "mixed.torch")
    torch.save({"state_dict": values, "extra": MeterWithHooks(1)}, path)
    loaded = load_checkpoint(path)
    assert loaded.placeholders and set(loaded.trunk) == set(values)
    for k, v in values.items():
        assert loaded.trunk[k].dtype == v.dtype and torch.equal(loaded.trunk[k], v.detach())
    assert isinstance(loaded.trunk["p"], torch.nn.Parameter)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = str(tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="scripted.pt: a TorchScript archive"):
        load_checkpoint(path)


def test_restricted_unpickler_on_raw_opcodes(tmp_path):
    marker = tmp_path / "pwned"
    # Protocol 0: GLOBAL os.system, then REDUCE with a command.
    proto0 = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    obj = RESTRICTED_PICKLE.loads(proto0)
    assert isinstance(obj, Placeholder) and obj.class_name == "os.system" and not marker.exists()
    # Highest protocol, through the module-level load used by torch's legacy reader.
    obj = RESTRICTED_PICKLE.loads(pickle.dumps({"x": RunsCommand(marker)}, protocol=pickle.HIGHEST_PROTOCOL))
    assert obj["x"].class_name == SYSTEM and not marker.exists()


def test_extension_registry_opcodes_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    code = 0x7F
    module = os.system.__module__
    copyreg.add_extension(module, "system", code)
    try:
        data = pickle.dumps(os.system, protocol=2)
        assert pickle.EXT1 in data
        pickle.loads(data)  # fills the process-wide extension cache, which find_class would not see
        with pytest.raises(pickle.UnpicklingError, match="extension-registry"):
            RESTRICTED_PICKLE.loads(data)
    finally:
        copyreg.remove_extension(module, "system", code)
    assert not marker.exists()


def test_raw_pickle_file_is_not_a_checkpoint_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"state_dict": RunsCommand(marker)}))
    with pytest.raises(CheckpointError, match="raw.pkl"):
        load_checkpoint(str(raw))
    assert not marker.exists()


def test_state_cannot_be_set_on_allowlisted_globals():
    from vissl_models.checkpoint import safe_pickle

    def unicode(text):
        data = text.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    # GLOBAL collections.defaultdict (allowlisted, a function here), then BUILD with slot state
    # {"vissl_test_marker": 1}: plain pickle would setattr on the shared object.
    payload = (b"\x80\x02ccollections\ndefaultdict\nN}" + unicode("vissl_test_marker") + b"K\x01s\x86b.")
    with pytest.raises(pickle.UnpicklingError, match="refused to set state"):
        RESTRICTED_PICKLE.loads(payload)
    assert not hasattr(safe_pickle.allowed_globals()["collections.defaultdict"], "vissl_test_marker")


def test_numpy_1x_module_names_load_in_one_restricted_pass(tmp_path, monkeypatch):
    import zipfile

    src, dst = tmp_path / "np2.torch", tmp_path / "np1.torch"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meter": np.arange(3), "top1": np.float64(2.5)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):  # as numpy 1.x wrote them
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    passes = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: passes.append((k["weights_only"], k.get("pickle_module")))
                        or real_load(*a, **k))
    allowlist_before = list(torch.serialization.get_safe_globals())
    obj = safe_torch_load(str(dst))
    # One pass, through the restricted unpickler; torch's process-wide allowlist is not touched.
    assert passes == [(False, RESTRICTED_PICKLE)]
    assert list(torch.serialization.get_safe_globals()) == allowlist_before
    assert np.array_equal(obj["meter"], np.arange(3)) and obj["top1"] == 2.5


def test_a_model_container_that_is_a_foreign_object_is_named(tmp_path):
    path = str(tmp_path / "ckpt.torch")
    torch.save({"epoch": 1, "state_dict": MeterWithHooks({"w": torch.ones(1)})}, path)
    with pytest.raises(CheckpointError, match=r"'state_dict' is an object of class .*MeterWithHooks"):
        load_checkpoint(path)


def test_bare_class_references_are_reported_too(tmp_path, model):
    path = str(tmp_path / "ckpt.torch")
    torch.save(training_checkpoint(model, hooks={"meter_class": MeterWithHooks}), path)
    loaded = load_checkpoint(path)
    assert loaded.placeholders == [f"classy_state_dict.hooks.meter_class: {MeterWithHooks.__module__}.MeterWithHooks"]
    assert exact(loaded, model)
