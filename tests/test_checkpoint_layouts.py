"""Every checkpoint layout the original VISSL wrote or published, built here from random weights.

Sharded files are made the way fairscale's FSDP and VISSL's CheckpointWriter made them: each
FSDP instance flattens its parameters into one 1-D backing tensor (or keeps them apart), splits it
in ``world`` chunks padded to the first chunk's size, and records names/shapes/numels/padding.
"""

import argparse
import hashlib
import os
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

import vissl_models
from vissl_models.checkpoint import CheckpointError, load_checkpoint
from vissl_models.checkpoint.load import StateMismatchError
from vissl_models.checkpoint.sharded import consolidate_fsdp_shards
from utils import assert_same_outputs, image, tiny_model

MLP_HEAD = {"PARAMS": [["mlp", {"dims": [512, 16]}]]}


@pytest.fixture(scope="module")
def models():
    """Three tiny resnet18 models with different weights (student, teacher, EMA)."""
    return [tiny_model(seed, HEAD=MLP_HEAD).eval() for seed in (0, 1, 2)]


def same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def model_state(model) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- FSDP shard builder
def fsdp_local_states(module: torch.nn.Module, instances: Sequence[Tuple[str, str]], world: int, prefix: str = ""):
    """Per-rank (local state, metadata) as fairscale's ``local_state_dict``/``local_metadata_dict``.

    ``instances``: ``(fsdp_path, mode)`` with mode ``"flat"`` (parameters flattened into
    ``flat_param_0``), ``"separate"`` (each parameter sharded on its own) or ``"replicated"``
    (flattened, not sharded: ``no_broadcast_optim_state``). The first instance must be the root
    ``""``; it owns every parameter no other instance owns. ``prefix`` goes before every path.
    """
    params = dict(module.named_parameters())
    owned = {}
    for path, _ in instances[1:]:
        owned[path] = [n for n in params if n.startswith(path + ".")]
    taken = {n for names in owned.values() for n in names}
    owned[""] = [n for n in params if n not in taken]
    states: List[Dict[str, torch.Tensor]] = [{} for _ in range(world)]
    metas = [{"param_metadata": [], "buffer_names": []} for _ in range(world)]

    def rel(path, name):
        return name[len(path) + 1:] if path else name

    def full(path):
        return ".".join(p for p in (prefix.rstrip("."), path) if p)

    for path, mode in instances:
        names = owned[path]
        groups = [(f"flat_param_0", names)] if mode in ("flat", "replicated") else [(rel(path, n), [n]) for n in names]
        infos = [{"fsdp_path": full(path), "params": {}, "no_broadcast_optim_state": mode == "replicated",
                  "shared_param_info": []} for _ in range(world)]
        for backing, members in groups:
            flat = torch.cat([params[n].detach().reshape(-1) for n in members])
            chunks = list(flat.chunk(world)) if mode != "replicated" else [flat] * world
            while len(chunks) < world:
                chunks.append(chunks[0].new_empty(0))
            for rank in range(world):
                pad = chunks[0].numel() - chunks[rank].numel()
                key = ".".join(p for p in (full(path), backing) if p)
                states[rank][key] = F.pad(chunks[rank], [0, pad]).clone()
                infos[rank]["params"][backing] = {
                    "names": [rel(path, n) for n in members],
                    "shapes": [params[n].shape for n in members],
                    "numels": [params[n].numel() for n in members],
                    "padding": pad,
                }
        for rank in range(world):
            metas[rank]["param_metadata"].append(infos[rank])
    for name, buf in module.named_buffers():
        for rank in range(world):
            states[rank][full(name)] = buf.clone()
            metas[rank]["buffer_names"].append(full(name))
    return states, metas


TRUNK_INSTANCES = [("", "flat"), ("_feature_blocks.layer1", "flat"), ("_feature_blocks.layer2", "separate"),
                   ("_feature_blocks.layer3", "replicated")]


