"""The vissl-models command line."""

import io
import subprocess
import sys

import torch

from vissl_models import cli
from utils import tiny_model

TINY = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.HEAD.PARAMS=[['mlp', {'dims': [512, 16]}]]"]


def run(argv):
    out = io.StringIO()
    args = cli.parse_args(argv)
    code = cli.summary(args.config, args.overrides, args.weights, args.crops, args.inputs, not args.no_flops, out=out)
    return code, out.getvalue()


def test_default_run_needs_no_arguments():
    proc = subprocess.run([sys.executable, "-m", "vissl_models"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # fvcore's torch.jit.script FutureWarning (and any other chatter) stays out of the summary.
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    text = proc.stdout
    assert "trunk      resnet" in text and "swav_head" in text
    assert "multi-crop 2x224px + 6x96px" in text
    assert "[['8x128', '8x3000']]" in text
    assert "GFLOPs" in text and "28,354,752" in text


def test_summary_of_a_shipped_config_with_overrides_and_crops():
    code, text = run(["summary", "simclr_resnet50", *TINY, "--crops", "2x64,2x32"])
    assert code == 0
    # One MLP head over the 4 crops of one image: a single 4 x 16 output.
    assert "outputs    ['4x16']" in text
    assert "multi-crop 2x64px + 2x32px" in text and "GFLOPs" in text


def test_summary_multi_input_config():
    code, text = run(["summary", "pirl_resnet50", "--no-flops", "config.MODEL.TRUNK.RESNETS.DEPTH=50"])
    assert code == 0
    assert "patches=18x3x64x64, images=2x3x224x224" in text
    assert "outputs    ['2x128', '2x128']" in text


def test_summary_with_weights_reports_coverage(tmp_path):
    model = tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}]]})
    state = model.get_classy_state(deep_copy=True)
    del state["model"]["heads"]["0.clf.0.bias"]
    path = tmp_path / "w.torch"
    torch.save({"classy_state_dict": {"base_model": state}}, path)
    code, text = run(["summary", "simclr_resnet50", *TINY, "--no-flops", "--weights", str(path)])
    assert code == 0
    assert "layout vissl_classy" in text
    assert f"trunk: {len(model.trunk.state_dict())}/{len(model.trunk.state_dict())} keys loaded\n" in text
    assert "heads: 1/2 keys loaded; 1 missing from checkpoint: 0.clf.0.bias" in text


def test_summary_with_weights_that_fit_nothing_or_not_strictly(tmp_path, capsys):
    unrelated = tmp_path / "unrelated.torch"
    torch.save({"state_dict": {"something.else": torch.zeros(3)}}, unrelated)
    before = unrelated.read_bytes()
    assert cli.main(["summary", "simclr_resnet50", *TINY, "--no-flops", "--weights", str(unrelated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vissl-models: error:" in err and "Traceback" not in err
    assert unrelated.read_bytes() == before
    model = tiny_model(HEAD={"PARAMS": [["mlp", {"dims": [512, 16]}]]})
    state = model.get_classy_state(deep_copy=True)
    del state["model"]["heads"]["0.clf.0.bias"]
    partial = tmp_path / "partial.torch"
    torch.save({"classy_state_dict": {"base_model": state}}, partial)
    assert cli.main(["summary", "simclr_resnet50", *TINY, "--no-flops", "--weights", str(partial), "--strict"]) == 2
    assert "0.clf.0.bias" in capsys.readouterr().err


def test_errors_are_one_line_and_exit_2(capsys):
    assert cli.main(["summary", "no_such_config"]) == 2
    assert "shipped:" in capsys.readouterr().err
    assert cli.main(["summary", "simclr_resnet50", "config.MODEL.TRUNK.RESNETS.DEPTH=51", "--no-flops"]) == 2
    assert "DEPTH: got 51" in capsys.readouterr().err


def test_synthetic_input_has_the_trained_size():
    # The CLI's input size and the pretrained_cfg come from one function (pretrained.trained_input_size).
    import vissl_models

    overrides = ["config.MODEL.TRUNK.VISION_TRANSFORMERS." + kv for kv in
                 ("IMAGE_SIZE=384", "PATCH_SIZE=64", "NUM_LAYERS=1", "NUM_HEADS=2", "HIDDEN_DIM=16", "MLP_DIM=32")]
    model = vissl_models.create_model("vit_b16_trunk", overrides=overrides)
    assert cli.synthetic_input(model, None, ()).shape == (2, 3, 384, 384)
    assert model.pretrained_cfg.input_size == (3, 384, 384)
    assert cli.synthetic_input(model, None, (), size=128).shape == (2, 3, 128, 128)
    code, text = run(["summary", "vit_b16_trunk", "--no-flops", *overrides])
    assert code == 0 and "2x3x384x384" in text
