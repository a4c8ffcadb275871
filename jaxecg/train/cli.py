"""``jaxecg train CONFIG [key.sub=value ...] [--resume]``.

Loads the YAML experiment, applies the overrides, and runs
:func:`jaxecg.train.loop.train`. Bad input exits with status 2 and a one-line
reason; a run stopped by a non-finite loss exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

from jaxecg.config import ConfigError

_EPILOG = """\
overrides use the config's dotted keys, e.g.
  train.steps=200 train.batch_size=16 train.workdir=runs/mae data.source=synthetic
  model.depth=2 optim.lr=1e-4 train.eval_every=50 train.checkpoint_every=100
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxecg train",
        description="Pretrain or fine-tune from a YAML experiment config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML experiment file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override a config value"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in <train.workdir>/checkpoints",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from jaxecg.train.config import load_config  # after --help, which must stay instant

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as err:
        print(f"jaxecg train: {err}", file=sys.stderr)
        return 2
    from jaxecg.train.loop import NonFiniteLossError, train

    try:
        train(cfg, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"jaxecg train: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxecg train: {err}", file=sys.stderr)
        return 2
    return 0
