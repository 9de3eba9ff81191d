"""Checkpoints of the batch in flight: the latents, optimiser state and loss trace of one batch
at a chunk boundary, written complete or not at all.

Layout (inside a run's state directory, ``mgan_jax.runstate``)::

    checkpoints/ckpt-b000003-i00000200/
        arrays/       an orbax checkpoint of the flattened arrays (one process), or
        arrays.npz    the same arrays (several processes: see below)
        meta.json     batch, iteration, items, settings hash, leaf counts, extra JSON

A checkpoint is published with ``fileio.publish`` (temporary directory, fsync, one rename);
only then is the previous one deleted, so the last good checkpoint always survives, and a
temporary left by a kill is removed when the store is opened. Restoring gives the arrays back
bit-exactly; ``engine.chunk_boundaries`` makes the resumed chunks equal the uninterrupted run's,
so the final results are identical.

Multi-process runs: orbax's array handlers assume a *global* checkpoint written jointly by all
processes, but here every process checkpoints its own batch whenever it reaches a boundary,
without waiting for the others. So with more than one process the arrays are stored as
``arrays.npz`` (same protocol, same bit-exact round trip); ``fmt='auto'`` picks orbax for one
process and npz otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from mgan_jax import fileio
from mgan_jax.engine import BatchState
from mgan_jax.errors import UserError, interrupts_deferred

FORMATS = ("orbax", "npz")
_CKPT_RE = re.compile(r"^ckpt-b(\d{6})-i(\d{8})$")


class Checkpoint(NamedTuple):
  """A restored checkpoint: batch index, its items (in order), the state, the extra JSON."""
  batch: int
  items: list
  state: BatchState
  extra: dict


class CheckpointStore:
  """The checkpoints of one run state directory (``path``), tagged with the run's settings
  hash. Opening removes unfinished temporaries."""

  def __init__(self, path: str | os.PathLike, *, settings_hash: str, fmt: str = "auto"):
    if fmt not in FORMATS + ("auto",):
      raise ValueError(f"checkpoint format must be one of {FORMATS + ('auto',)}, got {fmt!r}")
    if fmt == "auto":
      fmt = "orbax" if jax.process_count() == 1 else "npz"
    self.path = os.fspath(path)
    self.hash = settings_hash
    self.fmt = fmt
    os.makedirs(self.path, exist_ok=True)
    for name in os.listdir(self.path):
      if not _CKPT_RE.match(name):
        p = os.path.join(self.path, name)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)

  def _found(self) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(self.path):
      m = _CKPT_RE.match(name)
      if m:
        out.append((int(m.group(1)), int(m.group(2)), os.path.join(self.path, name)))
    return sorted(out)

  def paths(self) -> list[str]:
    return [p for _, _, p in self._found()]

  def latest_batch(self) -> int | None:
    """Batch index of the latest complete checkpoint (None if there is none)."""
    found = self._found()
    return found[-1][0] if found else None

  def save(self, batch: int, items: Sequence[str], state: BatchState, *,
           extra: Mapping[str, Any] | None = None) -> str:
    """Checkpoint batch ``batch`` (its ``items``, in order) at ``state.iteration``; ``extra``:
    JSON data restored with it. The older checkpoints are deleted after. Returns the path."""
    lat_leaves = jax.tree.leaves(state.latents)
    st_leaves = jax.tree.leaves(state.opt_state)
    arrays = {f"latents.{i:05d}": np.asarray(x) for i, x in enumerate(lat_leaves)}
    arrays.update({f"opt_state.{i:05d}": np.asarray(x) for i, x in enumerate(st_leaves)})
    arrays["losses"] = np.asarray(state.losses, np.float32)
    meta = {"format": self.fmt, "batch": int(batch), "iteration": int(state.iteration),
            "items": [str(i) for i in items], "settings_hash": self.hash,
            "latent_leaves": len(lat_leaves), "opt_state_leaves": len(st_leaves),
            "arrays": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()},
            "extra": json.loads(json.dumps(dict(extra or {}), default=str))}
    path = os.path.join(self.path, f"ckpt-b{int(batch):06d}-i{int(state.iteration):08d}")
    # Ctrl-C waits for the write: orbax aborts the process if interrupted mid-write
    with interrupts_deferred(), fileio.publish(path, kind="dir", replace=True,
                                               durable=True) as tmp:
      if self.fmt == "orbax":
        import orbax.checkpoint as ocp  # lazily: orbax is slow to import
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:  # synchronous
          ckpt.save(os.path.join(tmp, "arrays"), args=ocp.args.StandardSave(arrays))
      else:
        with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
          np.savez(f, **arrays)
      with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    for _, _, p in self._found():
      if p != path:
        shutil.rmtree(p, ignore_errors=True)
    return path

  def load(self, latents_template: Any, opt_state_template: Any) -> Checkpoint | None:
    """The latest complete checkpoint, or None. The templates (arrays or shape structs with the
    batch's tree structure) give the trees; a checkpoint that does not match them, or another
    settings hash, raises ``UserError``. Arrays come back bit-exact."""
    found = self._found()
    if not found:
      return None
    batch, _, path = found[-1]
    try:
      with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
      if not isinstance(meta, dict):
        raise ValueError("meta.json is not an object")
      if meta["format"] == "orbax":
        import orbax.checkpoint as ocp
        with interrupts_deferred(), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:
          got = ckpt.restore(os.path.join(path, "arrays"), args=ocp.args.StandardRestore())
      else:
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
          got = {k: z[k] for k in z.files}
      arrays = {k: np.asarray(v) for k, v in got.items()}
    except (OSError, KeyError, ValueError, TypeError) as e:
      raise UserError(f"{path}: cannot read the checkpoint ({e}); delete it to restart that "
                      "batch") from None
    lat_def = jax.tree.structure(latents_template)
    st_def = jax.tree.structure(opt_state_template)
    if (meta.get("settings_hash") != self.hash or meta.get("latent_leaves") != lat_def.num_leaves
        or meta.get("opt_state_leaves") != st_def.num_leaves):
      raise UserError(f"{path}: checkpoint does not match this run's settings; choose another "
                      "--out")
    try:
      lat = [arrays[f"latents.{i:05d}"] for i in range(lat_def.num_leaves)]
      st = [arrays[f"opt_state.{i:05d}"] for i in range(st_def.num_leaves)]
      losses = arrays["losses"]
      iteration = int(meta["iteration"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"{path}: incomplete checkpoint (missing {e}); delete it to restart that "
                      "batch") from None
    for want, have in zip(jax.tree.leaves(latents_template) + jax.tree.leaves(opt_state_template),
                          lat + st):
      if tuple(np.shape(want))[1:] != tuple(have.shape)[1:]:
        raise UserError(f"{path}: checkpoint array of shape {have.shape} does not match "
                        f"{tuple(np.shape(want))}; choose another --out")
    if losses.ndim != 2 or losses.shape[1] != iteration:
      raise UserError(f"{path}: the stored loss trace covers {losses.shape[-1]} iterations but "
                      f"the checkpoint says {iteration}; delete it to restart that batch")
    state = BatchState(iteration, jax.tree.unflatten(lat_def, lat),
                       jax.tree.unflatten(st_def, st), losses)
    items = meta.get("items")
    return Checkpoint(batch, list(items) if isinstance(items, list) else [], state,
                      dict(meta.get("extra") or {}))

  def clear(self, batch: int | None = None) -> None:
    """Delete the checkpoints of ``batch`` (all if None), e.g. once its outputs are written."""
    for b, _, p in self._found():
      if batch is None or b == batch:
        shutil.rmtree(p, ignore_errors=True)
    fileio.fsync_dir(self.path)


__all__ = ["FORMATS", "Checkpoint", "CheckpointStore"]