def write_sharded(folder, model, world=3, teacher=None, name="model_phase2"):
    """An FSDP run's checkpoint as VISSL wrote it: one file per rank plus a shard_list file."""
    trunk_states, trunk_metas = fsdp_local_states(model.trunk, TRUNK_INSTANCES, world)
    head_states, head_metas = fsdp_local_states(model.heads[0], [("", "flat")], world)
    if teacher is not None:
        t_states, t_metas = fsdp_local_states(
            teacher, [("", "flat"), ("trunk._feature_blocks.layer4", "flat"), ("heads.0", "flat")], world)
    shard_names = []
    for rank in range(world):
        classy = {
            "train": True,
            "base_model": {"model": {"trunk": trunk_states[rank], "heads": [head_states[rank]]},
                           "meta": {"trunk": trunk_metas[rank], "heads": [head_metas[rank]]}},
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
            "meters": [], "phase_idx": 2, "train_phase_idx": 1, "num_updates": 99, "loss": {},
        }
        if teacher is not None:
            classy["loss"] = {"criterion": {"center": torch.zeros(1, 4)},
                              "teacher": t_states[rank], "teacher_meta": t_metas[rank]}
        shard_names.append(f"{name}_shard{rank}.torch")
        torch.save({"phase_idx": 2, "iteration": 100, "loss": {}, "iteration_num": 100, "train_phase_idx": 1,
                    "classy_state_dict": classy, "type": "shard"}, os.path.join(folder, shard_names[-1]))
    main = os.path.join(folder, f"{name}.torch")
    torch.save({"type": "shard_list", "shards": shard_names}, main)
    return main, shard_names


def test_fsdp_shard_builder_matches_fairscale_padding_rule():
    # 10 values over 3 ranks: chunks of 4, 4, 2; the last rank pads 2 zeros.
    lin = torch.nn.Linear(3, 2, bias=True)  # 6 + 2 = 8 values; chunks 3, 3, 2
    states, metas = fsdp_local_states(lin, [("", "flat")], 3)
    assert [s["flat_param_0"].numel() for s in states] == [3, 3, 3]
    assert [m["param_metadata"][0]["params"]["flat_param_0"]["padding"] for m in metas] == [0, 0, 1]


# ----------------------------------------------------------------------------- consolidated + sharded
def test_consolidated_vissl_checkpoint(tmp_path, models):
    m = models[0]
    ckpt = {"classy_state_dict": {"base_model": {**m.get_classy_state(deep_copy=True),
                                                 "meta": {"trunk": {}, "heads": []}},
                                  "train": True, "phase_idx": 4},
            "phase_idx": 4, "iteration": 500, "loss": {}, "type": "consolidated"}
    path = str(tmp_path / "model_final_checkpoint_phase4.torch")
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.type, loaded.source, loaded.arch) == ("vissl_classy", "consolidated", "vissl", "resnet")
    assert loaded.key_layout == "vissl_resnet" and loaded.model is None and loaded.available == ["model"]
    assert set(loaded.other_keys) == {"phase_idx", "iteration", "loss"} and loaded.info["iteration"] == 500
    assert same_state(loaded.trunk, m.trunk.state_dict()) and same_state(loaded.heads, m.heads.state_dict())


def test_shard_list_is_stitched_back_exactly(tmp_path, models):
    m = models[0]
    main, shard_names = write_sharded(str(tmp_path), m)
    loaded = load_checkpoint(main)
    assert (loaded.layout, loaded.type, loaded.source) == ("vissl_shard_list", "shard_list", "vissl")
    assert loaded.files == [main] + [str(tmp_path / n) for n in shard_names]
    assert same_state(loaded.trunk, m.trunk.state_dict())
    assert same_state(loaded.heads, m.heads.state_dict())
    other = tiny_model(5, HEAD=MLP_HEAD).eval()
    report = other.load_weights(main)
    assert report.ok and len(report.loaded) == len(other.state_dict())
    x = image(2, 32)
    with torch.no_grad():
        assert_same_outputs(m(x), other(x))


