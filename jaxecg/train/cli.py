"""``jaxecg train CONFIG [key.sub=value ...] [--resume [auto]]``.

Loads the YAML experiment, applies the overrides, and runs
:func:`jaxecg.train.loop.train`. Bad input exits with status 2 and a one-line
reason, a failed run (a non-finite loss) with 1, a run stopped by SIGINT/SIGTERM
with 130/143 after checkpointing its last step; anything else is a bug and raises
with its traceback.
"""

from __future__ import annotations

import argparse
import sys

from jaxecg.errors import run_command

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
        allow_abbrev=False,
    )
    parser.add_argument("config", help="YAML experiment file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override a config value"
    )
    parser.add_argument(
        "--resume",
        choices=("must", "auto"),
        metavar="[auto]",
        help="continue from the newest checkpoint in <train.workdir>/checkpoints; "
        "'--resume auto' starts fresh when there is none (for re-queued cluster jobs)",
    )
    return parser


def _resume_values(argv: list[str]) -> list[str]:
    """``--resume auto`` → ``--resume=auto``, a bare ``--resume`` → ``--resume=must``: an
    optional value would otherwise swallow a following ``key=value`` override."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item != "--resume":
            out.append(item)
        elif (value := next(items, None)) == "auto":
            out.append("--resume=auto")
        else:
            out += ["--resume=must"] + ([] if value is None else [value])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_intermixed_args(_resume_values(list(argv)))
    resume = {None: False, "must": True, "auto": "auto"}[args.resume]

    def body() -> None:
        from jaxecg.train.config import load_config  # after --help, which must stay instant
        from jaxecg.train.loop import train

        train(load_config(args.config, args.overrides), resume=resume)

    return run_command("train", body)
