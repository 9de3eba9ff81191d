"""``scripts/bench_quality.py`` (time-to-quality curves of the recipes): recipe specs resolve as
the command line does, ``--quick`` runs both settings end to end and keeps going past a failing
recipe, ``--report`` merges runs. The numbers of ``--quick`` mean nothing (tiny runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mgan_jax import defaults as D
from mgan_jax.generators.pggan import PGGAN

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_quality.py"


def _script():
  if "bench_quality" in sys.modules:
    return sys.modules["bench_quality"]
  spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["bench_quality"] = mod               # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def test_specs_resolve_as_the_command_line_does():
  bq = _script()
  gen = PGGAN(resolution=16, channels=(16, 16, 16))
  s = bq.Setting("pggan256", gen, None, None, None, np.zeros((1, 16, 16, 3), np.float32), 4, 2,
                 "test")
  official, plan = bq.resolve(s, "official", scale=0.01, chunk=None, official_iterations=2000)
  assert (official.optimizer.name, official.optimizer.lr, official.iterations) == ("sgd", 1.0, 20)
  assert (official.codes, official.layer) == (4, 2)
  assert plan == [(official.loss, 20)] and official.loss.perceptual_size == 256
  fast, _ = bq.resolve(s, "fast", scale=1.0, chunk=10, official_iterations=2000)
  rec = D.RECIPES["fast"]
  assert (fast.optimizer.name, fast.optimizer.lr, fast.iterations, fast.chunk) == \
      (rec["optimizer"], rec["lr"], rec["iterations"], 10)
  spec = "fast:lr=0.05,alpha=0.5,sched=cosine,end=0.1,phases=0:30+128:10"
  alt, plan = bq.resolve(s, spec, scale=0.5, chunk=None, official_iterations=2000)
  assert alt.optimizer.lr == 0.05 and alt.optimizer.lr_multipliers == (("alpha", 0.5),)
  assert (alt.optimizer.schedule, alt.optimizer.end_factor, alt.iterations) == ("cosine", 0.1, 20)
  assert alt.optimizer.decay_steps == 20           # the schedule spans every phase
  assert [(c.perceptual_weight, c.perceptual_size, it) for c, it in plan] == \
      [(0.0, None, 15), (1e-3, 128, 5)]
  for bad in ("slow", "fast:lrr=1", "fast:lr"):
    with pytest.raises(ValueError):
      bq.parse_spec(bad)


def test_quick_run_both_settings_and_report(tmp_path):
  out = tmp_path / "run"
  proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                         "--recipes", "fast", "fast:lr=-1"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  got = {(r["setting"], r["recipe"]): r for r in records}
  assert set(got) == {(s, r) for s in ("dcgan64", "pggan256")
                      for r in ("official", "fast", "fast:lr=-1")}
  for setting in ("dcgan64", "pggan256"):
    assert "learning rate must be > 0" in got[(setting, "fast:lr=-1")]["error"]
    official, fast = got[(setting, "official")], got[(setting, "fast")]
    assert official["rows"][0] == fast["rows"][0]            # same targets, same start
    assert [r["iteration"] for r in official["rows"]] == [0, 1, 2, 3, 4]
    walls = [r["wall"] for r in official["rows"]]
    assert walls == sorted(walls) and official["compile"] > 0
    assert official["settings"]["optimizer"]["name"] == "sgd"
    assert fast["settings"]["optimizer"]["name"] == "adam"
  summary = json.loads((out / "summary.json").read_text())
  rows = {(r["setting"], r["recipe"]): r for r in summary["rows"]}
  assert rows[("dcgan64", "official")]["ratio"] == pytest.approx(1.0, abs=0.05)
  table = (out / "summary.md").read_text()
  assert table.count("\n") == 8 and "| dcgan64 | fast |" in table
  assert "| setting | recipe |" in proc.stdout
  # --report merges runs (here one) into another directory
  merged = tmp_path / "merged"
  assert _script().main(["--report", str(out), "--out", str(merged)]) == 0
  assert (merged / "summary.md").read_text() == table


def test_warm_runs_from_the_compilation_cache(tmp_path):
  out = tmp_path / "warm"
  # every program is kept, however fast it compiles (the threshold is 0.5 s)
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--warm", "--out", str(out),
                         "--settings", "dcgan64"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["recipe"] for r in records] == ["official", "fast"]
  for r in records:
    warm = r["warm"]
    assert warm["rows"][-1]["loss"] == pytest.approx(r["rows"][-1]["loss"], rel=1e-5)
    assert warm["compile"] < r["compile"]          # programs loaded, not compiled
  rows = json.loads((out / "summary.json").read_text())["rows"]
  assert all(r["ratio_warm_measured"] for r in rows if r.get("t_target") is not None)
