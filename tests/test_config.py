"""load_config: defaults, VISSL file shape, overrides, validation; registries; head options."""

import glob
import os
import textwrap

import pytest

import vissl_models
from vissl_models.config import ConfigError, default_config, list_shipped_configs, resolve_config
from utils import model_config

HERE = os.path.dirname(__file__)
FIXTURE_CONFIGS = sorted(glob.glob(os.path.join(HERE, "..", "..", "shared", "parity", "public", "*", "config.yaml")))
SHIPPED_CONFIGS = [resolve_config(name) for name in list_shipped_configs()]


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_cover_the_original_model_sections():
    cfg = default_config()
    model = cfg.MODEL
    for key in ("TRUNK", "HEAD", "FEATURE_EVAL_SETTINGS", "ACTIVATION_CHECKPOINTING", "SYNC_BN_CONFIG",
                "AMP_PARAMS", "WEIGHTS_INIT", "FSDP_CONFIG", "MULTI_INPUT_HEAD_MAPPING",
                "SINGLE_PASS_EVERY_CROP", "INPUT_TYPE", "BASE_MODEL_NAME"):
        assert key in model
    for family in ("RESNETS", "RESNETS_SK", "EFFICIENT_NETS", "MOBILE_NET", "REGNET", "VISION_TRANSFORMERS",
                   "XCIT", "SWIN_TRANSFORMER", "BEIT", "CONVNEXT", "CONVIT"):
        assert family in model.TRUNK
    assert model.HEAD.BATCHNORM_EPS == 1e-5 and isinstance(model.HEAD.BATCHNORM_EPS, float)
    assert cfg.OPTIMIZER.name == "sgd"


def test_vissl_file_shape_with_package_line(tmp_path):
    path = write(tmp_path, """\
        # @package _global_
        config:
          DATA:
            NUM_DATALOADER_WORKERS: 5
          MODEL:
            TRUNK:
              RESNETS:
                DEPTH: 101
            HEAD:
              BATCHNORM_EPS: 1e-5
              PARAMS: [["mlp", {"dims": [2048, 128]}]]
        """)
    cfg = vissl_models.load_config(path)
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 101
    assert cfg.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER == 1  # defaults kept
    assert cfg.MODEL.HEAD.BATCHNORM_EPS == 1e-5 and isinstance(cfg.MODEL.HEAD.BATCHNORM_EPS, float)
    assert cfg.DATA.NUM_DATALOADER_WORKERS == 5  # other sections kept as given
    assert cfg.MODEL.HEAD.PARAMS[0][1].dims == [2048, 128]


def test_dict_source_and_overrides():
    cfg = vissl_models.load_config(
        {"MODEL": {"TRUNK": {"NAME": "resnet"}}},
        ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "MODEL.HEAD.PARAMS=[['mlp', {'dims': [512, 10]}]]",
         "+config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=32", "config.MODEL.WEIGHTS_INIT.PARAMS_FILE=/tmp/x.torch"],
    )
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 18
    assert cfg.MODEL.HEAD.PARAMS == [["mlp", {"dims": [512, 10]}]]
    assert cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA == 32
    assert cfg.MODEL.WEIGHTS_INIT.PARAMS_FILE == "/tmp/x.torch"


def test_unknown_model_key_names_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, """\
        config:
          MODEL:
            WEIGHTS_INIT:
              PARAM_FILE: x.torch
        """)
    with pytest.raises(ConfigError, match=r"MODEL\.WEIGHTS_INIT\.PARAM_FILE.*PARAMS_FILE"):
        vissl_models.load_config(path)
    with pytest.raises(ConfigError, match=r"MODEL\.TRUNK\.RESNETS\.DEPHT.*DEPTH"):
        vissl_models.load_config(None, ["config.MODEL.TRUNK.RESNETS.DEPHT=50"])
    with pytest.raises(ConfigError, match="NUM_LAYERS"):
        vissl_models.load_config({"MODEL": {"TRUNK": {"VISION_TRANSFORMERS": {"NUM_LAYER": 2}}}})


