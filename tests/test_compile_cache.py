"""The persistent compilation cache of the CLIs: a repeated command skips compiling.

Two identical ``python -m mgan_jax.invert`` runs (subprocesses, tiny PGGAN) into two OUTs with
the cache in a temporary directory: the first stores its programs, the second stores none (all
came from the cache) and reports a compile time in metrics.json below the first's. What is left
is JAX tracing and lowering the programs, which the cache cannot skip; for the tiny test model
that is a large share, for real models a small one (docs/engine.md). ``--no-compile-cache`` and
``MGAN_JAX_COMPILE_CACHE=0`` turn it off.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from batch_helpers import ROOT, cli_env, make_cli_inputs
from mgan_jax import cli


def _run(model, images, out, env, *extra):
  cmd = [sys.executable, "-m", "mgan_jax.invert", "--checkpoint", str(model), "--image",
         str(images / "img0.png"), "--codes", "3", "--layer", "2", "--perceptual-weight", "0",
         "--iterations", "3", "--chunk", "3", "--out", str(out), "--quiet", *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = json.loads((out / "img0" / "metrics.json").read_text())
  return m["time"]["compile_seconds"]


def _programs(cache):
  return {p.name for p in cache.iterdir() if p.name.endswith("-cache")}


def test_a_repeated_command_skips_compiling(tmp_path):
  model, images = make_cli_inputs(tmp_path, images=1)
  cache = tmp_path / "xla"
  # every program is kept, however fast it compiles (the CLI keeps those over 0.5 s)
  env = dict(cli_env(1), MGAN_JAX_COMPILE_CACHE=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  first = _run(model, images, tmp_path / "a", env)
  stored = _programs(cache)
  assert any(n.startswith("jit__chunk_program-") for n in stored), stored   # programs stored
  second = _run(model, images, tmp_path / "b", env)
  # every program of the second run came from the cache: none was compiled and stored anew
  assert _programs(cache) == stored
  # and its reported compile time is what is left (tracing, lowering): below the first's
  assert second < first, (first, second)
  # turned off: nothing is read or stored
  _run(model, images, tmp_path / "c", dict(env, MGAN_JAX_COMPILE_CACHE="0"))
  _run(model, images, tmp_path / "d", env, "--no-compile-cache", "--seed", "5")
  assert _programs(cache) == stored


def test_where_the_cache_is():
  ns = argparse.Namespace(no_compile_cache=False)
  assert cli.compile_cache_dir(ns, {"MGAN_JAX_COMPILE_CACHE": "0"}) is None
  assert cli.compile_cache_dir(ns, {"MGAN_JAX_COMPILE_CACHE": "off"}) is None
  assert cli.compile_cache_dir(ns, {"MGAN_JAX_COMPILE_CACHE": "/data/xla"}) == "/data/xla"
  assert cli.compile_cache_dir(argparse.Namespace(no_compile_cache=True), {}) is None
  assert cli.compile_cache_dir(ns, {}).endswith("xla")
