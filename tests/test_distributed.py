"""Distributed training pieces on CPU: two gloo processes forked by the test (FileStore in tmp_path).

Each multi-process test runs its checks inside the ranks (an assertion there fails the test) and
compares against an unsharded model built from the same seed in the same process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import vissl_models
from vissl_models.config import ConfigError
from vissl_models.distributed import (
    dcp_to_vissl,
    fsdp_options,
    load_dcp,
    read_dcp_model_state,
    save_dcp,
    shard_model,
    sync_bn_group_ranks,
    vissl_to_dcp,
    wrap_points,
)
from utils import flat_outputs, model_config

VIT = {"NAME": "vision_transformer_fsdp", "VISION_TRANSFORMERS": {
    "IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
    "QKV_BIAS": True}}
DINO = ["dino_head_fsdp", {"in_dim": 16, "num_clusters": [20], "hidden_dim": 24, "bottleneck_dim": 8}]
REGNET = {"NAME": "regnet_fsdp", "REGNET": {"depth": 5, "w_0": 8, "w_a": 8, "w_m": 1.6, "group_width": 8,
                                             "stem_width": 8}}
SWAV = ["swav_head_fsdp", {"dims": [32, 16], "use_bn": True, "num_clusters": [5]}]
CASES = {"vit_dino": (VIT, DINO), "regnet_swav": (REGNET, SWAV),
         # Activation checkpointing: every ViT block; every RegNet block group.
         "vit_dino_ckpt": ({**VIT, "VISION_TRANSFORMERS": {**VIT["VISION_TRANSFORMERS"], "CHECKPOINT_BLOCK": True}},
                           DINO),
         "regnet_swav_ckpt": ({**REGNET, "REGNET": {**REGNET["REGNET"], "stage_checkpoints": [[1], [1], [1], [1]]}},
                              SWAV)}


def build(case: str, seed: int = 0, **extra):
    trunk, head = CASES[case]
    if case.endswith("_ckpt"):
        extra.setdefault("ACTIVATION_CHECKPOINTING", {"USE_ACTIVATION_CHECKPOINTING": True})
    torch.manual_seed(seed)
    return vissl_models.build_model(model_config(TRUNK=trunk, HEAD={"PARAMS": [head]}, **extra))


def batch(rank: int, n: int = 2):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(n, 3, 32, 32, generator=g)


def flat(out):
    return list(flat_outputs(out))


def loss_of(out):
    # Fixed random weights per output feature (the same for every sample, so the loss of a batch is
    # the sum of its samples' losses) so every output element matters differently.
    g = torch.Generator().manual_seed(7)
    return sum((o.float() * torch.randn(o.shape[1:], generator=g)).sum() for o in flat(out))


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def close(a, b, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(full(a).detach().float(), full(b).detach().float(), atol=atol, rtol=rtol)


def _entry(rank, world, store_dir, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(store_dir, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world, tmp_path, *args):
    """Run ``fn(rank, world, *args)`` on ``world`` forked gloo ranks; a failure in any rank fails here."""
    os.makedirs(tmp_path, exist_ok=True)
    mp.start_processes(_entry, args=(world, str(tmp_path), fn, args), nprocs=world, start_method="fork")


# --------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("world", range(1, 9))
def test_sync_bn_group_ranks_for_worlds_1_to_8(world):
    assert sync_bn_group_ranks(world, 0) == [list(range(world))]
    assert sync_bn_group_ranks(world, -1, local_world_size=world) == [list(range(world))]
    for size in range(1, world + 1):
        if world % size:
            with pytest.raises(ConfigError, match="does not divide the world size"):
                sync_bn_group_ranks(world, size)
            continue
        groups = sync_bn_group_ranks(world, size)
        assert len(groups) == world // size and all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(world))
        assert all(g == list(range(g[0], g[0] + size)) for g in groups)
        # -1: one group per machine of `size` ranks.
        assert sync_bn_group_ranks(world, -1, local_world_size=size) == groups


def test_sync_bn_group_size_errors():
    with pytest.raises(ConfigError, match="GROUP_SIZE: got -2"):
        sync_bn_group_ranks(4, -2)
    with pytest.raises(ValueError, match="local_world_size is needed"):
        sync_bn_group_ranks(4, -1)
    with pytest.raises(ConfigError, match="GROUP_SIZE: got 8"):
        sync_bn_group_ranks(4, 8)


def test_convert_sync_batchnorm_warns_when_the_config_flag_is_off():
    model = build("regnet_swav")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="CONVERT_BN_TO_SYNC_BN is false"):
        model.convert_sync_batchnorm()
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.convert_sync_batchnorm(force=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_fsdp_config_mapping_and_report():
    opts, report = fsdp_options(vissl_models.load_config({}).MODEL.FSDP_CONFIG)
    # VISSL's defaults (mixed_precision true, compute_dtype float32): no cast, fp32 everywhere.
    assert opts["mp_policy"].param_dtype is None and opts["mp_policy"].reduce_dtype is None
    assert {"flatten_parameters", "bucket_cap_mb", "clear_autocast_cache"} <= set(report.not_applied)
    opts, report = fsdp_options({"compute_dtype": "bfloat16", "fp32_reduce_scatter": True})
    assert (opts["mp_policy"].param_dtype, opts["mp_policy"].reduce_dtype) == (torch.bfloat16, torch.float32)
    opts, _ = fsdp_options({"compute_dtype": "bfloat16", "mixed_precision": False})
    assert opts["mp_policy"].param_dtype is None
    with pytest.warns(UserWarning, match="bucket_cap_mb=25 has no FSDP2 meaning"):
        fsdp_options({"bucket_cap_mb": 25})
    with pytest.raises(ConfigError, match=r"compute_dtype: got 'float8'.*bfloat16"):
        fsdp_options({"compute_dtype": "float8"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['flaten_parameters'\]"):
        fsdp_options({"flaten_parameters": True})
    with pytest.raises(ConfigError, match="AUTO_WRAP_THRESHOLD"):
        fsdp_options({"AUTO_WRAP_THRESHOLD": -1})


def test_wrap_points_follow_the_original():
    vit = wrap_points(build("vit_dino"))
    assert vit == ["trunk.blocks.0", "trunk.blocks.1", "heads.0"]
    regnet = wrap_points(build("regnet_swav"))
    assert "trunk._feature_blocks.res2.block1-part0.block1-0" in regnet
    assert regnet.index("trunk._feature_blocks.res2.block1-part0.block1-0") < regnet.index(
        "trunk._feature_blocks.res2.block1-part0")
    assert regnet[-1] == "heads.0"
    big = wrap_points(build("regnet_swav"), auto_wrap_threshold=1000)
    small_convs = [n for n in big if n.endswith((".a.0", ".b.0", ".c.0"))]
    assert small_convs and all(n in big for n in regnet)


def test_shard_model_needs_a_process_group():
    model = build("vit_dino")
    with pytest.raises(RuntimeError, match="initialised process group"):
        shard_model(model)


# ------------------------------------------------------------------------------------ two ranks
def _fsdp_equals_unsharded(rank, world, case):
    ref = build(case)
    model = shard_model(build(case))
    assert model.shard_report.units[-1] == "" and len(model.shard_report.units) > 2
    # Same outputs on this rank's batch.
    out = model(batch(rank))
    for a, b in zip(flat(out), flat(ref(batch(rank)))):
        close(a, b)
    # Gradients: FSDP averages over ranks, so the reference is the mean of per-rank gradients.
    loss_of(out).backward()
    ref.zero_grad()
    for r in range(world):
        (loss_of(ref(batch(r))) / world).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is None:
            assert ref_params[name].grad is None, name
            continue
        close(p.grad, ref_params[name].grad)
    # One SGD step.
    for m in (model, ref):
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    for name, p in model.named_parameters():
        close(p, ref_params[name])
    # Full state of the sharded model == unsharded state (rank 0), same keys.
    state = model.get_classy_state()
    if rank == 0:
        want = ref.get_classy_state()
        for part in ("trunk", "heads"):
            assert list(state["model"][part]) == list(want["model"][part])
            for k, v in want["model"][part].items():
                if "running" not in k and "num_batches" not in k:  # BN statistics saw other batches
                    close(state["model"][part][k], v)
    # A full state loads into a sharded model (set_classy_state), as the unsharded model has it.
    other = shard_model(build(case, seed=5))
    report = other.set_classy_state(ref.get_classy_state())
    assert report.ok
    other.eval(), ref.eval()
    with torch.no_grad():
        for a, b in zip(flat(other(batch(rank))), flat(ref(batch(rank)))):
            close(a, b)


@pytest.mark.parametrize("case", ["vit_dino", "regnet_swav"])
def test_fsdp2_matches_unsharded_outputs_grads_step_and_state(tmp_path, case):
    run_ranks(_fsdp_equals_unsharded, 2, tmp_path, case)


def _compiled_checkpointed(rank, world, case):
    ref = build(case)
    model = torch.compile(shard_model(build(case)), backend="aot_eager")
    out = model(batch(rank))
    for a, b in zip(flat(out), flat(ref(batch(rank)))):
        close(a, b)
    loss_of(out).backward()
    for r in range(world):
        (loss_of(ref(batch(r))) / world).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        name = name.replace("_orig_mod.", "")
        if p.grad is not None:
            close(p.grad, ref_params[name].grad)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["vit_dino_ckpt", "regnet_swav_ckpt"])
def test_fsdp2_composes_with_activation_checkpointing_and_compile(tmp_path, case):
    run_ranks(_compiled_checkpointed, 2, tmp_path, case)


def _ddp_equals_single_process(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref = build("vit_dino")
    model = DDP(build("vit_dino"))
    loss_of(model(batch(rank))).backward()
    # The reference sees the global batch (both ranks' halves) in one process.
    (loss_of(ref(torch.cat([batch(r) for r in range(world)]))) / world).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.module.named_parameters():
        if p.grad is not None:
            close(p.grad, ref_params[name].grad)
    # SyncBN subgroups from GROUP_SIZE (numerics need GPUs: benchmarks/gpu_syncbn_check.py).
    for group_size, local, size in ((1, "2", 1), (0, "2", None), (-1, "1", 1), (-1, "2", None)):
        os.environ["LOCAL_WORLD_SIZE"] = local
        sync = build("regnet_swav", SYNC_BN_CONFIG={"CONVERT_BN_TO_SYNC_BN": True, "GROUP_SIZE": group_size})
        sync.convert_sync_batchnorm()
        groups = {m.process_group for m in sync.modules() if isinstance(m, nn.SyncBatchNorm)}
        assert len(groups) == 1 and not any(isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm)
                                            for m in sync.modules())
        (group,) = groups
        if size is None:
            assert group is None  # the default (global) group
        else:
            assert dist.get_world_size(group) == size and dist.get_rank(group) == 0


def test_ddp_gradients_equal_a_single_process_run_and_sync_bn_groups(tmp_path):
    run_ranks(_ddp_equals_single_process, 2, tmp_path)


def _bf16_heads(rank, world, specs, out_file):
    failures = {}
    for spec in specs:
        torch.manual_seed(0)
        head = vissl_models.get_model_head(spec.name)(model_config(**spec.model), **spec.kwargs)
        holder = nn.Module()
        holder.heads = nn.ModuleList([head])
        holder.forward = lambda x, h=holder: h.heads[0](x)
        shard_model(holder, fsdp_config={"compute_dtype": "bfloat16"})
        try:
            out = holder(torch.randn(*spec.input_shape, requires_grad=True))
            assert any(o.dtype == torch.bfloat16 for o in flat(out)), f"{spec.id}: no bf16 output"
            loss_of(out).backward()
        except RuntimeError as e:
            failures[spec.id] = str(e).splitlines()[0]
    if rank == 0:
        torch.save(failures, out_file)


def test_bf16_mixed_precision_runs_for_each_head(tmp_path):
    from specs import HEAD_SPECS

    specs = list(HEAD_SPECS)
    run_ranks(_bf16_heads, 2, tmp_path, specs, str(tmp_path / "failures.pt"))
    failures = torch.load(tmp_path / "failures.pt")
    assert not failures


def _dcp_save(rank, world, case, folder):
    model = shard_model(build(case, seed=3))
    save_dcp(model, folder)


def _dcp_load(rank, world, case, folder, ref_file):
    model = shard_model(build(case, seed=9))
    load_dcp(model, folder)
    ref = build(case, seed=9)
    ref.load_state_dict(torch.load(ref_file))
    model.eval(), ref.eval()
    with torch.no_grad():
        for a, b in zip(flat(model(batch(rank))), flat(ref(batch(rank)))):
            close(a, b, atol=0, rtol=0)


# The ViT case covers resharding in the default run; the RegNet one adds BatchNorm buffers (slow).
@pytest.mark.parametrize("case", ["vit_dino", pytest.param("regnet_swav", marks=pytest.mark.slow)])
def test_dcp_round_trips_two_to_one_and_one_to_two(tmp_path, case):
    # 2 -> 1: two ranks save shards; one process (no process group) loads into a plain model.
    run_ranks(_dcp_save, 2, tmp_path / "a", case, str(tmp_path / "dcp2"))
    plain = build(case, seed=11)
    load_dcp(plain, str(tmp_path / "dcp2"))
    saved = build(case, seed=3)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in saved.state_dict().items())
    # dcp -> consolidated VISSL file -> dcp again, all exact.
    dcp_to_vissl(str(tmp_path / "dcp2"), str(tmp_path / "model.torch"))
    report = build(case, seed=11).load_checkpoint(str(tmp_path / "model.torch"))
    assert report.ok
    vissl_to_dcp(str(tmp_path / "model.torch"), str(tmp_path / "dcp_again"))
    again = read_dcp_model_state(str(tmp_path / "dcp_again"))
    assert all(torch.equal(again[k], v) for k, v in saved.state_dict().items())
    # 1 -> 2: one process saves; two ranks load into their shards.
    one = build(case, seed=4)
    save_dcp(one, str(tmp_path / "dcp1"))
    torch.save(one.state_dict(), tmp_path / "ref.pt")
    run_ranks(_dcp_load, 2, tmp_path / "b", case, str(tmp_path / "dcp1"), str(tmp_path / "ref.pt"))


def test_dcp_conversion_refuses_to_overwrite_and_bad_dirs(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    model = build("vit_dino")
    torch.save({"classy_state_dict": {"base_model": model.get_classy_state()}}, tmp_path / "m.torch")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        vissl_to_dcp(str(tmp_path / "m.torch"), str(tmp_path / "busy"))
    assert os.listdir(tmp_path / "busy") == ["x"]
    with pytest.raises(FileNotFoundError, match="no .metadata"):
        dcp_to_vissl(str(tmp_path / "busy"), str(tmp_path / "out.torch"))
    assert not (tmp_path / "out.torch").exists()


def test_dcp_to_vissl_checks_the_output_before_reading(tmp_path):
    model = build("vit_dino", seed=6)
    save_dcp(model, str(tmp_path / "dcp"))
    before = sorted(os.listdir(tmp_path / "dcp"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="folder"):
        dcp_to_vissl(str(tmp_path / "dcp"), str(tmp_path / "taken"))
    with pytest.raises(ValueError):
        dcp_to_vissl(str(tmp_path / "dcp"), str(tmp_path / "missing" / "m.torch"))
    assert sorted(os.listdir(tmp_path / "dcp")) == before
    assert os.listdir(tmp_path / "taken") == [] and not (tmp_path / "missing").exists()


def _shard_list_into_sharded(rank, world, case, path):
    model = shard_model(build(case, seed=8))
    report = model.load_checkpoint(path)
    assert report.ok
    ref = build(case, seed=2)
    model.eval(), ref.eval()
    with torch.no_grad():
        for a, b in zip(flat(model(batch(rank))), flat(ref(batch(rank)))):
            close(a, b, atol=0, rtol=0)


def test_original_shard_list_checkpoint_loads_into_a_sharded_model(tmp_path):
    from test_checkpoint_layouts import fsdp_local_states

    # The original's fairscale run on 3 ranks: blocks flattened in their own FSDP instances.
    model = build("vit_dino", seed=2)
    trunk_states, trunk_metas = fsdp_local_states(
        model.trunk, [("", "flat"), ("blocks.0", "flat"), ("blocks.1", "separate")], 3)
    head_states, head_metas = fsdp_local_states(model.heads[0], [("", "flat")], 3)
    names = []
    for rank in range(3):
        base = {"model": {"trunk": trunk_states[rank], "heads": [head_states[rank]]},
                "meta": {"trunk": trunk_metas[rank], "heads": [head_metas[rank]]}}
        names.append(f"model_shard{rank}.torch")
        torch.save({"type": "shard", "classy_state_dict": {"base_model": base}}, tmp_path / names[-1])
    torch.save({"type": "shard_list", "shards": names}, tmp_path / "model.torch")
    run_ranks(_shard_list_into_sharded, 2, tmp_path / "run", "vit_dino", str(tmp_path / "model.torch"))


def test_convert_command_between_dcp_and_vissl(tmp_path, capsys):
    from vissl_models.cli import main

    model = build("vit_dino", seed=6)
    save_dcp(model, str(tmp_path / "dcp"))
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "m.torch")]) == 0
    assert "DCP directory" in capsys.readouterr().out
    assert build("vit_dino", seed=1).load_weights(str(tmp_path / "m.torch")).ok
    assert main(["convert", str(tmp_path / "m.torch"), str(tmp_path / "dcp2"), "--to", "dcp"]) == 0
    again = read_dcp_model_state(str(tmp_path / "dcp2"))
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    # A file without --to, or a DCP directory to a library layout: refused, nothing written.
    assert main(["convert", str(tmp_path / "m.torch"), str(tmp_path / "x.pth")]) == 2
    assert "--to is required" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "x.pth"), "--to", "timm"]) == 2
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------------------ extraction
def _extract_ranks(rank, world, argv, also_direct):
    from test_extract import run_cli

    code, _, err = run_cli(argv)
    assert code == 0, err
    if also_direct is not None:
        # The shards of a finished run are reused by a rerun (same fingerprint): written once only.
        from vissl_models.distributed.extract import run_distributed_extraction
        from vissl_models.extract import feature_function, transform_from, preprocessing

        out, settings, paths = also_direct
        model = build("regnet_swav")
        names, fn = feature_function(model, ["res4", "flatten"])
        tf = transform_from(preprocessing(model, 32, 40))
        args = (out, settings, model, paths, names, fn, tf, torch.device("cpu"), 2, 0, False)
        first = run_distributed_extraction(*args)
        folder = out + ".shards"
        assert len(os.listdir(folder)) == 5  # 10 images, batches of 2, one batch a shard
        stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))}
        dist.barrier()
        again = run_distributed_extraction(*args)
        assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))} == stamps
        if rank == 0:
            assert again.paths == first.paths and all(
                np.array_equal(again.features[n], first.features[n]) for n in names)


def test_distributed_extraction_equals_single_process(tmp_path):
    from PIL import Image

    from test_extract import run_cli

    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.RandomState(0)
    for i in range(9):
        Image.fromarray(rng.randint(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "5b.png").write_bytes(b"not a png")  # skipped in both runs, in place
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("config:\n  MODEL:\n    TRUNK: " + repr(REGNET).replace("'", '"') + "\n    HEAD:\n      PARAMS: "
                   + repr([SWAV]).replace("'", '"') + "\n")
    common = [str(cfg), "--images", str(root), "--layers", "res4,flatten", "--crop", "32", "--resize", "40",
              "--batch-size", "1", "--no-progress"]
    code, _, err = run_cli(common + ["--out", str(tmp_path / "one.npz")])
    assert code == 0, err
    # Shards of one batch each: 10 images over 2 ranks, shard i on rank i % 2.
    import vissl_models.distributed.extract as dext

    old = dext.SHARD_BATCHES
    dext.SHARD_BATCHES = 1
    try:
        paths = sorted(str(p) for p in root.glob("*.png"))
        run_ranks(_extract_ranks, 2, tmp_path / "run", common + ["--out", str(tmp_path / "two.npz")],
                  (str(tmp_path / "direct.npz"), {"case": "direct"}, paths))
    finally:
        dext.SHARD_BATCHES = old
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(one.files) == sorted(two.files) == ["flatten", "paths", "res4"]
    assert list(one["paths"]) == list(two["paths"]) and len(one["paths"]) == 9
    for name in ("res4", "flatten"):
        assert np.array_equal(one[name], two[name])
    assert not (tmp_path / "two.npz.shards").exists()


def _every_trunk(rank, world, specs, out_file):
    from test_trunks import build_trunk

    failures = {}
    for spec in specs:
        try:
            ref = build_trunk(spec).eval()
            holder = nn.Module()
            holder.trunk = build_trunk(spec).eval()
            holder.forward = lambda x, h=holder: h.trunk(x)
            shard_model(holder)
            g = torch.Generator().manual_seed(rank)
            h, w = (spec.input_size, spec.input_size) if isinstance(spec.input_size, int) else spec.input_size
            x = torch.randn(2, spec.in_chans, h, w, generator=g)
            with torch.no_grad():
                for a, b in zip(flat(holder(x)), flat(ref(x))):
                    close(a, b)
            holder.train()
            loss_of(holder(x)).backward()
        except Exception as e:  # noqa: BLE001 - collected and reported per trunk
            failures[spec.id] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if rank == 0:
        torch.save(failures, out_file)


@pytest.mark.slow
def test_shard_model_works_for_every_trunk(tmp_path):
    from specs import TRUNK_SPECS

    specs = [s for s in TRUNK_SPECS if "timm" not in s.name]
    run_ranks(_every_trunk, 2, tmp_path, specs, str(tmp_path / "failures.pt"))
    failures = torch.load(tmp_path / "failures.pt")
    assert not failures, failures