def test_one_shard_alone_is_refused_with_a_pointer_to_the_shard_list(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0])
    with pytest.raises(CheckpointError, match=r"model_phase2_shard1\.torch.*one rank's shard.*shard_list"):
        load_checkpoint(str(tmp_path / shard_names[1]))


def test_single_rank_shard_loads_on_its_own(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0], world=1)
    loaded = load_checkpoint(str(tmp_path / shard_names[0]))
    assert loaded.layout == "vissl_shard" and same_state(loaded.trunk, models[0].trunk.state_dict())


def test_missing_shard_names_the_file_and_loads_nothing(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0])
    os.remove(tmp_path / shard_names[2])
    target = tiny_model(5, HEAD=MLP_HEAD)
    before = model_state(target)
    with pytest.raises(CheckpointError, match=r"model_phase2\.torch: 1 of 3 shard files are missing: model_phase2_shard2\.torch"):
        target.load_weights(main)
    assert same_state(before, target.state_dict())


def test_truncated_shard_names_the_shard_and_the_list(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0])
    shard = tmp_path / shard_names[1]
    shard.write_bytes(shard.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=r"model_phase2_shard1\.torch: not a readable PyTorch checkpoint.*"
                                              r"shard 1 of 3 listed in .*model_phase2\.torch"):
        load_checkpoint(main)


def test_shard_list_naming_too_few_shards_is_refused(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0])
    torch.save({"type": "shard_list", "shards": shard_names[:2]}, main)
    with pytest.raises(CheckpointError, match="a shard is missing, or the shards come from different runs"):
        load_checkpoint(main)


def test_shards_are_found_next_to_a_moved_main_file(tmp_path, models):
    main, shard_names = write_sharded(str(tmp_path), models[0])
    torch.save({"type": "shard_list", "shards": [f"/old/cluster/run/{n}" for n in shard_names]}, main)
    assert same_state(load_checkpoint(main).trunk, models[0].trunk.state_dict())


def test_fsdp_teacher_in_the_loss_state_is_consolidated(tmp_path, models):
    student, teacher = models[0], models[1]
    main, _ = write_sharded(str(tmp_path), student, teacher=teacher)
    loaded = load_checkpoint(main)
    assert loaded.model == "teacher" and loaded.available == ["teacher", "student"]
    assert same_state(loaded.trunk, teacher.trunk.state_dict()) and same_state(loaded.heads, teacher.heads.state_dict())
    as_student = load_checkpoint(main, which="student")
    assert as_student.model == "student" and same_state(as_student.trunk, student.trunk.state_dict())


def test_consolidate_copies_tied_parameters():
    w = torch.arange(6.0)
    states = [{"flat_param_0": w[:3].clone()}, {"flat_param_0": w[3:].clone()}]
    info = lambda pad: {"fsdp_path": "", "no_broadcast_optim_state": False,  # noqa: E731
                        "shared_param_info": [("a.weight", "b.weight")],
                        "params": {"flat_param_0": {"names": ["a.weight"], "shapes": [torch.Size([2, 3])],
                                                    "numels": [6], "padding": pad}}}
    out = consolidate_fsdp_shards(states, [{"param_metadata": [info(0)], "buffer_names": []}] * 2, "mem")
    assert torch.equal(out["a.weight"], w.view(2, 3)) and out["b.weight"] is out["a.weight"]


# ----------------------------------------------------------------------------- sliced
def write_sliced(folder, model, legacy=False):
    """VISSL's slice_list: one ``{"type": "slice", "weight"}`` file per parameter, absolute paths."""
    main = os.path.join(folder, "model_sliced.torch")
    layers = os.path.join(folder, "model_sliced_layers")
    os.makedirs(layers, exist_ok=True)
    maps = {}
    for part, module in (("trunk", model.trunk), ("heads", model.heads)):
        maps[part] = {}
        for name, value in module.state_dict().items():
            key = f"{part}.{name}" if legacy else name
            file = os.path.abspath(os.path.join(layers, hashlib.sha1(key.encode()).hexdigest() + ".torch"))
            torch.save({"type": "slice", "weight": value.clone()}, file)
            maps[part][key] = file
    if legacy:
        torch.save({"type": "slice_list", "layers": {**maps["trunk"], **maps["heads"]}}, main)
    else:
        torch.save({"type": "slice_list", "classy_state_dict": {"base_model": {"model": maps}}}, main)
    return main, maps


