"""Task operators (degradations) and post-processing, NHWC, differentiable, jit/vmap friendly.

mGANprior solves image-processing tasks by inverting ``D(G(latents)) ~ D(target)`` for a known
degradation ``D`` (official ``utils/manipulate.py``). Every operator here is a small pytree
(``flax.struct`` dataclass): static settings (factor, method) are static fields, data (masks) are
array leaves, so an operator is passed to jitted functions as an ordinary argument and can be
vmapped over images (one mask per image). Calling ``op(x)`` applies it to ``x`` of shape
(B, H, W, C) -> (B, H', W', C).

Operators (official semantics where the official code has the task):

* ``Identity()`` -- reconstruction.
* ``Grayscale()`` -- ``0.299 R + 0.587 G + 0.114 B`` repeated to 3 channels (``Color_loss``).
* ``Downsample(factor, method)`` -- ``'bilinear'``: PyTorch ``F.interpolate(x, scale_factor=1/k,
  mode='bilinear', align_corners=False)`` without antialiasing (``SR_loss``; at k=16 it is the
  mean of the central 2x2 pixels of each 16x16 cell); ``'bicubic'``: the same with PyTorch's cubic
  kernel (a = -0.75, clamped borders); ``'area'``: ``mode='area'`` (adaptive average pooling);
  ``'nearest'``: ``mode='nearest'``.
* ``Mask(mask)`` -- ``x * (1 - mask)``, mask in [0, 1] with **1 = missing** (white = hole,
  ``masked_loss``). Also the loss operator for denoising with known noise positions
  (``mask`` = 1 where a pixel is corrupted; the loss sees only the clean pixels).
* ``Function(fn)`` -- any user function ``x -> x`` (static; hashed by identity).
* ``chain(op1, op2, ...)`` -- a pipeline, applied **in the order given** (op1 first). (Chaining
  degradations is called *chain* here; *compose* is reserved for mGANprior's feature
  composition of the N codes, ``Generator.compose``.)

Post-processing: ``merge_luma`` (colorization: luma of the input, chroma of the result, PIL /
JPEG BT.601 full-range YCbCr), ``paste_known`` (inpainting: keep the known pixels) and
``back_project`` (super-resolution: the smallest smooth correction that makes the result
downsample exactly to the observation).

The resampling functions ``resize`` / ``downsample_image`` reproduce PyTorch's index and weight
arithmetic (float32, ``floor(i * in / out)`` for nearest) so fixtures match within 1e-6.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

RESAMPLE_METHODS = ("nearest", "bilinear", "bicubic", "area")
_GRAY = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Separable resampling with PyTorch's arithmetic. Each output index o along one axis reads
# input indices idx[o, t] with weights w[o, t]; the tables are numpy constants (static shapes).
# ----------------------------------------------------------------------------------------------
def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch ``get_cubic_upsample_coefficients`` in float32: (n,) -> (n, 4)."""
  t = t.astype(np.float32)
  a = np.float32(a)
  one = np.float32(1)

  def conv1(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + one

  def conv2(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([conv2(t + one), conv1(t), conv1(one - t), conv2(2 * one - t)], axis=1)


@functools.lru_cache(maxsize=256)
def _taps(in_size: int, out_size: int, method: str,
          coord_scale: float | None) -> tuple[np.ndarray, np.ndarray]:
  """Index (out, T) int32 and weight (out, T) float32 tables of one axis.

  ``coord_scale``: PyTorch's source/destination scale (``1/scale_factor`` when a scale factor is
  given, else ``in/out``), as float32.
  """
  scale = np.float32(in_size / out_size if coord_scale is None else coord_scale)
  o = np.arange(out_size)
  if method == "nearest":
    if out_size == in_size:
      idx = o
    elif out_size == 2 * in_size:
      idx = o >> 1
    else:
      idx = np.floor(o.astype(np.float32) * scale).astype(np.int64)
    idx = np.minimum(idx, in_size - 1)
    return idx[:, None].astype(np.int32), np.ones((out_size, 1), np.float32)
  if method == "area":
    start = (o * in_size) // out_size
    end = ((o + 1) * in_size + out_size - 1) // out_size
    width = int(np.max(end - start))
    idx = start[:, None] + np.arange(width)[None, :]
    valid = idx < end[:, None]
    w = np.where(valid, np.float32(1) / (end - start)[:, None].astype(np.float32), 0)
    return np.minimum(idx, in_size - 1).astype(np.int32), w.astype(np.float32)
  src = scale * (o.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
  if method == "bilinear":
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    idx = np.stack([i0, i1], axis=1)
    w = np.stack([np.float32(1) - lam, lam], axis=1)
    return idx.astype(np.int32), w.astype(np.float32)
  if method == "bicubic":
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx.astype(np.int32), _cubic_weights(t)
  raise ValueError(f"unknown resampling method {method!r} (known: {', '.join(RESAMPLE_METHODS)})")


def _gather_axis(x: Array, idx: np.ndarray, axis: int) -> Array:
  """``take(x, idx, axis)`` for a static index vector, as slices/broadcasts where possible."""
  n = x.shape[axis]
  m = idx.shape[0]
  if m == n and np.array_equal(idx, np.arange(n)):
    return x
  if m > 1:
    step = int(idx[1] - idx[0])
    if step > 0 and np.array_equal(idx, idx[0] + step * np.arange(m)):
      return jax.lax.slice_in_dim(x, int(idx[0]), int(idx[0]) + step * (m - 1) + 1, step, axis)
  if m % n == 0 and np.array_equal(idx, np.arange(m) // (m // n)):  # integer nearest upsample
    r = m // n
    x = jnp.expand_dims(x, axis + 1)
    shape = list(x.shape)
    shape[axis + 1] = r
    x = jnp.broadcast_to(x, shape)
    return x.reshape(x.shape[:axis] + (m,) + x.shape[axis + 2:])
  return jnp.take(x, jnp.asarray(idx), axis=axis)


def _resample_axis(x: Array, axis: int, idx: np.ndarray, w: np.ndarray) -> Array:
  n = x.shape[axis]
  m = idx.shape[0]
  if idx.shape[1] > 1 and n % m == 0 and _is_block_mean(idx, w, n // m):
    k = n // m
    shape = x.shape[:axis] + (m, k) + x.shape[axis + 1:]
    return jnp.mean(x.reshape(shape), axis=axis + 1)
  bshape = [1] * x.ndim
  bshape[axis] = m
  out = None
  for t in range(idx.shape[1]):
    term = _gather_axis(x, idx[:, t], axis)
    if not np.all(w[:, t] == 1):
      term = term * jnp.asarray(w[:, t], x.dtype).reshape(bshape)
    out = term if out is None else out + term
  return out


def _is_block_mean(idx: np.ndarray, w: np.ndarray, k: int) -> bool:
  m = idx.shape[0]
  return (idx.shape[1] == k and np.array_equal(idx, np.arange(m)[:, None] * k + np.arange(k))
          and bool(np.all(w == np.float32(1.0 / k))))


def _resample(x: Array, out_hw: tuple[int, int], method: str,
              coord_scale: tuple[float, float] | None) -> Array:
  chex.assert_rank(x, 4)
  _, h, w, _ = x.shape
  oh, ow = out_hw
  sh, sw = coord_scale if coord_scale is not None else (None, None)
  # PyTorch interpolates along W first, then H (for bilinear: h0l*(w0l*a+w1l*b) + h1l*(...)).
  x = _resample_axis(x, 2, *_taps(w, ow, method, sw))
  x = _resample_axis(x, 1, *_taps(h, oh, method, sh))
  return x


def resize(x: Array, size: int | tuple[int, int], *, method: str = "nearest") -> Array:
  """PyTorch ``F.interpolate(x, size=size, mode=method, align_corners=False)`` (no antialias).

  x: (B, H, W, C) -> (B, h, w, C). ``method`` in nearest / bilinear / bicubic / area.
  For nearest the source index is ``floor(i * in / out)`` (float32), e.g. 4i for 1024 -> 256
  and pixel replication for 64 -> 256 (mGANprior's VGG input resize).
  """
  oh, ow = (size, size) if isinstance(size, int) else tuple(size)
  if (oh, ow) == tuple(x.shape[1:3]) and method != "area":
    return x
  return _resample(x, (oh, ow), method, None)


def downsample_image(x: Array, factor: int, *, method: str = "bilinear") -> Array:
  """PyTorch ``F.interpolate(x, scale_factor=1/factor, mode=method, align_corners=False)``.

  x: (B, H, W, C) -> (B, floor(H/factor), floor(W/factor), C). No antialiasing.
  """
  if factor < 1:
    raise ValueError(f"downsampling factor must be >= 1, got {factor}")
  _, h, w, _ = x.shape
  oh = int(math.floor(h * (1.0 / factor)))
  ow = int(math.floor(w * (1.0 / factor)))
  if oh < 1 or ow < 1:
    raise ValueError(f"cannot downsample a {h}x{w} image by {factor}")
  s = float(np.float32(1.0 / (1.0 / factor)))
  if method == "area":  # adaptive average pooling uses in/out
    return _resample(x, (oh, ow), method, None)
  return _resample(x, (oh, ow), method, (s, s))


# ----------------------------------------------------------------------------------------------
# Operators (pytrees).
# ----------------------------------------------------------------------------------------------
class Operator(struct.PyTreeNode):
  """Base class: a degradation ``D``; ``op(x)`` with x (B, H, W, C) NHWC."""

  def __call__(self, x: Array) -> Array:  # pragma: no cover - abstract
    raise NotImplementedError

  def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of ``self(x)`` for ``x`` of ``shape`` (evaluated abstractly)."""
    return tuple(jax.eval_shape(self, jax.ShapeDtypeStruct(tuple(shape), jnp.float32)).shape)


class Identity(Operator):
  """Reconstruction: D(x) = x."""

  def __call__(self, x: Array) -> Array:
    return x


class Grayscale(Operator):
  """0.299 R + 0.587 G + 0.114 B repeated to 3 channels (official ``Color_loss``)."""

  def __call__(self, x: Array) -> Array:
    return grayscale(x)


class Downsample(Operator):
  """Downsampling by ``factor`` (official ``SR_loss``: bilinear, no antialias)."""

  factor: int = struct.field(pytree_node=False, default=16)
  method: str = struct.field(pytree_node=False, default="bilinear")

  def __call__(self, x: Array) -> Array:
    return downsample_image(x, self.factor, method=self.method)


class Mask(Operator):
  """``x * (1 - mask)`` with mask in [0, 1], **1 = missing / corrupted** (official
  ``masked_loss``). ``mask``: (H, W), (H, W, 1|C) or (B, H, W, 1|C)."""

  mask: Array = None

  def __call__(self, x: Array) -> Array:
    return x * (1.0 - _as_nhwc_mask(self.mask))


class Function(Operator):
  """Wrap a user function ``x -> x`` (static field, hashed by identity)."""

  fn: Callable[[Array], Array] = struct.field(pytree_node=False, default=None)

  def __call__(self, x: Array) -> Array:
    return self.fn(x)


class Chain(Operator):
  """A pipeline of operators applied in order (first ``ops[0]``)."""

  ops: tuple = ()

  def __call__(self, x: Array) -> Array:
    for op in self.ops:
      x = op(x)
    return x


def chain(*ops: Operator) -> Operator:
  """Pipeline ``chain(op1, op2, ...)(x) == ...op2(op1(x))`` (applied in the order given).
  Nested pipelines are flattened; identities dropped."""
  flat: list[Operator] = []
  for op in ops:
    if not isinstance(op, Operator):
      raise TypeError(f"chain() takes Operator instances, got {type(op).__name__}; wrap plain "
                      "functions in operators.Function(fn)")
    if isinstance(op, Chain):
      flat.extend(op.ops)
    elif not isinstance(op, Identity):
      flat.append(op)
  if not flat:
    return Identity()
  if len(flat) == 1:
    return flat[0]
  return Chain(ops=tuple(flat))


# ----------------------------------------------------------------------------------------------
# Plain functions.
# ----------------------------------------------------------------------------------------------
def grayscale(x: Array) -> Array:
  """(B, H, W, 3) -> (B, H, W, 3): 0.299 R + 0.587 G + 0.114 B repeated to 3 channels."""
  chex.assert_shape(x, (None, None, None, 3))
  g = _GRAY[0] * x[..., 0:1] + _GRAY[1] * x[..., 1:2] + _GRAY[2] * x[..., 2:3]
  return jnp.broadcast_to(g, x.shape)


def _as_nhwc_mask(mask: Array) -> Array:
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == 2:
    m = m[..., None]
  if m.ndim == 3:
    m = m[None]
  chex.assert_rank(m, 4)
  return m


# BT.601 full-range (JPEG / PIL "YCbCr") on [-1, 1] images: the 128 offsets vanish.
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]], np.float32)
_YCC2RGB = np.array([[1.0, 0.0, 1.402],
                     [1.0, -0.344136, -0.714136],
                     [1.0, 1.772, 0.0]], np.float32)


def rgb_to_ycbcr(x: Array) -> Array:
  """(..., 3) RGB in [-1, 1] -> (..., 3) YCbCr (BT.601 full range, chroma centred on 0)."""
  return jnp.einsum("...c,dc->...d", x, jnp.asarray(_RGB2YCC))


def ycbcr_to_rgb(y: Array) -> Array:
  """Inverse of ``rgb_to_ycbcr``."""
  return jnp.einsum("...c,dc->...d", y, jnp.asarray(_YCC2RGB))


def merge_luma(observed: Array, result: Array) -> Array:
  """Colorization output: the luma Y of ``observed`` with the chroma (Cb, Cr) of ``result``
  (official: PIL ``RGB -> YCbCr``, ``Image.merge``; here in float without 8-bit rounding).
  Both (..., H, W, 3) in [-1, 1]; a gray 3-channel observation has Y = its gray value."""
  y = rgb_to_ycbcr(observed)[..., 0:1]
  cbcr = rgb_to_ycbcr(result)[..., 1:3]
  return ycbcr_to_rgb(jnp.concatenate([y, cbcr], axis=-1))


def paste_known(result: Array, observed: Array, mask: Array) -> Array:
  """Inpainting composite: ``observed`` where known (mask 0), ``result`` in the holes (mask 1).
  (The official output is the raw G output; this is the optional paste-back.) ``result`` and
  ``observed``: (..., H, W, 3); ``mask``: (H, W), (H, W, 1) or with the images' leading axes.
  The output has the shape of ``result``."""
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == 2:
    m = m[..., None]
  out = observed * (1.0 - m) + result * m
  chex.assert_shape(out, jnp.shape(result))
  return out


def resample_matrix(in_size: int, out_size: int, method: str, *,
                    coord_scale: float | None = None) -> np.ndarray:
  """One axis of ``resize`` / ``downsample_image`` as a dense (out_size, in_size) float64
  matrix M: resampling an image X (H, W) is ``M_h X M_w^T`` (the operations are separable)."""
  idx, w = _taps(int(in_size), int(out_size), method, coord_scale)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.repeat(np.arange(out_size), idx.shape[1]), idx.reshape(-1)),
            w.reshape(-1).astype(np.float64))
  return m


def downsample_matrix(size: int, factor: int, method: str = "bilinear") -> np.ndarray:
  """The (size // factor, size) matrix of one axis of ``downsample_image(., factor, method)``."""
  if factor < 1 or size // factor < 1:
    raise ValueError(f"cannot downsample {size} pixels by {factor}")
  scale = None if method == "area" else float(np.float32(1.0 / (1.0 / factor)))
  return resample_matrix(size, int(math.floor(size * (1.0 / factor))), method,
                         coord_scale=scale)


def back_project(result, observed, *, factor: int, method: str = "bilinear",
                 gray: bool = False, upsample: str = "bicubic") -> np.ndarray:
  """Data-consistent super-resolution: ``result + U C U^T`` per channel, with C solving
  ``D(result + U C U^T) = observed`` exactly.

  D is ``downsample_image(., factor, method)`` (after ``grayscale`` when ``gray``: the
  observation is then gray and the same correction goes to the three channels, which keeps the
  gray exact because the gray weights sum to 1); U is ``resize(., method=upsample)`` from the
  observation's size to the result's. With D = D_1 X D_1^T and U = U_1 C U_1^T per axis,
  A = D_1 U_1 (r, r) and C = A^-1 (observed - D(result)) A^-T: the limit of the iterative
  back-projection ``x += U(observed - D(x))`` (Irani & Peleg 1991) whenever that converges, in
  one exact solve (a least-squares solve if A is singular). The correction is smooth (it lies in
  the span of U), unlike the minimum-norm projection, which would change only the pixels D
  reads.

  result: (R, R, C) or (B, R, R, C); observed: (r, r, C) or (B, r, r, C), r = R // factor.
  Returns float32 numpy of the result's shape (not clipped).
  """
  x = np.asarray(result, np.float64)
  y = np.asarray(observed, np.float64)
  squeeze = x.ndim == 3
  if squeeze:
    x, y = x[None], y[None]
  chex.assert_rank(x, 4)
  size, r = x.shape[1], y.shape[1]
  d1 = downsample_matrix(size, factor, method)
  if d1.shape[0] != r or x.shape[1] != x.shape[2] or y.shape[1] != y.shape[2]:
    raise ValueError(f"observation {y.shape[1:3]} is not the {factor}x downsampling of the "
                     f"square result {x.shape[1:3]}")
  u1 = resample_matrix(r, size, upsample)
  a = d1 @ u1
  seen = x
  if gray:
    seen = np.repeat(np.einsum("bhwc,c->bhw", x, np.asarray(_GRAY, np.float64))[..., None],
                     x.shape[-1], axis=-1)
  resid = y - np.einsum("ih,bhwc,jw->bijc", d1, seen, d1)
  if np.linalg.cond(a) < 1e8:
    a_inv = np.linalg.inv(a)
  else:
    a_inv = np.linalg.pinv(a)
  corr = np.einsum("ij,bjkc,lk->bilc", a_inv, resid, a_inv)
  out = x + np.einsum("hi,bijc,wj->bhwc", u1, corr, u1)
  out = out.astype(np.float32)
  return out[0] if squeeze else out


__all__ = [
    "Operator", "Identity", "Grayscale", "Downsample", "Mask", "Function", "Chain", "chain",
    "grayscale", "resize", "downsample_image", "rgb_to_ycbcr", "ycbcr_to_rgb", "merge_luma",
    "paste_known", "back_project", "resample_matrix", "downsample_matrix",
    "RESAMPLE_METHODS",
]
