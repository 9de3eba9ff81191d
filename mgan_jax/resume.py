"""Preemption-safe runs: a run directory inside OUT that makes "rerun the same command" resume.

Layout (one state directory per process; a single-process run is process 0 of 1)::

    OUT/.mgan_jax_run/process-00000-of-00001/
        manifest.json      settings (and their hash), the latest input list, process index/count
        lock               flock-ed while a process uses this directory
        finished.log       append-only journal, one JSON line per finished image (fsynced)
        staging/           outputs being written (moved into OUT when complete)
        checkpoints/ckpt-b000003-i00000200/
                           the batch in flight: arrays/ (an orbax checkpoint of the latents,
                           optimiser state and loss trace so far) + meta.json (batch,
                           iteration, items, settings hash)

Invariants (each one is tested):

1. **An image is finished iff its final output exists.** Outputs are written complete into
   ``staging/`` and then moved into place with one ``rename`` (``atomic_output``); a final path
   never holds a partial output and is never overwritten (a second rename onto it fails), so a
   kill at any moment leaves either no output or the whole output, never a duplicate.
   ``finished.log`` is a journal appended *after* the rename; on resume it is reconciled with the
   file system (``reconcile``): an output that exists without its record line (killed between
   the rename and the append) is recorded then; a recorded image whose output is gone (deleted
   by the user) is computed again.
2. **Settings are fixed per OUT.** ``manifest.json`` holds the settings that determine a
   result (their hash) and the latest input list. A run whose settings differ from those of the
   runs already in OUT (any process's manifest) is refused with a one-line ``UserError`` naming
   what differs, so results of different settings are never mixed. Other inputs with the same
   settings are fine (OUT is a store of results keyed by image name: finished images are
   skipped, new ones computed); a checkpoint is used only by the batch with exactly its items
   (and its chunk plan). Execution options (batch size, checkpoint interval, devices, process
   count, --quiet) are not settings. One process at a time holds a state directory
   (``flock``): a second run into the same OUT as the same process is refused.
3. **A checkpoint is complete or absent.** Each checkpoint is written into a temporary
   directory (orbax writes its own temporary and renames it inside), fsynced, and renamed to its
   final ``ckpt-*`` name; only then is the previous one deleted, so the last good checkpoint
   always survives; unfinished temporaries are removed on open.
   Restoring gives the latents, optimiser state and loss trace bit-exactly, and
   ``sharding.chunk_boundaries`` makes the resumed chunks equal the uninterrupted run's, so the
   final results are identical. A kill loses at most ``checkpoint_every`` iterations of one batch.

Multi-process runs: orbax's array handlers assume a *global* checkpoint written jointly by all
processes (a numpy leaf is written only by process 0; a process-local ``jax.Array`` is refused
when ``jax.process_count() > 1``), but here every process checkpoints its own batch whenever it
reaches a boundary, without waiting for the others. So with more than one process the arrays
are stored as ``arrays.npz`` (same directory protocol, same bit-exact round trip);
``checkpoint_format='auto'`` picks orbax for one process and npz otherwise.

Checkpoints are keyed by the batch index (batch j = items ``[j*B, (j+1)*B)`` of the process's
share, a fixed composition): a resumed run re-runs an unfinished batch whole (restoring its
checkpoint when there is one) and writes only the outputs that are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from mgan_jax.errors import UserError
from mgan_jax import sharding
from mgan_jax.sharding import BatchResult, BatchState

RUN_DIR = ".mgan_jax_run"
FORMAT = "mgan_jax.run"
FORMAT_VERSION = 1
CHECKPOINT_FORMATS = ("orbax", "npz")
_PROC_RE = re.compile(r"^process-(\d{5})-of-(\d{5})$")
_CKPT_RE = re.compile(r"^ckpt-b(\d{6})-i(\d{8})$")


# ----------------------------------------------------------------------------------------------
# Small durable-file helpers.
# ----------------------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
  """fsync a directory (makes renames / creations inside it durable)."""
  fd = os.open(os.fspath(path), os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
  """fsync every file and directory under ``path`` (and ``path`` itself)."""
  for root, _, files in os.walk(os.fspath(path)):
    for f in files:
      fd = os.open(os.path.join(root, f), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    fsync_dir(root)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Write JSON to a sibling temporary file, fsync, rename over ``path``."""
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(d)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _canonical(obj: Any) -> Any:
  """JSON-canonical form of settings (tuples -> lists, keys sorted by json.dumps)."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def settings_hash(settings: Mapping[str, Any]) -> str:
  """sha256 of the canonical JSON of ``settings``."""
  blob = json.dumps(_canonical(dict(settings)), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()


def _flat(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _describe_diff(old: Mapping, new: Mapping, limit: int = 4) -> str:
  old, new = _flat(old), _flat(new)
  keys = sorted(set(old) | set(new))
  diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
           for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]
  more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
  return "; ".join(diffs[:limit]) + more


def state_dir(out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1) -> str:
  """``OUT/.mgan_jax_run/process-I-of-N``."""
  return os.path.join(os.path.abspath(os.fspath(out_dir)), RUN_DIR,
                      f"process-{int(process_index):05d}-of-{int(process_count):05d}")


def has_state(out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1
              ) -> bool:
  """True when OUT holds a run: this process's manifest, or any process directory (a run
  with another process count)."""
  root = os.path.join(os.path.abspath(os.fspath(out_dir)), RUN_DIR)
  if os.path.exists(os.path.join(state_dir(out_dir, process_index, process_count),
                                 "manifest.json")):
    return True
  return os.path.isdir(root) and any(_PROC_RE.match(n) for n in os.listdir(root))


def reset_state(out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1
                ) -> None:
  """Delete this process's run state and every state of another process count (a fresh start,
  e.g. ``--force``). The states of the other processes of the same count are left alone."""
  root = os.path.join(os.path.abspath(os.fspath(out_dir)), RUN_DIR)
  if not os.path.isdir(root):
    return
  own = os.path.basename(state_dir(out_dir, process_index, process_count))
  for name in os.listdir(root):
    m = _PROC_RE.match(name)
    if m and (name == own or int(m.group(2)) != int(process_count)):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The run state.
# ----------------------------------------------------------------------------------------------
class Checkpoint(NamedTuple):
  """A restored checkpoint: batch index, its items (in order), the state, the extra JSON."""
  batch: int
  items: list
  state: BatchState
  extra: dict


class RunState:
  """One process's resumable state in ``OUT/.mgan_jax_run/process-I-of-N/``.

  Opening checks the settings against the runs already in OUT (``UserError`` naming what
  differs), takes the directory's lock, writes the manifest (the latest input list), removes
  leftover staging outputs and unfinished checkpoint temporaries, and reads the finished
  journal. ``close()`` (or ``with``) releases the lock.
  """

  def __init__(self, out_dir: str | os.PathLike, *, settings: Mapping[str, Any],
               items: Sequence[str], process_index: int = 0, process_count: int = 1,
               checkpoint_format: str = "auto"):
    self.out_dir = os.path.abspath(os.fspath(out_dir))
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.root = os.path.join(self.out_dir, RUN_DIR)
    self.path = state_dir(self.out_dir, self.process_index, self.process_count)
    self.manifest_path = os.path.join(self.path, "manifest.json")
    self.log_path = os.path.join(self.path, "finished.log")
    self.staging = os.path.join(self.path, "staging")
    self.ckpt_dir = os.path.join(self.path, "checkpoints")
    self.settings = _canonical(dict(settings))
    self.items = [str(i) for i in items]
    self.hash = settings_hash(self.settings)
    self.resumed = False
    if checkpoint_format not in CHECKPOINT_FORMATS + ("auto",):
      raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS + ('auto',)}, got "
                       f"{checkpoint_format!r}")
    if checkpoint_format == "auto":
      checkpoint_format = "orbax" if jax.process_count() == 1 else "npz"
    self.checkpoint_format = checkpoint_format
    self._lock_file = None
    self._open_manifest()
    shutil.rmtree(self.staging, ignore_errors=True)
    os.makedirs(self.staging)
    os.makedirs(self.ckpt_dir, exist_ok=True)
    self._clean_checkpoint_temporaries()
    self._finished = self._read_log()

  # ----- manifest -------------------------------------------------------------------------
  def _reference_manifest(self) -> tuple[str, dict] | None:
    """This process's manifest, else any other process's (same or other process count)."""
    paths = [self.manifest_path]
    if os.path.isdir(self.root):
      paths += [os.path.join(self.root, n, "manifest.json") for n in sorted(os.listdir(self.root))
                if _PROC_RE.match(n)]
    for path in paths:
      if os.path.exists(path):
        try:
          with open(path) as f:
            old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
          raise UserError(f"{path}: cannot read ({e}); choose another --out") from None
        if old.get("format") != FORMAT:
          raise UserError(f"{path}: not an mgan_jax run manifest; choose another --out")
        return path, old
    return None

  def _open_manifest(self) -> None:
    ref = self._reference_manifest()
    if ref is not None and ref[1].get("settings_hash") != self.hash:
      path, old = ref
      raise UserError(f"{path}: {self.out_dir} holds results of different settings "
                      f"({_describe_diff(old.get('settings', {}), self.settings)}); rerun with "
                      "the same settings to resume, pass --force to start over, or choose "
                      "another --out")
    self.resumed = ref is not None and ref[0] == self.manifest_path
    os.makedirs(self.path, exist_ok=True)
    self._lock()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "settings_hash": self.hash, "settings": self.settings, "items": self.items,
                "process_index": self.process_index, "process_count": self.process_count}
    if ref is None or ref[0] != self.manifest_path or ref[1] != manifest:
      write_json_atomic(self.manifest_path, manifest)  # records the latest input list

  def _lock(self) -> None:
    """Exclusive lock of this state directory for the life of this object (two runs writing
    the same OUT as the same process would delete each other's staging and checkpoints)."""
    self._lock_file = open(os.path.join(self.path, "lock"), "a")
    try:
      fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._lock_file.close()
      self._lock_file = None
      raise UserError(f"{self.path} is in use by another running mgan_jax process; wait for "
                      "it to finish or choose another --out") from None
    except OSError:
      pass  # a file system without locks: best effort

  def close(self) -> None:
    """Release the lock (also released when the process exits, even when killed)."""
    if getattr(self, "_lock_file", None) is not None:
      self._lock_file.close()
      self._lock_file = None

  def __enter__(self) -> "RunState":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ----- finished journal -----------------------------------------------------------------
  def _read_log(self) -> dict[str, str]:
    done: dict[str, str] = {}
    if not os.path.exists(self.log_path):
      return done
    with open(self.log_path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
      lines = lines[:-1]  # a torn last line (power loss mid-append) is not a record
    for line in lines:
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        done[str(rec["item"])] = str(rec.get("output", ""))
      except (ValueError, KeyError, TypeError):
        continue  # unreadable line: ignored, the file system decides (invariant 1)
    return done

  def _append_log(self, item: str, output: str) -> None:
    line = json.dumps({"item": item, "output": output}, sort_keys=True).encode() + b"\n"
    fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      if os.fstat(fd).st_size:
        with open(self.log_path, "rb") as f:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":
            line = b"\n" + line  # finish a torn last line first
      os.write(fd, line)
      os.fsync(fd)
    finally:
      os.close(fd)

  @property
  def recorded(self) -> frozenset[str]:
    """Items listed in ``finished.log`` (the journal; ``is_finished`` is the truth)."""
    return frozenset(self._finished)

  def is_finished(self, item: str, output: str | os.PathLike) -> bool:
    """Invariant 1: finished iff the final output path exists (an empty directory does not
    count: nothing was moved into place there)."""
    path = os.fspath(output)
    if os.path.isdir(path) and not os.path.islink(path):
      return bool(os.listdir(path))
    return os.path.lexists(path)

  def mark_finished(self, item: str, output: str | os.PathLike) -> None:
    """Journal ``item`` as finished (call after its output was moved into place)."""
    item = str(item)
    if item in self._finished:
      return
    rel = os.path.relpath(os.path.abspath(os.fspath(output)), self.out_dir)
    self._append_log(item, rel)
    self._finished[item] = rel

  def reconcile(self, outputs: Mapping[str, str | os.PathLike]) -> set[str]:
    """Bring the journal in line with the file system for ``{item: final output path}``.

    Returns the finished items. Records outputs that exist without a journal line; recorded
    items whose output is missing are dropped from the in-memory record (they will be computed
    again and journaled again).
    """
    finished = set()
    for item, out in outputs.items():
      item = str(item)
      if self.is_finished(item, out):
        finished.add(item)
        if item not in self._finished:
          self.mark_finished(item, out)
      else:
        self._finished.pop(item, None)
    return finished

  # ----- atomic outputs -------------------------------------------------------------------
  @contextlib.contextmanager
  def atomic_output(self, final: str | os.PathLike, *, is_dir: bool = True) -> Iterator[str]:
    """Stage one image's output and move it into place in one rename.

    Yields a staging path (a new empty directory if ``is_dir``, else a file path to create);
    when the block exits normally the staged output is fsynced and renamed to ``final``. Refuses
    (FileExistsError) if ``final`` already holds an output (an empty directory is replaced):
    outputs are never overwritten or duplicated. If the block raises, the staged output is
    deleted.
    """
    final = os.path.abspath(os.fspath(final))
    if self.is_finished("", final):
      raise FileExistsError(f"{final} already exists")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(final)
    if is_dir:
      stage = tempfile.mkdtemp(prefix=base + ".", dir=self.staging)
      os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's 0700 would follow the output into OUT
    else:
      fd, stage = tempfile.mkstemp(prefix=base + ".", suffix=os.path.splitext(base)[1],
                                   dir=self.staging)
      os.close(fd)
      os.unlink(stage)
    try:
      yield stage
      if is_dir:
        fsync_tree(stage)
        os.rename(stage, final)  # onto an existing non-empty dir: OSError, never a merge
      else:
        with open(stage, "rb") as f:
          os.fsync(f.fileno())
        os.link(stage, final)      # fails if final exists (no silent overwrite)
        os.unlink(stage)
      fsync_dir(parent)
    finally:
      if os.path.isdir(stage):
        shutil.rmtree(stage, ignore_errors=True)
      elif os.path.lexists(stage):
        os.unlink(stage)

  # ----- checkpoints of the batch in flight -----------------------------------------------
  def _clean_checkpoint_temporaries(self) -> None:
    for name in os.listdir(self.ckpt_dir):
      if not _CKPT_RE.match(name):
        p = os.path.join(self.ckpt_dir, name)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)

  def _checkpoints(self) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(self.ckpt_dir):
      m = _CKPT_RE.match(name)
      if m:
        out.append((int(m.group(1)), int(m.group(2)), os.path.join(self.ckpt_dir, name)))
    return sorted(out)

  def save_checkpoint(self, batch: int, items: Sequence[str], state: BatchState, *,
                      extra: Mapping[str, Any] | None = None) -> str:
    """Checkpoint batch ``batch`` (its ``items``, in order) at ``state.iteration``.

    ``extra``: JSON-serialisable data restored with it (e.g. per-image progress traces).

    Written into a temporary directory (arrays + ``meta.json``), fsynced, renamed to
    ``checkpoints/ckpt-bBBBBBB-iIIIIIIII``, then the older checkpoints are deleted. Returns the
    checkpoint path.
    """
    lat_leaves = jax.tree.leaves(state.latents)
    st_leaves = jax.tree.leaves(state.opt_state)
    arrays = {f"latents.{i:05d}": np.asarray(x) for i, x in enumerate(lat_leaves)}
    arrays.update({f"opt_state.{i:05d}": np.asarray(x) for i, x in enumerate(st_leaves)})
    arrays["losses"] = np.asarray(state.losses, np.float32)
    fmt = self.checkpoint_format
    meta = {"format": fmt, "batch": int(batch), "iteration": int(state.iteration),
            "items": [str(i) for i in items], "settings_hash": self.hash,
            "latent_leaves": len(lat_leaves), "opt_state_leaves": len(st_leaves),
            "arrays": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()},
            "extra": json.loads(json.dumps(dict(extra or {}), default=str))}  # key order kept
    name = f"ckpt-b{int(batch):06d}-i{int(state.iteration):08d}"
    path = os.path.join(self.ckpt_dir, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.ckpt_dir)
    try:
      if fmt == "orbax":
        import orbax.checkpoint as ocp  # lazily: orbax is slow to import
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:  # synchronous
          ckpt.save(os.path.join(tmp, "arrays"), args=ocp.args.StandardSave(arrays))
      else:
        with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
          np.savez(f, **arrays)
      with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
      fsync_tree(tmp)
      if os.path.exists(path):
        shutil.rmtree(path)
      os.rename(tmp, path)
      fsync_dir(self.ckpt_dir)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    for _, _, p in self._checkpoints():
      if p != path:
        shutil.rmtree(p, ignore_errors=True)
    return path

  def load_checkpoint(self, latents_template: Any, opt_state_template: Any
                      ) -> Checkpoint | None:
    """The latest complete checkpoint (``Checkpoint``: batch, items, state, extra), or None.

    The templates (any arrays or shape structs with the batch's tree structure, e.g. the
    initial latents and ``sharding.state_shapes``) give the tree structure; a checkpoint that
    does not match them (other settings) raises ``UserError``. Arrays come back bit-exact.
    """
    found = self._checkpoints()
    if not found:
      return None
    batch, _, path = found[-1]
    try:
      with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
      if meta["format"] == "orbax":
        import orbax.checkpoint as ocp
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:
          got = ckpt.restore(os.path.join(path, "arrays"), args=ocp.args.StandardRestore())
      else:
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
          got = {k: z[k] for k in z.files}
      arrays = {k: np.asarray(v) for k, v in got.items()}
    except (OSError, KeyError, ValueError) as e:
      raise UserError(f"{path}: cannot read the checkpoint ({e}); delete it to restart that "
                      "batch") from None
    lat_def = jax.tree.structure(latents_template)
    st_def = jax.tree.structure(opt_state_template)
    if (meta.get("settings_hash") != self.hash or meta.get("latent_leaves") != lat_def.num_leaves
        or meta.get("opt_state_leaves") != st_def.num_leaves):
      raise UserError(f"{path}: checkpoint does not match this run's settings; choose another "
                      "--out")
    lat = [arrays[f"latents.{i:05d}"] for i in range(lat_def.num_leaves)]
    st = [arrays[f"opt_state.{i:05d}"] for i in range(st_def.num_leaves)]
    for want, have in zip(jax.tree.leaves(latents_template) + jax.tree.leaves(opt_state_template),
                          lat + st):
      if tuple(np.shape(want))[1:] != tuple(have.shape)[1:]:
        raise UserError(f"{path}: checkpoint array of shape {have.shape} does not match "
                        f"{tuple(np.shape(want))}; choose another --out")
    state = BatchState(int(meta["iteration"]), jax.tree.unflatten(lat_def, lat),
                       jax.tree.unflatten(st_def, st), arrays["losses"])
    return Checkpoint(batch, list(meta["items"]), state, dict(meta.get("extra") or {}))

  def latest_checkpoint_batch(self) -> int | None:
    """Batch index of the latest complete checkpoint (None if there is none)."""
    found = self._checkpoints()
    return found[-1][0] if found else None

  def clear_checkpoints(self, batch: int | None = None) -> None:
    """Delete the checkpoints of ``batch`` (all if None), e.g. once its outputs are written."""
    for b, _, p in self._checkpoints():
      if batch is None or b == batch:
        shutil.rmtree(p, ignore_errors=True)
    fsync_dir(self.ckpt_dir)

  def checkpoint_paths(self) -> list[str]:
    return [p for _, _, p in self._checkpoints()]


