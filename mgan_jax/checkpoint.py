"""Converted model directories: ``model.json`` (architecture) + ``params/`` (orbax checkpoint).

Layout of a model directory::

    DIR/model.json   {"format": "mgan_jax.model", "format_version": 1, "family": ...,
                      "config": {...}, "source": {...}}
    DIR/params/      orbax StandardCheckpointer tree (nested dict of float32 arrays)

``save_model`` writes into a temporary sibling directory and renames it into place, so a
directory either is complete or does not exist; it never replaces an existing directory unless
``overwrite=True``. ``load_model`` checks the restored tree against ``spec.init_params`` (every
key present, every shape right, no leftovers).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from mgan_jax.errors import UserError
from mgan_jax.generators import Generator, spec_from_json

FORMAT = "mgan_jax.model"
FORMAT_VERSION = 1


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


def check_tree(expected: Mapping, got: Mapping, *, what: str) -> None:
  """Strict structure check: raise UserError listing missing keys, wrong shapes, leftovers."""
  e = {k: tuple(np.shape(v)) for k, v in flatten(expected).items()}
  g = {k: tuple(np.shape(v)) for k, v in flatten(got).items()}
  missing = sorted(set(e) - set(g))
  extra = sorted(set(g) - set(e))
  bad = sorted(k for k in set(e) & set(g) if e[k] != g[k])
  problems = []
  if missing:
    problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  if bad:
    k = bad[0]
    problems.append(f"wrong shape for {k}: expected {e[k]}, got {g[k]}"
                    + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
  if extra:
    problems.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
  if problems:
    raise UserError(f"{what}: " + "; ".join(problems))


def expected_params(spec: Generator) -> dict:
  """The parameter structure (shapes and dtypes only, nothing computed) of ``spec``."""
  return jax.eval_shape(spec.init_params, jax.random.key(0))


def save_tree(out_dir: str | os.PathLike, meta: Mapping, params: Mapping, *,
              overwrite: bool = False) -> str:
  """Write ``model.json`` (``meta`` plus the format tag) and ``params/`` atomically.

  Refuses to replace an existing non-empty ``out_dir`` unless ``overwrite``. Returns its path.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    if not overwrite:
      raise UserError(f"{out_dir} already exists and is not empty; choose another output "
                      "directory or pass --force")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
  try:
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import
    arrays = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), dict(params))
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "params"), arrays)
    ckpt.wait_until_finished()
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, f, indent=2,
                sort_keys=True)
      f.write("\n")
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def load_tree(model_dir: str | os.PathLike) -> tuple[dict, dict]:
  """Read (meta, params as numpy arrays) from a directory written by ``save_tree``."""
  meta = read_model_json(model_dir)
  params_dir = os.path.join(os.path.abspath(os.fspath(model_dir)), "params")
  if not os.path.isdir(params_dir):
    raise UserError(f"{model_dir}: missing params/ checkpoint directory")
  import orbax.checkpoint as ocp
  return meta, ocp.StandardCheckpointer().restore(params_dir)


def save_model(out_dir: str | os.PathLike, spec: Generator, params: Mapping, *,
               source: Mapping | None = None, overwrite: bool = False) -> str:
  """Write a generator model directory (strictly checked against ``spec``). Returns its path."""
  check_tree(expected_params(spec), params, what=f"parameters for {spec.family}")
  return save_tree(out_dir, {**spec.to_json(), "source": dict(source or {})}, params,
                   overwrite=overwrite)


def read_model_json(model_dir: str | os.PathLike) -> dict:
  path = os.path.join(os.fspath(model_dir), "model.json")
  if not os.path.isfile(path):
    raise UserError(f"{model_dir} is not a converted model directory (no model.json); "
                    "make one with `python -m convert SRC OUT_DIR`")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read ({e})") from None
  if meta.get("format") != FORMAT:
    raise UserError(f"{path}: not an mgan_jax model description (format={meta.get('format')!r})")
  if meta.get("format_version", 0) > FORMAT_VERSION:
    raise UserError(f"{path}: format_version {meta['format_version']} is newer than this "
                    f"mgan_jax understands ({FORMAT_VERSION})")
  return meta


def load_model(model_dir: str | os.PathLike) -> tuple[Generator, dict]:
  """Load (spec, params) from a converted generator directory; params are jnp arrays."""
  meta, params = load_tree(model_dir)
  try:
    spec = spec_from_json(meta)
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{os.path.join(os.fspath(model_dir), 'model.json')}: not a generator "
                    f"description ({e})") from None
  check_tree(expected_params(spec), params, what=os.path.join(os.fspath(model_dir), "params"))
  return spec, jax.tree.map(jax.numpy.asarray, params)
