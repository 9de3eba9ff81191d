"""Converted model directories: ``model.json`` (architecture) + ``params/`` (orbax checkpoint).

Layout of a model directory::

    DIR/model.json   {"format": "mgan_jax.model", "format_version": 1, "family": ...,
                      "config": {...}, "source": {...}, "params_sha256": "<hex>"}
    DIR/params/      orbax StandardCheckpointer tree (nested dict of float32 arrays)

``save_model`` / ``save_tree`` write into a temporary sibling directory (``.tmp-<name>-*``) and
rename it into place, so a directory either is complete or does not exist; they never replace
an existing directory unless ``overwrite=True``, refuse non-floating or non-finite parameters,
and remove stale temporary siblings left by a killed run (see ``clean_stale_tmp``).
``params_sha256`` (``params_checksum``) covers every array's path, dtype, shape and bytes;
``load_tree`` verifies it, so a flipped bit is reported instead of silently changing a weight
(directories written before the checksum existed load without the check). ``load_model``
checks the restored tree against ``spec.init_params`` (every key present, every shape right,
no leftovers). Damaged directories (``model.json`` that is not an object, a malformed
``format_version``, truncated or missing orbax files) are one-line ``UserError``s.

jax, orbax and the generators are imported only by the functions that need them, so
``check_output_dir`` and ``read_model_json`` stay cheap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mgan_jax.errors import UserError

if TYPE_CHECKING:
  from mgan_jax.generators import Generator

FORMAT = "mgan_jax.model"
FORMAT_VERSION = 1
#: model.json files larger than this are refused (real ones are a few KB).
MAX_MODEL_JSON_BYTES = 16 * 1024 ** 2
#: a ``.tmp-<name>-*`` sibling this old is stale whoever made it (no conversion runs this long).
STALE_TMP_SECONDS = 24 * 3600
_OWNER = ".mgan_jax_tmp_owner"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> flat dict keyed by '/'-joined paths."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """Flat '/'-joined dict -> nested dict."""
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _list(keys: list[str]) -> str:
  return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"


def check_tree(expected: Mapping, got: Any, *, what: str) -> None:
  """Strict structure check of ``got`` against ``expected`` (nested dicts of arrays).

  Raises one UserError naming ``what`` and listing missing keys (in ``expected`` only),
  unexpected keys (in ``got`` only, including keys that are not plain names), wrong shapes,
  and arrays where a subtree is expected or the reverse.
  """
  missing: list[str] = []
  extra: list[str] = []
  bad: list[str] = []
  kinds: list[str] = []

  def walk(e: Mapping, g: Any, prefix: str, depth: int) -> None:
    if not isinstance(g, Mapping):
      kinds.append(f"{prefix.rstrip('/') or '<root>'} is a {type(g).__name__}, expected a "
                   "subtree")
      return
    for k in g:
      if not isinstance(k, str):
        extra.append(f"{prefix}{k!r}")
      elif "/" in k or not k or k not in e:
        extra.append(prefix + k)
    for k, ev in e.items():
      path = prefix + str(k)
      if k not in g:
        missing.append(path)
        continue
      gv = g[k]
      if isinstance(ev, Mapping):
        if depth > 64:
          kinds.append(f"{path} is nested too deeply")
        else:
          walk(ev, gv, path + "/", depth + 1)
      elif isinstance(gv, Mapping):
        kinds.append(f"{path} is a subtree, expected an array")
      elif tuple(np.shape(ev)) != tuple(np.shape(gv)):
        bad.append(f"{path}: expected {tuple(np.shape(ev))}, got {tuple(np.shape(gv))}")

  walk(expected, got, "", 0)
  problems = []
  if missing:
    problems.append(f"missing keys {_list(sorted(missing))}")
  if bad:
    problems.append(f"wrong shape for {bad[0]}"
                    + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
  if kinds:
    problems.append(kinds[0] + (f" (and {len(kinds) - 1} more)" if len(kinds) > 1 else ""))
  if extra:
    problems.append(f"unexpected keys {_list(sorted(extra))}")
  if problems:
    raise UserError(f"{what}: " + "; ".join(problems))


def expected_params(spec: "Generator") -> dict:
  """The parameter structure (shapes and dtypes only, nothing computed) of ``spec`` (a fresh
  nested dict; traced once per spec)."""
  import jax
  return jax.tree.map(lambda x: x, _expected_params(spec))


@functools.lru_cache(maxsize=16)
def _expected_params(spec: "Generator") -> dict:
  import jax
  return jax.eval_shape(spec.init_params, jax.random.key(0))


def params_checksum(params: Mapping) -> str:
  """sha256 (hex) over every array of a nested params dict, in sorted path order: for each,
  ``path NUL dtype NUL shape NUL`` then its C-order bytes (as saved: float32)."""
  h = hashlib.sha256()
  for path, a in sorted(flatten(params).items()):
    arr = np.asarray(a, order="C")
    h.update(f"{path}\0{arr.dtype.str}\0{arr.shape}\0".encode())
    h.update(memoryview(arr.reshape(-1).view(np.uint8)))
  return h.hexdigest()


def _as_float32(params: Mapping, what: str) -> dict:
  """Nested dict of float32 numpy arrays; refuses non-floating or non-finite parameters."""
  out: dict = {}
  for k, v in params.items():
    if isinstance(v, Mapping):
      out[k] = _as_float32(v, f"{what}/{k}")
      continue
    arr = np.asarray(v)
    if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
      raise UserError(f"{what}/{k}: parameter holds {arr.dtype} values, expected floating "
                      "point weights")
    arr = np.asarray(arr, dtype=np.float32, order="C")
    if not np.isfinite(arr).all():
      raise UserError(f"{what}/{k}: parameter has NaN or infinite values")
    out[k] = arr
  return out


def _pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True
  return True


def clean_stale_tmp(out_dir: str | os.PathLike) -> list[str]:
  """Remove ``.tmp-<name>-*`` siblings of ``out_dir`` left by killed runs; returns them.

  A sibling is stale if its owner record names this host and a process that no longer
  exists, or if it is older than ``STALE_TMP_SECONDS`` (no run takes that long). Anything
  else -- a run in progress, here or on another host sharing the file system -- is kept.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
  prefix = f".tmp-{base}-"
  removed = []
  try:
    entries = os.listdir(parent)
  except OSError:
    return removed
  host = socket.gethostname()
  now = time.time()
  for entry in entries:
    if not entry.startswith(prefix):
      continue
    path = os.path.join(parent, entry)
    try:
      if os.path.islink(path) or not os.path.isdir(path):
        continue
      stale = now - os.lstat(path).st_mtime > STALE_TMP_SECONDS
      if not stale:
        try:
          with open(os.path.join(path, _OWNER)) as f:
            owner = json.load(f)
          stale = (isinstance(owner, dict) and owner.get("host") == host
                   and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]))
        except (OSError, ValueError):
          stale = False
    except OSError:
      continue
    if stale:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def check_output_dir(out_dir: str | os.PathLike, *, display: str | None = None) -> None:
  """UserError unless a model directory can be written at ``out_dir`` (checked by creating
  and removing a temporary directory where ``save_tree`` will; nothing is left behind)."""
  shown = display or os.fspath(out_dir)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise UserError(f"{shown}: exists and is a file, not a directory")
  probe = os.path.dirname(out_dir)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise UserError(f"{shown}: cannot create it, {probe} is a file, not a directory")
  try:
    tmp = tempfile.mkdtemp(prefix=".tmp-write-check-", dir=probe)
    os.rmdir(tmp)
  except OSError as e:
    raise UserError(f"{shown}: cannot write in {probe} ({e.strerror or e})") from None


