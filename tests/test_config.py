import pytest
import yaml

from expr.config import ABAW_CLASSES, Config, ConfigError, all_keys, build_config, parse_cli, parse_literal


def test_defaults_are_the_papers():
    cfg = build_config(preset="paper")
    assert cfg.train.lr == 1e-5 and cfg.train.epochs == 30 and cfg.train.batch_size == 64 and cfg.train.seed == 42
    assert cfg.model.tcn_blocks == 6 and cfg.model.heads == 8 and cfg.model.fusion == "bidirectional"
    assert cfg.loss.contrastive_weight == 0.1 and cfg.loss.prompt_template == "A face expressing {emotion}"
    assert cfg.data.classes == ABAW_CLASSES and cfg.model.visual_dim == 512 and cfg.model.audio_dim == 768


def test_ablation_axes_exist():
    keys = set(all_keys())
    assert {"data.window", "model.tcn_blocks", "model.fusion", "loss.contrastive_weight"} <= keys


def test_demo_preset_only_without_a_cache():
    assert build_config().train.lr == 3e-4  # demo preset
    assert build_config({"data.cache": "/some/store"}).train.lr == 1e-5  # paper preset
    assert build_config({"train.lr": 0.01}).train.lr == 0.01  # overrides win over the preset


def test_cli_overrides_both_syntaxes():
    overrides, files, preset, resume = parse_cli(
        ["--model.tcn_blocks", "4", "--train.lr=3e-5", "--model.fusion", "v2a", "--config", "a.yaml"]
    )
    assert overrides == {"model.tcn_blocks": "4", "train.lr": "3e-5", "model.fusion": "v2a"}  # text until applied
    assert files == ["a.yaml"] and preset is None and resume is None
    cfg = build_config(overrides, preset="paper")
    assert cfg.model.tcn_blocks == 4 and cfg.train.lr == 3e-5 and cfg.model.fusion == "v2a"


def test_negative_number_is_a_value_not_an_option():
    overrides, *_ = parse_cli(["--train.min_lr_ratio", "-0.5"])
    assert build_config(overrides).train.min_lr_ratio == -0.5


def test_cli_none_means_the_choice_or_null_by_field_type():
    overrides, *_ = parse_cli(["--model.fusion", "none", "--train.max_grad_norm", "none", "--train.log_with=none"])
    cfg = build_config(overrides)
    assert cfg.model.fusion == "none" and cfg.train.max_grad_norm is None and cfg.train.log_with is None
    assert type(cfg.model.fusion) is str and "fusion: none" in yaml.safe_dump(cfg.to_dict())
    overrides, *_ = parse_cli(["--model.tcn_blocks", "four"])
    with pytest.raises(ConfigError, match=r"model\.tcn_blocks.*expected int"):
        build_config(overrides)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"model.tcn_block": 4}, "model.tcn_block"),  # typo
        ({"modle.tcn_blocks": 4}, "modle.tcn_blocks"),  # typo in the section
        ({"model.tcn_blocks": "four"}, "model.tcn_blocks"),  # wrong type
        ({"model.tcn_blocks": 2.5}, "model.tcn_blocks"),  # float for int
        ({"model.fusion": "sideways"}, "model.fusion"),  # not a choice
        ({"train.max_grad_norm": "x"}, "train.max_grad_norm"),
        ({"model.heads": 7}, "model.heads"),  # does not divide 512
    ],
)
def test_bad_keys_and_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(overrides)


def test_typo_suggests_the_right_key():
    with pytest.raises(ConfigError, match="Did you mean model.tcn_blocks"):
        build_config({"model.tcn_block": 4})


def test_yaml_roundtrip_and_types(tmp_path):
    cfg = build_config({"model.mlp_hidden": [128, 64], "train.max_grad_norm": None, "data.window": 60})
    cfg.save(tmp_path / "c.yaml")
    again = build_config(yaml_files=[tmp_path / "c.yaml"])
    assert again == cfg
    assert again.model.mlp_hidden == (128, 64) and again.train.max_grad_norm is None


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  tcn_blocks: 3\n  dropuot: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.dropuot"):
        build_config(yaml_files=[bad])


def test_int_accepted_for_float_and_literals_parsed():
    assert build_config({"train.lr": 1}).train.lr == 1.0
    assert parse_literal("none") is None and parse_literal("true") is True and parse_literal("[1, 2]") == [1, 2]
    assert parse_literal("v2a") == "v2a"


def test_config_has_no_torch_dependency():
    import subprocess
    import sys

    code = "import sys, expr.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_num_classes_follows_class_list():
    assert Config().num_classes == 8


def test_train_help_lists_every_option_with_its_docstring(capsys):
    from expr.cli.train import main
    from expr.config import field_docs

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    docs = field_docs()
    assert set(docs) == set(all_keys())  # every field has a docstring
    for key in all_keys():
        assert f"--{key} " in out, key
    assert "Frames per window" in out and "(default 30)" in out


def test_a_backbone_override_a_prepared_store_cannot_honour_is_an_error():
    """A prepared store's features and prompts come from the encoders it records: a different backbones.* value would
    be silently ignored, so it is refused, naming the key; the defaults and preset values are not a choice."""
    from types import SimpleNamespace

    import numpy as np

    from expr.training.loaders import check_store

    recorded = {"clip": "ViT-B-32", "clip_pretrained": "/weights/clip.pt", "wav2vec2": "/weights/w2v"}
    store = SimpleNamespace(
        path="cache/x",
        classes=list(ABAW_CLASSES),
        meta={"backbones": recorded},
        visual_dim=512,
        audio_dim=768,
        visual_sets=["clip"],
        audio_set="wav2vec2",
        videos_in=lambda split, task="expr": np.arange(2),
        training_videos=lambda task, tasks=("expr",), overlap="exclude": np.arange(2),
    )
    check_store(store, build_config({"data.cache": "cache/x"}))  # defaults: fine
    check_store(store, build_config({"data.cache": "cache/x", "backbones.clip_pretrained": "/weights/clip.pt"}))
    with pytest.raises(ConfigError, match="backbones.wav2vec2"):
        check_store(store, build_config({"data.cache": "cache/x", "backbones.wav2vec2": "facebook/wav2vec2-large"}))


def test_test_time_flips_are_refused_in_cached_mode_with_the_alternative():
    from expr.config import build_config

    with pytest.raises(ConfigError, match="eval.flip.*flip=1"):
        build_config({"eval.flip": True})
    assert build_config({"eval.flip": True, "data.mode": "online"}).eval.flip


@pytest.mark.parametrize(
    "key, value",
    [("model.dim", 1 << 24), ("model.mlp_hidden", [512, 1 << 30]), ("data.window", 10**7), ("model.heads", 0),
     ("model.visual_dim", 0), ("train.batch_size", 10**9), ("model.tcn_blocks", 10_000)],
)  # fmt: skip
def test_a_run_folders_config_beyond_sane_bounds_is_refused_before_anything_is_built(tmp_path, key, value):
    """A crafted or damaged config.yaml (huge widths or windows would ask for terabytes while the model is built) is
    refused naming the file and the key, before any model exists."""
    import yaml

    from expr.runs.layout import load_run

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    values = Config().to_dict()
    section, name = key.split(".")
    values[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    (run / "best" / "model.safetensors").write_bytes(b"not read: the config is refused first")
    with pytest.raises(ConfigError, match=rf"{run / 'config.yaml'}: config key '{key}': must be"):
        load_run(run)
