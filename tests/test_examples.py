"""The example training loops run under torchrun with 2 CPU processes and save loadable checkpoints."""

import io
import os
import subprocess
import sys

import pytest

from vissl_models import cli

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _torchrun(script, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "examples", script), "--iters", "3", "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _loads_fully(config, weights):
    buf = io.StringIO()
    assert cli.summary(str(config), weights=str(weights), flops=False, out=buf) == 0
    text = buf.getvalue()
    for part in ("trunk", "heads"):
        line = next(line for line in text.splitlines() if line.strip().startswith(part + ":"))
        loaded, total = line.split()[1].split("/")
        assert loaded == total and int(total) > 0, line


@pytest.mark.slow
def test_swav_example(tmp_path):
    out = _torchrun("swav_train.py", tmp_path / "swav.torch")
    assert "prototypes frozen: True" in out and "prototypes frozen: False" in out
    _loads_fully(tmp_path / "swav.yaml", tmp_path / "swav.torch")


@pytest.mark.slow
def test_dino_example(tmp_path):
    out = _torchrun("dino_train.py", tmp_path / "dino.torch")
    assert "autocast torch.bfloat16" in out and "on 2 process(es)" in out
    _loads_fully(tmp_path / "dino.yaml", tmp_path / "dino.torch")
    _loads_fully(tmp_path / "dino_teacher.yaml", tmp_path / "dino_teacher.torch")