def save_tree(out_dir: str | os.PathLike, meta: Mapping, params: Mapping, *,
              overwrite: bool = False) -> str:
  """Write ``model.json`` (``meta`` plus the format tag and ``params_sha256``) and ``params/``
  atomically. Refuses to replace an existing non-empty ``out_dir`` unless ``overwrite``, and
  parameters that are not floating point or not finite. Returns its path."""
  shown = os.fspath(out_dir)
  out_dir = os.path.abspath(shown)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    if not overwrite:
      raise UserError(f"{out_dir} already exists and is not empty; choose another output "
                      "directory or pass --force")
    if not os.path.isdir(out_dir):
      raise UserError(f"{shown}: exists and is a file, not a directory")
  arrays = _as_float32(dict(params), "params")
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise UserError(f"{shown}: cannot create {parent} ({e.strerror or e})") from None
  clean_stale_tmp(out_dir)
  from mgan_jax import fileio
  try:
    with fileio.publish(out_dir, kind="dir", replace=overwrite) as tmp:
      with open(os.path.join(tmp, _OWNER), "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
                  f)
      import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import
      ckpt = ocp.StandardCheckpointer()
      ckpt.save(os.path.join(tmp, "params"), arrays)
      ckpt.wait_until_finished()
      with open(os.path.join(tmp, "model.json"), "w") as f:
        json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
                   "params_sha256": params_checksum(arrays)}, f, indent=2, sort_keys=True)
        f.write("\n")
      os.remove(os.path.join(tmp, _OWNER))
  except OSError as e:
    raise UserError(f"{shown}: cannot write the model directory ({e.strerror or e})") from None
  return out_dir


