"""Semantic directions in a generator's latent space: boundary files and SeFa.

Two sources of a direction (a vector ``v`` (D,) in the space that an edit moves):

* **Boundary files** (``load_boundary``): the format of the official mGANprior
  ``boundaries/pggan_celebahq_<attribute>_boundary.npy`` and of every InterFaceGAN boundary
  (``train_boundary`` / ``project_boundary``): a ``.npy`` array of shape (1, D) (also accepted:
  (D,)), unit norm, float64 (mGANprior's files) or float32 (InterFaceGAN's). It is read with
  ``allow_pickle=False`` and used as stored, cast to float32 (the official ``get_boundary``).
  The dimension must match the space the edit moves (z: the generator's ``latent_dim``; w / w+:
  its ``w_dim``). Which space a file was trained in (InterFaceGAN ships z, w and w+ boundaries
  of the same shape) is the user's knowledge: it is applied to the space of the inversion.

* **SeFa** (``sefa``; Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs",
  CVPR 2021, official genforce/sefa ``factorize_weight``): the directions come from the
  generator weights alone. The weight A (D, cols) that maps the latent to the first thing it
  modulates is gathered, **every column is L2-normalised** (one output unit's weights over the
  D latent dimensions), and the eigenvectors of ``A A^T`` (D, D) are the directions, sorted by
  descending eigenvalue. The weight per family (in this package's TF-style layouts):

  ==========  =================================================  ==========================
  family      A                                                  space / edit
  ==========  =================================================  ==========================
  pggan       ``4x4/Dense/weight`` (Z, C*16) (the official       z (pixel-normalised
              ``layer0`` conv weight flipped and transposed;     first, as SeFa edits)
              z rows only when the model has label inputs)
  dcgan       ``block0/kernel`` (4, 4, Z, C0), the first         z
              transposed conv, as (Z, 4*4*C0)
  stylegan    ``StyleMod/weight`` (W, 2C) of each selected       w+ rows of the selected
              synthesis layer i (w+ entry i)                     layers
  stylegan2   ``mod_weight`` (W, Cin) of conv layer i for        w+ rows of the selected
              i < L-1; for i = L-1 the *final* ToRGB's           layers
              (the intermediate ToRGB styles are never used)
  ==========  =================================================  ==========================

  Layer selection (``layers``): ``'all'`` (every w+ entry 0..L-1, the official default), a
  string ``'0-3'`` / ``'0,2,5'`` (the official ``parse_indices`` syntax) or a sequence of ints.
  PGGAN and DCGAN always factorise their first layer (the official code ignores the selection
  for PGGAN; here anything but ``'all'`` is an error).

  Layouts and run-time scales: the official code reads OIHW PyTorch weights; the TF-style
  kernels stored here hold the same numbers transposed (and, for the 4x4 dense / transposed
  conv, with the columns permuted), and ``A A^T`` does not depend on the column order. Every
  run-time factor here multiplies whole columns -- the equalized-learning-rate constants
  (``sqrt(2)/4/sqrt(Z)``, ``1/sqrt(W)``) and, for DCGAN, the eval-mode BatchNorm scale
  ``gamma / sqrt(var + eps)`` of each output channel -- so the column normalisation cancels it
  and the raw stored weights give the directions of the effective ones (checked in the tests).

  Numerics: the official code runs ``np.linalg.eig`` on the float32 Gram matrix and keeps the
  order LAPACK returns (not sorted; nearly equal eigenvalues can swap between machines). Here
  the Gram matrix is formed and decomposed in float64 (``eigh``, symmetric) and sorted in
  descending order: that is the stable order. **Sign rule** (eigenvectors have no sign): each
  direction is multiplied by the sign of its largest-magnitude component, so that component is
  positive.

``cached_sefa`` stores the factorisation per model in a small ``.npz`` keyed by a hash of the
weights it used and the layer selection (``sefa_key``), under a directory the caller gives
(the CLI passes ``mgan_jax.assets.cache_dir() / 'sefa'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mgan_jax import fileio
from mgan_jax.errors import UserError

if TYPE_CHECKING:   # only for annotations: reading boundary files needs no jax
  from mgan_jax.generators.base import Generator

#: Bump when the factorisation or the cache file layout changes (part of the cache key).
SEFA_VERSION = 1
_STYLE_FAMILIES = ("stylegan", "stylegan2")
_FIRST_LAYER_FAMILIES = ("pggan", "dcgan")
SEFA_FAMILIES = _FIRST_LAYER_FAMILIES + _STYLE_FAMILIES


@dataclasses.dataclass(frozen=True)
class Factorization:
  """SeFa result for one model and layer selection.

  eigenvalues: (D,) float32, descending; directions: (D, D) float32, row k is the unit
  eigenvector of ``eigenvalues[k]`` (sign rule applied); layers: the w+ entries factorised
  (``(0,)`` for PGGAN/DCGAN, meaning the first layer); space: ``'z'`` (PGGAN, DCGAN) or ``'w'``
  (StyleGAN, StyleGAN2: the directions move w+ rows ``layers``); family; key: ``sefa_key``.
  """
  eigenvalues: np.ndarray
  directions: np.ndarray
  layers: tuple[int, ...]
  space: str
  family: str
  key: str

  def direction(self, k: int) -> np.ndarray:
    """Direction of the k-th largest eigenvalue, (D,) float32."""
    if not 0 <= k < len(self.eigenvalues):
      raise IndexError(f"SeFa direction {k} out of range 0..{len(self.eigenvalues) - 1}")
    return self.directions[k]


# ----------------------------------------------------------------------------------------------
# Boundary files.
# ----------------------------------------------------------------------------------------------
def load_boundary(path: str | os.PathLike, *, dim: int | None = None,
                  flag: str = "--direction") -> np.ndarray:
  """A boundary ``.npy`` file -> float32 (D,) (as stored, not renormalised).

  Accepts (1, D) (the official / InterFaceGAN layout) and (D,) arrays of a floating dtype.
  ``dim``: the size the edited space needs. Raises UserError (one line naming the file) for a
  missing or unreadable file, a pickled or non-float array, another shape, a dimension that
  does not match ``dim``, non-finite values or a zero vector.
  """
  p = Path(path)
  what = f"{flag} {p}"
  if not p.is_file():
    raise UserError(f"{what}: no such file")
  try:
    with open(p, "rb") as f:
      magic = f.read(6)
  except OSError as e:
    raise UserError(f"{what}: cannot read ({e.strerror or e})") from None
  if magic[:4] == b"PK\x03\x04":
    raise UserError(f"{what}: is an .npz archive; a boundary is one .npy array of shape (1, D)")
  if magic != b"\x93NUMPY":
    raise UserError(f"{what}: not a .npy file; a boundary is one numpy array of shape (1, D) "
                    "saved with numpy.save")
  try:
    arr = np.load(p, allow_pickle=False)
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise UserError(f"{what}: holds a pickled object, not a plain array; re-save the vector "
                      "with numpy.save(path, vector.astype('float32'))") from None
    raise UserError(f"{what}: cannot read as a .npy array ({str(e).splitlines()[0]})") from None
  except (OSError, EOFError) as e:
    raise UserError(f"{what}: cannot read as a .npy array ({e})") from None
  if not np.issubdtype(arr.dtype, np.floating):
    raise UserError(f"{what}: dtype {arr.dtype}; a boundary is a float array of shape (1, D)")
  if arr.ndim == 2 and arr.shape[0] == 1:
    vec = arr[0]
  elif arr.ndim == 1:
    vec = arr
  else:
    raise UserError(f"{what}: shape {tuple(arr.shape)}; a boundary has shape (1, D) or (D,)")
  if vec.size == 0:
    raise UserError(f"{what}: the vector is empty")
  if dim is not None and vec.size != dim:
    raise UserError(f"{what}: a {vec.size}-dimensional direction, but the edited latent space "
                    f"of this model is {dim}-dimensional")
  if not np.all(np.isfinite(vec)):
    raise UserError(f"{what}: holds non-finite values (nan or inf)")
  if not np.any(vec != 0):
    raise UserError(f"{what}: is the zero vector (no direction)")
  return vec.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# SeFa.
# ----------------------------------------------------------------------------------------------
def parse_layers(layers: str | int | Sequence[int] | None, num_layers: int, *,
                 flag: str = "layers", noun: str = "w+ entries") -> tuple[int, ...]:
  """``'all'`` / None -> 0..num_layers-1; ``'0-3'``, ``'0,2,5'``, ``'1-2,7'``, an int or a
  sequence of ints -> the sorted unique indices. ValueError names ``flag`` and the valid range.
  """
  if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
    return tuple(range(num_layers))
  out: list[int] = []
  if isinstance(layers, (int, np.integer)):
    out = [int(layers)]
  elif isinstance(layers, str):
    for part in layers.replace(" ", "").split(","):
      bits = part.split("-")
      try:
        nums = [int(b) for b in bits]
      except ValueError:
        raise ValueError(f"{flag} {layers!r}: expected 'all', 'a-b' or 'a,b,c' (integers)") \
            from None
      if len(nums) == 1:
        out.append(nums[0])
      elif len(nums) == 2 and nums[0] <= nums[1]:
        out.extend(range(nums[0], nums[1] + 1))
      else:
        raise ValueError(f"{flag} {layers!r}: expected 'all', 'a-b' (a <= b) or 'a,b,c'")
  else:
    out = [int(x) for x in layers]
  idx = tuple(sorted(set(out)))
  if not idx:
    raise ValueError(f"{flag}: no layer selected")
  bad = [i for i in idx if not 0 <= i < num_layers]
  if bad:
    raise ValueError(f"{flag} {layers!r}: {bad[0]} is out of range (this model has {noun} "
                     f"0..{num_layers - 1})")
  return idx


def sefa_space(gen: Generator) -> str:
  """The latent space SeFa directions of ``gen`` live in: 'z' (PGGAN, DCGAN) or 'w'."""
  _check_family(gen)
  return "z" if gen.family in _FIRST_LAYER_FAMILIES else "w"


def _check_family(gen: Generator) -> None:
  if gen.family not in SEFA_FAMILIES:
    raise ValueError(f"SeFa is not defined for the {gen.family!r} family (supported: "
                     f"{', '.join(SEFA_FAMILIES)})")


def sefa_blocks(gen: Generator, params: Mapping[str, Any],
                layers: str | int | Sequence[int] | None = "all"
                ) -> tuple[tuple[int, ...], list[np.ndarray]]:
  """(layers, [A_i]): the raw weight blocks SeFa factorises, each (D, cols_i) float32, as
  stored in ``params`` (no run-time scaling; see the module docstring)."""
  _check_family(gen)
  if gen.family in _FIRST_LAYER_FAMILIES:
    if not (layers is None or (isinstance(layers, str) and layers.strip().lower() == "all")):
      raise ValueError(f"SeFa factorises the first layer of a {gen.family} generator; a layer "
                       f"selection ({layers!r}) applies to StyleGAN and StyleGAN2 only")
    if gen.family == "pggan":
      a = np.asarray(params["4x4"]["Dense"]["weight"], np.float32)[:gen.latent_dim]
    else:
      k = np.asarray(params["block0"]["kernel"], np.float32)       # (4, 4, Z, C0)
      a = k.transpose(2, 0, 1, 3).reshape(k.shape[2], -1)           # (Z, 16 * C0)
    return (0,), [a]
  idx = parse_layers(layers, gen.num_layers)
  synth = params["synthesis"]
  blocks = []
  for i in idx:
    if gen.family == "stylegan":
      b = i // 2
      res = 4 * 2 ** b
      name = ("Const" if i == 0 else "Conv") if b == 0 else ("Conv0_up" if i % 2 == 0
                                                             else "Conv1")
      w = synth[f"{res}x{res}"][name]["StyleMod"]["weight"]         # (W, 2C)
    elif i == gen.num_layers - 1:                                   # stylegan2: final ToRGB
      res = gen.resolution
      w = synth[f"{res}x{res}"]["ToRGB"]["mod_weight"]              # (W, C_R)
    else:
      b = (i + 1) // 2
      res = 4 * 2 ** b
      name = "Conv" if b == 0 else ("Conv0_up" if i % 2 else "Conv1")
      w = synth[f"{res}x{res}"][name]["mod_weight"]                  # (W, Cin)
    blocks.append(np.asarray(w, np.float32))
  return idx, blocks


def sefa_weight(blocks: Sequence[np.ndarray]) -> np.ndarray:
  """Concatenate the blocks along columns and L2-normalise every column (axis 0): the
  official W (D, sum cols), float32. All-zero columns (no direction information) are
  dropped."""
  a = np.concatenate([np.asarray(b, np.float64) for b in blocks], axis=1)
  norms = np.linalg.norm(a, axis=0, keepdims=True)
  keep = norms[0] > 0
  return (a[:, keep] / norms[:, keep]).astype(np.float32)


def factorize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decomposition of ``W W^T`` for a column-normalised W (D, cols): (eigenvalues (D,)
  descending, directions (D, D) rows = unit eigenvectors, sign rule applied), float32.
  Computed in float64 (symmetric solver)."""
  w = np.asarray(weight, np.float64)
  gram = w @ w.T
  values, vectors = np.linalg.eigh(gram)          # ascending, columns
  order = np.argsort(-values, kind="stable")
  values = values[order]
  rows = vectors[:, order].T
  return values.astype(np.float32), apply_sign_rule(rows).astype(np.float32)


