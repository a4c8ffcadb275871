"""The README's examples run: its ```python blocks and its ```bash blocks.

Python blocks: every block opening with exactly ```python runs on its own (fresh globals,
a temporary working directory), so those examples must be self-contained.

Shell blocks: every ```bash block carries an HTML comment on the last non-blank line
before its fence that says whether and how it is tested; a block without one fails
``test_every_shell_block_says_how_it_is_tested``:

    <!-- test -->                                  run the block as written
    <!-- test: train.steps=2 --num-records 16 -->  run it with these values in place of the
                                                   block's own (``key=value`` overrides and
                                                   ``--option value`` pairs, each of which
                                                   must occur in the block)
    <!-- not tested: needs the published weights -->   do not run it; the reason is required

Keep tested blocks to built-in data and cheap settings (the whole suite has a time budget);
a block that mixes runnable commands with ones needing outside files is split in two.

The tested blocks run in README order in ONE temporary working directory, so a later
block may use what an earlier one wrote (``runs/...``), as a reader following the README
would. The repository's top-level entries (``configs/`` ...) are linked into it. Commands
run in this process, so one JAX import and the session's compilation cache serve them
all: ``jaxecg ARGS`` calls ``jaxecg.cli.main(ARGS)``, ``python -m MODULE ARGS`` runs the
module as ``__main__``, and ``pip ...`` is skipped (the test runs in the installed
environment). Each must exit 0. Supported shell syntax: ``#`` comments, ``\\`` line
continuations, commands joined by ``&&`` or ``;`` or newlines; anything else (pipes,
redirections, other programs) is an error naming the block.
"""

from __future__ import annotations

import dataclasses
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from jaxecg.cli import main as jaxecg_main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_BASH = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_ANNOTATION = re.compile(r"<!--\s*(test|not tested)\s*(?::\s*(.*?))?\s*-->\s*$", re.DOTALL)
_SEPARATORS = {"&&", ";"}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block of ``text``."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


@dataclasses.dataclass(frozen=True)
class ShellBlock:
    """A ```bash block: where it starts, its text, and what its annotation says."""

    line: int
    code: str
    tested: bool | None  # None: no annotation
    argument: str  # the substitutions of a tested block, the reason of an exempt one


def shell_blocks(text: str) -> list[ShellBlock]:
    """Every ```bash block of ``text`` with the annotation on the line before its fence."""
    blocks = []
    for m in _BASH.finditer(text):
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        note = _ANNOTATION.search(before)
        tested = None if note is None else note.group(1) == "test"
        argument = "" if note is None else (note.group(2) or "")
        blocks.append(ShellBlock(text.count("\n", 0, m.start(1)) + 1, m.group(1), tested, argument))
    return blocks


def substitute(code: str, argument: str) -> str:
    """``code`` with each ``key=value`` / ``--option value`` of ``argument`` in place.

    Every key or option must occur in ``code``: a substitution that no longer matches
    means the README changed under its annotation.
    """
    tokens = shlex.split(argument)
    while tokens:
        token = tokens.pop(0)
        if token.startswith("--"):
            if not tokens:
                raise ValueError(f"option {token} has no value")
            value = tokens.pop(0)
            pattern, new = rf"(?<!\S){re.escape(token)}\s+\S+", f"{token} {shlex.quote(value)}"
        elif "=" in token:
            key, value = token.split("=", 1)
            pattern, new = rf"(?<![\w.]){re.escape(key)}=\S+", shlex.quote(f"{key}={value}")
        else:
            raise ValueError(f"{token!r} is neither key=value nor --option value")
        code, count = re.subn(pattern, lambda _, text=new: text, code)
        if count == 0:
            raise ValueError(f"{token} does not occur in the block")
    return code


def commands(code: str) -> list[list[str]]:
    """The argument vectors of a block, split at newlines, ``&&`` and ``;``."""
    result = []
    for line in code.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in _SEPARATORS:
                result.append(current)
                current = []
            elif token in {"|", "||", ">", ">>", "<", "&"}:
                raise ValueError(f"shell syntax {token!r} is not supported")
            else:
                current.append(token)
        result.append(current)
    return [argv for argv in result if argv]


def run_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one command of a block in this process; raise unless it exits 0."""
    program, args = argv[0], argv[1:]
    if program == "pip":
        return
    if program == "jaxecg":
        status = jaxecg_main(args)
    elif program in {"python", "python3"} and args[:1] == ["-m"] and len(args) > 1:
        monkeypatch.setattr(sys, "argv", args[1:])
        try:
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as stop:
            status = stop.code or 0
    else:
        raise ValueError(f"cannot run {program!r} in process; exempt the block")
    assert status == 0, f"{shlex.join(argv)} exited {status}"


BLOCKS = python_blocks(README.read_text())
SHELL = shell_blocks(README.read_text())


def test_readme_has_python_examples() -> None:
    assert BLOCKS, f"{README} has no ```python examples"


def test_block_extraction() -> None:
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (9, "b = 2\nc = 3\n")]


def test_shell_annotations_and_substitution() -> None:
    text = (
        "<!-- test: a.b=2 --n 3 -->\n```bash\njaxecg x a.b=40 --n 512 && pip install .\n```\n"
        "<!-- not tested: needs PTB-XL -->\n\n```bash\njaxecg y\n```\n"
        "text\n```bash\njaxecg z  # comment\n```\n"
    )
    first, second, third = shell_blocks(text)
    assert (first.line, first.tested, first.argument) == (3, True, "a.b=2 --n 3")
    assert (second.tested, second.argument) == (False, "needs PTB-XL")
    assert third.tested is None
    code = substitute(first.code, first.argument)
    assert commands(code) == [["jaxecg", "x", "a.b=2", "--n", "3"], ["pip", "install", "."]]
    assert commands("jaxecg a \\\n  b ; jaxecg c # d\n") == [["jaxecg", "a", "b"], ["jaxecg", "c"]]
    with pytest.raises(ValueError, match="does not occur"):
        substitute(first.code, "c.d=1")
    with pytest.raises(ValueError, match="not supported"):
        commands("jaxecg a | head")


def test_every_shell_block_says_how_it_is_tested() -> None:
    assert SHELL, f"{README} has no ```bash blocks"
    unmarked = [block.line for block in SHELL if block.tested is None]
    assert unmarked == [], f"README.md ```bash blocks at lines {unmarked} lack an annotation"
    unexplained = [block.line for block in SHELL if block.tested is False and not block.argument]
    assert unexplained == [], f"README.md blocks at lines {unexplained}: say why not tested"
    assert any(block.tested for block in SHELL)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_example_runs(line: int, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Leading blank lines make traceback line numbers those of README.md.
    compiled = compile("\n" * (line - 1) + code, str(README), "exec")
    exec(compiled, {"__name__": f"readme_line{line}"})  # noqa: S102 - running the examples is the test


def test_readme_shell_blocks_run(tmp_path, monkeypatch) -> None:
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name != "runs":
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    for block in (block for block in SHELL if block.tested):
        for argv in commands(substitute(block.code, block.argument)):
            try:
                run_command(argv, monkeypatch)
            except Exception as error:
                raise AssertionError(f"README.md line {block.line}: {shlex.join(argv)}") from error
