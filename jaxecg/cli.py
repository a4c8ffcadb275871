"""``jaxecg`` command: dispatches to the sub-command that owns each job.

Sub-commands are imported lazily so ``jaxecg --help`` stays instant and a
failure in one job's imports cannot break the others.
"""

from __future__ import annotations

import importlib
import sys

from jaxecg import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("jaxecg.train.cli", "pretrain or fine-tune from a YAML config"),
    "evaluate": ("jaxecg.evaluate", "score a fine-tuned classifier run on a split of its data"),
    "embed": ("jaxecg.embed", "write embeddings of a dataset with a pretrained encoder"),
    "preprocess": ("jaxecg.data.cli", "turn a folder of ECG records into a dataset"),
    "probe": ("jaxecg.probe", "linear probe of a frozen encoder: test metrics of a regression"),
}


def _usage() -> str:
    lines = ["usage: jaxecg COMMAND [args...] | --version | --help", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'jaxecg COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"jaxecg {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jaxecg: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
