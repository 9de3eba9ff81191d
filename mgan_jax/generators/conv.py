"""Stride-1 convolutions for the generators and VGG16: fast forward *and* input gradient.

NHWC activations, HWIO kernels. Two entry points, with the semantics of ``lax`` convolutions:

* ``conv2d(x, w, *, padding)``: cross-correlation, (B, H, W, Cin) -> (B, H', W', Cout);
* ``upsample_conv2d(x, w)``: nearest x2 upsampling then a 3x3 SAME conv (PGGAN ``Conv0``,
  StyleGAN ``Conv0_up``), (B, H, W, Cin) -> (B, 2H, 2W, Cout).

How they are computed (same values up to float32 rounding; measured on XLA:CPU, see
``docs/engine.md``):

1. **Direct** (``lax.conv_general_dilated``) with a custom input gradient. JAX's own transpose
   rule writes the input gradient as a conv with ``01oi`` kernel dims, which XLA:CPU runs ~3x
   slower inside ``while`` loops (the inversion loop is a ``lax.scan``); here it is a forward conv
   with the flipped, transposed kernel, which stays on the fast path.
2. **Sub-pixel** ``upsample_conv2d``: output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0)
   or {i, i+1} (a=1) with the 3x3 taps merged to 2 per axis, so each of the 4 phases is a 2x2
   conv at the input resolution: 16/36 of the multiply-adds.
3. **Winograd** (Lavin & Gray 2016, F(2x2, 3x3)) for wide 3x3 layers on the CPU: each 2x2
   output tile is ``A^T [(G g G^T) * (B^T d B)] A``; the 16 element-wise products over channels
   are 16 matrix products, 4/9 of the direct multiply-adds. For the upsampling conv the input
   tile rows are (x[i-1], x[i], x[i], x[i+1]), so ``B^T d`` has a zero row and 9 products
   suffice (9/16 of the sub-pixel form); its transforms are exact integer combinations. Written
   with slices, adds and ``dot_general`` only, so JAX differentiates it natively (the input
   gradient is the transposed algorithm, again matrix products).

``conv_algorithm()`` picks per call: Winograd when the backend is the CPU, the kernel is 3x3
SAME, both channel counts are >= ``WINOGRAD_MIN_CHANNELS`` and the map is at least 8x8 with even
sides; otherwise direct / sub-pixel. ``set_conv_algorithm('direct')`` forces the direct forms
everywhere (the choice is made at trace time; changing it clears JAX's compilation caches).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: Winograd is used for layers with at least this many input and output channels (CPU only).
#: Below it the transforms cost more than the saved products (measured on 2-core AVX2 XLA:CPU).
WINOGRAD_MIN_CHANNELS = 256
ALGORITHMS = ("auto", "direct", "winograd")
_algorithm = "auto"


def set_conv_algorithm(name: str) -> None:
  """'auto' (default), 'direct' (lax convs / sub-pixel everywhere) or 'winograd' (wherever the
  shape allows it, any backend). The choice is made when a function is traced, so a change
  clears JAX's compilation caches (jitted functions retrace on their next call)."""
  global _algorithm
  if name not in ALGORITHMS:
    raise ValueError(f"conv algorithm must be one of {ALGORITHMS}, got {name!r}")
  if name != _algorithm:
    _algorithm = name
    jax.clear_caches()


def conv_algorithm(x_shape: tuple, w_shape: tuple, padding: Any = "SAME") -> str:
  """'winograd' or 'direct' for a conv of x (B, H, W, Cin) with w (kh, kw, Cin, Cout)."""
  kh, kw, cin, cout = w_shape
  h, w = x_shape[1:3]
  fits = ((kh, kw) == (3, 3) and padding in ("SAME", ((1, 1), (1, 1)))
          and h % 2 == 0 and w % 2 == 0)
  if _algorithm == "direct" or not fits:
    return "direct"
  if _algorithm == "winograd":
    return "winograd"
  wide = min(cin, cout) >= WINOGRAD_MIN_CHANNELS and h >= 8 and w >= 8
  return "winograd" if wide and jax.default_backend() == "cpu" else "direct"


# ----- direct ------------------------------------------------------------------------------

def _conv_raw(x: Array, w: Array, padding) -> Array:
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_pad(x: Array, w: Array, padding: tuple) -> Array:
  return _conv_raw(x, w, padding)


def _conv_pad_fwd(x, w, padding):
  return _conv_raw(x, w, padding), (x, w)


def _conv_pad_bwd(padding, res, g):
  x, w = res
  kh, kw = w.shape[:2]
  (t, b), (l, r) = padding
  dx = _conv_raw(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2),
                 ((kh - 1 - t, kh - 1 - b), (kw - 1 - l, kw - 1 - r)))
  _, vjp_w = jax.vjp(lambda k: _conv_raw(x, k, padding), w)  # dropped by XLA if w is constant
  return dx, vjp_w(g)[0]


_conv_pad.defvjp(_conv_pad_fwd, _conv_pad_bwd)


def _explicit_padding(w_shape: tuple, padding: Any) -> tuple:
  kh, kw = w_shape[:2]
  if padding == "SAME":
    if kh % 2 == 0 or kw % 2 == 0:
      raise ValueError("conv2d padding='SAME' needs odd kernel sizes; give explicit padding")
    padding = (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)
  elif padding == "VALID":
    padding = ((0, 0), (0, 0))
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  if any(not 0 <= v <= k - 1 for p, k in zip(padding, (kh, kw)) for v in p):
    raise ValueError(f"conv2d padding {padding} must lie in [0, k-1] for a {kh}x{kw} kernel")
  return padding