# ----------------------------------------------------------------------------------------------
# The resumable batch loop.
# ----------------------------------------------------------------------------------------------
class RunSummary(NamedTuple):
  total: int            # items of this process's share
  skipped: int          # already finished before this run
  written: int          # outputs written by this run
  batches_run: int      # batches optimised by this run
  resumed_from: tuple[int, int] | None  # (batch, iteration) of the checkpoint resumed, if any


def batches_of(items: Sequence[str], batch_size: int) -> list[list[str]]:
  """The fixed batch composition: batch j = items[j*B:(j+1)*B] (the last one may be short)."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  return [list(items[j:j + batch_size]) for j in range(0, len(items), batch_size)]


def run_resumable(state: RunState, items: Sequence[str], *, batch_size: int,
                  output_path: Callable[[str], str],
                  prepare: Callable[[list[str]], tuple[Any, tuple]],
                  write: Callable[[str, int, BatchResult, str], Any],
                  loss_fn: Callable[..., Any], arg_axes: Sequence[int | None],
                  optimizer: Any, iterations: int, chunk: int = 100, checkpoint_every: int = 0,
                  mesh: Any = None, output_is_dir: bool = True,
                  on_batch: Callable[[int, list[str], BatchResult], Any] | None = None,
                  callback: Callable[[int, int, np.ndarray], Any] | None = None) -> RunSummary:
  """Invert ``items`` in fixed batches, checkpointing and resuming through ``state``.

  Args:
    state: this process's ``RunState`` (its manifest lists the same items / settings).
    items: this process's share (``sharding.process_share``), in order.
    batch_size: B; every batch is padded to B (and to a multiple of the mesh size).
    output_path: item -> its final output path (a directory if ``output_is_dir``, else a file).
    prepare: batch items -> (initial latents with leading axis n, loss args with leading axis n
      where ``arg_axes`` is 0). Must be deterministic (it is called again on resume; only the
      tree structure of the latents is used then, the values come from the checkpoint).
    write: ``write(item, index_in_batch, result, staging_path)`` writes one image's complete
      output into ``staging_path`` (then moved into place atomically and journaled).
    loss_fn, arg_axes, optimizer, iterations, chunk, checkpoint_every, mesh: as
      ``sharding.optimize_batch``.
    on_batch: called after each batch was optimised (before writing), e.g. for logging.
    callback: ``callback(batch_index, done_iterations, losses (n, steps))`` after every chunk.
  A batch whose outputs all exist is skipped; a partly written batch is optimised again whole
  (from its checkpoint if any) and only its missing outputs are written.
  """
  items = [str(i) for i in items]
  mesh = sharding.local_mesh() if mesh is None else mesh
  outs = {it: os.path.abspath(output_path(it)) for it in items}
  finished = state.reconcile(outs)
  skipped = len(finished)
  written = runs = 0
  resumed_from = None
  pending = None  # the latest checkpoint, loaded lazily with the right templates
  ckpt_batch = state.latest_checkpoint_batch()
  for j, batch in enumerate(batches_of(items, batch_size)):
    if all(state.is_finished(it, outs[it]) for it in batch):
      if ckpt_batch is not None and ckpt_batch <= j:
        state.clear_checkpoints(j)
      continue
    latents, args = prepare(batch)
    start = None
    if ckpt_batch == j:
      pending = state.load_checkpoint(latents, sharding.state_shapes(optimizer, latents))
      if pending is not None and pending.batch == j and pending.items == batch:
        start = pending.state
        resumed_from = (j, start.iteration)
      else:
        state.clear_checkpoints(j)
    save = (lambda s, j=j, batch=batch: state.save_checkpoint(j, batch, s))
    cb = None if callback is None else (lambda done, losses, j=j: callback(j, done, losses))
    res = sharding.optimize_batch(loss_fn, latents, args, arg_axes=arg_axes,
                                  optimizer=optimizer, iterations=iterations, chunk=chunk,
                                  checkpoint_every=checkpoint_every, mesh=mesh,
                                  pad_to=batch_size, start=start,
                                  on_checkpoint=save if checkpoint_every else None, callback=cb)
    runs += 1
    if on_batch is not None:
      on_batch(j, batch, res)
    for i, it in enumerate(batch):
      if state.is_finished(it, outs[it]):
        continue
      with state.atomic_output(outs[it], is_dir=output_is_dir) as stage:
        write(it, i, res, stage)
      state.mark_finished(it, outs[it])
      written += 1
    state.clear_checkpoints(j)
  return RunSummary(len(items), skipped, written, runs, resumed_from)


__all__ = ["RUN_DIR", "CHECKPOINT_FORMATS", "Checkpoint", "RunState", "state_dir", "has_state",
           "reset_state", "settings_hash", "write_json_atomic", "fsync_dir",
           "fsync_tree", "RunSummary", "batches_of", "run_resumable"]
