"""End to end: the user CLI (``python -m mgan_jax.invert --image ...``) killed with SIGKILL at a
random moment after its first checkpoint, rerun with the same command and stopped with Ctrl-C,
then rerun again, writes exactly what an uninterrupted run writes.

Tiny random-weight PGGAN model directory (``checkpoint.save_model``), 5 images, batch 2 on 2
forced CPU devices (so the tail batch is padded and the batch is sharded), checkpoints every 2
of 24 iterations.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np

from batch_helpers import make_cli_inputs, start_cli
from mgan_jax import runstate


def _cli(model, images, out, *extra):
  return start_cli(model, images, out, *extra, iterations=24, checkpoint_every=2)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return err


def _read(out: Path) -> dict:
  """Every output file of every image; metrics.json without its timings and command line."""
  got = {}
  for d in sorted(p for p in out.iterdir() if not p.name.startswith(".")):
    files = {}
    for f in sorted(d.iterdir()):
      if f.suffix == ".npz":
        with np.load(f) as z:
          files[f.name] = {k: z[k] for k in z.files}
      elif f.name == "metrics.json":
        m = json.loads(f.read_text())
        m.pop("time"), m.pop("command")
        files[f.name] = m
      else:
        files[f.name] = f.read_bytes()
    got[d.name] = files
  return got


def _same(a, b, where=""):
  assert type(a) is type(b), where
  if isinstance(a, dict):
    assert sorted(a) == sorted(b), where
    for k in a:
      _same(a[k], b[k], f"{where}/{k}")
  elif isinstance(a, np.ndarray):
    assert a.dtype == b.dtype and np.array_equal(a, b), where
  else:
    assert a == b, where


#: curves.png is written beside each result when matplotlib (the plots extra) is installed
CURVES = ["curves.png"] if importlib.util.find_spec("matplotlib") else []


def test_cli_kill_and_rerun_gives_the_uninterrupted_outputs(tmp_path):
  model, images = make_cli_inputs(tmp_path)
  ref = _cli(model, images, tmp_path / "ref", "--quiet")   # uninterrupted, alongside
  victim = _cli(model, images, tmp_path / "run", "--quiet")
  # kill after the k-th checkpoint was seen (k random; 33 are written in all), at a random
  # moment of the following interval: anywhere in a batch, between batches, while writing
  ckpts = tmp_path / "run" / runstate.RUN_DIR / "process-00000-of-00001" / "checkpoints"
  k, delay = random.randint(1, 24), random.uniform(0.0, 0.1)
  seen, t0 = set(), time.time()
  while len(seen) < k:
    assert victim.poll() is None, (k, seen, victim.communicate()[1][-3000:])
    assert time.time() - t0 < 180
    if ckpts.is_dir():
      seen.update(p.name for p in ckpts.iterdir() if p.name.startswith("ckpt-"))
    time.sleep(0.005)
  time.sleep(delay)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL, f"finished before the kill ({k}, {delay:.2f} s)"
  before = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
  # the same command again, stopped with Ctrl-C once it wrote a new checkpoint: one line,
  # exit status 130, nothing half-written
  # (checkpoints the victim wrote between the k-th and the kill are not new)
  old = seen | ({p.name for p in ckpts.iterdir()} if ckpts.is_dir() else set())
  second = _cli(model, images, tmp_path / "run")
  while not (ckpts.is_dir() and {p.name for p in ckpts.iterdir()
                                 if p.name.startswith("ckpt-")} - old):
    assert second.poll() is None, second.communicate()[1][-3000:]
    assert time.time() - t0 < 300
    time.sleep(0.005)
  second.send_signal(signal.SIGINT)
  _, err2 = second.communicate(timeout=300)
  assert second.returncode == 130, (second.returncode, err2[-3000:])
  assert err2.strip().splitlines()[-1].startswith("interrupted; rerun the same command"), err2
  assert "Traceback" not in err2
  err = _finish(_cli(model, images, tmp_path / "run"))   # and once more: it finishes
  print(f"killed {delay:.2f} s after checkpoint {sorted(seen)[-1]} ({k} seen), "
        f"{len(before)} image(s) done")
  assert "resuming" in err, err[-2000:]
  _finish(ref)

  got, want = _read(tmp_path / "run"), _read(tmp_path / "ref")
  assert sorted(want) == [f"img{k}" for k in range(5)]
  for name in want:
    assert sorted(want[name]) == sorted(["degraded.png", "grid.png", "latents.npz",
                                         "metrics.json", "result.png", *CURVES])
    assert len(want[name]["metrics.json"]["trace"]) == 12   # one row per 2-step call
  _same(got, want)   # bit for bit: images, latents, metrics and trace
  # nothing partial, duplicated or left behind
  state = tmp_path / "run" / runstate.RUN_DIR / "process-00000-of-00001"
  items = [json.loads(x)["item"] for x in (state / "finished.log").read_text().splitlines()]
  assert sorted(items) == sorted(want) and len(items) == len(set(items))
  assert os.listdir(state / "staging") == [] and os.listdir(state / "checkpoints") == []
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([*want, runstate.RUN_DIR])
  # a finished run rerun: nothing to do; other settings: refused, nothing touched
  again = _cli(model, images, tmp_path / "run")
  other = _cli(model, images, tmp_path / "run", "--lr", "0.1")
  assert "5 of 5 image(s) already finished" in _finish(again)
  _, err = other.communicate(timeout=300)
  assert other.returncode == 2
  assert "holds results of different settings (settings.optimizer.lr: 0.05 -> 0.1)" in err
  _same(_read(tmp_path / "run"), want)
