"""Experiment configs: the four YAML files, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from jaxecg.config import ConfigError
from jaxecg.models import CMRClassifierConfig, ResNetConfig, SimCLRConfig
from jaxecg.models.ecg_classifier import ECGClassifierConfig
from jaxecg.models.mae import MAEConfig
from jaxecg.train.cli import main
from jaxecg.train.config import OptimConfig, apply_overrides, load_config, parse_value

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_reference_hyper_parameters():
    mae = load_config(CONFIGS / "pretrain_mae_ecg.yaml")
    assert isinstance(mae.model, MAEConfig)
    assert (mae.model.embed_dim, mae.model.depth, mae.model.num_heads) == (384, 3, 6)
    assert (mae.model.mask_ratio, mae.model.ncc_weight) == (0.8, 0.1)
    assert (mae.optim.lr, mae.optim.weight_decay, mae.optim.b2) == (1e-5, 0.15, 0.95)
    assert (mae.optim.epochs, mae.optim.warmup_epochs, mae.train.batch_size) == (400, 40, 128)

    simclr = load_config(CONFIGS / "pretrain_simclr_cmr.yaml")
    assert isinstance(simclr.model, SimCLRConfig)
    assert simclr.model.encoder.backbone == "resnet50" and simclr.model.temperature == 0.1
    assert (simclr.optim.lr, simclr.optim.weight_decay, simclr.train.batch_size) == (3e-3, 1e-4, 32)
    assert (simclr.loss.classifier_lr, simclr.optim.epochs) == (3e-4, 200)

    ecg = load_config(CONFIGS / "finetune_ecg.yaml")
    assert isinstance(ecg.model, ECGClassifierConfig)
    assert ecg.model.global_pool == "attention_pool" and ecg.model.drop_rate == 0.1
    assert (ecg.optim.weight_decay, ecg.optim.layer_decay) == (0.05, 0.75)
    assert ecg.optim.warmup_epochs / ecg.optim.epochs == 0.05
    assert ecg.loss.label_smoothing == 0.1

    cmr = load_config(CONFIGS / "finetune_cmr.yaml")
    assert isinstance(cmr.model, CMRClassifierConfig)
    assert cmr.optim.schedule == "cosine" and not cmr.model.freeze_encoder


def test_overrides_reach_every_section():
    cfg = load_config(
        CONFIGS / "pretrain_mae_ecg.yaml",
        [
            "train.steps=7",
            "train.batch_size=16",
            "train.workdir=/tmp/x",
            "optim.lr=3e-4",
            "model.depth=2",
            "model.img_size=[1, 12, 500]",
            "data.source=synthetic",
            "train.eval_every=5",
            "train.checkpoint_every=0",
        ],
    )
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.workdir) == (7, 16, "/tmp/x")
    assert cfg.optim.lr == 3e-4 and cfg.model.depth == 2 and cfg.model.img_size == (1, 12, 500)
    assert (cfg.train.eval_every, cfg.train.checkpoint_every) == (5, 0)
    # The preset still supplies the fields the override did not touch.
    assert cfg.model.embed_dim == 384
    # A config round-trips through its JSON-safe dict (what checkpoints store).
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_values_parse_as_yaml_with_plain_exponents():
    assert parse_value("1e-5") == 1e-5 and isinstance(parse_value("1e-5"), float)
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("runs/a") == "runs/a"
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=2"]) == {"a": {"b": 1, "c": {"d": 2}}}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.stepz=3", "train.stepz"),
        ("optim.lr=fast", "optim.lr"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("model.depthh=2", "model.depthh"),
        ("model.mask_ratio=high", "model.mask_ratio"),
        ("data.augment.jitter=0.1", "data.augment.jitter"),
        ("loss.unknown=1", "loss.unknown"),
        ("model.preset=enormous", "model.preset"),
        ("task=dance", "task"),
        ("bogus.key=1", "bogus"),
        ("train.steps.x=1", "train.steps"),
        ("train.steps", "train.steps"),
    ],
)
def test_bad_keys_and_types_are_named(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(CONFIGS / "pretrain_mae_ecg.yaml", [override])


def test_cli_reports_config_errors_in_one_line(capsys, tmp_path):
    assert main([str(CONFIGS / "finetune_ecg.yaml"), "optim.layer_decay=steep"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.layer_decay" in err and len(err.splitlines()) == 1
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_override_names_the_path_as_written_with_a_close_match():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "pretrain_mae_ecg.yaml", ["train.stpes=3"])
    message = str(err.value)
    assert message.startswith(
        "unknown TrainConfig key(s) 'train.stpes' (did you mean 'train.steps'?); valid keys:"
    )
    assert "ExperimentConfig" not in message
    with pytest.raises(ConfigError, match=r"^model\.depth: expected int, got 'deep'$"):
        load_config(CONFIGS / "pretrain_mae_ecg.yaml", ["model.depth=deep"])


def test_removed_options_say_what_to_use_and_stored_defaults_still_load():
    with pytest.raises(ConfigError, match=r"'optim.freeze_encoder' was removed.*model\.freeze"):
        load_config(CONFIGS / "finetune_cmr.yaml", ["optim.freeze_encoder=true"])
    with pytest.raises(ConfigError, match="'model.encoder.bn_axis_name' was removed"):
        load_config(CONFIGS / "pretrain_simclr_cmr.yaml", ["model.encoder.bn_axis_name=data"])
    # A config stored before the removal (checkpoint, convert.save) holds the old defaults.
    stored = {**ResNetConfig.preset("resnet18").to_dict(), "bn_axis_name": None}
    assert ResNetConfig.from_dict(stored) == ResNetConfig.preset("resnet18")
    assert OptimConfig.from_dict({"freeze_encoder": False}) == OptimConfig()
    assert "freeze_encoder" not in OptimConfig().to_dict()
