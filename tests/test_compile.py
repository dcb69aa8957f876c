"""torch.compile of a built model gives the eager outputs (the original fails here)."""

import pytest
import torch

import vissl_models
from utils import image, tiny_model


def test_model_is_not_wrapped_by_classy_vision():
    model = tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}]]})
    assert type(model) is vissl_models.BaseSSLMultiInputOutputModel


# aot_eager captures the whole graph (fullgraph) and traces autograd as inductor does, without
# generating C++; inductor's own code generation (a minute on a cold cache) runs with -m slow.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["single", "multi_crop"])
def test_compiled_model_matches_eager(kind, backend):
    torch._dynamo.reset()
    model = tiny_model(HEAD={"PARAMS": [["swav_head", {"dims": [512, 32, 8], "use_bn": True, "num_clusters": [10]}]]})
    model.eval()
    x = image(2, 32) if kind == "single" else [image(1, 32), image(1, 32), image(1, 16)]
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend=backend)(x)
    assert len(eager) == len(compiled) == 1
    for a, b in zip(eager[0], compiled[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