@pytest.mark.parametrize("legacy", [False, True])
def test_slice_list(tmp_path, models, legacy):
    m = models[0]
    main, maps = write_sliced(str(tmp_path), m, legacy=legacy)
    loaded = load_checkpoint(main)
    assert loaded.layout == "vissl_slice_list" and loaded.type == "slice_list"
    assert same_state(loaded.trunk, m.trunk.state_dict()) and same_state(loaded.heads, m.heads.state_dict())
    assert len(loaded.files) == 1 + len(m.state_dict())


def test_slices_of_a_moved_checkpoint_are_found_in_its_layers_folder(tmp_path, models):
    main, maps = write_sliced(str(tmp_path), models[0])
    moved = {part: {k: "/gone/elsewhere/model_sliced_layers/" + os.path.basename(v) for k, v in mp.items()}
             for part, mp in maps.items()}
    torch.save({"type": "slice_list", "classy_state_dict": {"base_model": {"model": moved}}}, main)
    assert same_state(load_checkpoint(main).trunk, models[0].trunk.state_dict())


def test_missing_slice_and_lone_slice_are_errors(tmp_path, models):
    main, maps = write_sliced(str(tmp_path), models[0])
    lone = maps["trunk"]["_feature_blocks.conv1.weight"]
    with pytest.raises(CheckpointError, match="one slice of a sliced checkpoint"):
        load_checkpoint(lone)
    os.remove(lone)
    target = tiny_model(5, HEAD=MLP_HEAD)
    before = model_state(target)
    with pytest.raises(CheckpointError, match=r"model_sliced\.torch: 1 of \d+ trunk slice files are missing: .*"
                                              + os.path.basename(lone)):
        target.load_weights(main)
    assert same_state(before, target.state_dict())


# ----------------------------------------------------------------------------- flat state dicts
@pytest.mark.parametrize("layout,wrap,removed", [
    ("model_state_dict", lambda sd: {"model_state_dict": sd, "epoch": 3}, []),
    ("state_dict", lambda sd: {"state_dict": sd, "optimizer": {}}, []),
    ("model", lambda sd: {"model": sd}, []),
    ("state_dict", lambda sd: sd, []),
    ("state_dict", lambda sd: {f"module.{k}": v for k, v in sd.items()}, ["module."]),
])
def test_flat_vissl_state_dicts(tmp_path, models, layout, wrap, removed):
    m = models[0]
    path = str(tmp_path / "flat.torch")
    torch.save(wrap(m.state_dict()), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.key_layout) == (layout, "vissl_resnet")
    assert loaded.prefixes_removed == removed + ["trunk.", "heads."]
    assert same_state(loaded.trunk, m.trunk.state_dict()) and same_state(loaded.heads, m.heads.state_dict())


