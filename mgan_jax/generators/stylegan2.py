"""StyleGAN2 (Karras et al. 2020, config-f ``G_main`` with the 'skip' architecture) in Flax.

Mapping network: PixelNorm(z), then ``mapping_layers`` dense layers
``LeakyReLU_0.2((x @ W) / sqrt(fan_in) * 0.01 + b * 0.01) * sqrt(2)`` (TF ``apply_bias_act``:
the sqrt(2) gain comes after the activation, unlike StyleGAN v1).

Truncation: as StyleGAN v1 (``mgan_jax.generators.stylegan.truncate``), official psi 0.5 on all
layers (``truncation_layers`` 18).

Synthesis (``G_synthesis_stylegan2``, genforce ``StyleGAN2GeneratorNet``): ``L = 2 * log2(R) -
2`` w+ entries; ``L - 1`` modulated conv layers and one ToRGB per resolution. Block b works at
``4 * 2**b`` with ``channels[b]``:

* "4x4/Const": the learned constant (1, 4, 4, C4), broadcast over the batch;
* conv layer i (``i = 0 .. L-2``; 0 is "4x4/Conv", odd i the "{r}x{r}/Conv0_up" of block
  ``(i+1)//2``, even i >= 2 its "Conv1"), styled by ``wp[:, i]``:
  ``s = (w @ mod_weight) / sqrt(W) + mod_bias + 1`` (the +1 is applied at run time, as TF and
  genforce do, so ``mod_bias`` is stored as in both checkpoints);
  ``y = conv(x * s, weight / sqrt(Cin*k*k))`` then demodulation
  ``y / sqrt(sum_{kh,kw,cin} (weight / sqrt(Cin*k*k) * s)^2 + 1e-8)`` -- exactly the official
  per-sample ("fused_modulate", grouped-conv) weights, computed as scale-input / shared-kernel
  conv / scale-output, so one ordinary conv serves every sample and code of the batch;
  up layers: the transposed conv with the flipped kernel (TF ``upsample_conv_2d``), i.e. the
  correlation of the zero-inserted input (``lhs_dilation`` 2, padding 2) with the stored
  kernel, computed without the zeros by ``conv_transpose_up`` (four phase convs at the input
  resolution), then the FIR filter ``[1,3,3,1] x [1,3,3,1] / 64 * 4`` with padding 1;
  then ``+ noise * noise_strength``, ``+ bias``, ``LeakyReLU(0.2) * sqrt(2)``;
* "{r}x{r}/ToRGB" of block b, applied after conv layer 2b and styled by ``wp[:, 2b + 1]``:
  modulated 1x1 conv without demodulation, + bias, linear; the skip image is
  ``ToRGB_b(x) + upsample(image_{b-1})`` with upfirdn2d up x2 (zero insertion, FIR
  ``[1,3,3,1]`` outer product / 64 * 4, padding (2, 1)). Output: the last image, raw.

Parameter tree (TF variable names and layouts)::

    {'mapping': {'Dense{i}': {'weight': (in, out), 'bias': (out,)}},
     'dlatent_avg': (W,),
     'synthesis': {'4x4': {'Const': {'const': (1, 4, 4, C4)},
                           'Conv':  {'weight': (3, 3, C4, C4), 'bias': (C4,),
                                     'noise_strength': (), 'mod_weight': (W, C4),
                                     'mod_bias': (C4,)},
                           'ToRGB': {'weight': (1, 1, C4, 3), 'bias': (3,),
                                     'mod_weight': (W, C4), 'mod_bias': (C4,)}},
                   '8x8': {'Conv0_up': {...}, 'Conv1': {...}, 'ToRGB': {...}}, ...,
                   'noise0': (1, 4, 4, 1), ..., 'noise{L-2}': (1, R, R, 1)}}

The two PyTorch codebases (rosinality/stylegan2-pytorch, NVlabs/stylegan2-ada-pytorch) compute
this same function and convert onto this tree (``convert/stylegan2_pytorch.py``: kernel layouts
and flips, modulation biases stored with their +1, NHWC buffers are changed there). What differs
is configuration of the spec: stylegan2-ada-pytorch's ``conv_clamp`` (every conv layer's output
after the activation, and every ToRGB output before it is added to the skip image, clipped to
+-conv_clamp), and the default truncation of their generate scripts (psi 1; the centre is
``dlatent_avg``, from ADA's ``mapping.w_avg`` or rosinality's latent average, on all layers).
Inference here is float32 throughout (ADA's ``force_fp32=True``).

Split layers (the convention of every family, see ``base``): ``layer = k`` means "the features
after the k-th block"; ``head(params, wp, k)`` runs blocks 1..k and ``tail(params, f, k,
latent=wp)`` the rest. Blocks of this family: the modulated conv layers, block k being conv
layer k-1 above and styled by ``wp[:, k-1]`` (so G1 uses ``wp[:, :k]``, G2 ``wp[:, k:]``; the
unstyled Const is not a block). Valid k: 1..L-1 = 2 * log2(R) - 3 (``split_layers()``). The
official mGANprior code has no multi-code StyleGAN2, so there is no official
``--composing_layer`` to match. ``feature_shape(k)`` = (H, W, C) of ``x`` for
``StyleGAN2(resolution=256)``::

    k    feature_shape(k)   block k
    1    (4, 4, 512)        4x4/Conv
    2    (8, 8, 512)        8x8/Conv0_up
    3    (8, 8, 512)        8x8/Conv1
    4    (16, 16, 512)      16x16/Conv0_up
    5    (16, 16, 512)      16x16/Conv1
    6    (32, 32, 512)      32x32/Conv0_up
    7    (32, 32, 512)      32x32/Conv1
    8    (64, 64, 512)      64x64/Conv0_up
    9    (64, 64, 512)      64x64/Conv1
    10   (128, 128, 256)    128x128/Conv0_up
    11   (128, 128, 256)    128x128/Conv1
    12   (256, 256, 128)    256x256/Conv0_up
    13   (256, 256, 128)    256x256/Conv1

The features are a dict::

    {'x':   (B, H, W, C)  output of conv layer k-1,
     'img': (B, H, W, 3)  the skip image of the previous resolutions, already upsampled to H
                          (zeros for the 4x4 block)}

The ToRGB of x's own resolution is not in G1 (it is G2's first op when k-1 is even, so it sees
the composed x). ``compose(features, alpha)`` weights the N codes' ``x`` by alpha (N, C) with
the official 1/N (``mean_n x_n * alpha_n``) and averages their ``img`` (``mean_n img_n``).

Noise: as StyleGAN v1, one entry per conv layer (L - 1 entries).

Convolutions: every conv goes through ``mgan_jax.generators.conv.conv2d`` (the 3x3 convs, the
ToRGB 1x1 convs and the four phase convs of ``conv_transpose_up``): its fast input gradient
inside ``lax.scan``, Winograd for wide 3x3 layers on the CPU, and
``set_conv_algorithm('direct')`` to turn Winograd off. The FIR filters are separable shifted
adds (``stylegan.fir_filter``, ``upsample_fir2x``), not depthwise or zero-inserted convolutions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax.generators.base import Array, Generator, Params, check_layer
from mgan_jax.generators.conv import conv2d
from mgan_jax.generators.stylegan import (BIAS_INIT, WEIGHT_INIT, MappingNetwork, StyleFamily,
                                          fir_filter, leaky_relu, normal_init)

#: Demodulation epsilon.
DEMOD_EPS = 1e-8

#: The FIR filter of every x2 upsampling, per axis: ``[1, 3, 3, 1] / 4`` (the 2-D kernel
#: ``outer([1,3,3,1], [1,3,3,1]) / 64 * 4``, i.e. with the x4 gain of upsampling).
FIR_TAPS = (0.25, 0.75, 0.75, 0.25)


def upsample_fir2x(x: Array) -> Array:
  """upfirdn2d x2 of NHWC x (official skip-image upsampling: zero insertion, the FIR filter
  ``FIR_TAPS`` per axis, padding (2, 1)): (B, H, W, C) -> (B, 2H, 2W, C).

  Per axis, output 2n is ``(x[n-1] + 3 x[n]) / 4`` and 2n+1 is ``(3 x[n] + x[n+1]) / 4`` (zero
  outside), so it is computed at the input resolution without the inserted zeros."""
  for axis in (1, 2):
    n = x.shape[axis]
    pad = [(1, 1) if a == axis else (0, 0) for a in range(4)]
    xp = jnp.pad(x, pad)
    prev, nxt = (jax.lax.slice_in_dim(xp, u, u + n, axis=axis) for u in (0, 2))
    even = prev * np.float32(FIR_TAPS[0]) + x * np.float32(FIR_TAPS[1])
    odd = x * np.float32(FIR_TAPS[2]) + nxt * np.float32(FIR_TAPS[3])
    y = jnp.stack([even, odd], axis=axis + 1)
    x = y.reshape(y.shape[:axis] + (2 * n,) + y.shape[axis + 2:])
  return x


def conv_transpose_up(x: Array, w: Array) -> Array:
  """The stride-2 transposed convolution of the up layers: the correlation of the zero-inserted
  input (``lhs_dilation`` 2, padding 2) with the 3x3 kernel ``w``, (B, H, W, Cin) ->
  (B, 2H+1, 2W+1, Cout), without the inserted zeros.

  Per axis, output 2m is ``x[m-1] w[0] + x[m] w[2]`` and 2m+1 is ``x[m] w[1]``: four phase
  convolutions at the input resolution (2x2, 2x1, 1x2 and 1x1 kernels, 9 taps in all instead of
  the dilated form's 36) through ``generators.conv.conv2d``, interleaved."""
  if w.shape[:2] != (3, 3):
    raise ValueError(f"conv_transpose_up takes a 3x3 kernel, got {w.shape[:2]}")
  b, h, wd, _ = x.shape
  taps = ((slice(0, 3, 2), (1, 1)), (slice(1, 2), (0, 0)))         # even, odd: (taps, padding)
  phases = []
  for ry, py in taps:
    row = []
    for rx, px in taps:
      p = conv2d(x, w[ry, rx], padding=(py, px))                    # (B, H+1 or H, ., Cout)
      row.append(jnp.pad(p, ((0, 0), (0, h + 1 - p.shape[1]), (0, wd + 1 - p.shape[2]),
                             (0, 0))))
    phases.append(jnp.stack(row, axis=3))                           # (B, H+1, W+1, 2, Cout)
  y = jnp.stack(phases, axis=2)                                     # (B, H+1, 2, W+1, 2, Cout)
  y = y.reshape(b, 2 * h + 2, 2 * wd + 2, w.shape[-1])
  return y[:, :2 * h + 1, :2 * wd + 1]


class _ModConv(nn.Module):
  """Modulated conv. Params: weight (k, k, Cin, Cout), bias, mod_weight (W, Cin), mod_bias, and
  noise_strength for conv layers (``demodulate=True``). ``clamp``: the output is clipped to
  [-clamp, clamp] (after the activation; ToRGB: after the bias)."""
  features: int
  kernel: int
  up: bool = False
  demodulate: bool = True
  clamp: float | None = None

  @nn.compact
  def __call__(self, x: Array, w: Array, noise: Array | None = None) -> Array:
    cin = x.shape[-1]
    wdim = w.shape[-1]
    weight = self.param("weight", WEIGHT_INIT, (self.kernel, self.kernel, cin, self.features))
    bias = self.param("bias", BIAS_INIT, (self.features,))
    mod_w = self.param("mod_weight", WEIGHT_INIT, (wdim, cin))
    mod_b = self.param("mod_bias", BIAS_INIT, (cin,))
    style = jnp.dot(w, mod_w) * (1.0 / math.sqrt(wdim)) + mod_b + 1.0         # (B, Cin)
    weight = weight * (1.0 / math.sqrt(cin * self.kernel * self.kernel))
    x = x * style[:, None, None, :]
    if self.up:
      x = fir_filter(conv_transpose_up(x, weight), FIR_TAPS, (1, 1))
    else:
      x = conv2d(x, weight, padding="SAME")
    if self.demodulate:
      # sum over (kh, kw, cin) of (weight * style)^2 = style^2 @ sum_{kh,kw} weight^2
      d = jnp.dot(jnp.square(style), jnp.sum(jnp.square(weight), axis=(0, 1)))  # (B, Cout)
      x = x * jax.lax.rsqrt(d + DEMOD_EPS)[:, None, None, :]
    if noise is not None:
      strength = self.param("noise_strength", normal_init(0.3), ())
      x = x + noise * strength
    x = x + bias
    if self.demodulate:                     # conv layers: lrelu * sqrt(2); ToRGB: linear
      x = leaky_relu(x) * math.sqrt(2.0)
    if self.clamp is not None:
      x = jnp.clip(x, -self.clamp, self.clamp)
    return x


def _conv_name(i: int) -> tuple[str, str, bool]:
  """(resolution scope, TF name, up?) of conv layer i."""
  b = (i + 1) // 2
  res = 4 * 2 ** b
  if b == 0:
    return "4x4", "Conv", False
  return f"{res}x{res}", ("Conv0_up" if i % 2 else "Conv1"), bool(i % 2)


class _Scope(nn.Module):
  """A resolution scope ('4x4', ...) holding Const / Conv(0_up) / Conv1 / ToRGB."""
  channels: int
  clamp: float | None = None

  @nn.compact
  def __call__(self, op: str, *args: Any) -> Array:
    if op == "const":
      (batch,) = args
      return _Const(self.channels, name="Const")(batch)
    if op == "rgb":
      x, w = args
      return _ModConv(3, 1, demodulate=False, clamp=self.clamp, name="ToRGB")(x, w)
    name, up, x, w, noise = args
    return _ModConv(self.channels, 3, up=up, clamp=self.clamp, name=name)(x, w, noise)


class _Const(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, batch: int) -> Array:
    const = self.param("const", normal_init(1.0), (1, 4, 4, self.channels))
    return jnp.broadcast_to(const, (batch, 4, 4, self.channels))


class StyleGAN2Synthesis(nn.Module):
  """Runs conv layers ``start..stop-1`` on the state {'x', 'img'} (see the module docstring),
  and the final ToRGB if ``final``. ``state`` is None when ``start == 0``. ``conv_clamp``:
  see ``StyleGAN2``."""
  channels: tuple[int, ...]
  start: int = 0
  stop: int = -1
  final: bool = True
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, state: Mapping[str, Array] | None, wp: Array,
               noise: Mapping[int, Any] | None) -> Any:
    nconv = 2 * len(self.channels) - 1
    stop = nconv if self.stop < 0 else self.stop
    batch = wp.shape[0]
    scopes: dict[str, _Scope] = {}

    def scope(b: int) -> _Scope:
      res = 4 * 2 ** b
      key = f"{res}x{res}"
      if key not in scopes:
        scopes[key] = _Scope(self.channels[b], self.conv_clamp, name=key)
      return scopes[key]

    if state is None:
      x = scope(0)("const", batch)
      img = jnp.zeros((batch, 4, 4, 3), x.dtype)
    else:
      x, img = state["x"], state["img"]
    for i in range(nconv):
      b = (i + 1) // 2
      side = 4 * 2 ** b
      buf = self.param(f"noise{i}", normal_init(1.0), (1, side, side, 1))
      if not self.start <= i < stop:
        continue
      _, name, up = _conv_name(i)
      if up:   # entering block b: finish block b-1's skip image with its ToRGB (wp[:, i])
        img = upsample_fir2x(scope(b - 1)("rgb", x, wp[:, i]) + img)
      n = buf if noise is None or noise.get(i) is None else noise[i]
      x = scope(b)("conv", name, up, x, wp[:, i], n)
    if self.final:
      return scope(len(self.channels) - 1)("rgb", x, wp[:, nconv]) + img
    return {"x": x, "img": img}


