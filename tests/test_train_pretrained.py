"""Fine-tuning from a converted golden PyTorch checkpoint starts from the reference encoder:
the first forward of the set-up run's encoder reproduces the golden features."""

import golden
import jax
import numpy as np
from train_helpers import CONFIGS, TINY, quiet_args

from jaxecg.models import CMREncoder, nchw_to_nhwc
from jaxecg.models.vit import ECGEncoder
from jaxecg.train.config import load_config
from jaxecg.train.loop import setup


def _setup(config: str, checkpoint_id: str):
    path = golden.checkpoint_path(checkpoint_id)  # .xz: convert reads it directly
    cfg = load_config(
        CONFIGS / f"{config}.yaml",
        [*TINY[config], *quiet_args(config), f"pretrained_weights={path}"],
    )
    return setup(cfg)


def test_ecg_finetuning_starts_from_the_signal_encoder(capsys):
    run = _setup("finetune_ecg", "dev/checkpoints/ecg_signal_encoder")
    assert "matched" in capsys.readouterr().out  # the conversion report is printed
    case = "dev/ecg_encoder/localized"
    x = golden.arrays(case)["x"]
    params = jax.device_get(run.state.params)
    tokens = ECGEncoder(run.cfg.model).apply({"params": params}, x, localized=True)
    golden.assert_matches(case, "out", tokens)


def test_cmr_finetuning_starts_from_the_image_encoder():
    run = _setup("finetune_cmr", "dev/checkpoints/cmr_image_encoder_resnet18")
    case = "dev/cmr_encoder/resnet18_eval_32px_b2"
    state = jax.device_get(run.state)
    features = CMREncoder(run.cfg.model.encoder).apply(
        {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]},
        nchw_to_nhwc(golden.arrays(case)["x"]),
    )
    golden.assert_matches(case, "out", features)
    assert np.all(np.isfinite(state.params["head"]["kernel"]))
