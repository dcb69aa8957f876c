"""The model zoo catalogue (vissl_models.zoo, vissl_models/zoo.yaml)."""

import argparse
import io
import json
import os
import re
from importlib import resources

import pytest
import torch
import yaml

import vissl_models
from vissl_models import zoo
from vissl_models.config import default_config
from vissl_models.pretrained import PretrainedCfg

ENTRIES = zoo.list_models()
CONFIGS = sorted({e.config for e in ENTRIES})
ID = re.compile(r"^[a-z0-9_+]+$")


def test_catalogue_covers_the_published_zoo():
    counts = {}
    for e in ENTRIES:
        counts[e.method] = counts.get(e.method, 0) + 1
    assert len(ENTRIES) == 76
    assert counts["swav"] == 12 and counts["simclr"] == 10 and counts["jigsaw"] == 10 and counts["seer"] == 5
    swav = zoo.get("swav_rn50_in1k_800ep")
    assert (swav.top1, swav.layout, swav.config, swav.checkpoint_file) == (
        74.92, "vissl_classy", "swav_resnet50", "model_final_checkpoint_phase799.torch")
    tv = zoo.get("supervised_rn50_torchvision")
    assert tv.url == "https://download.pytorch.org/models/resnet50-19c8e357.pth" and tv.layout == "torchvision"
    assert zoo.get("dino_vit_s16_in1k_300ep").top1_eval == "knn"
    assert zoo.get("seer_regnet_10b").eval_feature == "res4"


def test_names_are_unique_in_the_file():
    raw = yaml.safe_load(resources.files("vissl_models").joinpath("zoo.yaml").read_text())
    names = [m["name"] for m in raw["models"]]
    assert len(names) == len(set(names))


def test_every_entry_has_its_fields():
    weights_init_keys = set(default_config().MODEL.WEIGHTS_INIT)
    layouts = zoo.layouts()
    for e in ENTRIES:
        assert ID.match(e.name) and ID.match(e.method) and ID.match(e.arch), e.name
        assert e.description and e.pretrain_dataset, e.name
        assert e.url.startswith("https://") and e.checkpoint_file.endswith((".torch", ".pth", ".tar")), e.name
        assert e.layout in layouts, e.name
        assert 0 < e.top1 < 100 and e.top1_eval in zoo.TOP1_EVALS, e.name
        assert e.finetune_top1 is None or e.top1 < e.finetune_top1 < 100, e.name
        assert set(e.weights_init) <= weights_init_keys, e.name
        d = e.to_dict()
        assert json.loads(json.dumps(d)) == d and d["checkpoint_file"] == e.checkpoint_file


def _subset_mismatches(expected, actual, path="MODEL.TRUNK"):
    out = []
    for key, value in expected.items():
        if isinstance(value, dict):
            out += _subset_mismatches(value, actual.get(key, {}), f"{path}.{key}")
        elif actual.get(key) != value:
            out.append(f"{path}.{key}: entry {value!r}, config {actual.get(key)!r}")
    return out


# The meta device builds any size without allocating; if a trunk cannot be built there, it is built
# for real with fewer blocks (the options are still all read and checked).
SHRINK = {"vision_transformer": ["config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_LAYERS=1"]}


@pytest.mark.parametrize("config", CONFIGS)
def test_entry_configs_build_the_entry_architecture(config):
    users = [e for e in ENTRIES if e.config == config]
    cfg = users[0].load_config()
    for e in users:
        assert not _subset_mismatches(e.trunk, cfg.MODEL.TRUNK), (e.name, _subset_mismatches(e.trunk, cfg.MODEL.TRUNK))
    try:
        with torch.device("meta"):
            model = vissl_models.build_model(cfg.MODEL, cfg.OPTIMIZER)
        assert all(p.is_meta for p in model.parameters())
    except NotImplementedError:
        small = users[0].load_config(SHRINK.get(cfg.MODEL.TRUNK.NAME, []))
        model = vissl_models.build_model(small.MODEL, small.OPTIMIZER)
    assert sum(p.numel() for p in model.trunk.parameters()) > 0


def test_filters():
    swav = zoo.list_models(method="swav")
    assert len(swav) == 12 and {e.method for e in swav} == {"swav"}
    assert [e.name for e in zoo.list_models(method="SwAV", arch="resnet50_w2")] == ["swav_rn50w2_in1k_400ep"]
    assert [e.name for e in zoo.list_models(method="MoCo-v2")] == ["moco_v2_rn50_in1k_200ep"]
    assert {e.method for e in zoo.list_models(method="npid++")} == {"npid++"}
    regnets = zoo.list_models(arch="regnet")  # a trunk name
    assert regnets and all(e.trunk["NAME"] == "regnet" for e in regnets)
    assert {e.arch for e in zoo.list_models(arch="alexnet")} == {"alexnet"}
    assert zoo.list_models(method="dino", arch="resnet50") == []
    with pytest.raises(ValueError, match="did you mean swav"):
        zoo.list_models(method="swaw")
    with pytest.raises(ValueError, match="known:"):
        zoo.list_models(arch="vgg16")


