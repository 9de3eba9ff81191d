"""Resumable runs: the run-directory invariants and interrupt-and-resume, in-process.

Invariants (mgan_jax/runstate.py, mgan_jax/batch_checkpoint.py): finished iff the final output
exists (atomic rename, journal reconciled on reopen); settings fixed per OUT; a checkpoint is
complete or absent, restored bit-exactly, the last good one kept; one process per state
directory. ``resumable.run_items`` interrupted mid-batch resumes to the uninterrupted outputs
bit for bit (the SIGKILL test of the CLI is tests/test_resume_cli.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from mgan_jax import batch_checkpoint, engine, fileio, resumable, runstate
from mgan_jax.errors import UserError

SETTINGS = {"lr": 0.05, "iterations": 10, "layers": (1, 2)}
ITEMS = ["a.png", "b.png", "c.png"]


def _state(tmp_path, **kw):
  """A RunState whose lock is released at once (these tests reopen the same state)."""
  kw.setdefault("settings", SETTINGS)
  kw.setdefault("items", ITEMS)
  state = runstate.RunState(tmp_path / "out", **kw)
  state.close()
  return state


def _write(state, final, text="x"):
  with state.publish(final) as stage:
    Path(stage, "result.txt").write_text(text)


def test_manifest_refuses_other_settings_and_records_inputs(tmp_path):
  s = _state(tmp_path)
  assert not s.resumed
  again = _state(tmp_path, settings={"layers": [1, 2], "iterations": 10, "lr": 0.05})
  assert again.resumed  # same settings (tuple vs list, key order do not matter)
  with pytest.raises(UserError, match=r"holds results of different settings \(lr: 0.05 -> 0.1\)"):
    _state(tmp_path, settings={**SETTINGS, "lr": 0.1})
  with pytest.raises(UserError, match=r"\(layers: \[1, 2\] -> \[1, 3\]; lr: 0.05 -> 0.2\)"):
    _state(tmp_path, settings={**SETTINGS, "lr": 0.2, "layers": (1, 3)})
  with open(s.manifest_path) as f:   # what is refused never touched the manifest
    assert json.load(f)["settings"]["lr"] == 0.05
  # other inputs with the same settings: accepted (OUT is a store keyed by image name), and the
  # manifest records the latest list
  more = _state(tmp_path, items=ITEMS + ["d.png"])
  assert more.resumed
  with open(s.manifest_path) as f:
    assert json.load(f)["items"] == ITEMS + ["d.png"]
  # another process count: a new state directory, checked against the existing settings
  with pytest.raises(UserError, match="different settings"):
    _state(tmp_path, settings={**SETTINGS, "lr": 0.1}, process_index=1, process_count=2)
  p1 = _state(tmp_path, process_index=1, process_count=2)
  assert not p1.resumed and p1.path.endswith("process-00001-of-00002")
  assert runstate.has_state(tmp_path / "out", 0, 3)   # any process directory counts
  runstate.reset_state(tmp_path / "out", 0, 2)        # own + other counts, not process 1 of 2
  assert sorted(os.listdir(tmp_path / "out" / runstate.RUN_DIR)) == ["process-00001-of-00002"]


def test_outputs_are_atomic_and_never_overwritten(tmp_path):
  s = _state(tmp_path)
  final = tmp_path / "out" / "a"
  with pytest.raises(RuntimeError):
    with s.publish(final) as stage:
      Path(stage, "half.txt").write_text("partial")
      raise RuntimeError("killed while writing")
  assert not final.exists() and os.listdir(s.staging) == []
  _write(s, final, "first")
  assert (final / "result.txt").read_text() == "first"
  assert final.stat().st_mode & 0o777 == 0o777 & ~fileio.umask()   # not mkdtemp's 0700
  empty = tmp_path / "out" / "empty"
  empty.mkdir()                      # an empty directory is not an output: replaced
  _write(s, empty, "e")
  assert (empty / "result.txt").read_text() == "e"
  with pytest.raises(FileExistsError):
    _write(s, final, "second")
  assert (final / "result.txt").read_text() == "first" and os.listdir(s.staging) == []
  # single-file outputs
  f = tmp_path / "out" / "b.json"
  with s.publish(f, kind="file") as stage:
    Path(stage).write_text("{}")
  assert f.read_text() == "{}"
  with pytest.raises(FileExistsError):
    with s.publish(f, kind="file") as stage:
      Path(stage).write_text("[]")
  assert f.read_text() == "{}"


def test_journal_is_reconciled_with_the_file_system(tmp_path):
  s = _state(tmp_path)
  out = tmp_path / "out"
  outs = {k: out / k.replace(".png", "") for k in ITEMS}
  _write(s, outs["a.png"])
  s.mark_finished("a.png", outs["a.png"])
  _write(s, outs["b.png"])          # killed between the rename and the journal line
  # killed in the middle of staging c: a partial staging directory stays behind
  Path(s.staging, "c.partial").mkdir()
  with open(s.log_path, "ab") as f:
    f.write(b'{"item": "c.pn')       # torn journal line (power loss mid-append)
  s2 = _state(tmp_path)
  assert os.listdir(s2.staging) == []                   # staging leftovers removed
  assert s2.recorded == {"a.png"}                       # the torn line is not a record
  assert s2.reconcile(outs) == {"a.png", "b.png"}       # b: output exists -> finished
  assert s2.recorded == {"a.png", "b.png"}
  lines = Path(s2.log_path).read_text().splitlines()
  recs = [json.loads(x) for x in lines if x.strip().endswith("}") and x.startswith("{")]
  assert [r["item"] for r in recs] == ["a.png", "b.png"]    # no duplicates
  assert Path(s2.log_path).read_bytes().endswith(b"\n")
  # a recorded image whose output was deleted is computed again
  import shutil
  shutil.rmtree(outs["a.png"])
  s3 = _state(tmp_path)
  assert s3.reconcile(outs) == {"b.png"}
  assert not s3.is_finished(outs["a.png"])
  s3.mark_finished("a.png", outs["a.png"])  # journaled again after the rewrite
  assert "a.png" in s3.recorded


@pytest.mark.parametrize("fmt", batch_checkpoint.FORMATS)
def test_checkpoint_round_trip_is_bit_exact_and_keeps_the_last_good(tmp_path, fmt):
  s = _state(tmp_path, checkpoint_format=fmt)
  rng = np.random.default_rng(0)
  lat = {"z": rng.standard_normal((3, 4, 8)).astype(np.float32),
         "alpha": rng.standard_normal((3, 4, 5)).astype(np.float32)}
  tx = optax.adam(0.1)
  st = jax.device_get(jax.vmap(tx.init)(lat))
  st = jax.tree.map(lambda x: x + (np.ones_like(x) * 7 if x.dtype == np.int32 else
                                   rng.standard_normal(x.shape).astype(x.dtype)), st)
  assert s.checkpoints.load(lat, st) is None
  for it in (4, 8):
    losses = rng.standard_normal((3, it)).astype(np.float32)
    s.checkpoints.save(1, ITEMS, engine.BatchState(it, lat, st, losses),
                       extra={"trace": [({"iteration": it, "loss": 1 / 3},)]})
  assert [os.path.basename(p) for p in s.checkpoints.paths()] == ["ckpt-b000001-i00000008"]
  # an unfinished temporary (killed mid-save) is ignored and removed on reopen
  Path(s.checkpoints.path, ".tmp-ckpt-b000001-i00000012-xyz").mkdir()
  s2 = _state(tmp_path, checkpoint_format=fmt)
  assert os.listdir(s2.checkpoints.path) == ["ckpt-b000001-i00000008"]
  ck = s2.checkpoints.load(lat, jax.eval_shape(jax.vmap(tx.init), lat))
  batch, items, got = ck.batch, ck.items, ck.state
  assert (batch, items, got.iteration) == (1, ITEMS, 8)
  assert ck.extra == {"trace": [[{"iteration": 8, "loss": 1 / 3}]]}
  want = jax.tree.leaves((lat, st, losses))
  have = jax.tree.leaves((got.latents, got.opt_state, got.losses))
  assert jax.tree.structure(got.opt_state) == jax.tree.structure(st)
  assert len(want) == len(have)
  for a, b in zip(want, have):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  # a checkpoint from other settings is refused, not silently used
  with pytest.raises(UserError, match="does not match"):
    s2.checkpoints.load({"z": lat["z"]}, st)
  # a meta.json of the wrong type, or whose iteration disagrees with its loss trace: one line
  meta = Path(s2.checkpoints.paths()[0], "meta.json")
  good = meta.read_text()
  meta.write_text("[1, 2]")
  with pytest.raises(UserError, match="cannot read the checkpoint"):
    s2.checkpoints.load(lat, st)
  meta.write_text(good.replace('"iteration": 8', '"iteration": 6'))
  with pytest.raises(UserError, match="loss trace covers 8 iterations but the checkpoint says 6"):
    s2.checkpoints.load(lat, st)
  s2.checkpoints.clear(1)
  assert s2.checkpoints.paths() == []


class _Interrupt(Exception):
  pass


class _StopAfter:
  """A progress object that raises (an interruption) after ``n`` chunks and records them."""

  def __init__(self, n=None):
    self.n, self.chunks, self.batch = n, [], 0

  def start_batch(self, index, names, **kw):
    self.batch = index

  def resumed_at(self, done):
    pass

  def message(self, text):
    pass

  def chunk(self, done, rows):
    self.chunks.append((self.batch, done))
    if self.n is not None and len(self.chunks) >= self.n:
      raise _Interrupt


def _run(out, *, stop_after=None, batch_size=2, checkpoint_every=2):
  """resumable.run_items on 5 tiny images, 8 iterations in chunks of 4; ``stop_after`` chunks
  -> raise (an interruption). Returns (written, resumed-from messages, chunks)."""
  from batch_helpers import tiny_inverter, tiny_items
  items = tiny_items(5)
  inv = tiny_inverter(batch_size=batch_size, checkpoint_every=checkpoint_every)
  progress = _StopAfter(stop_after)
  state = resumable.open_run_state(out, items, all_names=[it.name for it in items],
                                   settings={"lr": 0.05, "it": 8})
  with state:
    written = resumable.run_items(items, inv, out=out, state=state, progress=progress)
  return written, progress.chunks


def _outputs(out):
  res = {}
  for d in sorted(Path(out).glob("img*")):
    with np.load(d / "latents.npz") as z:
      res[d.name] = {k: z[k] for k in z.files if k != "meta"}
    res[d.name]["trace"] = json.loads((d / "metrics.json").read_text())["trace"]
    res[d.name]["png"] = (d / "result.png").read_bytes()
  return res


@pytest.mark.parametrize("stop_after", [3, 6])
def test_interrupted_run_resumes_to_the_uninterrupted_outputs(tmp_path, stop_after):
  _, ref_chunks = _run(tmp_path / "ref")
  assert ref_chunks[:4] == [(0, 2), (0, 4), (0, 6), (0, 8)]   # chunks end at multiples of K
  with pytest.raises(_Interrupt):
    _run(tmp_path / "run", stop_after=stop_after)
  # interrupted after the 3rd chunk (batch 0 at iteration 6, before its checkpoint at 6): the
  # last good checkpoint is batch 0 at 4; after the 6th: batch 0 written, batch 1 at 2
  state = tmp_path / "run" / runstate.RUN_DIR / "process-00000-of-00001"
  ckpts = sorted(os.listdir(state / "checkpoints"))
  assert ckpts == (["ckpt-b000000-i00000004"] if stop_after == 3 else ["ckpt-b000001-i00000002"])
  written, chunks = _run(tmp_path / "run")
  assert chunks[0] == ((0, 6) if stop_after == 3 else (1, 4))   # continued at the checkpoint
  assert len(written) == 5
  got, want = _outputs(tmp_path / "run"), _outputs(tmp_path / "ref")
  assert sorted(got) == sorted(want) == [f"img{k}" for k in range(5)]
  for name in want:
    assert [r["iteration"] for r in want[name]["trace"]] == [2, 4, 6, 8]   # complete trace
    for k in want[name]:
      assert got[name][k] == want[name][k] if k in ("trace", "png") else \
          np.array_equal(got[name][k], want[name][k]), (name, k)
  lines = (state / "finished.log").read_text().splitlines()
  assert sorted(json.loads(x)["item"] for x in lines) == sorted(want)   # once each
  assert os.listdir(state / "staging") == [] and os.listdir(state / "checkpoints") == []
  # a different batch size is not a different setting: finished images are kept
  _, chunks = _run(tmp_path / "run", batch_size=4)
  assert chunks == []


def test_a_second_run_into_the_same_state_is_refused(tmp_path):
  with runstate.RunState(tmp_path / "out", settings=SETTINGS, items=ITEMS):
    with pytest.raises(UserError, match="in use by another running mgan_jax process"):
      runstate.RunState(tmp_path / "out", settings=SETTINGS, items=ITEMS)
  runstate.RunState(tmp_path / "out", settings=SETTINGS, items=ITEMS).close()   # released