def _params_dir_problem(params_dir: str) -> str | None:
  if not os.path.isdir(params_dir):
    return "missing params/ checkpoint directory"
  try:
    names = os.listdir(params_dir)
  except OSError as e:
    return f"cannot read params/ ({e.strerror or e})"
  if not names:
    return "params/ is empty (an interrupted or damaged copy?)"
  if "_METADATA" not in names:
    return "params/ is incomplete: no _METADATA (an interrupted or damaged copy?)"
  return None


def load_tree(model_dir: str | os.PathLike) -> tuple[dict, dict]:
  """Read (meta, params as numpy arrays) from a directory written by ``save_tree``; verifies
  ``params_sha256`` when model.json has one. One-line UserError for any damage."""
  meta = read_model_json(model_dir)
  params_dir = os.path.join(os.path.abspath(os.fspath(model_dir)), "params")
  problem = _params_dir_problem(params_dir)
  if problem:
    raise UserError(f"{model_dir}: {problem}")
  import orbax.checkpoint as ocp
  try:
    params = ocp.StandardCheckpointer().restore(params_dir)
  except MemoryError:
    raise
  except Exception as e:  # orbax / tensorstore report damage with many exception types
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UserError(f"{params_dir}: cannot restore the parameters (damaged checkpoint: "
                    f"{type(e).__name__}: {msg[:160]})") from None
  if not isinstance(params, Mapping):
    raise UserError(f"{params_dir}: holds a {type(params).__name__}, not a tree of arrays")
  params = _numpy_tree(params, params_dir)
  want = meta.get("params_sha256")
  if want is not None:
    if not isinstance(want, str) or len(want) != 64:
      raise UserError(f"{os.path.join(os.fspath(model_dir), 'model.json')}: params_sha256 is "
                      f"not a sha256 hex digest ({str(want)[:80]!r})")
    got = params_checksum(params)
    if got != want.lower():
      raise UserError(f"{params_dir}: the parameters do not match params_sha256 in model.json "
                      "(the files were modified or damaged; convert the weights again)")
  return meta, params


def _numpy_tree(tree: Mapping, what: str) -> dict:
  out = {}
  for k, v in tree.items():
    out[k] = _numpy_tree(v, what) if isinstance(v, Mapping) else np.asarray(v)
  return out


def save_model(out_dir: str | os.PathLike, spec: "Generator", params: Mapping, *,
               source: Mapping | None = None, overwrite: bool = False) -> str:
  """Write a generator model directory (strictly checked against ``spec``). Returns its path."""
  check_tree(expected_params(spec), params, what=f"parameters for {spec.family}")
  return save_tree(out_dir, {**spec.to_json(), "source": dict(source or {})}, params,
                   overwrite=overwrite)


def read_model_json(model_dir: str | os.PathLike) -> dict:
  """The checked ``model.json`` of a model directory (a dict with the right format tag)."""
  path = os.path.join(os.fspath(model_dir), "model.json")
  if not os.path.isfile(path):
    raise UserError(f"{model_dir} is not a converted model directory (no model.json); "
                    "make one with `python -m convert SRC OUT_DIR`")
  try:
    if os.path.getsize(path) > MAX_MODEL_JSON_BYTES:
      raise UserError(f"{path}: {os.path.getsize(path):,} bytes, far larger than a model "
                      "description")
    with open(path, "rb") as f:
      meta = json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
    raise UserError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
  if not isinstance(meta, dict):
    raise UserError(f"{path}: not an mgan_jax model description (a JSON "
                    f"{type(meta).__name__}, expected an object)")
  if meta.get("format") != FORMAT:
    raise UserError(f"{path}: not an mgan_jax model description "
                    f"(format={str(meta.get('format'))[:60]!r})")
  version = meta.get("format_version", 0)
  if type(version) is not int:
    raise UserError(f"{path}: format_version is {str(version)[:40]!r}, expected an integer")
  if version > FORMAT_VERSION:
    raise UserError(f"{path}: format_version {version} is newer than this mgan_jax "
                    f"understands ({FORMAT_VERSION})")
  return meta


def load_model(model_dir: str | os.PathLike) -> tuple["Generator", dict]:
  """Load (spec, params) from a converted generator directory; params are jnp arrays."""
  import jax
  from mgan_jax.generators import spec_from_json
  meta, params = load_tree(model_dir)
  try:
    spec = spec_from_json(meta)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise UserError(f"{os.path.join(os.fspath(model_dir), 'model.json')}: not a generator "
                    f"description ({type(e).__name__}: {str(e)[:120]})") from None
  check_tree(expected_params(spec), params, what=os.path.join(os.fspath(model_dir), "params"))
  return spec, jax.tree.map(jax.numpy.asarray, params)


__all__ = ["FORMAT", "FORMAT_VERSION", "STALE_TMP_SECONDS", "flatten", "unflatten", "check_tree",
           "expected_params", "params_checksum", "clean_stale_tmp", "check_output_dir",
           "save_tree", "load_tree", "save_model", "read_model_json", "load_model"]