def test_bare_trunk_state_dict_with_feature_blocks_prefix(tmp_path, models):
    path = str(tmp_path / "trunk.torch")
    torch.save(models[0].trunk.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.layout == "state_dict" and loaded.key_layout == "vissl_resnet" and not loaded.heads
    assert all(k.startswith("_feature_blocks.") for k in loaded.trunk)


def test_backbone_and_head_prefixes(tmp_path, models):
    m = models[0]
    sd = {f"module.backbone.{k}": v for k, v in m.trunk.state_dict().items()}
    sd.update({f"module.head.{k}": v for k, v in m.heads.state_dict().items()})
    path = str(tmp_path / "backbone.torch")
    torch.save({"state_dict": sd}, path)
    loaded = load_checkpoint(path)
    assert loaded.prefixes_removed == ["module.", "backbone.", "head."]
    assert same_state(loaded.trunk, m.trunk.state_dict()) and same_state(loaded.heads, m.heads.state_dict())


def test_ema_state_dict_is_chosen_on_request(tmp_path, models):
    path = str(tmp_path / "timm_train.pth.tar")
    torch.save({"state_dict": models[0].trunk.state_dict(), "state_dict_ema": models[2].trunk.state_dict(),
                "epoch": 7}, path)
    assert same_state(load_checkpoint(path).trunk, models[0].trunk.state_dict())
    ema = load_checkpoint(path, which="ema")
    assert ema.layout == "state_dict_ema" and ema.model == "ema"
    assert same_state(ema.trunk, models[2].trunk.state_dict())
    with pytest.raises(CheckpointError, match=r"no 'teacher' weights in this checkpoint; it holds \['model', 'ema'\]"):
        load_checkpoint(path, which="teacher")


# ----------------------------------------------------------------------------- DINO-style
def vit_state(dim=8, depth=1, seed=0) -> Dict[str, torch.Tensor]:
    """A ViT-S-shaped state dict with timm's/DINO's key names, tiny sizes."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 5, dim), "patch_embed.proj.weight": (dim, 3, 16, 16),
              "patch_embed.proj.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                       b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "norm2.weight": (dim,), b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                       b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def dino_head_state(dim=8, out=6, seed=0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"mlp.0.weight": torch.randn(16, dim, generator=g), "mlp.0.bias": torch.randn(16, generator=g),
            "last_layer.weight_g": torch.ones(out, 1), "last_layer.weight_v": torch.randn(out, 16, generator=g)}


def test_dino_teacher_student_checkpoint(tmp_path):
    teacher = {**{f"backbone.{k}": v for k, v in vit_state(seed=1).items()},
               **{f"head.{k}": v for k, v in dino_head_state(seed=1).items()}}
    student = {**{f"module.backbone.{k}": v for k, v in vit_state(seed=2).items()},
               **{f"module.head.{k}": v for k, v in dino_head_state(seed=2).items()}}
    path = str(tmp_path / "checkpoint.pth")
    torch.save({"teacher": teacher, "student": student, "epoch": 100, "optimizer": {"state": {}},
                "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 6)}},
               path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.model, loaded.key_layout) == ("teacher_student", "teacher", "timm_vit")
    assert same_state(loaded.trunk, vit_state(seed=1)) and same_state(loaded.heads, dino_head_state(seed=1))
    assert loaded.placeholders == ["args: argparse.Namespace"]
    assert set(loaded.other_keys) == {"epoch", "optimizer", "args", "dino_loss"}
    as_student = load_checkpoint(path, which="student")
    assert as_student.model == "student" and as_student.prefixes_removed == ["module.", "backbone.", "head."]
    assert same_state(as_student.trunk, vit_state(seed=2))


def test_dino_backbone_only_release(tmp_path):
    path = str(tmp_path / "dino_deitsmall16_pretrain.pth")
    torch.save(vit_state(seed=3), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.key_layout, loaded.heads) == ("state_dict", "timm_vit", {})


def test_vissl_dino_checkpoint_keeps_the_teacher_in_the_loss(tmp_path, models):
    student, teacher, ema = models
    loss = {f"momentum_teacher.module.trunk.{k}": v for k, v in teacher.trunk.state_dict().items()}
    loss.update({f"momentum_teacher.module.heads.{k}": v for k, v in teacher.heads.state_dict().items()})
    loss["center"] = torch.zeros(1, 16)
    classy = {"base_model": student.get_classy_state(deep_copy=True), "loss": loss, "train": True,
              "ema_model": ema.get_classy_state(deep_copy=True)}
    path = str(tmp_path / "dino.torch")
    torch.save({"classy_state_dict": classy, "loss": loss, "type": "consolidated"}, path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.model, loaded.available) == ("vissl_classy", "teacher", ["teacher", "student", "ema"])
    assert same_state(loaded.trunk, teacher.trunk.state_dict()) and same_state(loaded.heads, teacher.heads.state_dict())
    assert loaded.unassigned == {} and loaded.prefixes_removed == ["module.", "trunk.", "heads."]
    assert same_state(load_checkpoint(path, which="student").trunk, student.trunk.state_dict())
    assert same_state(load_checkpoint(path, which="ema").trunk, ema.trunk.state_dict())
    with pytest.raises(ValueError, match="which='momentum'"):
        load_checkpoint(path, which="momentum")
    # WEIGHTS_INIT reads the trained (student) model, as the original's classy_state_dict path did.
    torch.manual_seed(1)
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"RESNETS": {"DEPTH": 18}}, "HEAD": MLP_HEAD,
                                              "WEIGHTS_INIT": {"PARAMS_FILE": path}}}).MODEL
    built = vissl_models.build_model(cfg, load_weights=True)
    torch.testing.assert_close(built.trunk._feature_blocks.conv1.weight, student.trunk._feature_blocks.conv1.weight)


# ----------------------------------------------------------------------------- other libraries
def test_torchvision_resnet_file(tmp_path, models):
    import torchvision

    tv = torchvision.models.resnet18()
    path = str(tmp_path / "resnet18-f37072fd.pth")
    torch.save(tv.state_dict(), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.source, loaded.arch, loaded.key_layout) == (
        "state_dict", "torchvision", "resnet", "torchvision_resnet")
    assert "fc.weight" in loaded.trunk and same_state(loaded.trunk, tv.state_dict())
    target = tiny_model(5, HEAD=MLP_HEAD)
    before = model_state(target)
    # The trunk is converted on the fly; the 1000-class fc has no place in a 16-way head, so a
    # strict load still refuses (heads missing) and changes nothing.
    with pytest.raises(StateMismatchError, match="converted torchvision resnet -> vissl.*missing from checkpoint: "
                       r"heads\.0\.clf\.0\.weight") as info:
        target.load_weights(loaded)
    assert info.value.report.converted == "torchvision resnet -> vissl" and not info.value.report.unexpected
    assert same_state(before, target.state_dict())
    report = target.load_weights(loaded, skip=("heads.",))
    assert report.ok and report.converted == "torchvision resnet -> vissl" and len(report.loaded) == 120
    assert report.dropped == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(target.trunk._feature_blocks.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(target.heads[0].clf[0].weight, before["heads.0.clf.0.weight"])


def _timm_models():
    timm = pytest.importorskip("timm")
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.xcit import Xcit

    small = dict(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=4)
    return {
        "timm_vit": lambda: VisionTransformer(**small),
        "timm_deit": lambda: VisionTransformerDistilled(**small),
        "timm_xcit": lambda: Xcit(cls_attn_layers=1, **small),
        "timm_regnet": lambda: timm.create_model("regnetx_002", pretrained=False),
    }


@pytest.mark.parametrize("name", ["timm_vit", "timm_deit", "timm_xcit", "timm_regnet"])
def test_timm_files(tmp_path, name):
    net = _timm_models()[name]()
    path = str(tmp_path / f"{name}.pth")
    torch.save({"model": net.state_dict()} if name == "timm_deit" else net.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.key_layout == name and loaded.layout == ("model" if name == "timm_deit" else "state_dict")
    assert same_state(loaded.trunk, net.state_dict())


def test_timm_safetensors_file(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    net = _timm_models()["timm_vit"]()
    path = str(tmp_path / "model.safetensors")
    safetensors_torch.save_file(net.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.key_layout == "timm_vit" and same_state(loaded.trunk, net.state_dict())


def test_vissl_vit_keys_from_a_vissl_container_are_reported_as_vissl(tmp_path):
    path = str(tmp_path / "vit.torch")
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": vit_state(), "heads": {}}}}}, path)
    assert load_checkpoint(path).key_layout == "vissl_vit"