def test_open_sections_accept_any_keys():
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"REGNET": {"name": "regnet_y_400mf", "depth": 3}}}})
    assert cfg.MODEL.TRUNK.REGNET == {"name": "regnet_y_400mf", "depth": 3}


def test_old_trunk_params_layout_is_lifted():
    with pytest.warns(DeprecationWarning, match="TRUNK_PARAMS"):
        cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet", "TRUNK_PARAMS": {"RESNETS": {"DEPTH": 18}}}}})
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 18


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        vissl_models.load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        vissl_models.load_config(write(tmp_path, "config: [unclosed"))
    with pytest.raises(ConfigError, match="override"):
        vissl_models.load_config(None, ["config.MODEL.TRUNK.NAME"])


@pytest.mark.parametrize("path", FIXTURE_CONFIGS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_every_full_vissl_model_section_loads(path):
    cfg = vissl_models.load_config(path)
    assert cfg.MODEL.TRUNK.NAME and "OPTIMIZER" in cfg


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=os.path.basename)
def test_shipped_configs_load(path):
    assert vissl_models.load_config(path).MODEL.HEAD.PARAMS


@pytest.mark.parametrize("key,value,match", [
    ("TRUNK.RESNETS.DEPTH", 51, r"MODEL\.TRUNK\.RESNETS\.DEPTH: got 51, expected one of \[18, 34, 50, 101, 152, 200\]"),
    ("TRUNK.RESNETS.NORM", "InstanceNorm", r"NORM: got 'InstanceNorm'"),
    ("TRUNK.RESNETS.LAYER4_STRIDE", 3, r"LAYER4_STRIDE: got 3"),
    ("INPUT_TYPE", "hsv", r"MODEL\.INPUT_TYPE: got 'hsv'"),
    ("HEAD.BATCHNORM_EPS", "small", r"MODEL\.HEAD\.BATCHNORM_EPS: got 'small'"),
])
def test_bad_values_name_key_value_and_allowed(key, value, match):
    cfg = vissl_models.load_config({"MODEL": {"TRUNK": {"NAME": "resnet"}, "HEAD": {"PARAMS": [["mlp", {"dims": [2048, 8]}]]}}},
                                   [f"config.MODEL.{key}={value!r}" if isinstance(value, str) else f"config.MODEL.{key}={value}"])
    with pytest.raises(ConfigError, match=match):
        vissl_models.build_model(cfg.MODEL)


def test_unknown_trunk_and_head_names_list_the_registered_ones():
    with pytest.raises(KeyError, match=r"unknown trunk 'resnett'.*Did you mean 'resnet'.*Registered trunks: \["):
        vissl_models.get_model_trunk("resnett")
    with pytest.raises(ValueError, match=r"unknown head 'mpl'.*'mlp'"):
        vissl_models.get_model_head("mpl")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="twice"):
        vissl_models.register_model_trunk("resnet")(lambda cfg, name: None)
    with pytest.raises(ValueError, match="twice"):
        vissl_models.register_model_head("mlp")(lambda cfg: None)


def test_head_with_an_unknown_option_lists_accepted_options():
    cfg = model_config(TRUNK={"RESNETS": {"DEPTH": 18}}, HEAD={"PARAMS": [["mlp", {"dims": [512, 8], "use_bnn": True}]]})
    with pytest.raises(ConfigError, match=r"head 'mlp'.*use_bnn.*accepted options: \['dims', 'use_bn'"):
        vissl_models.build_model(cfg)


def test_head_param_of_the_wrong_shape():
    cfg = model_config(TRUNK={"RESNETS": {"DEPTH": 18}}, HEAD={"PARAMS": [[{"dims": [512, 8]}]]})
    with pytest.raises(ConfigError, match="expected \\[name"):
        vissl_models.build_model(cfg)


