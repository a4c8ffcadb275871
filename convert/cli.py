"""``python -m convert SRC --kind KIND [...] --out DIR``: a checkpoint → an Orbax directory.

Prints the load report; on a failure prints the report (when there is one) and a one-line
reason, exits 2 for bad input (1 when writing failed) and leaves no output directory
behind (``convert.save`` writes atomically). Anything not ours raises with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from convert.loading import load
from convert.report import CheckpointMismatchError
from convert.rules import MODES
from convert.store import save
from convert.targets import KINDS, binding
from jaxecg.config import Config
from jaxecg.errors import CheckpointError, ConfigError, UsageError, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a PyTorch checkpoint of the reference into an Orbax directory "
        "(variables + convert.json sidecar with kind, config, source sha256 and load report).",
    )
    parser.add_argument(
        "source", type=Path, help=".pth/.pt/.ckpt/.safetensors/.npz, optionally .xz"
    )
    parser.add_argument("--kind", required=True, choices=KINDS, help="model kind to load into")
    parser.add_argument("--preset", help="config preset (e.g. tiny, resnet50)")
    parser.add_argument(
        "--config", type=Path, help="YAML/JSON mapping of config fields (applied over --preset)"
    )
    parser.add_argument("--strict", action="store_true", help="fail on any missing key")
    parser.add_argument(
        "--missing-key-threshold",
        type=float,
        default=0.1,
        help="fail when more than this fraction of target keys is missing (default 0.1)",
    )
    parser.add_argument(
        "--resize-pos-embed",
        action="store_true",
        help="resize a learned pos_embed of another time length (bicubic along time)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="restore",
        help="classifiers: 'restore' (default) reads a trained classifier and refuses a file "
        "without its head and pooling; 'finetune' starts one from an encoder or MAE file",
    )
    parser.add_argument(
        "--strip-prefix",
        metavar="PREFIX",
        help="remove PREFIX (e.g. 'model.') from the file's keys before matching",
    )
    parser.add_argument("--out", required=True, type=Path, help="new output directory")
    return parser


def _config(kind: str, preset: str | None, config_file: Path | None) -> Config:
    overrides: dict[str, Any] = {}
    if config_file is not None:
        try:
            overrides = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config file {str(config_file)!r}: {err}") from err
        if not isinstance(overrides, dict):
            raise ConfigError(f"config file {str(config_file)!r} must hold a mapping of fields")
    cls = binding(kind).config_cls
    return cls.preset(preset, **overrides) if preset else cls.from_dict(overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("convert", lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    # The printed report already lists every missing and unexpected key.
    logging.getLogger("convert").setLevel(logging.ERROR)
    if args.out.exists():
        raise UsageError(f"output directory {str(args.out)!r} already exists")
    config = _config(args.kind, args.preset, args.config)
    try:
        variables, report = load(
            args.source,
            args.kind,
            config,
            strict=args.strict,
            missing_key_threshold=args.missing_key_threshold,
            resize_pos_embed=args.resize_pos_embed,
            strip_prefix=args.strip_prefix,
            mode=args.mode,
        )
    except CheckpointMismatchError as err:
        # The report lists the keys once; the error line only says why it failed.
        print(err.report.summary(), file=sys.stderr)
        raise CheckpointError(err.headline) from err
    print(report.summary())
    out = save(variables, args.out, kind=args.kind, config=config, report=report)
    print(f"saved {args.kind} to {out}")
    return 0