@dataclasses.dataclass(frozen=True)
class StyleGAN2(StyleFamily, Generator):
  """StyleGAN2 config-f 'skip' generator spec.

  Fields:
    resolution: output side R (power of two >= 8).
    latent_dim: size Z of z.
    w_dim: size W of w (and of each w+ layer).
    mapping_layers, mapping_fmaps: depth and hidden width of the mapping network.
    channels: feature channels per resolution 4..R; empty means the official schedule
      ``min(32768 // res, 512)``. Converters read it from the weights.
    truncation_psi, truncation_layers: default truncation (official psi 0.5, 18 layers = all;
      converted rosinality / stylegan2-ada-pytorch models: psi 1, all layers, as their own
      generate scripts default to).
    conv_clamp: None (NVIDIA TF, genforce, rosinality) or stylegan2-ada-pytorch's
      ``conv_clamp`` (256 in its train.py): every conv layer's activation and every ToRGB
      output (before the skip add) are clipped to [-conv_clamp, conv_clamp].
  """

  family = "stylegan2"
  latent_spaces = ("z", "w", "wp")
  fmap_base = 32768

  resolution: int = 1024
  latent_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  mapping_fmaps: int = 512
  channels: tuple[int, ...] = ()
  truncation_psi: float = 0.5
  truncation_layers: int = 18
  conv_clamp: float | None = None

  def __post_init__(self):
    super().__post_init__()
    c = self.conv_clamp
    if c is not None:
      if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise ValueError(f"StyleGAN2 conv_clamp must be None or a positive number, got {c!r}")
      object.__setattr__(self, "conv_clamp", float(c))

  # ----- architecture facts ----------------------------------------------------------------
  @property
  def num_layers(self) -> int:
    """Number L of w+ entries (official ``num_layers``); there are L - 1 conv layers."""
    return 2 * len(self.channels)

  @property
  def num_conv_layers(self) -> int:
    return self.num_layers - 1

  @property
  def num_synthesis_layers(self) -> int:
    return self.num_conv_layers

  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    """(H, W, C) of ``x``, the output of conv layer ``layer - 1``."""
    check_layer(self, layer)
    b = layer // 2
    side = 4 * 2 ** b
    return (side, side, self.channels[b])

  def _noise_sides(self) -> tuple[int, ...]:
    return tuple(4 * 2 ** ((i + 1) // 2) for i in range(self.num_conv_layers))

  def _mapping_net(self) -> MappingNetwork:
    return MappingNetwork(self.mapping_layers, self.mapping_fmaps, self.w_dim, style2=True)

  def _synth(self, start: int, stop: int, final: bool) -> StyleGAN2Synthesis:
    return StyleGAN2Synthesis(self.channels, start, stop, final, self.conv_clamp)

  # ----- forward (head, synthesize: StyleFamily) -------------------------------------------
  def tail(self, params: Params, features: Mapping[str, Array], layer: int, *,
           latent: Array | None = None, noise: Any = None) -> Array:
    """G2: features {'x', 'img'} after ``layer`` conv layers -> image (B, R, R, 3), styled by
    ``latent[:, layer:]`` (``latent``: the full w+ (B, L, W))."""
    check_layer(self, layer)
    if latent is None:
      raise ValueError("StyleGAN2 tail needs latent= (the w+ (B, L, W) whose layers >= "
                       f"{layer} style the tail)")
    wp = self._check_wp(latent)
    h, w, c = self.feature_shape(layer)
    if not isinstance(features, Mapping) or set(features) != {"x", "img"}:
      raise ValueError("StyleGAN2 features must be a dict with keys 'x' and 'img'")
    chex.assert_shape(features["x"], (None, h, w, c))
    chex.assert_shape(features["img"], (None, h, w, 3))
    state = {"x": jnp.asarray(features["x"], jnp.float32),
             "img": jnp.asarray(features["img"], jnp.float32)}
    return self._run(params, state, wp, layer, self.num_conv_layers, True, noise)

  def compose(self, features: Mapping[str, Array], alpha: Array) -> dict:
    """N codes' features {'x': (N, H, W, C), 'img': (N, H, W, 3)} and alpha (N, C) ->
    {'x': mean_n x_n * alpha_n, 'img': mean_n img_n}, each with a leading axis of 1."""
    x, img = features["x"], features["img"]
    chex.assert_rank(x, 4)
    chex.assert_shape(alpha, (x.shape[0], x.shape[-1]))
    return {"x": jnp.mean(x * alpha[:, None, None, :], axis=0)[None],
            "img": jnp.mean(img, axis=0)[None]}


__all__ = ["FIR_TAPS", "StyleGAN2", "StyleGAN2Synthesis", "conv_transpose_up",
           "upsample_fir2x"]
