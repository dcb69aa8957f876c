"""XCiT trunks: the original's key layout, outputs against timm's XCiT, seeding, checkpointing, errors."""

import copy

import pytest
import torch

import vissl_models
from vissl_models.config.loader import ConfigError
from utils import build_trunk, model_config, randomize as shared_randomize

TINY = {"IMAGE_SIZE": 32, "PATCH_SIZE": 16, "HIDDEN_DIM": 32, "NUM_LAYERS": 2, "NUM_HEADS": 4}


def build(name="xcit", seed=0, **xcit):
    return build_trunk(name, seed, "XCIT", dict(TINY, **xcit))


def randomize(module, seed=1):
    """Random weights and BatchNorm statistics everywhere."""
    return shared_randomize(module, seed, buffers=True)


def expected_keys(dim, heads, depth, cls_blocks, stem):
    """The original's state_dict keys and shapes (stem: channel widths of the conv patch embedding)."""
    keys = {"cls_token": (1, 1, dim), "norm.weight": (dim,), "norm.bias": (dim,),
            "pos_embeder.token_projection.weight": (dim, 64, 1, 1), "pos_embeder.token_projection.bias": (dim,)}
    for i, (cin, cout) in enumerate(zip(stem[:-1], stem[1:])):
        p = f"patch_embed.proj.{2 * i}."
        keys[p + "0.weight"] = (cout, cin, 3, 3)
        for b in ("weight", "bias", "running_mean", "running_var"):
            keys[p + "1." + b] = (cout,)
        keys[p + "1.num_batches_tracked"] = ()

    def common(p):
        for n in ("norm1", "norm2"):
            keys[f"{p}{n}.weight"] = keys[f"{p}{n}.bias"] = (dim,)
        keys[p + "attn.qkv.weight"], keys[p + "attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
        keys[p + "attn.proj.weight"], keys[p + "attn.proj.bias"] = (dim, dim), (dim,)
        keys[p + "mlp.fc1.weight"], keys[p + "mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
        keys[p + "mlp.fc2.weight"], keys[p + "mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
        keys[p + "gamma1"] = keys[p + "gamma2"] = (dim,)

    for i in range(depth):
        p = f"blocks.{i}."
        common(p)
        keys[p + "gamma3"] = keys[p + "norm3.weight"] = keys[p + "norm3.bias"] = (dim,)
        keys[p + "attn.temperature"] = (heads, 1, 1)
        for c in ("conv1", "conv2"):
            keys[f"{p}local_mp.{c}.weight"], keys[f"{p}local_mp.{c}.bias"] = (dim, 1, 3, 3), (dim,)
        for b in ("weight", "bias", "running_mean", "running_var"):
            keys[p + "local_mp.bn." + b] = (dim,)
        keys[p + "local_mp.bn.num_batches_tracked"] = ()
    for i in range(cls_blocks):
        common(f"cls_attn_blocks.{i}.")
    return keys


@pytest.mark.parametrize(
    "name,patch,cls_blocks,stem",
    [("xcit", 16, 2, [3, 4, 8, 16, 32]), ("xcit", 8, 2, [3, 8, 16, 32]), ("xcit_fsdp", 16, 3, [3, 4, 8, 16, 32])],
)
def test_state_dict_layout_matches_original(name, patch, cls_blocks, stem):
    # xcit_fsdp: the original built NUM_LAYERS class-attention blocks there (3 here), xcit two.
    trunk = build(name, PATCH_SIZE=patch, NUM_LAYERS=3)
    got = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert got == expected_keys(32, 4, 3, cls_blocks, stem)


@pytest.mark.parametrize("tokens_norm", [True, False])
def test_outputs_match_timm_xcit(tokens_norm):
    timm_xcit = pytest.importorskip("timm.models.xcit")
    ours = randomize(build(TOKENS_NORM=tokens_norm, ETA=0.5, NUM_LAYERS=3)).eval()
    ref = timm_xcit.Xcit(
        img_size=32, patch_size=16, embed_dim=32, depth=3, num_heads=4, eta=0.5, tokens_norm=tokens_norm,
        num_classes=0,
    ).eval()
    state = {}
    for k, v in ours.state_dict().items():
        k = k.replace("pos_embeder.", "pos_embed.")
        if k.startswith("cls_attn_blocks.") and ".attn.qkv." in k:  # timm splits q, k and v
            for name, part in zip("qkv", v.chunk(3)):
                state[k.replace(".qkv.", f".{name}.")] = part
        else:
            state[k] = v
    ref.load_state_dict(state)
    for size in [(32, 32), (48, 64)]:  # the Fourier positions follow the token grid
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            cls, fmap = ours(x, ["lastCLS", "lastMAP"])
            tokens = ref.forward_features(x)
        torch.testing.assert_close(cls, tokens[:, 0], rtol=1e-4, atol=1e-5)
        grid = (size[0] // 16, size[1] // 16)
        torch.testing.assert_close(fmap, tokens[:, 1:].reshape(2, *grid, 32), rtol=1e-4, atol=1e-5)


def test_default_and_repeated_features():
    trunk = randomize(build()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (default,) = trunk(x)
        a, b = trunk(x, ["lastCLS", "lastCLS"])  # linear-eval configs ask for it twice
    torch.testing.assert_close(default, a)
    torch.testing.assert_close(a, b)


def test_init_follows_model_init_seed_not_global_rng():
    a, b = build(seed=0), build(seed=123)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    torch.manual_seed(0)
    cfg = model_config(_MODEL_INIT_SEED=5, TRUNK={"NAME": "xcit", "XCIT": TINY})
    c = vissl_models.get_model_trunk("xcit")(cfg, "xcit")
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_block_checkpointing_gives_same_grads_and_updates_batchnorm_once():
    results = []
    for ck in (False, True):
        trunk = build(DROP_PATH_RATE=0.2, CHECKPOINT_XCA_BLOCK=ck, CHECKPOINT_ATTN_BLOCK=ck).train()
        torch.manual_seed(3)
        (out,) = trunk(torch.randn(2, 3, 32, 32))
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in trunk.named_parameters()}
        results.append((copy.deepcopy(trunk.state_dict()), grads))
    (state_a, grads_a), (state_b, grads_b) = results
    for k in state_a:  # BatchNorm statistics and counters: updated once, as without checkpointing
        assert torch.equal(state_a[k], state_b[k]), k
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-6)


def test_errors():
    trunk = build()
    with pytest.raises(ValueError, match="lastMAP"):
        trunk(torch.randn(1, 3, 32, 32), ["res5"])
    with pytest.raises(ConfigError, match="PATCH_SIZE"):
        build(PATCH_SIZE=4)
    with pytest.raises(ConfigError, match="NUM_HEADS"):
        build(NUM_HEADS=5)
    with pytest.raises(ConfigError, match="INPUT_TYPE"):
        cfg = model_config(INPUT_TYPE="lab", TRUNK={"NAME": "xcit", "XCIT": TINY})
        vissl_models.get_model_trunk("xcit")(cfg, "xcit")


@pytest.mark.parametrize("train", [False, True])
def test_compiles_without_graph_breaks(train):
    torch._dynamo.reset()
    # training: block checkpointing goes through the compiled path of the BatchNorm-safe wrapper
    trunk = build(NUM_LAYERS=1, DROP_PATH_RATE=0.1, CHECKPOINT_XCA_BLOCK=True, CHECKPOINT_ATTN_BLOCK=True).train(train)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    eager = trunk(x, ["lastCLS", "lastMAP"])
    torch.manual_seed(0)
    backend = "aot_eager" if train else "eager"
    compiled = torch.compile(trunk, fullgraph=True, backend=backend)(x, ["lastCLS", "lastMAP"])
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b)
    if train:
        sum(o.sum() for o in compiled).backward()
