"""Preemption-safe runs: a state directory inside OUT that makes "rerun the same command" resume.

Layout (one state directory per process; a single-process run is process 0 of 1)::

    OUT/.mgan_jax_run/process-00000-of-00001/
        manifest.json      settings (and their hash), the latest input list, process index/count
        lock               flock-ed while a process uses this directory
        finished.log       append-only journal, one JSON line per finished image (fsynced)
        staging/           outputs being written (moved into OUT when complete)
        checkpoints/       the batch in flight (``mgan_jax.batch_checkpoint``)

Invariants (each one is tested):

1. **An image is finished iff its final output exists.** Outputs are written complete into
   ``staging/`` and moved into place with one rename (``publish``); a final path never holds a
   partial output and is never overwritten, so a kill at any moment leaves either no output or
   the whole output, never a duplicate. ``finished.log`` is appended *after* the rename; on
   resume it is reconciled with the file system (``reconcile``): an output that exists without
   its record line (killed between the rename and the append) is recorded then; a recorded
   image whose output is gone (deleted by the user) is computed again.
2. **Settings are fixed per OUT.** ``manifest.json`` holds the settings that determine a
   result (their hash) and the latest input list. A run whose settings differ from those of the
   runs already in OUT (any process's manifest) is refused with a one-line ``UserError`` naming
   what differs, so results of different settings are never mixed. Other inputs with the same
   settings are fine (OUT is a store of results keyed by image name). Execution options (batch
   size, checkpoint interval, devices, process count, --quiet) are not settings. One process at
   a time holds a state directory (``flock``): a second run into the same OUT as the same
   process is refused.
3. **A checkpoint is complete or absent** (``batch_checkpoint``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mgan_jax import fileio
from mgan_jax.batch_checkpoint import CheckpointStore
from mgan_jax.errors import UserError

RUN_DIR = ".mgan_jax_run"
FORMAT = "mgan_jax.run"
FORMAT_VERSION = 1
_PROC_RE = re.compile(r"^process-(\d{5})-of-(\d{5})$")


def canonical(obj: Any) -> Any:
  """JSON-canonical form of settings (tuples -> lists, keys sorted by json.dumps)."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def settings_hash(settings: Mapping[str, Any]) -> str:
  """sha256 of the canonical JSON of ``settings``."""
  blob = json.dumps(canonical(dict(settings)), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()


def _flat(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def describe_diff(old: Any, new: Mapping, limit: int = 4) -> str:
  """``key: old -> new; ...`` for the settings that differ (at most ``limit`` listed)."""
  if not isinstance(old, Mapping):
    return "the stored settings are unreadable"
  old, new = _flat(old), _flat(new)
  keys = sorted(set(old) | set(new))
  diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
           for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]
  if not diffs:
    return "the settings hash differs (written by another mgan_jax version?)"
  more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
  return "; ".join(diffs[:limit]) + more


def state_dir(out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1) -> str:
  """``OUT/.mgan_jax_run/process-I-of-N``."""
  return os.path.join(os.path.abspath(os.fspath(out_dir)), RUN_DIR,
                      f"process-{int(process_index):05d}-of-{int(process_count):05d}")


def has_state(out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1
              ) -> bool:
  """True when OUT holds a run: this process's manifest, or any process directory (a run with
  another process count)."""
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


class RunState:
  """One process's resumable state in ``OUT/.mgan_jax_run/process-I-of-N/``.

  Opening checks the settings against the runs already in OUT (``UserError`` naming what
  differs), takes the directory's lock, writes the manifest (the latest input list), removes
  leftover staging outputs, stale temporaries in OUT and unfinished checkpoint temporaries, and
  reads the finished journal. ``checkpoints`` is the run's ``CheckpointStore``. ``close()`` (or
  ``with``) releases the lock.
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
    self.settings = canonical(dict(settings))
    self.items = [str(i) for i in items]
    self.hash = settings_hash(self.settings)
    self.resumed = False
    self.previous_manifest: dict | None = None
    self._lock_file = None
    self._open_manifest()
    shutil.rmtree(self.staging, ignore_errors=True)
    os.makedirs(self.staging)
    # temporaries a killed run left in OUT (only this process writes there when it runs alone)
    fileio.remove_stale_temporaries(self.out_dir,
                                    older_than=0.0 if self.process_count == 1 else 3600.0)
    self.checkpoints = CheckpointStore(os.path.join(self.path, "checkpoints"),
                                       settings_hash=self.hash, fmt=checkpoint_format)
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
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
          raise UserError(f"{path}: cannot read ({e}); choose another --out") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
          raise UserError(f"{path}: not an mgan_jax run manifest; choose another --out")
        return path, old
    return None

  def _open_manifest(self) -> None:
    ref = self._reference_manifest()
    if ref is not None and ref[1].get("settings_hash") != self.hash:
      path, old = ref
      raise UserError(f"{path}: {self.out_dir} holds results of different settings "
                      f"({describe_diff(old.get('settings'), self.settings)}); rerun with "
                      "the same settings to resume, pass --force to start over, or choose "
                      "another --out")
    self.resumed = ref is not None and ref[0] == self.manifest_path
    self.previous_manifest = ref[1] if self.resumed else None
    os.makedirs(self.path, exist_ok=True)
    self._lock()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "settings_hash": self.hash, "settings": self.settings, "items": self.items,
                "process_index": self.process_index, "process_count": self.process_count}
    if ref is None or ref[0] != self.manifest_path or ref[1] != manifest:
      fileio.write_json(self.manifest_path, manifest)  # records the latest input list

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
  def _read_log(self) -> dict[str, dict]:
    done: dict[str, dict] = {}
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
        done[str(rec["item"])] = {"output": str(rec.get("output", "")),
                                  "inputs": str(rec.get("inputs", ""))}
      except (ValueError, KeyError, TypeError):
        continue  # unreadable line: ignored, the file system decides (invariant 1)
    return done

  def _append_log(self, item: str, output: str, digest: str) -> None:
    rec = {"item": item, "output": output}
    if digest:
      rec["inputs"] = digest
    line = json.dumps(rec, sort_keys=True).encode() + b"\n"
    fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
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

  def is_finished(self, output: str | os.PathLike) -> bool:
    """Invariant 1: finished iff the final output path exists (an empty directory does not
    count: nothing was moved into place there)."""
    return fileio.is_occupied(output)

  def mark_finished(self, item: str, output: str | os.PathLike, *, digest: str = "") -> None:
    """Journal ``item`` as finished (call after its output was moved into place); ``digest``:
    the content hash of its inputs (``changed``)."""
    item = str(item)
    if item in self._finished and self._finished[item]["inputs"] == digest:
      return
    rel = os.path.relpath(os.path.abspath(os.fspath(output)), self.out_dir)
    self._append_log(item, rel, digest)
    self._finished[item] = {"output": rel, "inputs": digest}

  def changed(self, digests: Mapping[str, str]) -> list[str]:
    """Journaled items whose inputs' content hash differs from ``digests[item]`` (the input
    file, mask, clean reference or init latents changed since the result was written)."""
    return [str(k) for k, d in digests.items() if d and str(k) in self._finished
            and self._finished[str(k)]["inputs"] not in ("", d)]

  def reconcile(self, outputs: Mapping[str, str | os.PathLike]) -> set[str]:
    """Bring the journal in line with the file system for ``{item: final output path}``;
    returns the finished items."""
    finished = set()
    for item, out in outputs.items():
      item = str(item)
      if self.is_finished(out):
        finished.add(item)
        if item not in self._finished:
          self.mark_finished(item, out)
      else:
        self._finished.pop(item, None)
    return finished

  # ----- atomic outputs -------------------------------------------------------------------
  @contextlib.contextmanager
  def publish(self, final: str | os.PathLike, *, kind: str = "dir") -> Iterator[Path]:
    """Stage one image's output in ``staging/`` and move it into place in one rename when the
    block ends (``fileio.publish``, durable, never replacing: ``FileExistsError`` if ``final``
    holds an output)."""
    with fileio.publish(final, kind=kind, durable=True, staging_dir=self.staging) as stage:
      yield stage


__all__ = ["RUN_DIR", "RunState", "state_dir", "has_state", "reset_state", "settings_hash",
           "describe_diff", "canonical"]
