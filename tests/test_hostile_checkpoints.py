"""Hostile and damaged checkpoints, through every loading route: each case raises a named
``CheckpointError`` and leaves both the model and the files on disk exactly as they were.

Every file is made here, small; the model is a one-block ViT so the whole module runs in seconds.
"""

import collections
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

import vissl_models
from vissl_models.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidValueError,
    StateMismatchError,
    UnsafeCheckpointError,
    apply_weights_init,
    load_checkpoint,
)

TINY_VIT = {
    "TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {
        "IMAGE_SIZE": 32, "PATCH_SIZE": 16, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
        "QKV_BIAS": True, "CLASSIFIER": "token"}},
    "HEAD": {"PARAMS": [["mlp", {"dims": [16, 4]}]]},
}
KEY = "blocks.0.attn.qkv.weight"  # in the middle of the trunk: a naive loader has copied keys before it
KEY_RE = KEY.replace(".", r"\.")


def build(seed=0, **model):
    torch.manual_seed(seed)
    cfg = vissl_models.load_config({"MODEL": {**TINY_VIT, **model}}).MODEL
    return vissl_models.build_model(cfg)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    state = model.state_dict()
    return state.keys() == before.keys() and all(
        torch.equal(state[k], before[k]) and state[k].dtype == before[k].dtype for k in state)


def files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def vissl_file(folder, model, name="ckpt.torch", trunk=None, extra=None):
    trunk = dict(model.trunk.state_dict()) if trunk is None else trunk
    obj = {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": dict(model.heads.state_dict())}}},
           "type": "consolidated", **(extra or {})}
    path = os.path.join(folder, name)
    torch.save(obj, path)
    return path


# Every route weights enter a model by.
def via_load_weights(model, path):
    return model.load_weights(path)


def via_load_weights_lenient(model, path):
    return model.load_weights(path, strict=False)


def via_load_checkpoint(model, path):
    return model.load_checkpoint(path)


def via_set_classy_state(model, path):
    return model.set_classy_state(load_checkpoint(path).classy_state())


def via_weights_init(model, path):
    return apply_weights_init(model, dict(model.model_config.WEIGHTS_INIT, PARAMS_FILE=path))


ROUTES = [via_load_weights, via_load_weights_lenient, via_load_checkpoint, via_set_classy_state, via_weights_init]


@pytest.fixture(scope="module")
def source():
    return build(1)


@pytest.fixture(scope="module")
def target():
    return build(0)


def refused(target, route, path, error, match):
    """``route`` raises ``error`` matching ``match``; the model and the folder are unchanged."""
    before, folder = snapshot(target), os.path.dirname(path)
    on_disk = files(folder)
    start = time.perf_counter()
    with pytest.raises(error, match=match) as info:
        route(target, path)
    assert time.perf_counter() - start < 10, "refusing took too long"
    assert unchanged(target, before)
    assert files(folder) == on_disk
    return info.value


# ----------------------------------------------------------------------------- values that are not weights
class NotAllowlisted:
    def __init__(self, payload):
        self.payload = payload


def _bad_values(dense):
    return {
        "meta": torch.empty(dense.shape, device="meta"),
        "sparse": dense.to_sparse(),
        "quantized": torch.quantize_per_tensor(dense, 0.1, 0, torch.qint8),
        "nested": torch.nested.nested_tensor([dense[0], dense[1]]),
        "numpy": dense.numpy().copy(),
        "list": dense.tolist(),
        "string": "weights",
        "placeholder": NotAllowlisted(1),
        "complex": dense.to(torch.complex64),
        "integer": dense.to(torch.int64),
    }


pytestmark = pytest.mark.filterwarnings("ignore:.*quantize:UserWarning", "ignore:.*nested tensors:UserWarning",
                                      "ignore:.*quantized tensor:UserWarning", "ignore:TypedStorage:UserWarning")

BAD_VALUES = ["meta", "sparse", "quantized", "nested", "numpy", "list", "string", "placeholder", "complex", "integer"]


@pytest.fixture(scope="module")
def bad_value_files(tmp_path_factory, source):
    folder = str(tmp_path_factory.mktemp("bad_values"))
    paths = {}
    for name, value in _bad_values(source.trunk.state_dict()[KEY].clone()).items():
        trunk = dict(source.trunk.state_dict())
        trunk[KEY] = value
        paths[name] = vissl_file(folder, source, f"{name}.torch", trunk=trunk)
    return paths


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("kind", BAD_VALUES)
def test_a_value_that_is_not_a_plain_tensor_is_refused_before_any_copy(target, bad_value_files, kind, route):
    path = bad_value_files[kind]
    # Placeholders are refused while reading the file; every other value by the loading core.
    error = UnsafeCheckpointError if kind == "placeholder" else InvalidValueError
    # set_classy_state takes a state, not a file: its errors name the key (and "<classy state>").
    where = "<classy state>" if route is via_set_classy_state and kind != "placeholder" else rf"{kind}\.torch"
    err = refused(target, route, path, error, rf"{where}.*{KEY_RE}")
    assert isinstance(err, CheckpointError)


