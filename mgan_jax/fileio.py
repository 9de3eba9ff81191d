"""Publishing files and directories atomically: the one temp-then-rename helper.

Everything mgan_jax writes for a user (outputs, model directories, checkpoints, manifests,
downloads) is first written under a temporary name next to its destination (or in a given
staging directory on the same file system) and then renamed into place in one step, so a
reader -- or a run resumed after a kill -- sees either the whole file or directory or nothing::

    with publish("out/result.npz") as tmp:          # a file: write to tmp
      np.savez(tmp, ...)
    with publish("out/face", kind="dir") as tmp:    # a directory: fill tmp
      write_png(tmp / "result.png", ...)

Temporaries are named ``.tmp-<name>-<random>`` so that leftovers of a killed process are
recognisable (``stale_temporaries``). ``replace`` decides what happens when the destination
already holds something: False (default) refuses with ``FileExistsError`` (an empty directory
counts as free), True replaces it (a replaced directory is moved aside first and deleted after
the new one is in place). ``durable`` fsyncs the data and the parent directory before returning
(run journals and checkpoints that must survive a power loss). Created files and directories
get the permissions the user's umask gives (not ``mkstemp``'s 0600 / ``mkdtemp``'s 0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

TMP_PREFIX = ".tmp-"


def umask() -> int:
  """The process umask (read without changing it for longer than the call)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def fsync_dir(path: str | os.PathLike) -> None:
  """fsync a directory (makes renames and creations inside it durable)."""
  fd = os.open(os.fspath(path), os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
  """fsync every file and directory under ``path`` (and ``path`` itself)."""
  for root, _, files in os.walk(os.fspath(path)):
    for name in files:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    fsync_dir(root)


def is_occupied(path: str | os.PathLike) -> bool:
  """True when ``path`` exists (or is a dangling link) and is not an empty directory."""
  p = os.fspath(path)
  if not os.path.lexists(p):
    return False
  return not (os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p))


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    with contextlib.suppress(OSError):
      os.unlink(path)


@contextlib.contextmanager
def publish(final: str | os.PathLike, *, kind: str = "file", replace: bool = False,
            durable: bool = False, staging_dir: str | os.PathLike | None = None,
            exist_ok: bool = False) -> Iterator[Path]:
  """Yield a temporary path; when the block ends normally, rename it to ``final``.

  Args:
    final: the destination path.
    kind: ``'file'`` (the yielded path does not exist yet; create it) or ``'dir'`` (an empty
      directory to fill).
    replace: replace an occupied ``final`` (else ``FileExistsError``).
    durable: fsync the temporary (tree) and the destination's parent.
    staging_dir: where the temporary lives (default: next to ``final``); must be on the same
      file system.
    exist_ok: when ``final`` is occupied at the end (e.g. another process built the same
      thing), discard the temporary silently instead of raising.
  On an exception in the block the temporary is removed and ``final`` is untouched.
  """
  if kind not in ("file", "dir"):
    raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
  final = Path(os.path.abspath(os.fspath(final)))
  if is_occupied(final) and not (replace or exist_ok):
    raise FileExistsError(f"{final} already exists")
  parent = final.parent
  parent.mkdir(parents=True, exist_ok=True)
  where = Path(staging_dir) if staging_dir is not None else parent
  prefix = f"{TMP_PREFIX}{final.name}-"
  mode_bits = 0o777 & ~umask()
  if kind == "dir":
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    os.chmod(tmp, mode_bits)
  else:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=final.suffix, dir=where)
    os.close(fd)
    os.unlink(name)
    tmp = Path(name)
  try:
    yield tmp
    if kind == "file":
      if not tmp.exists():
        raise RuntimeError(f"nothing was written for {final}")
      os.chmod(tmp, 0o666 & ~umask())
    if durable:
      fsync_tree(tmp) if kind == "dir" else _fsync_file(tmp)
    _move_into_place(tmp, final, kind=kind, replace=replace, exist_ok=exist_ok)
    if durable:
      fsync_dir(parent)
  finally:
    _remove(os.fspath(tmp))


