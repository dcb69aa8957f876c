"""WeightNormLinear: the fused kernel, the original's numbers and keys, FSDP2 bf16 mixed precision."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

import vissl_models
from specs import HEAD_SPECS
from utils import flat_outputs, model_config
from vissl_models.layers import WeightNormLinear

WEIGHT_NORM_SPECS = []
for _spec in HEAD_SPECS:
    torch.manual_seed(0)
    _head = vissl_models.get_model_head(_spec.name)(model_config(**_spec.model), **_spec.kwargs)
    if any(isinstance(m, WeightNormLinear) for m in _head.modules()):
        WEIGHT_NORM_SPECS.append(_spec)
del _spec, _head


def separate_ops_weight(layer: WeightNormLinear) -> torch.Tensor:
    """The weight computed op by op (what this layer did before it used the fused kernel)."""
    v, g = layer.weight_v, layer.weight_g
    return v * (g / v.norm(dim=1, keepdim=True))


def random_layer(in_features=24, out_features=40, bias=True) -> WeightNormLinear:
    layer = WeightNormLinear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight_g.uniform_(0.5, 2.0)
    return layer


def test_every_weight_normalised_head_family_is_covered():
    assert {s.name for s in WEIGHT_NORM_SPECS} >= {"dino_head", "dino_head_fsdp", "ibot_head", "swav_head"}


def test_keys_stay_weight_g_and_weight_v():
    layer = WeightNormLinear(8, 5)
    assert list(layer.state_dict()) == ["weight_g", "weight_v", "bias"]
    assert layer.weight_g.shape == (5, 1) and layer.weight_v.shape == (5, 8)


def test_matches_torch_weight_norm_bit_for_bit():
    """The original wraps nn.Linear with nn.utils.weight_norm; the same v, g give the same bits."""
    layer = random_layer()
    reference = nn.Linear(24, 40)
    with torch.no_grad():
        reference.bias.copy_(layer.bias)
    reference = nn.utils.weight_norm(reference, dim=0)
    with torch.no_grad():
        reference.weight_g.copy_(layer.weight_g)
        reference.weight_v.copy_(layer.weight_v)
    x = torch.randn(7, 24)
    assert torch.equal(layer(x), reference(x))
    layer(x).square().sum().backward()
    reference(x).square().sum().backward()
    for name in ("weight_g", "weight_v", "bias"):
        assert torch.equal(getattr(layer, name).grad, getattr(reference, name).grad), name


def test_outputs_and_gradients_agree_with_the_separate_ops_within_float_rounding():
    """The fused kernel rounds differently from norm / divide / multiply: within 1e-6 relative."""
    layer = random_layer(out_features=300)
    x = torch.randn(9, 24)
    fused = layer(x)
    fused.square().sum().backward()
    fused_grads = [p.grad.clone() for p in (layer.weight_g, layer.weight_v)]
    layer.zero_grad()
    plain = nn.functional.linear(x, separate_ops_weight(layer), layer.bias)
    plain.square().sum().backward()
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6 * plain.abs().max().item())
    for got, want in zip(fused_grads, (layer.weight_g.grad, layer.weight_v.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_frozen_g_gets_no_gradient_and_v_does():
    head = vissl_models.get_model_head("dino_head")(model_config(), in_dim=8, num_clusters=6, hidden_dim=12,
                                                    bottleneck_dim=4)
    head(torch.randn(3, 8))[0].sum().backward()
    assert head.prototypes0.weight_g.grad is None and head.prototypes0.weight_v.grad is not None
    assert torch.equal(head.prototypes0.weight_g, torch.ones(6, 1))


def test_a_buffer_g_in_another_dtype_is_cast_to_the_weight_dtype():
    """FSDP2 casts parameters, not buffers: dino_head_fsdp keeps g as an fp32 buffer."""
    head = vissl_models.get_model_head("dino_head_fsdp")(model_config(), in_dim=8, num_clusters=6,
                                                         hidden_dim=12, bottleneck_dim=4)
    proto = head.prototypes0
    assert "weight_g" in dict(proto.named_buffers())
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    want = proto(x)
    proto.weight_v.data = proto.weight_v.data.bfloat16()
    got = proto(x.bfloat16())
    assert got.dtype == torch.bfloat16 and proto.weight_g.dtype == torch.float32
    torch.testing.assert_close(got.float(), want, rtol=0, atol=2e-2)


@pytest.fixture(scope="module")
def single_process_group(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("fsdp") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("spec", WEIGHT_NORM_SPECS, ids=[s.id for s in WEIGHT_NORM_SPECS])
def test_fsdp2_bf16_mixed_precision_forward_backward(spec, single_process_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    def build():
        torch.manual_seed(0)
        return vissl_models.get_model_head(spec.name)(model_config(**spec.model), **spec.kwargs).train()

    x = torch.randn(*spec.input_shape)
    with torch.no_grad():
        want = list(flat_outputs(build()(x)))
    head = build()
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    mesh = init_device_mesh("cpu", (1,))
    # Batch norms keep fp32 parameters next to their fp32 running statistics (CPU batch_norm
    # refuses bf16 weights with fp32 buffers) and take the bf16 activations as they come.
    for module in head.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            fully_shard(module, mesh=mesh,
                        mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, cast_forward_inputs=False))
    fully_shard(head, mesh=mesh,
                mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    got = list(flat_outputs(head(x)))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        # bf16 keeps about 3 significant digits: after a few layers the outputs agree with fp32 to 5% in norm.
        assert (g.float() - w).norm() <= 5e-2 * w.norm()
    sum(o.float().square().sum() for o in got).backward()
    params = dict(head.named_parameters())
    for name in trainable:
        if any(part in name for part in spec.no_grad_ok):
            continue
        grad = params[name].grad
        assert grad is not None and grad.dtype == torch.float32, name
        assert torch.isfinite(grad.full_tensor()).all(), name


def test_traces_as_one_graph():
    layer = random_layer()
    x = torch.randn(5, 24)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)
