"""DCGAN generator (the PyTorch-tutorial architecture), NHWC, with mGANprior splitting.

Architecture (``nn.Sequential`` ``main.*`` of the PyTorch DCGAN tutorial; all convs bias-free)::

    z (B, Z) -> ConvTranspose(k4, s1, p0) -> BN -> ReLU      block 0: (B, 4, 4, C0)
             -> ConvTranspose(k4, s2, p1) -> BN -> ReLU      block 1: (B, 8, 8, C1)
             -> ...                                          block L-1: (B, 2^(L+1), ., C_{L-1})
             -> ConvTranspose(k4, s2, p1) -> tanh            output: (B, R, R, 3), R = 2^(L+2)

BatchNorm is always in eval mode (running statistics, ``eps``). For the shipped face model
(``mgan_jax.assets`` ``dcgan-faces64``) Z = 100, channels = (512, 256, 128, 64), R = 64.

Kernel layout in ``params``: every transposed convolution is stored as the HWIO kernel of its
*equivalent forward convolution*, i.e. the PyTorch ``(in, out, kh, kw)`` weight spatially flipped
and transposed to ``(kh, kw, in, out)`` (done by ``convert/dcgan.py``). With that kernel a
transposed conv equals ``lax.conv_general_dilated(x, kernel, (1, 1), [(k-1-p, k-1-p)] * 2,
lhs_dilation=(s, s))``; this module never builds the dilated input (75% zeros for s = 2) but
uses the sub-pixel (phase) decomposition ``conv_transpose_subpixel``, and block 0 (1x1 -> 4x4)
is a dense product.

Split layers (the convention of every family, see ``base``): ``layer = k`` means "the features
after the k-th block"; ``head(params, z, k)`` runs blocks 1..k and ``tail(params, f, k)`` the
rest. Blocks of this family: the BN-ReLU blocks ``block0 .. block{L-1}`` (block k is
``block{k-1}``); the features are its ReLU output and the tail ends with the output transposed
conv and tanh. Valid k: 1..L = len(channels) (``split_layers()``). The official mGANprior code
has no DCGAN, so there is no official ``--composing_layer`` to match. ``feature_shape(k)`` =
(H, W, C) for ``DCGAN()`` (the shipped faces64 model)::

    k    feature_shape(k)   block k
    1    (4, 4, 512)        block0
    2    (8, 8, 256)        block1
    3    (16, 16, 128)      block2
    4    (32, 32, 64)       block3

Composition scale: unlike PGGAN, the tail starts with a transposed conv + BN (affine in eval
mode), so the global scale of the fused map changes the output, and the official init
alpha = 1/N (with the official ``mean_n`` in ``compose``) starts from a fused map of magnitude
mean_n(F_n) / N rather than a typical feature map. It is kept anyway: measured with the real
weights (N = 10 codes, layer 2, MSE loss, 3 sample targets, 300 steps), alpha init 1/N ends
lower than alpha init 1 with both SGD lr 1.0 (MSE 0.033 vs 0.048) and Adam lr 0.01 (0.0039 vs
0.0068), though it starts higher (0.53 vs 0.43): the small fused map gives alpha a larger
relative step size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp

from mgan_jax.generators.base import Array, Generator, Params, check_layer
from mgan_jax.generators.conv import conv2d


def conv_transpose_subpixel(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
  """PyTorch ``ConvTranspose2d`` (no bias) by phase decomposition, without dilation zeros.

  Args:
    x: (B, H, W, Cin).
    kernel: (k, k, Cin, Cout), the forward-conv form (PyTorch weight flipped, HWIO).
    stride, padding: s and p of the transposed conv; requires k % s == 0 and k - 2p == s, so
      the output is exactly (B, s*H, s*W, Cout).

  Output pixel ``y = s*m + r`` only receives the taps ``t = t0(r) + s*u`` (``u < k/s``) of the
  forward-conv kernel, applied to ``x[m + d(r) + u]``. So all s*s phases are (k/s x k/s)
  correlations of the undilated input: one convolution of the padded input with the s*s phase
  kernels stacked along the output channels, then each phase is cut at its offset ``d`` and the
  phases are interleaved (depth-to-space). For k4 s2 p1 the phases are computed on an
  (H+1) x (W+1) grid: ((H+1)/H)^2 times the exact FLOPs (1.06 at H = 32), where the dilated
  form multiplies s*s = 4 times as many terms, 3/4 of them zeros.
  """
  k, s, p = kernel.shape[0], stride, padding
  if kernel.shape[1] != k or k % s or k - 2 * p != s:
    raise ValueError(f"conv_transpose_subpixel needs a square kernel with k % s == 0 and "
                     f"k - 2p == s, got k={kernel.shape[:2]}, s={s}, p={p}")
  b, h, w, _ = x.shape
  c = kernel.shape[-1]
  q = k - 1 - p                                  # padding of the equivalent dilated conv
  t0 = [(q - r) % s for r in range(s)]           # first tap of phase r
  d = [(r + t0[r] - q) // s for r in range(s)]   # input offset of phase r
  lo, hi = max(0, -min(d)), max(0, max(d) + k // s - 1)
  xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  phase_kernels = jnp.concatenate(
      [kernel[t0[ry]::s, t0[rx]::s] for ry in range(s) for rx in range(s)], axis=-1)
  # generators.conv.conv2d: same forward, input gradient kept on XLA:CPU's fast path in lax.scan.
  y = conv2d(xp, phase_kernels, padding="VALID")
  y = y.reshape(*y.shape[:3], s, s, c)           # (B, H', W', ry, rx, C)
  rows = [jnp.stack([y[:, d[ry] + lo:d[ry] + lo + h, d[rx] + lo:d[rx] + lo + w, ry, rx]
                     for rx in range(s)], axis=3) for ry in range(s)]
  return jnp.stack(rows, axis=2).reshape(b, s * h, s * w, c)   # (B, H, ry, W, rx, C)


def _batch_norm(x: Array, bn: Params, eps: float) -> Array:
  """Eval-mode BatchNorm over the channel (last) axis."""
  inv = bn["scale"] * jax.lax.rsqrt(bn["var"] + eps)
  return x * inv + (bn["bias"] - bn["mean"] * inv)


@dataclasses.dataclass(frozen=True)
class DCGAN(Generator):
  """Spec of a PyTorch-tutorial DCGAN generator.

  Fields:
    z_dim: latent size Z (100 for the shipped model).
    channels: output channels of the BN-ReLU blocks, (C0, ..., C_{L-1}) (e.g. 8*ngf ... ngf).
    out_channels: image channels (3).
    bn_eps: BatchNorm epsilon (PyTorch default 1e-5).

  Params (see the module docstring for the kernel layout)::

    block{i}: kernel (4, 4, Cin, C_i); scale, bias, mean, var (C_i,)   i < L; Cin = Z for i = 0
    output:   kernel (4, 4, C_{L-1}, out_channels)
  """

  family: ClassVar[str] = "dcgan"

  z_dim: int = 100
  channels: tuple[int, ...] = (512, 256, 128, 64)
  out_channels: int = 3
  bn_eps: float = 1e-5

  # ----- architecture facts -------------------------------------------------------------
  @property
  def resolution(self) -> int:
    return 4 * 2 ** len(self.channels)

  @property
  def latent_dim(self) -> int:
    return self.z_dim

  @property
  def num_layers(self) -> int:
    """BN-ReLU blocks plus the output block; splits at 1 .. len(channels)."""
    return len(self.channels) + 1

  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    check_layer(self, layer)
    side = 4 * 2 ** (layer - 1)
    return (side, side, self.channels[layer - 1])

  # ----- parameters -------------------------------------------------------------------------
  def init_params(self, key: Array) -> dict:
    """DCGAN-tutorial init (kernels N(0, 0.02), BN scale N(1, 0.02), bias 0); the running
    statistics are random too (mean N(0, 0.01^2), var U(0.005, 0.015), about the scale of the
    pre-BN activations of such kernels) so that tests exercise them."""
    params: dict[str, Any] = {}
    cin = self.z_dim
    keys = iter(jax.random.split(key, 4 * len(self.channels) + 1))
    for i, c in enumerate(self.channels):
      params[f"block{i}"] = {
          "kernel": 0.02 * jax.random.normal(next(keys), (4, 4, cin, c), jnp.float32),
          "scale": 1.0 + 0.02 * jax.random.normal(next(keys), (c,), jnp.float32),
          "bias": jnp.zeros((c,), jnp.float32),
          "mean": 0.01 * jax.random.normal(next(keys), (c,), jnp.float32),
          "var": jax.random.uniform(next(keys), (c,), jnp.float32, 0.5, 1.5) * 1e-2,
      }
      cin = c
    params["output"] = {
        "kernel": 0.02 * jax.random.normal(next(keys), (4, 4, cin, self.out_channels),
                                           jnp.float32)}
    return params

  # ----- forward ---------------------------------------------------------------------------
  def _block(self, params: Params, x: Array, i: int) -> Array:
    p = params[f"block{i}"]
    if i == 0:   # 1x1 -> 4x4 transposed conv (k4, s1, p0): out[y, x] = z . W[y, x]
      y = jnp.einsum("bc,hwco->bhwo", x, p["kernel"][::-1, ::-1])
    else:
      y = conv_transpose_subpixel(x, p["kernel"], stride=2, padding=1)
    return jax.nn.relu(_batch_norm(y, p, self.bn_eps))

  def head(self, params: Params, x: Array, layer: int, *, noise: Any = None) -> Array:
    """z (B, Z) -> features after ``layer`` blocks (B, H, W, C). ``noise`` is ignored."""
    del noise
    check_layer(self, layer)
    chex.assert_shape(x, (None, self.z_dim))
    for i in range(layer):
      x = self._block(params, x, i)
    return x

  def tail(self, params: Params, features: Array, layer: int, *, latent: Array | None = None,
           noise: Any = None) -> Array:
    """Features after ``layer`` blocks (B, H, W, C) -> image (B, R, R, out_channels) in [-1, 1].
    ``latent`` and ``noise`` are ignored."""
    del latent, noise
    check_layer(self, layer)
    chex.assert_shape(features, (None, *self.feature_shape(layer)))
    x = features
    for i in range(layer, len(self.channels)):
      x = self._block(params, x, i)
    y = conv_transpose_subpixel(x, params["output"]["kernel"], stride=2, padding=1)
    return jnp.tanh(y)