def apply_sign_rule(rows: np.ndarray) -> np.ndarray:
  """Multiply each row by the sign of its largest-magnitude component (made positive)."""
  rows = np.asarray(rows)
  pick = np.argmax(np.abs(rows), axis=-1)
  signs = np.sign(np.take_along_axis(rows, pick[..., None], axis=-1))
  signs[signs == 0] = 1
  return rows * signs


def sefa_key(gen: Generator, params: Mapping[str, Any],
             layers: str | int | Sequence[int] | None = "all") -> str:
  """Hex digest identifying a factorisation: the family, the layer selection and the bytes of
  the weights used (not the rest of the model)."""
  idx, blocks = sefa_blocks(gen, params, layers)
  return _key(gen.family, idx, blocks)


def _key(family: str, idx: Sequence[int], blocks: Sequence[np.ndarray]) -> str:
  h = hashlib.sha256(f"mgan_jax.sefa v{SEFA_VERSION} {family} {list(idx)}".encode())
  for b in blocks:
    b = np.ascontiguousarray(b, np.float32)
    h.update(repr(b.shape).encode())
    h.update(b.tobytes())
  return h.hexdigest()[:24]


def sefa(gen: Generator, params: Mapping[str, Any],
         layers: str | int | Sequence[int] | None = "all") -> Factorization:
  """SeFa directions of ``gen`` (pure: no file access). See the module docstring."""
  idx, blocks = sefa_blocks(gen, params, layers)
  values, rows = factorize(sefa_weight(blocks))
  return Factorization(values, rows, tuple(int(i) for i in idx), sefa_space(gen), gen.family,
                       _key(gen.family, idx, blocks))


