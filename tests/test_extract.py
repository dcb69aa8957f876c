"""Feature extraction (vissl_models.extract): end to end on a few generated images."""

import argparse
import io
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import vissl_models
from vissl_models import extract
from vissl_models.extract import extract_features, list_images
from utils import TINY_CONFIG

CROP, RESIZE = 32, 40
# The same trunk evaluated as a linear-evaluation model: pooled res4 and res5avg.
TINY_LINEAR_EVAL = """\
# @package _global_
config:
  MODEL:
    FEATURE_EVAL_SETTINGS:
      EVAL_MODE_ON: True
      FREEZE_TRUNK_ONLY: True
      SHOULD_FLATTEN_FEATS: False
      LINEAR_EVAL_FEAT_POOL_OPS_MAP: [
        ["res4", ["AdaptiveAvgPool2d", [[1, 1]]]],
        ["res5avg", ["Identity", []]],
      ]
    TRUNK:
      NAME: resnet
      RESNETS:
        DEPTH: 18
    HEAD:
      PARAMS: [
        ["eval_mlp", {"in_channels": 256, "dims": [256, 10]}],
        ["eval_mlp", {"in_channels": 512, "dims": [512, 10]}],
      ]
"""


@pytest.fixture
def images(tmp_path):
    """A folder with JPEGs and PNGs of assorted sizes and modes, one corrupt file and one non-image."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.randint(0, 256, (70, 41, 3), dtype=np.uint8)).save(root / "b.JPEG")
    Image.fromarray(rng.randint(0, 256, (50, 50, 4), dtype=np.uint8)).save(root / "c.png")  # RGBA
    Image.fromarray(rng.randint(0, 256, (45, 60), dtype=np.uint8)).save(root / "sub" / "d.png")  # grayscale
    Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "sub" / "e.jpg")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return str(path)


@pytest.fixture
def weights(tmp_path, config):
    """A VISSL checkpoint of the tiny model, and the model it came from (in eval mode)."""
    model = vissl_models.build_model(vissl_models.load_config(config).MODEL).eval()
    path = tmp_path / "tiny.torch"
    torch.save({"classy_state_dict": {"base_model": model.get_classy_state()}}, path)
    return str(path), model


def reference_batch(paths):
    """The preprocessing written out independently of vissl_models."""
    tf = T.Compose([T.Resize(RESIZE), T.CenterCrop(CROP), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])


def run_cli(argv):
    """Parse like the vissl-models command line (KEY=VALUE words become overrides) and run extract."""
    parser = argparse.ArgumentParser()
    extract.add_extract_parser(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(["extract", *argv])
    args.overrides = extra
    out, err = io.StringIO(), io.StringIO()
    code = extract.run_extract(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_list_images_folder_list_file_and_list(images, tmp_path):
    found = list_images(images)
    names = [os.path.relpath(p, images) for p in found]
    assert names == ["a.jpg", "b.JPEG", "c.png", os.path.join("sub", "broken.jpg"),
                     os.path.join("sub", "d.png"), os.path.join("sub", "e.jpg")]
    listing = images / "list.txt"
    listing.write_text("# two images\nc.png\n\n" + str(images / "a.jpg") + "\n")
    assert list_images(listing) == [str(images / "c.png"), str(images / "a.jpg")]
    assert list_images([images / "a.jpg"]) == [str(images / "a.jpg")]
    assert list_images(images / "a.jpg") == [str(images / "a.jpg")]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        list_images(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        list_images(empty)


def test_features_equal_a_direct_forward_and_corrupt_file_is_skipped(images, config, weights):
    path, model = weights
    result = extract_features(config, images, layers=("res5avg", "res4"), weights=path, batch_size=2,
                              image_size=CROP, resize=RESIZE, progress=False)
    good = [p for p in list_images(images) if not p.endswith("broken.jpg")]
    assert result.paths == good
    assert [p for p, _ in result.skipped] == [str(images / "sub" / "broken.jpg")]
    assert "Error: " in result.skipped[0][1]  # e.g. "OSError: Truncated File Read"
    assert result.load_report is not None and not result.load_report.missing
    assert list(result.features) == ["res5avg", "res4"]  # the order asked, not network order

    batch = reference_batch(good)
    with torch.no_grad():
        res5avg = model.trunk(batch, ["res5avg"])[0].flatten(1)
        res4 = model.trunk(batch, ["res4"])[0].flatten(1)
    assert result.features["res5avg"].shape == (5, 512)
    assert result.features["res4"].shape == (5, 256 * 2 * 2)
    np.testing.assert_allclose(result.features["res5avg"], res5avg.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.features["res4"], res4.numpy(), rtol=1e-4, atol=1e-5)


def test_keep_shape_and_a_built_model(images, weights):
    _, model = weights
    model.train()
    result = extract_features(model, [images / "a.jpg", images / "c.png"], layers=["res4"], image_size=CROP,
                              resize=RESIZE, progress=False, keep_shape=True)
    assert result.features["res4"].shape == (2, 256, 2, 2)
    assert model.training  # the caller's mode is restored


def test_preprocessing_options(images, weights):
    _, model = weights
    plain = extract_features(model, [images / "a.jpg"], layers=["res5avg"], image_size=CROP, resize=0,
                             normalize=False, progress=False)
    tf = T.Compose([T.CenterCrop(CROP), T.ToTensor()])
    with torch.no_grad():
        ref = model.trunk(tf(Image.open(images / "a.jpg").convert("RGB"))[None], ["res5avg"])[0].flatten(1)
    np.testing.assert_allclose(plain.features["res5avg"], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_linear_eval_config_gets_pretraining_trunk_weights(images, tmp_path, weights):
    path, model = weights
    cfg = tmp_path / "linear.yaml"
    cfg.write_text(TINY_LINEAR_EVAL)
    result = extract_features(str(cfg), images, layers=None, weights=path, image_size=CROP, resize=RESIZE,
                              progress=False)
    assert list(result.features) == ["res4", "res5avg"]
    batch = reference_batch(result.paths)
    with torch.no_grad():
        res4 = model.trunk(batch, ["res4"])[0].mean(dim=(2, 3))
    np.testing.assert_allclose(result.features["res4"], res4.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="configured features"):
        extract_features(str(cfg), images, layers=["res3"], progress=False)


@pytest.mark.filterwarnings("ignore:extract_features. no weights")
def test_unknown_layer_and_bad_arguments(images, config):
    with pytest.raises(ValueError, match="valid names"):
        extract_features(config, [images / "a.jpg"], layers=["res9"], image_size=CROP, resize=RESIZE, progress=False)
    with pytest.raises(ValueError, match="each layer once"):
        extract_features(config, [images / "a.jpg"], layers=["res4", "res4"], progress=False)
    with pytest.raises(ValueError, match="3 values"):
        extract_features(config, [images / "a.jpg"], mean=(0.5,), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            extract_features(config, [images / "a.jpg"], device="cuda", progress=False)


@pytest.mark.parametrize("fmt", [".npz", ".pt"])
def test_cli_writes_npz_and_pt(images, config, weights, tmp_path, fmt):
    path, model = weights
    out = tmp_path / f"features{fmt}"
    code, text, err = run_cli([config, "--weights", path, "--images", str(images), "--layers", "res4,res5avg",
                               "--out", str(out), "--crop", str(CROP), "--resize", str(RESIZE), "--batch-size", "4",
                               "--no-progress"])
    assert code == 0, err
    assert "extracted  5 images (1 skipped): res4 5x1024, res5avg 5x512" in text
    assert "skipped" in err and "broken.jpg" in err
    if fmt == ".npz":
        with np.load(out) as data:
            saved = {k: data[k] for k in data.files}
        paths = list(saved.pop("paths"))
    else:
        saved = torch.load(out, weights_only=True)
        paths = saved.pop("paths")
        saved = {k: v.numpy() for k, v in saved.items()}
    assert sorted(saved) == ["res4", "res5avg"]
    assert paths == [p for p in list_images(images) if not p.endswith("broken.jpg")]
    with torch.no_grad():
        ref = model.trunk(reference_batch(paths), ["res5avg"])[0].flatten(1)
    np.testing.assert_allclose(saved["res5avg"], ref.numpy(), rtol=1e-4, atol=1e-5)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_cli_overrides_and_default_layer(images, tmp_path):
    out = tmp_path / "f.npz"
    code, text, _ = run_cli(["simclr_resnet50", "config.MODEL.TRUNK.RESNETS.DEPTH=18", "--images",
                             str(images / "a.jpg"), "--out", str(out), "--crop", "32", "--resize", "40",
                             "config.MODEL.HEAD.PARAMS=[['mlp', {'dims': [512, 16]}]]", "--no-progress"])
    assert code == 0
    assert "res5avg 1x512" in text


def test_cli_rejects_unknown_output_format_before_working(images, config, tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        run_cli([config, "--images", str(images), "--out", str(tmp_path / "f.csv")])


def test_cli_nothing_readable_writes_nothing(images, config, tmp_path):
    out = tmp_path / "f.npz"
    code, _, err = run_cli([config, "--images", str(images / "sub" / "broken.jpg"), "--out", str(out),
                            "--no-progress"])
    assert code == 1 and "none of the 1 images could be read" in err
    assert not out.exists()


@pytest.mark.parametrize("fmt", [".npz", ".pt"])
def test_atomic_write_leaves_no_partial_file(images, weights, tmp_path, monkeypatch, fmt):
    _, model = weights
    result = extract_features(model, [images / "a.jpg"], layers=["res5avg"], image_size=CROP, resize=RESIZE,
                              progress=False)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / f"out{fmt}"
    result.save(out)
    before = out.read_bytes()

    def fail_midway(*args, **kwargs):
        next(a for a in args if hasattr(a, "write")).write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail_midway)
    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert out.read_bytes() == before  # the previous file is untouched
    fresh = folder / f"fresh{fmt}"
    with pytest.raises(OSError, match="disk full"):
        result.save(fresh)
    assert not fresh.exists()
    assert os.listdir(folder) == [f"out{fmt}"]


# ------------------------------------------------------------------ hostile files, defaults, pretrained_cfg
TINY_VIT = {"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": {
    "IMAGE_SIZE": 32, "PATCH_SIZE": 16, "NUM_LAYERS": 1, "NUM_HEADS": 2, "HIDDEN_DIM": 16, "MLP_DIM": 32}},
    "HEAD": {"PARAMS": [["mlp", {"dims": [16, 4]}]]}}}


def test_named_pipe_in_the_folder_is_skipped_not_waited_on(images, weights):
    _, model = weights
    fifo = images / "sub" / "waiting.jpg"
    os.mkfifo(fifo)
    def blocked(*_):
        raise TimeoutError("extraction blocked on a named pipe")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(60)
    try:
        result = extract_features(model, images, layers=["res5avg"], image_size=CROP, resize=RESIZE, progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    reasons = dict(result.skipped)
    assert "not a regular file (named pipe)" in reasons[str(fifo)]
    assert str(fifo) not in result.paths and len(result.paths) == 5


def test_default_layer_is_the_trunks_pooled_feature(images):
    vit = vissl_models.build_model(vissl_models.load_config(TINY_VIT).MODEL).eval()
    with pytest.warns(UserWarning, match="RANDOM"):
        result = extract_features(TINY_VIT, [images / "a.jpg"], image_size=32, resize=36, progress=False)
    names = list(result.features)
    assert len(names) == 1 and result.features[names[0]].shape == (1, 16)
    assert extract.default_layer(vit.trunk) in ("lastCLS", getattr(vit.trunk, "default_feature", "lastCLS"))
    resnet = vissl_models.build_model(vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": {
        "DEPTH": 18}}}}).MODEL)
    assert extract.default_layer(resnet.trunk) == "res5avg"


def test_pretrained_cfg_sets_the_default_preprocessing(images, weights):
    from types import SimpleNamespace

    _, model = weights
    model.pretrained_cfg = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 32, 32),
                                           crop_pct=0.8, channel_order="bgr")
    try:
        result = extract_features(model, [images / "a.jpg"], layers=["res5avg"], progress=False)
    finally:
        del model.pretrained_cfg
    tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    batch = tf(Image.open(images / "a.jpg").convert("RGB"))[None].flip(1)
    with torch.no_grad():
        ref = model.trunk(batch, ["res5avg"])[0].flatten(1)
    np.testing.assert_allclose(result.features["res5avg"], ref.numpy(), rtol=1e-4, atol=1e-5)
    settings = extract.preprocessing(model, mean=(0.1, 0.2, 0.3), resize=0)
    assert settings.mean == (0.1, 0.2, 0.3) and settings.resize == 0 and settings.image_size == 224


def test_weights_that_do_not_fit_the_trunk_change_nothing(images, tmp_path, config):
    model = vissl_models.build_model(vissl_models.load_config(config).MODEL).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = vissl_models.build_model(vissl_models.load_config(config, ["config.MODEL.TRUNK.RESNETS.DEPTH=34"]).MODEL)
    path = tmp_path / "other.torch"
    torch.save({"classy_state_dict": {"base_model": other.get_classy_state()}}, path)
    with pytest.raises(vissl_models.CheckpointError):
        extract_features(model, [images / "a.jpg"], layers=["res5avg"], weights=path, image_size=CROP,
                         resize=RESIZE, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_without_weights_warns_loudly(images, config, tmp_path):
    out = tmp_path / "f.npz"
    code, _, err = run_cli([config, "--images", str(images / "a.jpg"), "--out", str(out), "--crop", "32",
                            "--resize", "40", "--no-progress"])
    assert code == 0 and "RANDOM weights" in err and out.exists()


def test_lab_preprocessing_matches_known_colours():
    # White, black and pure sRGB red: Lab (100, 0, 0), (0, 0, 0), (53.24, 80.09, 67.20), through the
    # original's 8-bit step (L * 255 / 100, a and b + 128, rounded) and back to L - 50, a, b.
    rgb = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])[:, None, :]
    lab = extract.transforms.rgb_to_lab(rgb)[:, 0, :]
    expected = torch.tensor([[50.0, -50.0, 136 * 100 / 255 - 50], [0.0, 0.0, 80.0], [0.0, 0.0, 67.0]])
    torch.testing.assert_close(lab, expected, atol=1e-4, rtol=0)


def test_model_presets_reach_the_transform(images):
    from types import SimpleNamespace

    squash = SimpleNamespace(input_size=(3, 32, 32), crop_pct=1.0, crop_mode="squash", channel_order="lab",
                             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic")
    settings = extract.settings_for(SimpleNamespace(pretrained_cfg=squash))
    assert (settings.image_size, settings.resize, settings.crop_mode, settings.channel_order) == (32, 32, "squash", "lab")
    img = extract.transform_from(settings)(Image.open(images / "b.JPEG").convert("RGB"))  # 41 x 70 -> 32 x 32
    assert img.shape == (3, 32, 32) and -50 <= float(img[0].min()) and float(img[0].max()) <= 50
    bad = SimpleNamespace(pretrained_cfg=SimpleNamespace(channel_order="cmyk"))
    with pytest.raises(ValueError, match="channel_order"):
        extract.settings_for(bad)


def test_torchvision_weights_give_torchvisions_features(images, config, tmp_path):
    import torchvision

    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv.state_dict(), path)
    result = extract_features(config, [images / "a.jpg"], weights=path, image_size=CROP, resize=RESIZE,
                              progress=False)
    assert "converted torchvision" in result.load_report.summary()
    with torch.no_grad():
        ref = torch.nn.Sequential(*list(tv.children())[:-1])(reference_batch([images / "a.jpg"])).flatten(1)
    np.testing.assert_allclose(result.features["res5avg"], ref.numpy(), rtol=1e-4, atol=1e-5)
