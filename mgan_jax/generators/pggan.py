"""PGGAN generator (Karras et al. 2018, ``G_paper``) in Flax, with the official math.

This is the generator used by mGANprior's multi-code inversion (``PGGAN_multi_z``). It follows
the NVIDIA TF ``networks.G_paper`` graph (the genforce PyTorch port computes the same function):

* block 0 ("4x4/Dense"): PixelNorm(z), Dense Z -> C4*16 whose output is read in **NCHW** order
  ``(B, C4, 4, 4)`` and then transposed to NHWC, + bias, LeakyReLU(0.2);
* block 1 ("4x4/Conv") and, for every resolution r = 8..R, blocks "{r}x{r}/Conv0" (preceded by
  a nearest x2 upsample) and "{r}x{r}/Conv1": PixelNorm, 3x3 SAME conv, + bias, LeakyReLU(0.2);
* final "ToRGB": PixelNorm, 1x1 conv to 3 channels, + bias; linear (no tanh, no clamp).

PixelNorm is ``x / sqrt(mean_c x^2 + 1e-8)`` at the *start* of every block (genforce form, equal
to TF's PixelNorm after every activation). Weights are stored unscaled, as in the checkpoints
(equalized learning rate); the runtime scales are applied to the weights:

=================  ==========================  ======
layer              weight scale                bias
=================  ==========================  ======
4x4 Dense          sqrt(2) / 4 / sqrt(Z + L)   1
3x3 convs          sqrt(2) / sqrt(Cin * 9)     1
ToRGB (1x1)        1 / sqrt(Cin)               1
=================  ==========================  ======

Parameter tree (TF layouts: Dense [in, out], conv kernels HWIO)::

    {'4x4':   {'Dense': {'weight': (Z+L, C4*16), 'bias': (C4,)},
               'Conv':  {'weight': (3, 3, C4, C4), 'bias': (C4,)}},
     '8x8':   {'Conv0': {'weight': (3, 3, C4, C8), 'bias': (C8,)},
               'Conv1': {'weight': (3, 3, C8, C8), 'bias': (C8,)}},
     ...
     '{R}x{R}': {'Conv0': ..., 'Conv1': ...},
     'ToRGB': {'weight': (1, 1, C_R, 3), 'bias': (3,)}}

Split layers (the convention of every family, see ``base``): ``layer = k`` means "the features
after the k-th block"; ``head(params, x, k)`` runs blocks 1..k and ``tail(params, f, k)`` the
rest. Blocks of this family: the official conv blocks ``layer0 .. layer{num_blocks-1}`` in order
(block 1 is the 4x4 Dense, block 2 the 4x4 Conv, then Conv0 / Conv1 of every resolution); the
features are the block's post-LeakyReLU activation (before the next PixelNorm), and the tail
ends with PixelNorm + ToRGB (``num_layers = num_blocks + 1`` counts that ToRGB too). Valid k:
1..num_blocks = 2 * log2(R) - 2 (``split_layers()``). k is exactly the official
``--composing_layer`` (official ``pre_model = children[:k]``; its scripts use 4, 6 and 8).
``feature_shape(k)`` = (H, W, C) for ``PGGAN(resolution=256)``::

    k    feature_shape(k)   block k
    1    (4, 4, 512)        4x4/Dense
    2    (4, 4, 512)        4x4/Conv
    3    (8, 8, 512)        8x8/Conv0
    4    (8, 8, 512)        8x8/Conv1
    5    (16, 16, 512)      16x16/Conv0
    6    (16, 16, 512)      16x16/Conv1
    7    (32, 32, 512)      32x32/Conv0
    8    (32, 32, 512)      32x32/Conv1
    9    (64, 64, 256)      64x64/Conv0
    10   (64, 64, 256)      64x64/Conv1
    11   (128, 128, 128)    128x128/Conv0
    12   (128, 128, 128)    128x128/Conv1
    13   (256, 256, 64)     256x256/Conv0
    14   (256, 256, 64)     256x256/Conv1

Labels: ``label_dim`` L > 0 describes a conditional ``G_paper``; as the official converter does,
the labels are zeros (the Dense input is ``concat(z, zeros(L))``, which also enters the
PixelNorm's mean). Unconditional models have L = 0.

Matmul precision is JAX's default (exact float32 on CPU). On GPUs that use TF32 for float32
convolutions, set ``jax.config.update('jax_default_matmul_precision', 'highest')`` for bit-level
parity with the float32 reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgan_jax.generators.base import Array, Generator, Params, check_layer
from mgan_jax.generators.conv import conv2d, upsample_conv2d

#: PixelNorm epsilon (TF ``pixelnorm_epsilon``, genforce ``PixelNormLayer``).
PIXELNORM_EPS = 1e-8
#: LeakyReLU slope.
LRELU_SLOPE = 0.2


def official_channels(resolution: int, *, fmap_base: int = 8192, fmap_max: int = 512
                      ) -> tuple[int, ...]:
  """TF ``nf(stage) = min(fmap_base / 2**stage, fmap_max)`` for resolutions 4..R (stage =
  log2(res) - 1). The defaults give the official schedule ``min(16384 // res, 512)``."""
  n = _log2(resolution)
  return tuple(min(fmap_base // (2 ** (s - 1)), fmap_max) for s in range(2, n + 1))


def _log2(resolution: int) -> int:
  n = int(round(math.log2(resolution))) if resolution > 0 else 0
  if resolution < 4 or 2 ** n != resolution:
    raise ValueError(f"PGGAN resolution must be a power of two >= 4, got {resolution}")
  return n


# ----- building blocks ---------------------------------------------------------------------

def pixel_norm(x: Array) -> Array:
  """``x / sqrt(mean over the last (channel) axis of x^2 + 1e-8)``."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + PIXELNORM_EPS)


def _leaky_relu(x: Array) -> Array:
  return jnp.where(x >= 0, x, LRELU_SLOPE * x)


def _weight_init(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, shape, dtype)          # N(0, 1): equalized-LR storage


def _bias_init(key, shape, dtype=jnp.float32):
  return 0.1 * jax.random.normal(key, shape, dtype)    # N(0, 0.1^2)


class _Dense4x4(nn.Module):
  """The 4x4 Dense: (B, Z+L) -> (B, 4, 4, C). Output columns are ordered c*16 + h*4 + w."""
  channels: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    w = self.param("weight", _weight_init, (fan_in, self.channels * 16))
    b = self.param("bias", _bias_init, (self.channels,))
    scale = math.sqrt(2.0) / 4.0 / math.sqrt(fan_in)
    y = jnp.dot(x, w * scale)
    y = y.reshape(x.shape[0], self.channels, 4, 4).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return y + b


class _Conv(nn.Module):
  """Equalized-LR SAME conv, NHWC activations, HWIO kernel, + bias (unscaled).

  ``upsample``: nearest x2 upsampling first, computed as four 2x2 sub-pixel convs at the input
  resolution or by Winograd (``generators.conv.upsample_conv2d``; same result)."""
  features: int
  kernel: int
  gain: float
  upsample: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    w = self.param("weight", _weight_init, (self.kernel, self.kernel, cin, self.features))
    b = self.param("bias", _bias_init, (self.features,))
    scale = self.gain / math.sqrt(cin * self.kernel * self.kernel)
    y = upsample_conv2d(x, w * scale) if self.upsample else conv2d(x, w * scale)
    return y + b


class _Resolution(nn.Module):
  """One resolution's blocks; runs its sub-blocks ``lo .. hi-1`` (0: Dense/Conv0, 1: Conv/Conv1).

  Block input is pre-PixelNorm; output is the post-LeakyReLU activation.
  """
  res_index: int          # 0 for 4x4, 1 for 8x8, ...
  channels: int

  @nn.compact
  def __call__(self, x: Array, lo: int, hi: int) -> Array:
    for sub in range(lo, hi):
      x = pixel_norm(x)
      if self.res_index == 0 and sub == 0:
        x = _Dense4x4(self.channels, name="Dense")(x)
      else:
        up = self.res_index > 0 and sub == 0  # pixel norm commutes with nearest upsampling
        name = "Conv" if self.res_index == 0 else f"Conv{sub}"
        x = _Conv(self.channels, 3, math.sqrt(2.0), upsample=up, name=name)(x)
      x = _leaky_relu(x)
    return x


class PGGANNetwork(nn.Module):
  """Runs blocks ``start .. stop-1`` of the PGGAN, then the final ToRGB if ``to_rgb``.

  Input: z (B, Z) when ``start == 0`` (labels, if any, are appended as zeros), otherwise the
  NHWC features after ``start`` blocks. Output: NHWC features, or the image (B, R, R, 3).
  """
  channels: tuple[int, ...]
  label_dim: int = 0
  start: int = 0
  stop: int = -1           # -1: all blocks
  to_rgb: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    num_blocks = 2 * len(self.channels)
    stop = num_blocks if self.stop < 0 else self.stop
    if self.start == 0 and self.label_dim:
      x = jnp.concatenate([x, jnp.zeros((x.shape[0], self.label_dim), x.dtype)], axis=-1)
    for r, c in enumerate(self.channels):
      lo, hi = max(self.start - 2 * r, 0), min(stop - 2 * r, 2)
      if lo < hi:
        res = 4 * 2 ** r
        x = _Resolution(r, c, name=f"{res}x{res}")(x, lo, hi)
    if self.to_rgb:
      x = _Conv(3, 1, 1.0, name="ToRGB")(pixel_norm(x))
    return x


# ----- the spec ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PGGAN(Generator):
  """PGGAN (``G_paper``) spec.

  Fields:
    resolution: output side R (power of two >= 8).
    latent_dim: size Z of z (512 for the official models).
    channels: feature channels per resolution 4, 8, ..., R (``log2(R) - 1`` entries); empty
      means the official schedule ``min(16384 // res, 512)``. Converters read it from the weights.
    label_dim: size L of the (zero) label input of a conditional model; 0 if unconditional.
  """

  family = "pggan"
  latent_spaces = ("z",)

  resolution: int = 1024
  latent_dim: int = 512
  channels: tuple[int, ...] = ()
  label_dim: int = 0

  def __post_init__(self):
    n = _log2(self.resolution)
    if self.resolution < 8:
      raise ValueError(f"PGGAN resolution must be >= 8, got {self.resolution}")
    if not self.channels:
      object.__setattr__(self, "channels", official_channels(self.resolution))
    object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
    if len(self.channels) != n - 1:
      raise ValueError(f"PGGAN at resolution {self.resolution} needs {n - 1} channel counts "
                       f"(resolutions 4..{self.resolution}), got {len(self.channels)}")
    if min(self.channels) < 1 or self.latent_dim < 1 or self.label_dim < 0:
      raise ValueError(f"invalid PGGAN sizes: latent_dim={self.latent_dim}, "
                       f"label_dim={self.label_dim}, channels={self.channels}")

  # ----- architecture facts ----------------------------------------------------------------
  @property
  def num_blocks(self) -> int:
    """Conv blocks ``layer0 .. layer{num_blocks-1}`` (2 per resolution)."""
    return 2 * len(self.channels)

  @property
  def num_layers(self) -> int:
    """Official modules after stripping intermediate ToRGBs: the blocks plus the final ToRGB."""
    return self.num_blocks + 1

  def split_layers(self) -> tuple[int, ...]:
    return tuple(range(1, self.num_blocks + 1))

  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    """(H, W, C) after the ``layer``-th block (official ``layer{layer-1}``)."""
    check_layer(self, layer)
    r = (layer - 1) // 2
    side = 4 * 2 ** r
    return (side, side, self.channels[r])

  def _net(self, start: int, stop: int, to_rgb: bool) -> PGGANNetwork:
    return PGGANNetwork(channels=self.channels, label_dim=self.label_dim, start=start,
                        stop=stop, to_rgb=to_rgb)

  # ----- parameters ------------------------------------------------------------------------
  def init_params(self, key: Array) -> dict:
    """Weights ~ N(0, 1), biases ~ N(0, 0.1^2), in the converted structure."""
    z = jnp.zeros((1, self.latent_dim), jnp.float32)
    init = jax.jit(self._net(0, self.num_blocks, True).init)  # forward pass is dead code
    return _to_dict(init(key, z)["params"])

  # ----- forward ---------------------------------------------------------------------------
  def head(self, params: Params, x: Array, layer: int, *, noise: Any = None) -> Array:
    """G1: z (B, Z) -> features (B, H, W, C) after ``layer`` blocks (pre-PixelNorm)."""
    del noise
    check_layer(self, layer)
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, self.latent_dim)
    x = jnp.asarray(x, jnp.float32)
    return self._net(0, layer, False).apply({"params": params}, x)

  def tail(self, params: Params, features: Array, layer: int, *, latent: Array | None = None,
           noise: Any = None) -> Array:
    """G2: features (B, H, W, C) after ``layer`` blocks -> image (B, R, R, 3)."""
    del latent, noise
    check_layer(self, layer)
    chex.assert_rank(features, 4)
    h, w, c = self.feature_shape(layer)
    chex.assert_axis_dimension(features, 1, h)
    chex.assert_axis_dimension(features, 2, w)
    chex.assert_axis_dimension(features, 3, c)
    return self._net(layer, self.num_blocks, True).apply({"params": params}, features)

  def synthesize(self, params: Params, x: Array, *, noise: Any = None) -> Array:
    """Full forward: z (B, Z) -> image (B, R, R, 3), raw (no clamp)."""
    del noise
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, self.latent_dim)
    x = jnp.asarray(x, jnp.float32)
    return self._net(0, self.num_blocks, True).apply({"params": params}, x)


def _to_dict(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def param_names(spec: PGGAN) -> Sequence[str]:
  """Flat '/'-joined names of every parameter of ``spec`` (TF variable names, final ToRGB
  renamed 'ToRGB')."""
  out = []
  for r, _ in enumerate(spec.channels):
    res = 4 * 2 ** r
    subs = ("Dense", "Conv") if r == 0 else ("Conv0", "Conv1")
    out += [f"{res}x{res}/{s}/{p}" for s in subs for p in ("weight", "bias")]
  return out + ["ToRGB/weight", "ToRGB/bias"]


__all__ = ["PGGAN", "PGGANNetwork", "official_channels", "param_names", "pixel_norm"]