def _subpixel_upsample_conv(x: Array, w: Array) -> Array:
  def merge(k, phase, axis):
    k0, k1, k2 = (jnp.take(k, t, axis=axis) for t in range(3))
    return jnp.stack([k0, k1 + k2] if phase == 0 else [k0 + k1, k2], axis=axis)

  rows = []
  for a in (0, 1):
    ka = merge(w, a, 0)
    cols = [_conv_pad(x, merge(ka, b, 1), ((1 - a, a), (1 - b, b))) for b in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))                    # (B, H, W, 2, Cout)
  return _interleave(rows)


# ----- Winograd F(2x2, 3x3) ------------------------------------------------------------------

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)   # (4, 3)
# Upsampling variant: positions 0, 1, 3 of B^T d with d = (x[i-1], x[i], x[i], x[i+1]), the
# factor 2 of position 1 folded into the kernel transform.
_G_UP = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32)                 # (3, 3)


def _shift(a: Array, axis: int, d: int) -> Array:
  """out[i] = a[i - d] along ``axis`` (d = +1 or -1), zero-filled."""
  n = a.shape[axis]
  pad = [(0, 0)] * a.ndim
  pad[axis] = (1, 0) if d > 0 else (0, 1)
  return jax.lax.slice_in_dim(jnp.pad(a, pad), 0 if d > 0 else 1, n + (0 if d > 0 else 1),
                              axis=axis)


def _input_transform(a: Array, axis: int) -> list[Array]:
  """B^T along ``axis`` for 2-wide output tiles: 4 arrays of half the length.

  Tile i of a SAME 3x3 conv reads rows 2i-1 .. 2i+2 = (odd[i-1], even[i], odd[i], even[i+1])."""
  n = a.shape[axis]
  pairs = a.reshape(a.shape[:axis] + (n // 2, 2) + a.shape[axis + 1:])
  even = jax.lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
  odd = jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
  d0, d1, d2, d3 = _shift(odd, axis, 1), even, odd, _shift(even, axis, -1)
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _upsample_input_transform(a: Array, axis: int) -> list[Array]:
  """The 3 non-zero rows of B^T (x[i-1], x[i], x[i], x[i+1]) (position 1 halved)."""
  return [_shift(a, axis, 1) - a, a, a - _shift(a, axis, -1)]


def _interleave(rows: list[Array]) -> Array:
  """rows[a] (B, H, W, 2, C) of output phase (a, b) -> (B, 2H, 2W, C)."""
  y = jnp.stack(rows, axis=2)                               # (B, H, 2, W, 2, C)
  bsz, h, _, wd, _, c = y.shape
  return y.reshape(bsz, 2 * h, 2 * wd, c)


def _winograd(x: Array, w: Array, *, upsample: bool) -> Array:
  g, transform = (_G_UP, _upsample_input_transform) if upsample else (_G, _input_transform)
  u = jnp.einsum("ai,bj,ijcd->abcd", g, g, w, precision="highest")     # (P, P, Cin, Cout)
  # prods[p][q] = (B^T d B)[p, q] @ U[p, q]: (B, tiles_h, tiles_w, Cout). Separate products,
  # not one batched dot_general: faster on XLA:CPU (measured in the inversion step).
  prods = [[jnp.einsum("bhwc,cd->bhwd", v, u[p, q]) for q, v in enumerate(transform(r, 2))]
           for p, r in enumerate(transform(x, 1))]
  # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; upsampling keeps positions 0, 1, 3 (2 is zero).
  if upsample:
    out = lambda m: [m[0] + m[1], m[1] - m[2]]
  else:
    out = lambda m: [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
  size = len(prods)
  by_col = [out([prods[p][q] for p in range(size)]) for q in range(size)]    # [q][a]
  rows = [jnp.stack(out([by_col[q][a] for q in range(size)]), axis=3) for a in (0, 1)]
  return _interleave(rows)


# ----- public ------------------------------------------------------------------------------

def conv2d(x: Array, w: Array, *, padding: Any = "SAME") -> Array:
  """Stride-1 cross-correlation, x (B, H, W, Cin) NHWC, w (kh, kw, Cin, Cout) HWIO.

  ``padding``: ``'SAME'`` (odd kernels: (k-1)/2 each side), ``'VALID'`` or
  ``((top, bottom), (left, right))`` with every entry in [0, k-1]. Same values and gradients as
  ``lax.conv_general_dilated`` (up to float rounding; see the module note for how).
  """
  padding = _explicit_padding(w.shape, padding)
  if conv_algorithm(x.shape, w.shape, padding) == "winograd":
    return _winograd(x, w, upsample=False)
  return _conv_pad(x, w, padding)


def upsample_conv2d(x: Array, w: Array) -> Array:
  """Nearest x2 upsampling followed by a 3x3 SAME conv: (B, H, W, Cin) -> (B, 2H, 2W, Cout)."""
  if w.shape[:2] != (3, 3):
    raise ValueError(f"upsample_conv2d takes a 3x3 kernel, got {w.shape[:2]}")
  up_shape = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3])
  if conv_algorithm(up_shape, w.shape) == "winograd":
    return _winograd(x, w, upsample=True)
  return _subpixel_upsample_conv(x, w)