def test_attr_dict_behaviour():
    cfg = vissl_models.load_config()
    assert cfg.MODEL["TRUNK"] is cfg.MODEL.TRUNK
    cfg.MODEL.TRUNK.NAME = "x"
    assert cfg["MODEL"]["TRUNK"]["NAME"] == "x"
    with pytest.raises(AttributeError, match="NO_SUCH"):
        cfg.MODEL.NO_SUCH
    assert isinstance(cfg.to_dict()["MODEL"], dict)


# ------------------------------------------------------------------ hostile and VISSL-shaped files
def alias_bomb(levels=9, fanout=10):
    """YAML whose nested aliases expand to fanout**levels values (10**9 by default) in about 1 KB."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * fanout) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return "config:\n  DATA:\n" + "".join(f"    {line}\n" for line in lines)


def test_alias_bomb_is_refused_quickly(tmp_path):
    import time

    text = alias_bomb()
    assert len(text) < 1300
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        vissl_models.load_config(path)
    with pytest.raises(ConfigError, match="alias bomb"):
        vissl_models.load_config(None, ["+config.DATA.X=" + "{" + alias_bomb().split("\n", 2)[2].replace("\n", ", ") + "}"])
    assert time.perf_counter() - t0 < 2.0
    # Aliases used as configs use them (a shared list) still load.
    ok = write(tmp_path, "config:\n  DATA:\n    MEAN: &m [0.5, 0.5, 0.5]\n    STD: *m\n", "ok.yaml")
    assert vissl_models.load_config(ok).DATA.STD == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("text,match", [
    ("config: !!python/object/apply:os.system ['echo hacked']", "python/object/apply"),
    ("config:\n  MODEL: !!python/name:os.system", "python/name"),
    ("config:\n  DATA: !!set {a: null}", "!!set"),
    ("config:\n  DATA: !custom 3", "!custom"),
    ("a: &a [*a]", "recursive"),
    ("[" * 5000, "nested too deeply|not valid YAML"),
    ("config: [unclosed", "not valid YAML.*line 1"),
])
def test_tags_recursion_and_syntax_errors_are_config_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        vissl_models.load_config(write(tmp_path, text))


@pytest.mark.parametrize("override,match", [
    ("config.MODEL.TRUNK.NAME=!!python/object/apply:os.system [x]", "python/object/apply"),
    ("config.MODEL.TRUNK.NAME=[unclosed", "not valid YAML"),
    ("RESNETS=5", r"names nothing.*config\.MODEL\.TRUNK\.RESNETS"),
    ("foo.bar=1", "names nothing"),
    ("config.MODEL.TRUNK.RESNETS=5", r"MODEL\.TRUNK\.RESNETS: is a section"),
    ("+config/pretrain/nothing=here", r"names nothing.*config/pretrain/nothing/here\.yaml"),
    ("config=nothing/here", "names nothing"),
    ("+config/a=../../etc/passwd", r"'\.\.'"),
    ("~config.MODEL.TRUNK", "removing keys"),
    ("config..MODEL=1", "empty"),
])
def test_bad_overrides_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        vissl_models.load_config(None, [override])


@pytest.mark.parametrize("text,match", [
    ("config:\n  MODEL: 7", r"^MODEL: is a section.*7"),
    ("config:\n  MODEL:\n    TRUNK: [resnet]", r"MODEL\.TRUNK: is a section"),
    ("config: 5", "'config' must be a mapping"),
    ("engine: extract_features\nconfig: {}", "engine"),
    ("- a\n- b", "expected a mapping at the top"),
])
def test_wrong_shapes_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        vissl_models.load_config(write(tmp_path, text))


def test_unreadable_files_are_config_errors(tmp_path):
    binary = tmp_path / "bad.yaml"
    binary.write_bytes(b"config:\n  \xff\xfe\x00 MODEL: {}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        vissl_models.load_config(str(binary))
    with pytest.raises(ConfigError, match="folder"):
        vissl_models.load_config(str(tmp_path))
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):  # refused, not waited on
        vissl_models.load_config(str(fifo))


def test_engine_name_is_accepted_and_kept(tmp_path):
    path = write(tmp_path, """\
        # @package _global_
        engine_name: extract_features
        config:
          MODEL:
            TRUNK:
              NAME: resnet
        """)
    cfg = vissl_models.load_config(path)
    assert cfg.engine_name == "extract_features" and cfg.MODEL.TRUNK.NAME == "resnet"
    assert vissl_models.load_config(path, ["engine_name=train"]).engine_name == "train"


def vissl_tree(root):
    """A small copy of the original's config tree: configs/config/<groups>/*.yaml."""
    base = root / "configs" / "config"
    (base / "pretrain" / "simclr" / "models").mkdir(parents=True)
    (base / "feature_extraction" / "trunk_only").mkdir(parents=True)
    (base / "pretrain" / "simclr" / "simclr_8node_resnet.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        config:
          DATA:
            NUM_DATALOADER_WORKERS: 5
          MODEL:
            TRUNK:
              NAME: resnet
              RESNETS:
                DEPTH: 50
            HEAD:
              PARAMS: [["mlp", {"dims": [2048, 128]}]]
        """))
    (base / "pretrain" / "simclr" / "models" / "resnet18.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        config:
          MODEL:
            TRUNK:
              RESNETS:
                DEPTH: 18
            HEAD:
              PARAMS: [["mlp", {"dims": [512, 128]}]]
        """))
    (base / "feature_extraction" / "trunk_only" / "rn50_res5.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        engine_name: extract_features
        config:
          MODEL:
            FEATURE_EVAL_SETTINGS:
              EVAL_MODE_ON: True
        """))
    return root / "configs"


def test_group_overrides_compose_from_the_main_configs_tree(tmp_path):
    root = vissl_tree(tmp_path)
    main = root / "config" / "pretrain" / "simclr" / "simclr_8node_resnet.yaml"
    cfg = vissl_models.load_config(
        str(main),
        ["config.MODEL.HEAD.PARAMS=[['mlp', {'dims': [512, 10]}]]",  # assignments apply after the files
         "+config/pretrain/simclr/models=resnet18", "+config/feature_extraction/trunk_only=rn50_res5"],
    )
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 18
    assert cfg.MODEL.HEAD.PARAMS == [["mlp", {"dims": [512, 10]}]]
    assert cfg.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON is True
    assert cfg.engine_name == "extract_features" and cfg.DATA.NUM_DATALOADER_WORKERS == 5
    assert not any("/" in str(k) for k in cfg)  # no junk keys


def test_group_overrides_from_an_explicit_root_or_the_environment(tmp_path, monkeypatch):
    root = vissl_tree(tmp_path)
    overrides = ["config=pretrain/simclr/simclr_8node_resnet", "+config/pretrain/simclr/models=resnet18"]
    with pytest.raises(ConfigError, match="names nothing"):
        vissl_models.load_config(None, overrides)
    cfg = vissl_models.load_config(None, overrides, config_root=str(root))
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 18 and cfg.DATA.NUM_DATALOADER_WORKERS == 5
    monkeypatch.setenv("VISSL_MODELS_CONFIG_PATH", str(root))
    assert vissl_models.load_config(None, overrides) == cfg


def test_shipped_names_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = vissl_models.load_config("swav_resnet50")
    assert cfg.MODEL.TRUNK.NAME == "resnet" and cfg.MODEL.HEAD.PARAMS[0][0] == "swav_head"
    assert vissl_models.load_config("swav_resnet50.yaml") == cfg
    with pytest.raises(FileNotFoundError, match=r"did you mean \['swav_resnet50'"):
        vissl_models.load_config("swav_resnet5")
    with pytest.raises(ConfigError, match="swav_resnet5"):
        vissl_models.load_config("swav_resnet5")
