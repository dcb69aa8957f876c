"""The benchmark scripts run (tiny CPU settings) so they cannot rot; timings are not checked."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import bench_multicrop  # noqa: E402
import gpu_suite  # noqa: E402
import multicrop  # noqa: E402


def test_gpu_suite_tiny_mode(tmp_path, capsys):
    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--tiny", "--iters", "1", "--warmup", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu (tiny)"
    assert len(data["results"]) == 3
    for res in data["results"]:
        assert res["ratio"] > 0
        assert "ours" in res["ms"] and len(res["ms"]) == 2 and all(v > 0 for v in res["ms"].values())
    assert "below 1: ours is faster" in capsys.readouterr().out


def test_twin_follows_the_multi_crop_path():
    import torch

    ours, twin = multicrop.swav_models(gpu_suite.TINY_SWAV_HEAD, depth=18)
    crops = multicrop.make_crops([(2, 32), (2, 16)], 2, torch.device("cpu"), False)
    ours.eval(), twin.eval()
    # torchvision's resnet18 has our trunk's keys under other names; copy weights in order.
    with torch.no_grad():
        for (_, a), (_, b) in zip(ours.trunk.state_dict().items(), twin.trunk.state_dict().items()):
            b.copy_(a)
        expected = ours(crops)[0][-1]
        got = twin(crops)[-1]
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_bench_multicrop_runs(capsys):
    assert bench_multicrop.main(["--case", "swav", "--crops", "1x32,1x16", "--batch", "1", "--iters", "1",
                                 "--warmup", "0"]) == 0
    assert "ours / torchvision" in capsys.readouterr().out