@pytest.mark.parametrize("kind", BAD_VALUES)
def test_set_classy_state_validates_in_memory_states(target, source, kind):
    state = source.get_classy_state(deep_copy=True)
    state["model"]["trunk"][KEY] = _bad_values(state["model"]["trunk"][KEY])[kind]
    before = snapshot(target)
    with pytest.raises(InvalidValueError, match=rf"{KEY_RE} is") as info:
        target.set_classy_state(state)
    assert info.value.key == f"trunk.{KEY}" and unchanged(target, before)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_keys_that_are_not_strings_are_refused(tmp_path, source, target, route):
    trunk = dict(source.trunk.state_dict())
    trunk[7] = trunk.pop(KEY)
    path = vissl_file(str(tmp_path), source, trunk=trunk)
    refused(target, route, path, CheckpointError, r"(ckpt\.torch|<classy state>).*not strings")


def test_weights_init_through_build_model_is_refused_too(bad_value_files):
    cfg = vissl_models.load_config({"MODEL": {**TINY_VIT, "WEIGHTS_INIT": {
        "PARAMS_FILE": bad_value_files["sparse"]}}}).MODEL
    with pytest.raises(InvalidValueError, match=r"sparse\.torch.*trunk\.blocks\.0\.attn\.qkv\.weight is a sparse_coo"):
        vissl_models.build_model(cfg, load_weights=True)


