"""MomentumTeacher: the original's cosine EMA of parameters, on plain, DDP and FSDP2 models."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import vissl_models
from vissl_models.training import MomentumTeacher, cosine_momentum, teacher_model_config

TINY_DINO = {
    "TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {
        "IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32,
        "QKV_BIAS": True, "DROP_PATH_RATE": 0.1}},
    "HEAD": {"PARAMS": [["dino_head", {"in_dim": 16, "num_clusters": 32, "hidden_dim": 32, "bottleneck_dim": 8,
                                       "normalize_last_layer": True}]]},
}


def tiny_dino(head="dino_head"):
    cfg = vissl_models.load_config({"MODEL": TINY_DINO})
    cfg.MODEL.HEAD.PARAMS[0][0] = head
    return cfg.MODEL, vissl_models.build_model(cfg.MODEL)


def test_cosine_schedule_goes_from_base_to_one():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    values = [cosine_momentum(i, 10, 0.9) for i in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="max_iteration"):
        cosine_momentum(0, 0, 0.9)


def test_teacher_is_a_frozen_copy_and_updates_parameters_only():
    _, student = tiny_dino()
    ema = MomentumTeacher(student, base_momentum=0.9, max_iteration=10)
    teacher = ema.teacher
    assert teacher is not student
    assert all(not p.requires_grad for p in teacher.parameters())
    for (n, s), (_, t) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(s, t), n
    before = {n: t.clone() for n, t in teacher.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student.heads[0].mlp[0].weight.add_(1.0)
    buffers_before = {n: b.clone() for n, b in teacher.named_buffers()}
    m = ema.update(3)
    assert m == pytest.approx(1 - 0.05 * (math.cos(math.pi * 0.3) + 1))
    for n, s in student.named_parameters():
        torch.testing.assert_close(dict(teacher.named_parameters())[n], m * before[n] + (1 - m) * s.detach(),
                                   rtol=1e-6, atol=1e-7)
    for n, b in teacher.named_buffers():
        assert torch.equal(b, buffers_before[n]), n
    x = torch.randn(2, 3, 32, 32)
    out = ema([x])
    assert not out[0][0].requires_grad


def test_constant_momentum_without_cosine():
    _, student = tiny_dino()
    ema = MomentumTeacher(student, base_momentum=0.5, max_iteration=10, cosine=False)
    assert ema.update(7) == 0.5


def test_from_config_turns_off_stochastic_depth():
    model_cfg, student = tiny_dino()
    assert teacher_model_config(model_cfg).TRUNK.VISION_TRANSFORMERS.DROP_PATH_RATE == 0.0
    assert model_cfg.TRUNK.VISION_TRANSFORMERS.DROP_PATH_RATE == 0.1  # the student's config is untouched
    ema = MomentumTeacher.from_config(student, model_cfg, 0.996, 100)
    for (n, s), (_, t) in zip(student.state_dict().items(), ema.teacher.state_dict().items()):
        assert torch.equal(s, t), n
    x = [torch.randn(2, 3, 32, 32)]
    ema.teacher.train()
    torch.testing.assert_close(ema(x)[0][0], ema(x)[0][0])  # no drop path: deterministic in train mode


def test_mismatched_teacher_is_rejected_and_left_unchanged():
    _, student = tiny_dino()
    cfg = vissl_models.load_config({"MODEL": TINY_DINO})
    cfg.MODEL.HEAD.PARAMS[0][1]["bottleneck_dim"] = 4
    other = vissl_models.build_model(cfg.MODEL)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="shard"):
        MomentumTeacher(student, other, 0.9, 10)
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(ValueError, match="base_momentum"):
        MomentumTeacher(student, None, 1.5, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode in ("ddp", "fsdp"):
            _check_update(rank, world, mode, result_dir)
    finally:
        dist.destroy_process_group()


def _check_update(rank, world, mode, result_dir):
    torch.manual_seed(0)
    model_cfg, student = tiny_dino("dino_head_fsdp" if mode == "fsdp" else "dino_head")
    reference = [p.detach().clone() for p in student.parameters()]
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(student)
        ema = MomentumTeacher(wrapped, base_momentum=0.9, max_iteration=4)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))

        def shard(model):
            for block in model.trunk.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model.heads[0], mesh=mesh)
            return fully_shard(model, mesh=mesh)

        wrapped = shard(student)
        ema = MomentumTeacher.from_config(wrapped, model_cfg, 0.9, 4, shard=shard)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)
    x = torch.randn(2, 3, 32, 32)
    wrapped(x)[0][0].square().mean().backward()
    opt.step()
    ema(x)  # a teacher forward first: FSDP2 leaves the root unsharded after it
    m = ema.update(1)
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    student_now = [full(p.detach()) for p in wrapped.parameters()]
    teacher_now = [full(p) for p in ema.teacher.parameters()]
    expected = [m * r + (1 - m) * s for r, s in zip(reference, student_now)]
    torch.save({"teacher": teacher_now, "expected": expected, "m": m,
                "moved": [not torch.equal(r, s) for r, s in zip(reference, student_now)]},
               os.path.join(result_dir, f"{mode}{rank}.pt"))


def test_two_process_update_ddp_and_fsdp2(tmp_path):
    """2 gloo processes: after one SGD step the teacher (sharded for FSDP2) equals the EMA formula
    applied to the full student parameters, on both ranks."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for mode in ("ddp", "fsdp"):
        results = [torch.load(tmp_path / f"{mode}{r}.pt") for r in range(2)]
        assert all(any(r["moved"]) for r in results), mode
        for r in results:
            assert r["m"] == pytest.approx(cosine_momentum(1, 4, 0.9))
            for t, e in zip(r["teacher"], r["expected"]):
                torch.testing.assert_close(t, e, rtol=1e-6, atol=1e-7)
        for t0, t1 in zip(results[0]["teacher"], results[1]["teacher"]):
            assert torch.equal(t0, t1), mode  # every rank holds the same teacher


def test_sharded_student_needs_a_sharded_teacher():
    # A DTensor-like parameter is enough to trigger the check; no process group needed.
    _, student = tiny_dino()

    class Fake(torch.nn.Parameter):
        def to_local(self):
            return self

    student.heads[0].mlp[0].weight = Fake(student.heads[0].mlp[0].weight.detach())
    with pytest.raises(ValueError, match="sharded"):
        MomentumTeacher(student, None, 0.9, 10)
