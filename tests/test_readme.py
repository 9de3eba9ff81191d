"""The README's code runs as written: every ``bash`` block's commands and the ``python`` library
snippet, in a scratch directory that sees the repository's ``examples/`` and ``tests/``.

Blocks marked ``<!-- readme-test: skip (...) -->`` (the Quickstart and installation, which set up
the environment) and ``text`` blocks (commands with placeholders for the user's files) are not
run. The commands run in this process, through the same ``main`` functions as ``python -m``,
with one change: inversions are capped at 2 iterations (``--iterations 2`` is appended, which
overrides an earlier value) so that the suite stays fast; every flag and path is used as written.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = "2"


def blocks(text: str) -> list[tuple[str, str, bool]]:
  """(language, code, skipped) of every fenced block of ``text``."""
  out = []
  for m in re.finditer(r"(<!-- readme-test: skip[^>]*-->\s*)?```(\w*)\n(.*?)```", text, re.S):
    out.append((m.group(2), m.group(3), m.group(1) is not None))
  return out


def commands(code: str) -> list[list[str]]:
  """The commands of a bash block (``\\`` continuations joined, ``#`` comments dropped)."""
  code = code.replace("\\\n", " ")
  out = []
  for line in code.splitlines():
    words = shlex.split(line, comments=True)
    if words:
      out.append(words)
  return out


def _entry(module: str):
  if module == "convert":
    from convert.__main__ import main
  else:
    import importlib
    main = importlib.import_module(module).main
  return main


def run_command(words: list[str]) -> int:
  assert words[0] in ("python", "python3"), words
  assert words[1] == "-m", f"README commands run modules: {words}"
  module, argv = words[2], list(words[3:])
  if module == "mgan_jax.invert":
    argv += ["--iterations", FAST]
  elif module == "mgan_jax.manipulate" and "--image" in argv:
    argv += [f"--invert-args=--iterations {FAST}"]
  return _entry(module)(argv)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
  for name in ("examples", "tests"):
    (tmp_path / name).symlink_to(ROOT / name)
  monkeypatch.chdir(tmp_path)
  return tmp_path


README = (ROOT / "README.md").read_text()


def test_the_readme_has_runnable_blocks():
  kinds = [(lang, skip) for lang, _, skip in blocks(README)]
  assert ("bash", False) in kinds and ("python", False) in kinds and ("bash", True) in kinds


RUNNABLE = [code for lang, code, skip in blocks(README) if lang == "bash" and not skip]


def test_the_runnable_blocks_cover_every_command():
  ran = {words[2] for code in RUNNABLE for words in commands(code)}
  assert {"mgan_jax.invert", "mgan_jax.manipulate", "mgan_jax.generate", "convert"} <= ran


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_commands_run_as_written(index, scratch, capsys):
  """Each runnable block in a fresh directory (the blocks do not depend on each other)."""
  for words in commands(RUNNABLE[index]):
    rc = run_command(words)
    assert rc == 0, (words, capsys.readouterr().err[-2000:])
    for i, w in enumerate(words[:-1]):     # what an --out names exists afterwards
      if w == "--out":
        assert (scratch / words[i + 1]).exists(), words


def test_readme_library_snippet_runs_and_saves_a_picture(scratch, capsys):
  (code,) = [c for lang, c, skip in blocks(README) if lang == "python" and not skip]
  exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
  out = capsys.readouterr().out
  assert "iteration 200: loss" in out and "PSNR" in out
  assert (scratch / "out" / "colorized.png").stat().st_size > 1000
