"""Latents files: what ``--init`` reads and what every inversion writes as ``latents.npz``.

An ``.npz`` with one float32 array per latent key of one image (``mgan_jax.latents``), e.g.
``z`` (N, Z) and ``alpha`` (N, C) for multi-code, ``wp`` (1, L, W) for w+; noise maps as
``noise_0``, ``noise_1``, ... Files written by mgan_jax also hold ``meta``: a JSON string with
the format tag, the method, codes, layer and the model they belong to. ``load`` accepts both
these files and plain ``.npz`` files of arrays (e.g. official initial latents saved with numpy),
never unpickling anything.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mgan_jax import latents as latents_lib
from mgan_jax.errors import UserError
from mgan_jax.generators.base import Generator

FORMAT = "mgan_jax.latents"
VERSION = 1
_NOISE_RE = re.compile(r"^noise_(\d+)$")


def save(path: str | os.PathLike, latents: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
  """Write one image's ``latents`` and ``meta`` (method, codes, layer, model facts) to ``path``
  (a plain write: publish it with ``fileio.publish``)."""
  arrays: dict[str, np.ndarray] = {}
  for k, v in latents.items():
    if k == "noise":
      arrays.update({f"noise_{i}": np.asarray(a, np.float32) for i, a in enumerate(v)})
    elif k == "meta" or _NOISE_RE.match(k):
      raise ValueError(f"a latent may not be called {k!r}")
    else:
      arrays[k] = np.asarray(v, np.float32)
  meta = {"format": FORMAT, "version": VERSION, **dict(meta)}
  with open(path, "wb") as f:
    np.savez(f, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))


def load(path: str | os.PathLike, *, flag: str = "--init") -> tuple[dict, dict]:
  """(latents, meta) of a latents file; ``meta`` is {} for a plain ``.npz`` of arrays.
  Noise maps come back as ``latents['noise']`` (a list). UserError naming ``flag`` and the file
  when it is not such a file."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"{flag} {path}: no such file")
  try:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise UserError(f"{flag} {path}: a single array, not a latents file (an .npz with one "
                      "array per latent: z and alpha for multi-code, or the latents.npz of a "
                      "run)")
    with f:
      arrays = {k: np.asarray(f[k]) for k in f.files}
  except UserError:
    raise
  except (OSError, ValueError, EOFError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{flag} {path}: cannot read latents ({reason})") from None
  meta_raw = arrays.pop("meta", None)
  meta: dict = {}
  if meta_raw is not None:
    try:
      meta = json.loads(str(meta_raw))
    except json.JSONDecodeError:
      meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise UserError(f"{flag} {path}: its 'meta' entry is not an mgan_jax latents description")
  out: dict[str, Any] = {}
  noise = {}
  for k, v in arrays.items():
    if v.dtype.kind not in "fiu" or v.dtype.kind == "c":
      raise UserError(f"{flag} {path}: array {k!r} has dtype {v.dtype}, expected float32")
    v = v.astype(np.float32)
    if not np.all(np.isfinite(v)):
      raise UserError(f"{flag} {path}: array {k!r} contains NaN or infinite values")
    m = _NOISE_RE.match(k)
    if m:
      noise[int(m.group(1))] = v
    else:
      out[k] = v
  if noise:
    if sorted(noise) != list(range(len(noise))):
      raise UserError(f"{flag} {path}: noise maps are not numbered noise_0 ... "
                      f"noise_{len(noise) - 1}")
    out["noise"] = [noise[i] for i in range(len(noise))]
  if not out:
    raise UserError(f"{flag} {path}: holds no latent arrays")
  return out, meta


def check(latents: Mapping[str, Any], gen: Generator, *, method: str, codes: int,
          layer: int | None, what: str) -> dict:
  """One image's latents checked against the shapes ``method`` / ``codes`` / ``layer`` need on
  ``gen``; UserError naming ``what`` otherwise. Returns float32 copies."""
  want = latents_lib.latent_shapes(gen, method=method, codes=codes, layer=layer)
  got = {k: ([tuple(np.shape(a)) for a in v] if k == "noise" else tuple(np.shape(v)))
         for k, v in latents.items()}
  wantt = {k: ([tuple(s) for s in v] if k == "noise" else tuple(v)) for k, v in want.items()}
  if got != wantt:
    missing = sorted(set(wantt) - set(got))
    extra = sorted(set(got) - set(wantt))
    bad = sorted(k for k in set(got) & set(wantt) if got[k] != wantt[k])
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unexpected {', '.join(extra)}"] if extra else []) + \
            [f"{k} has shape {got[k]}, expected {wantt[k]}" for k in bad[:2]]
    raise UserError(f"{what}: latents do not fit method {method!r} (codes {codes}, layer "
                    f"{layer}): {'; '.join(parts)}")
  return {k: ([np.asarray(a, np.float32) for a in latents[k]] if k == "noise"
              else np.asarray(latents[k], np.float32)) for k in wantt}


__all__ = ["FORMAT", "VERSION", "save", "load", "check"]
