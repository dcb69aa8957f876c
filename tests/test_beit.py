"""BEiT trunk: the original's key layout and index buffers, outputs and per-block features against
timm's BEiT, feature names, errors."""

import pytest
import torch

from vissl_models.config.loader import ConfigError
from utils import build_trunk, randomize as shared_randomize

TINY = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "NUM_LAYERS": 3, "NUM_HEADS": 2, "HIDDEN_DIM": 16}
# the caltech101 linear-evaluation model of the original, shrunk
RELPOS = dict(TINY, QKV_BIAS=True, USE_REL_POS_BIAS=True, USE_MEAN_POOLING=False, INIT_VALUES=0.1)


def build(seed=0, input_type="rgb", **beit):
    return build_trunk("beit", seed, "BEIT", dict(TINY, **beit), INPUT_TYPE=input_type)


def randomize(module, seed=1):
    return shared_randomize(module, seed)


def brute_force_index(wh, ww):
    """Patch pairs: one table row per (dh, dw) offset; then class->patch, patch->class, class->class."""
    coords = [(h, w) for h in range(wh) for w in range(ww)]
    n_rel = (2 * wh - 1) * (2 * ww - 1)
    rows = [[n_rel + 2] + [n_rel] * len(coords)]
    for hi, wi in coords:
        rows.append([n_rel + 1] + [(hi - hj + wh - 1) * (2 * ww - 1) + (wi - wj + ww - 1) for hj, wj in coords])
    return torch.tensor(rows)


def test_state_dict_layout_and_buffers_match_original():
    keys = {k: tuple(v.shape) for k, v in build(**RELPOS).state_dict().items()}
    expected = {
        "cls_token": (1, 1, 16), "pos_embed": (1, 17, 16), "patch_embed.proj.weight": (16, 3, 8, 8),
        "patch_embed.proj.bias": (16,), "norm.weight": (16,), "norm.bias": (16,),
    }
    for i in range(3):
        p = f"blocks.{i}."
        expected.update({
            p + "gamma_1": (16,), p + "gamma_2": (16,), p + "norm1.weight": (16,), p + "norm1.bias": (16,),
            p + "attn.q_bias": (16,), p + "attn.v_bias": (16,), p + "attn.relative_position_bias_table": (52, 2),
            p + "attn.relative_position_index": (17, 17), p + "attn.qkv.weight": (48, 16),
            p + "attn.proj.weight": (16, 16), p + "attn.proj.bias": (16,), p + "norm2.weight": (16,),
            p + "norm2.bias": (16,), p + "mlp.fc1.weight": (64, 16), p + "mlp.fc1.bias": (64,),
            p + "mlp.fc2.weight": (16, 64), p + "mlp.fc2.bias": (16,),
        })
    assert keys == expected
    index = build(**RELPOS).blocks[0].attn.relative_position_index
    assert index.dtype == torch.int64 and torch.equal(index, brute_force_index(4, 4))

    # defaults: mean pooling (no norm), no LayerScale, no q/v bias, no relative positions
    keys = set(build().state_dict())
    assert "norm.weight" not in keys and "blocks.0.gamma_1" not in keys and "blocks.0.attn.q_bias" not in keys
    assert not any("relative_position" in k for k in keys)
    shared = build(USE_SHARED_REL_POS_BIAS=True, USE_ABS_POS_EMB=False).state_dict()
    assert "pos_embed" not in shared and shared["rel_pos_bias.relative_position_bias_table"].shape == (52, 2)
    assert torch.equal(shared["rel_pos_bias.relative_position_index"], brute_force_index(4, 4))


def timm_beit(shared=False, abs_pos=True, rel_pos=True, init_values=0.1):
    timm_beit = pytest.importorskip("timm.models.beit")
    return timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, use_abs_pos_emb=abs_pos,
        use_rel_pos_bias=rel_pos, use_shared_rel_pos_bias=shared, init_values=init_values,
        global_pool="token", num_classes=0,
    ).eval()


def timm_class_tokens(ref, x):
    """Class token after each timm block, before the final norm."""
    tokens = ref.patch_embed(x)
    tokens = torch.cat([ref.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    if ref.pos_embed is not None:
        tokens = tokens + ref.pos_embed
    rel = ref.rel_pos_bias() if ref.rel_pos_bias is not None else None
    out = []
    for blk in ref.blocks:
        tokens = blk(tokens, shared_rel_pos_bias=rel)
        out.append(tokens[:, 0])
    return out


def test_outputs_match_timm_beit():
    ours = randomize(build(**RELPOS)).eval()
    ref = timm_beit()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and set(unexpected) == {f"blocks.{i}.attn.relative_position_index" for i in range(3)}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last, concat, first, default = ours(x, ["lastCLS", "concatCLS2", "blkCLS0"]) + ours(x)
        cls = [ref.norm(c) for c in timm_class_tokens(ref, x)]
        expected_last = ref.forward_features(x)[:, 0]
    torch.testing.assert_close(last, expected_last, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(default, expected_last, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(concat, torch.cat(cls[1:], dim=-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first, cls[0], rtol=1e-4, atol=1e-5)


def test_shared_bias_and_mean_pooling_match_timm():
    # With USE_MEAN_POOLING the original's features are the class tokens without any norm.
    ours = randomize(build(USE_SHARED_REL_POS_BIAS=True, USE_ABS_POS_EMB=False, QKV_BIAS=True)).eval()
    ref = timm_beit(shared=True, abs_pos=False, rel_pos=False, init_values=None)
    ref.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = ours(x, ["blkCLS-2", "concatCLS3"])
        cls = timm_class_tokens(ref, x)
    torch.testing.assert_close(feats[0], cls[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[1], torch.cat(cls, dim=-1), rtol=1e-4, atol=1e-5)


def test_feature_names_and_errors():
    trunk = build(**RELPOS)
    assert trunk.feature_names[:2] == ["lastCLS", "blkCLS0"] and "concatCLS3" in trunk.feature_names
    x = torch.randn(1, 3, 32, 32)
    for bad in ("blkCLS3", "concatCLS0", "concatCLS4", "res5"):
        with pytest.raises(ValueError, match="concatCLS"):
            trunk(x, [bad])
    with pytest.raises(ValueError, match="IMAGE_SIZE"):
        trunk(torch.randn(1, 3, 48, 48))
    with pytest.raises(ConfigError, match="INPUT_TYPE"):
        build(input_type="lab")
    with pytest.raises(ConfigError, match="NUM_HEADS"):
        build(NUM_HEADS=3)


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    trunk = build(**RELPOS, USE_SHARED_REL_POS_BIAS=True).eval()
    x = torch.randn(2, 3, 32, 32)
    names = ["concatCLS2", "lastCLS"]
    with torch.no_grad():
        for a, b in zip(torch.compile(trunk, fullgraph=True, backend="eager")(x, names), trunk(x, names), strict=True):
            torch.testing.assert_close(a, b)
