"""Hostile command lines: each ends with exit status 2 and one line on stderr, no traceback, and
leaves every file as it was."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vissl_models import cli
from utils import TINY_CONFIG

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(folder):
    """Every file under ``folder`` with its bytes (and every folder), to compare before/after."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            state[os.path.join(root, d)] = "<dir>"
        for f in files:
            path = os.path.join(root, f)
            try:
                with open(path, "rb") as fh:
                    state[path] = fh.read()
            except OSError:
                state[path] = "<unreadable>"
    return state


@pytest.fixture
def work(tmp_path):
    """A folder with a tiny config, a checkpoint-looking file, images and an image list."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    (tmp_path / "weights.torch").write_bytes(b"not really a checkpoint, but it must survive")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / "a.jpg")
    (tmp_path / "list.txt").write_text("images/a.jpg\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "link.pt").symlink_to(tmp_path / "weights.torch")
    return tmp_path


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vissl-models") and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def summary_cases(w):
    cfg = w / "tiny.yaml"
    return {
        "yaml syntax error in an override": (["summary", cfg, "config.MODEL.TRUNK.NAME=[unclosed"], "not valid YAML"),
        "yaml tag in an override": (["summary", cfg, "config.MODEL.TRUNK.NAME=!!python/object/apply:os.system [x]"],
                                    "python/object/apply"),
        "a key that is no section": (["summary", cfg, "RESNETS=5"], "config.MODEL.TRUNK.RESNETS"),
        "a section given a number": (["summary", cfg, "config.MODEL.TRUNK.RESNETS=5"], "MODEL.TRUNK.RESNETS"),
        "a group that names nothing": (["summary", cfg, "+config/pretrain/nothing=here"], "names nothing"),
        "negative size": (["summary", cfg, "--size", "-5"], "--size"),
        "crops with a zero size": (["summary", cfg, "--crops", "2x0"], "--crops"),
        "crops not numbers": (["summary", cfg, "--crops", "abc"], "--crops"),
        "zero-size input": (["summary", cfg, "--input", "images=0x3x32x32"], "--input"),
        "5-channel input": (["summary", cfg, "--input", "images=2x5x32x32"], "3-channel"),
        "input with no shape": (["summary", cfg, "--input", "images"], "KEY=SHAPE"),
        "missing config": (["summary", w / "nope.yaml"], "nope.yaml"),
        "config is a folder": (["summary", w / "images"], "folder"),
        "config not text": (["summary", w / "weights.torch"], "weights.torch"),
        "missing weights": (["summary", cfg, "--weights", w / "none.torch", "--no-flops"], "none.torch"),
        "unknown option": (["summary", cfg, "--sise", "3"], "unrecognized"),
        "overrides on zoo": (["zoo", "A=1"], "unrecognized"),
    }


def extract_cases(w):
    base = ["extract", w / "tiny.yaml", "--images", w / "images", "--no-progress"]
    return {
        "out is a folder": ([*base, "--out", w / "out"], "folder"),
        "out in a missing folder": ([*base, "--out", w / "missing" / "f.npz"], "does not exist"),
        "out with an unknown format": ([*base, "--out", w / "f.csv"], "unknown format"),
        "out is the weights": ([*base, "--weights", w / "weights.torch", "--out", w / "weights.torch"], "input"),
        "out links to the weights": ([*base, "--weights", w / "weights.torch", "--out", w / "link.pt"], "input"),
        "out is the config": (["extract", w / "tiny.yaml", "--images", w / "images", "--out", w / "tiny.yaml"], "input"),
        "out is the image list": (["extract", w / "tiny.yaml", "--images", w / "list.txt", "--out", w / "list.txt"],
                                  "input"),
        "device tpu": ([*base, "--out", w / "f.npz", "--device", "tpu"], "tpu"),
        "negative resize": ([*base, "--out", w / "f.npz", "--resize", "-1"], "--resize"),
        "zero std": ([*base, "--out", w / "f.npz", "--std", "0,0,0"], "--std"),
        "std with two values": ([*base, "--out", w / "f.npz", "--std", "1,1"], "--std"),
        "zero batch size": ([*base, "--out", w / "f.npz", "--batch-size", "0"], "--batch-size"),
        "zero crop": ([*base, "--out", w / "f.npz", "--crop", "0"], "--crop"),
        "missing images": (["extract", w / "tiny.yaml", "--images", w / "nothing", "--out", w / "f.npz"], "nothing"),
        "yaml tag in an override": ([*base, "--out", w / "f.npz", "config.MODEL.HEAD.PARAMS=!!set {a: null}"], "!!set"),
    }


def convert_cases(w):
    # The output is checked before the input is read: a wrong OUT is named even for a bad IN.
    weights = w / "weights.torch"
    return {
        "out is a folder": (["convert", weights, w / "out", "--to", "timm"], "is a folder"),
        "out is the input": (["convert", weights, weights, "--to", "timm"], "is also an input"),
        "out links to the input": (["convert", weights, w / "link.pt", "--to", "vissl"], "is also an input"),
        "out in a missing folder": (["convert", weights, w / "missing" / "f.pth", "--to", "timm"], "does not exist"),
        "the written config is the input": (["convert", w / "tiny.yaml", w / "tiny.torch", "--to", "vissl"],
                                            "config output"),
    }


CASES = {"summary": summary_cases, "extract": extract_cases, "convert": convert_cases}


@pytest.mark.parametrize("command,case", [(c, k) for c, cases in CASES.items() for k in cases(Path("/x"))])
def test_bad_arguments(command, case, work, capsys):
    argv, needle = CASES[command](work)[case]
    before = snapshot(work)
    code, out, err = run_main(argv, capsys)
    assert_one_line_error(code, err, needle)
    assert out == ""
    assert snapshot(work) == before


@pytest.mark.skipif(ROOT, reason="root reads and writes whatever the permissions say")
def test_unreadable_config_and_unwritable_folder(work, capsys):
    cfg = work / "tiny.yaml"
    locked = work / "locked"
    locked.mkdir()
    cfg.chmod(0)
    locked.chmod(0o500)
    try:
        before = snapshot(work)
        code, _, err = run_main(["summary", cfg], capsys)
        assert_one_line_error(code, err, "cannot read")
        code, _, err = run_main(["extract", work / "list.txt", "--images", work / "images", "--out",
                                 locked / "f.npz"], capsys)
        assert_one_line_error(code, err, "not writable")
        code, _, err = run_main(["convert", work / "weights.torch", locked / "f.pth", "--to", "timm"], capsys)
        assert_one_line_error(code, err, "not writable")
        assert snapshot(work) == before
    finally:
        cfg.chmod(0o600)
        locked.chmod(0o700)


def test_named_pipe_config_is_refused_without_blocking(work, capsys):
    fifo = work / "pipe.yaml"
    os.mkfifo(fifo)
    code, _, err = run_main(["summary", fifo], capsys)
    assert_one_line_error(code, err, "not a regular file")


def test_version(capsys):
    from vissl_models import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vissl-models {__version__}"


def test_summary_help_documents_overrides(capsys):
    assert cli.main(["summary", "--help"]) == 0
    text = capsys.readouterr().out
    assert "KEY=VALUE" in text and "+config/GROUP=NAME" in text and "config.MODEL.TRUNK.RESNETS.DEPTH=18" in text


def _python(code, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, **kwargs)


def test_module_entry_point_and_closed_pipe_end_quietly(tmp_path):
    # `python -m vissl_models` works, and a reader that goes away (`| head`) ends the run quietly.
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "vissl_models", "zoo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert proc.returncode == 1  # the run stopped at the closed pipe, without a traceback


def test_sigterm_during_the_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "features.npz"
    proc = _python(f"""
        import os, signal, time
        import numpy as np
        from vissl_models.extract import ExtractResult, save_features

        def killed_midway(f, **arrays):
            f.write(b"partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)

        np.savez = killed_midway
        save_features(ExtractResult({{"res5avg": np.zeros((2, 4), np.float32)}}, ["a", "b"]), {str(out)!r})
    """, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err.decode()
    assert os.listdir(tmp_path) == []