def test_get_unknown_name_suggests():
    with pytest.raises(KeyError, match="swav_rn50_in1k_800ep"):
        zoo.get("swav_rn50_800ep")


def test_parse_zoo_rejects_bad_entries():
    entry = dict(name="x", method="m", arch="a", trunk={"NAME": "resnet"}, config="resnet50_trunk",
                 description="d", pretrain_dataset="p", top1=1.0, url="https://h/f.torch", layout="l")
    layouts = {"l": "a layout"}
    assert zoo.parse_zoo({"layouts": layouts, "models": [entry]})[1][0].checkpoint_file == "f.torch"
    with pytest.raises(ValueError, match="duplicate name"):
        zoo.parse_zoo({"layouts": layouts, "models": [entry, entry]})
    with pytest.raises(ValueError, match=r"missing fields \['url'\]"):
        zoo.parse_zoo({"layouts": layouts, "models": [{**entry, "url": ""}]})
    with pytest.raises(ValueError, match="layout 'other'"):
        zoo.parse_zoo({"layouts": layouts, "models": [{**entry, "layout": "other"}]})
    with pytest.raises(ValueError, match="unknown fields"):
        zoo.parse_zoo({"layouts": layouts, "models": [{**entry, "top_1": 3}]})


def test_parse_zoo_preprocessing_presets():
    entry = dict(name="x", method="m", arch="a", trunk={"NAME": "resnet"}, config="resnet50_trunk",
                 description="d", pretrain_dataset="p", top1=61.5, url="https://h/f.torch", layout="l",
                 top1_eval="knn")
    layouts = {"l": "a layout"}
    [plain] = zoo.parse_zoo({"layouts": layouts, "models": [entry]})[1]
    assert plain.preprocessing == "imagenet" and plain.pretrained_cfg == PretrainedCfg(
        top1=61.5, top1_eval="knn", source="x")
    presets = {"imagenet": {}, "big": {"input_size": [3, 288, 288], "crop_pct": 1.0}}
    [big] = zoo.parse_zoo({"layouts": layouts, "preprocessing": presets,
                           "models": [{**entry, "preprocessing": "big"}]})[1]
    assert (big.pretrained_cfg.input_size, big.pretrained_cfg.resize_size) == ((3, 288, 288), 288)
    with pytest.raises(ValueError, match=r"preprocessing 'huge' is not one of \['big', 'imagenet'\]"):
        zoo.parse_zoo({"layouts": layouts, "preprocessing": presets, "models": [{**entry, "preprocessing": "huge"}]})
    with pytest.raises(ValueError, match=r"preset 'bad': pretrained_cfg.crop_pct: got 0"):
        zoo.parse_zoo({"layouts": layouts, "preprocessing": {"bad": {"crop_pct": 0}}, "models": [entry]})
    with pytest.raises(ValueError, match=r"preset 'bad': pretrained_cfg: unknown keys \['size'\]"):
        zoo.parse_zoo({"layouts": layouts, "preprocessing": {"bad": {"size": 3}}, "models": [entry]})


def test_shipped_presets_are_all_used():
    raw = yaml.safe_load(resources.files("vissl_models").joinpath("zoo.yaml").read_text())
    assert {e.preprocessing for e in ENTRIES} == set(raw["preprocessing"])
    assert zoo.get("colorization_alexnet_in1k_goyal19").pretrained_cfg.channel_order == "lab"
    assert zoo.get("jigsaw_alexnet_in1k_goyal19").pretrained_cfg.crop_mode == "squash"


def test_config_path_is_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = zoo.get("swav_rn50_in1k_800ep").config_path
    assert path == os.path.join(os.path.dirname(vissl_models.__file__), "configs", "swav_resnet50.yaml")


def run(argv):
    parser = argparse.ArgumentParser()
    zoo.add_zoo_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    code = zoo.run_zoo(parser.parse_args(["zoo", *argv]), out=out)
    return code, out.getvalue()


def test_cli_prints_a_table():
    code, text = run(["--method", "simclr", "--arch", "resnet101"])
    lines = text.splitlines()
    assert code == 0
    assert lines[0].split() == ["name", "method", "arch", "data", "top-1", "layout", "config"]
    assert lines[1].split()[:3] == ["simclr_rn101_in1k_100ep", "simclr", "resnet101"]
    assert "62.76" in lines[1] and "simclr_resnet101" in lines[1]
    assert "2 checkpoints" in lines[-1]
    code, text = run(["--method", "dino"])
    assert "73.40 knn" in text


def test_cli_json():
    code, text = run(["--method", "seer", "--json"])
    data = json.loads(text)
    assert code == 0 and [d["name"] for d in data][0] == "seer_regnet_y_32gf"
    assert data[0]["checkpoint_file"] == "seer_regnet32gf_model_iteration244000.torch"
    assert data[0]["trunk"] == {"NAME": "regnet", "REGNET": {"name": "regnet_y_32gf"}}