def cached_sefa(gen: Generator, params: Mapping[str, Any],
                layers: str | int | Sequence[int] | None = "all", *,
                cache: str | os.PathLike | None) -> Factorization:
  """``sefa`` with an on-disk cache: ``<cache>/<family>-<key>.npz`` (eigenvalues, directions,
  layers). Read when present and intact, otherwise computed and written atomically (temporary
  sibling + rename). ``cache=None`` computes without caching."""
  idx, blocks = sefa_blocks(gen, params, layers)
  key = _key(gen.family, idx, blocks)
  if cache is None:
    return sefa(gen, params, layers)
  root = Path(cache)
  path = root / f"{gen.family}-{key}.npz"
  if path.is_file():
    try:
      with np.load(path, allow_pickle=False) as f:
        values, rows = f["eigenvalues"], f["directions"]
        stored_layers = tuple(int(i) for i in f["layers"])
      d = blocks[0].shape[0]
      if values.shape == (d,) and rows.shape == (d, d) and stored_layers == tuple(idx):
        return Factorization(values.astype(np.float32), rows.astype(np.float32),
                             stored_layers, sefa_space(gen), gen.family, key)
    except (OSError, ValueError, KeyError, EOFError):
      pass                                   # unreadable cache entry: recompute, replace
  fac = sefa(gen, params, layers)
  with fileio.publish(path, replace=True) as tmp, open(tmp, "wb") as f:
    np.savez(f, eigenvalues=fac.eigenvalues, directions=fac.directions,
             layers=np.asarray(fac.layers, np.int64), family=np.array(gen.family),
             version=np.array(SEFA_VERSION))
  return fac


__all__ = ["Factorization", "SEFA_FAMILIES", "load_boundary", "parse_layers", "sefa_space",
           "sefa_blocks", "sefa_weight", "factorize", "apply_sign_rule", "sefa_key", "sefa",
           "cached_sefa"]