def _fsync_file(path: Path) -> None:
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def _move_if_free(tmp: Path, final: Path, *, kind: str) -> bool:
  """Move ``tmp`` to a free ``final``; False when ``final`` is (or meanwhile became) occupied,
  e.g. by another process or thread publishing the same thing."""
  if is_occupied(final):
    return False
  if kind == "dir" and os.path.isdir(final) and not os.path.islink(final):
    try:
      os.rmdir(final)             # an empty directory is free
    except OSError:
      if is_occupied(final):      # filled meanwhile
        return False
      raise
  if kind == "file":
    try:
      os.link(tmp, final)         # fails if final appeared meanwhile: never a silent overwrite
      return True
    except FileExistsError:
      return False
    except OSError:               # a file system without hard links
      if os.path.lexists(final):
        return False
      os.rename(tmp, final)
      return True
  try:
    os.rename(tmp, final)         # onto a non-empty directory: OSError, never a merge
    return True
  except OSError:
    if not is_occupied(final):
      raise
    return False


def _move_into_place(tmp: Path, final: Path, *, kind: str, replace: bool,
                     exist_ok: bool) -> None:
  if _move_if_free(tmp, final, kind=kind):
    return
  if exist_ok and not replace:
    return
  if not replace:
    raise FileExistsError(f"{final} appeared while it was being written; not replacing it")
  if kind == "file" and not os.path.isdir(final):
    os.replace(tmp, final)
    return
  old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{final.name}-", dir=final.parent))
  try:
    os.replace(final, old / "x")
    os.rename(tmp, final)
  finally:
    shutil.rmtree(old, ignore_errors=True)


def publish_files(writers: Sequence[tuple[str | os.PathLike, Callable[[Path], Any]]], *,
                  replace: bool = False) -> None:
  """Write several files all or nothing: each ``writer(tmp_path)`` writes one temporary, and
  only when all succeeded are they renamed into place (in order)."""
  with contextlib.ExitStack() as stack:
    tmps = []
    for final, _ in writers:
      tmps.append(stack.enter_context(publish(final, replace=replace)))
    for tmp, (_, write) in zip(tmps, writers):
      write(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = False,
                durable: bool = False) -> None:
  """Publish ``data`` as the file ``path``."""
  with publish(path, replace=replace, durable=durable) as tmp:
    tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, *, replace: bool = True,
               durable: bool = True) -> None:
  """Publish ``obj`` as indented, key-sorted JSON (replacing by default: manifests)."""
  text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
  write_bytes(path, text.encode(), replace=replace, durable=durable)


def stale_temporaries(directory: str | os.PathLike, *, older_than: float = 3600.0
                      ) -> list[Path]:
  """Temporaries (``.tmp-*``) in ``directory`` not modified for ``older_than`` seconds:
  leftovers of a killed process (a live writer touches its temporary as it writes)."""
  d = Path(directory)
  if not d.is_dir():
    return []
  now = time.time()
  out = []
  for p in d.iterdir():
    if p.name.startswith(TMP_PREFIX):
      with contextlib.suppress(OSError):
        if now - p.lstat().st_mtime >= older_than:
          out.append(p)
  return sorted(out)


def remove_stale_temporaries(directory: str | os.PathLike, *, older_than: float = 3600.0
                             ) -> list[Path]:
  """Delete ``stale_temporaries(directory)``; returns what was removed."""
  found = stale_temporaries(directory, older_than=older_than)
  for p in found:
    _remove(os.fspath(p))
  return found


__all__ = ["TMP_PREFIX", "umask", "fsync_dir", "fsync_tree", "is_occupied", "publish",
           "publish_files", "write_bytes", "write_json", "stale_temporaries",
           "remove_stale_temporaries"]