def test_copy_failure_restores_every_tensor_already_written(tmp_path, source, target, monkeypatch):
    path = vissl_file(str(tmp_path), source)
    before = snapshot(target)
    real_copy, calls = torch.Tensor.copy_, []

    def failing_copy(self, other, *args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("device lost")
        return real_copy(self, other, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", failing_copy)
    with pytest.raises(CheckpointError, match="copying failed.*restored"):
        target.load_weights(path)
    calls.clear()

    def interrupted_copy(self, other, *args, **kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_copy(self, other, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        target.load_weights(path)
    monkeypatch.undo()
    assert unchanged(target, before)


# ----------------------------------------------------------------------------- bombs
class Bomb:
    """Pickles as a call of an allowlisted constructor with arguments that would expand."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


BOMBS = {
    "deque": lambda: Bomb(collections.deque, (range(10 ** 18), 0)),
    "set": lambda: Bomb(set, (range(10 ** 9),)),
    "frozenset": lambda: Bomb(frozenset, (range(10 ** 9),)),
    "counter": lambda: Bomb(collections.Counter, (range(10 ** 9),)),
    "bytearray": lambda: Bomb(bytearray, (10 ** 12,)),
    "size": lambda: Bomb(torch.Size, (range(10 ** 12),)),
    "ndarray": lambda: Bomb(np.ndarray, ((10 ** 12,),)),
    "tensor_class": lambda: Bomb(torch.Tensor, (10 ** 12,)),
    "expanded_to": lambda: Bomb(torch._utils._rebuild_device_tensor_from_cpu_tensor,
                                (torch.zeros(1).expand(10 ** 12), torch.float64, "cpu", False)),
    "set_of_expanded_tensor": lambda: Bomb(set, (torch.zeros(1).expand(10 ** 12),)),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_constructors_never_expand_data(tmp_path, source, target, name):
    path = vissl_file(str(tmp_path), source, extra={"loss": {"meter": BOMBS[name]()}})
    assert os.path.getsize(path) < 64 * 1024
    for route in (via_load_weights, via_weights_init):
        refused(target, route, path, UnsafeCheckpointError, r"ckpt\.torch: refused")


def test_containers_nested_1000_deep_are_refused_not_a_recursion_error(tmp_path, source, target):
    deep = ()
    for _ in range(1000):
        deep = (deep,)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10000)  # only so that the file can be written
    try:
        path = vissl_file(str(tmp_path), source, extra={"hooks": deep})
    finally:
        sys.setrecursionlimit(limit)
    for route in ROUTES:
        refused(target, route, path, UnsafeCheckpointError, r"ckpt\.torch: refused.*nested")


def test_in_memory_nesting_is_refused_too(target):
    deep = {}
    for _ in range(1000):
        deep = {"x": deep}
    with pytest.raises(UnsafeCheckpointError, match="nested"):
        target.load_weights({"state_dict": {"w": torch.ones(1)}, "deep": deep})


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_a_missing_file_is_a_checkpoint_error_and_a_file_not_found_error(tmp_path, target, route):
    err = refused(target, route, str(tmp_path / "nope.torch"), CheckpointNotFoundError, r"nope\.torch: .*not found")
    assert isinstance(err, FileNotFoundError) and isinstance(err, CheckpointError)


def test_load_module_state_validates_too(source, target):
    from vissl_models.checkpoint import load_module_state

    state = dict(source.trunk.state_dict())
    state[KEY] = state[KEY].to_sparse()
    before = snapshot(target)
    with pytest.raises(InvalidValueError, match=rf"trunk: .*{KEY_RE} is a sparse_coo tensor"):
        load_module_state(target.trunk, state, "trunk", strict=False)
    assert unchanged(target, before)


def test_byte_flips_and_truncations_raise_checkpoint_errors_naming_the_file(tmp_path, source, target):
    good = vissl_file(str(tmp_path), source, name="good.torch")
    data = open(good, "rb").read()
    positions = sorted(set(range(0, len(data), max(1, len(data) // 120))) | set(range(len(data) - 160, len(data))))
    before = snapshot(target)
    bad = str(tmp_path / "flipped.torch")
    outcomes = collections.Counter()
    for i in positions:
        for flip in (0xFF, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= flip
            open(bad, "wb").write(bytes(damaged))
            try:
                target.load_weights(bad)
                outcomes["loaded"] += 1
            except CheckpointError as e:
                assert "flipped.torch" in str(e), str(e)
                outcomes["refused"] += 1
            # A flip inside a tensor's bytes loads other numbers; anything else is refused whole.
            target.load_state_dict(before)
    assert outcomes["refused"] > len(positions) // 2
    for n in (1, 10, 100, len(data) // 2, len(data) - 1):
        open(bad, "wb").write(data[:n])
        with pytest.raises(CorruptCheckpointError, match="flipped.torch"):
            target.load_weights(bad)
    assert unchanged(target, before) and open(good, "rb").read() == data


# ----------------------------------------------------------------------------- FSDP shards
def write_shards(folder, model, tamper=None):
    """A two-rank FSDP checkpoint of ``model``'s trunk (one flat parameter) and its shard_list."""
    trunk = model.trunk.state_dict()
    names = list(trunk)
    flat = torch.cat([trunk[n].reshape(-1) for n in names])
    half = (flat.numel() + 1) // 2
    pieces = [flat[:half], torch.nn.functional.pad(flat[half:], [0, 2 * half - flat.numel()])]
    shard_names = []
    for rank, piece in enumerate(pieces):
        info = {"names": names, "shapes": [tuple(trunk[n].shape) for n in names],
                "numels": [trunk[n].numel() for n in names], "padding": 2 * half - flat.numel() if rank else 0}
        meta = {"param_metadata": [{"fsdp_path": "", "params": {"flat_param_0": info}}], "buffer_names": []}
        if tamper is not None:
            tamper(rank, meta, info)
        classy = {"base_model": {"model": {"trunk": {"flat_param_0": piece.clone()},
                                           "heads": dict(model.heads.state_dict())},
                                 "meta": {"trunk": meta}}}
        name = f"shard{rank}.torch"
        torch.save({"classy_state_dict": classy, "type": "shard"}, os.path.join(folder, name))
        shard_names.append(name)
    path = os.path.join(folder, "main.torch")
    torch.save({"type": "shard_list", "shards": shard_names}, path)
    return path


def test_fsdp_shards_round_trip(tmp_path, source):
    other = build(2)
    path = write_shards(str(tmp_path), source)
    assert other.load_weights(path).ok and unchanged(other, snapshot(source))
    other = build(2)
    report = apply_weights_init(other, dict(other.model_config.WEIGHTS_INIT, PARAMS_FILE=path))
    assert report.ok and unchanged(other, snapshot(source))


TAMPER = {
    "negative_padding": lambda rank, meta, info: info.update(padding=-3),
    "padding_past_the_piece": lambda rank, meta, info: info.update(padding=10 ** 6),
    "string_padding": lambda rank, meta, info: info.update(padding="x"),
    "numels_too_few": lambda rank, meta, info: info.update(numels=info["numels"][:-1]),
    "shape_numel_disagree": lambda rank, meta, info: info.update(shapes=[(1,)] + info["shapes"][1:]),
    "negative_size": lambda rank, meta, info: info.update(shapes=[(-1,)] + info["shapes"][1:]),
    "params_not_a_dict": lambda rank, meta, info: meta["param_metadata"][0].update(params=[1, 2]),
    "metadata_not_a_list": lambda rank, meta, info: meta.update(param_metadata=7),
    "buffer_not_in_shard": lambda rank, meta, info: meta.update(buffer_names=["ghost"]),
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_malformed_fsdp_metadata_is_a_checkpoint_error(tmp_path, source, target, name):
    path = write_shards(str(tmp_path), source, TAMPER[name])
    for route in (via_load_weights, via_load_weights_lenient, via_weights_init):
        refused(target, route, path, CheckpointError, r"main\.torch|shard\d\.torch")


def test_an_empty_tensor_never_stands_in_for_a_real_one(tmp_path, source, target):
    def empty_first(rank, meta, info):
        # The first parameter claims to hold no values.
        info["shapes"] = [(0,)] + info["shapes"][1:]
        info["numels"] = [0] + info["numels"][1:]

    path = write_shards(str(tmp_path), source, empty_first)
    for route in (via_load_weights, via_load_weights_lenient, via_weights_init):
        before = snapshot(target)
        with pytest.raises(CheckpointError):
            route(target, path)
        assert unchanged(target, before)


# ----------------------------------------------------------------------------- slice lists
def test_weights_init_reads_the_original_slice_list_files(tmp_path, source):
    folder = str(tmp_path)
    layers = {}
    for part, state in (("trunk", source.trunk.state_dict()), ("heads", source.heads.state_dict())):
        layers[part] = {}
        for i, (name, value) in enumerate(state.items()):
            slice_path = os.path.join(folder, f"{part}_{i}.torch")
            torch.save({"type": "slice", "weight": value.clone()}, slice_path)
            layers[part][name] = slice_path  # VISSL wrote absolute paths
    path = os.path.join(folder, "sliced.torch")
    torch.save({"type": "slice_list", "classy_state_dict": {"base_model": {"model": layers}}}, path)
    torch.manual_seed(3)
    cfg = vissl_models.load_config({"MODEL": {**TINY_VIT, "WEIGHTS_INIT": {"PARAMS_FILE": path}}}).MODEL
    built = vissl_models.build_model(cfg, load_weights=True)
    assert built.weights_init_report.ok and unchanged(built, snapshot(source))


# ----------------------------------------------------------------------------- other libraries
def _timm_vit_file(folder, wrap=lambda sd: sd):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(4)
    net = timm_vit.VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                                     num_classes=4, mlp_ratio=2)
    path = os.path.join(folder, "vit_timm.pth")
    torch.save(wrap(net.state_dict()), path)
    return net, path


@pytest.mark.parametrize("route", [via_load_weights, via_load_checkpoint, via_weights_init],
                         ids=lambda r: r.__name__)
def test_a_timm_file_is_converted_on_the_fly_and_the_report_says_so(tmp_path, route):
    net, path = _timm_vit_file(str(tmp_path))
    model = build(5)
    report = route(model, path)
    assert report.converted.startswith("timm vision_transformer -> vissl") and report.ok
    assert torch.equal(model.trunk.blocks[0].attn.qkv.weight, net.blocks[0].attn.qkv.weight)
    assert torch.equal(model.heads[0].clf[0].weight, net.head.weight)  # 16 -> 4 classifier fits head 0


def test_a_timm_classifier_that_fits_no_head_is_dropped_and_listed(tmp_path):
    _, path = _timm_vit_file(str(tmp_path), lambda sd: {"model": sd})
    model = build(5, HEAD={"PARAMS": [["mlp", {"dims": [16, 7]}]]})
    before = snapshot(model)
    with pytest.raises(StateMismatchError, match="converted timm vision_transformer -> vissl.*missing"):
        model.load_weights(path)
    assert unchanged(model, before)
    report = model.load_weights(path, skip=("heads.",))
    assert report.dropped == ["head.weight", "head.bias"] and report.ok


# ----------------------------------------------------------------------------- threads
def test_loading_never_changes_torchs_process_wide_allowlist(tmp_path, source):
    numpy_file = str(tmp_path / "numpy.torch")
    torch.save({"meter": np.arange(3)}, numpy_file)
    ckpt = vissl_file(str(tmp_path), source, extra={"meters": {"top1": np.float64(0.5), "curve": np.arange(5)}})
    allowlist = list(torch.serialization.get_safe_globals())
    stop, accepted, loads = threading.Event(), [], []

    def ours():
        model = build(6)
        while not stop.is_set():
            loads.append(model.load_weights(ckpt).ok)

    worker = threading.Thread(target=ours)
    worker.start()
    try:
        deadline = time.perf_counter() + 3
        while time.perf_counter() < deadline and len(loads) < 20:
            try:
                torch.load(numpy_file, weights_only=True)
                accepted.append(True)
            except Exception:
                pass
    finally:
        stop.set()
        worker.join()
    assert loads and all(loads)
    assert not accepted, "an unrelated weights-only load accepted numpy objects during one of ours"
    assert list(torch.serialization.get_safe_globals()) == allowlist
