"""StyleGAN (v1, Karras et al. 2019, ``G_style``) generator in Flax, with the official math.

Mapping network (``G_mapping``): PixelNorm(z) (``z / sqrt(mean z^2 + 1e-8)``), then
``mapping_layers`` dense layers ``LeakyReLU_0.2((x @ W) * sqrt(2)/sqrt(fan_in)*0.01 + b*0.01)``
(equalized learning rate with lr multiplier 0.01; hidden width ``mapping_fmaps``, output w of
size ``w_dim``).

Truncation (official ``TruncationModule``): w is broadcast to w+ ``(B, L, w_dim)`` and
``w_avg + (w+ - w_avg) * coef`` with ``coef = psi`` on the first ``truncation_layers`` layers
and 1 elsewhere (official psi 0.7 on the first 8 layers; ``w_avg`` = TF ``dlatent_avg``).
It is applied to z and w inputs, never to w+.

Synthesis network (``G_synthesis``), ``L = 2 * (log2(R) - 1)`` layers, layer ``i`` styled by
``wp[:, i]``; block ``b = i // 2`` works at resolution ``4 * 2**b`` with ``channels[b]``:

* layer 0 ("4x4/Const"): the learned constant (1, 4, 4, C), broadcast over the batch;
* layer 1 ("4x4/Conv") and every odd layer ("{r}x{r}/Conv1"): 3x3 SAME conv;
* even layers >= 2 ("{r}x{r}/Conv0_up"): nearest x2 upsample, 3x3 SAME conv, then the blur
  ``[1,2,1] x [1,2,1] / 16`` (per channel, zero padding 1). The official fused transposed
  convolution used at resolutions >= 128 (``fused_scale='auto'``) equals this with the
  spatially flipped kernel; the converters store that flipped kernel, so every up-layer here
  is the same op;
* every layer then runs the epilogue: ``x + noise * Noise/weight`` (per channel), ``+ bias``,
  LeakyReLU(0.2), InstanceNorm (``(x - mean_hw) / sqrt(mean_hw (x - mean)^2 + 1e-8)``), StyleMod
  (``s = (w @ StyleMod/weight) / sqrt(w_dim) + StyleMod/bias``, ``x * (s[:C] + 1) + s[C:]``);
* final "ToRGB": 1x1 conv scaled by ``1/sqrt(C)``, + bias, linear (no tanh, no clamp). Only the
  last-resolution ToRGB exists (``lod`` = 0; intermediate ToRGBs are not part of the model).

3x3 conv weights are scaled by ``sqrt(2)/sqrt(Cin*9)`` at run time (equalized learning rate).

Convolutions: every conv goes through ``mgan_jax.generators.conv`` -- the 3x3 and ToRGB convs
through ``conv2d``, the up-layers' upsample + conv through ``upsample_conv2d`` (sub-pixel, or
Winograd for wide layers on the CPU; the upsampled map is never built) -- so they get its fast
input gradient inside ``lax.scan`` and ``set_conv_algorithm('direct')`` turns Winograd off here
too. The blur is ``fir_filter``: separable shifted adds, not a depthwise convolution.

Parameter tree (TF variable names, TF layouts: dense [in, out], conv kernels HWIO, NHWC
buffers)::

    {'mapping':     {'Dense0': {'weight': (Z, F), 'bias': (F,)}, ...,
                     'Dense{M-1}': {'weight': (F, W), 'bias': (W,)}},
     'dlatent_avg': (W,),
     'synthesis':   {'4x4': {'Const': {'const': (1, 4, 4, C4), 'bias': (C4,),
                                       'Noise': {'weight': (C4,)},
                                       'StyleMod': {'weight': (W, 2*C4), 'bias': (2*C4,)}},
                             'Conv':  {'weight': (3, 3, C4, C4), 'bias', 'Noise', 'StyleMod'}},
                     '8x8': {'Conv0_up': {'weight': (3, 3, C4, C8), ...}, 'Conv1': {...}},
                     ...,
                     'ToRGB': {'weight': (1, 1, C_R, 3), 'bias': (3,)},
                     'noise0': (1, 4, 4, 1), ..., 'noise{L-1}': (1, R, R, 1)}}

Split layers (the convention of every family, see ``base``): ``layer = k`` means "the features
after the k-th block"; ``head(params, wp, k)`` runs blocks 1..k and ``tail(params, f, k,
latent=wp)`` the rest. Blocks of this family: the synthesis layers with their epilogue, block k
being layer k-1 above and styled by ``wp[:, k-1]`` (so G1 uses ``wp[:, :k]``, G2 ``wp[:, k:]``
and the ToRGB); the features are the block's StyleMod output. Valid k: 1..L = 2 * log2(R) - 2
(``split_layers()``; at k = L the tail is only the ToRGB). The official mGANprior code has no
multi-code StyleGAN, so there is no official ``--composing_layer`` to match.
``feature_shape(k)`` = (H, W, C) for ``StyleGAN(resolution=256)``::

    k    feature_shape(k)   block k
    1    (4, 4, 512)        4x4/Const
    2    (4, 4, 512)        4x4/Conv
    3    (8, 8, 512)        8x8/Conv0_up
    4    (8, 8, 512)        8x8/Conv1
    5    (16, 16, 512)      16x16/Conv0_up
    6    (16, 16, 512)      16x16/Conv1
    7    (32, 32, 512)      32x32/Conv0_up
    8    (32, 32, 512)      32x32/Conv1
    9    (64, 64, 256)      64x64/Conv0_up
    10   (64, 64, 256)      64x64/Conv1
    11   (128, 128, 128)    128x128/Conv0_up
    12   (128, 128, 128)    128x128/Conv1
    13   (256, 256, 64)     256x256/Conv0_up
    14   (256, 256, 64)     256x256/Conv1

Noise (``noise=`` of every synthesis method): ``None`` -> the checkpoint's fixed buffers
``noise{i}`` (official ``randomize_noise=False``); a PRNG key -> fresh N(0, 1) noise, layer i
drawing from ``jax.random.split(key, L)[i]`` (so head and tail given the same key reproduce
``synthesize``); a list of L arrays -> layer i adds ``noise[i]`` of shape (B or 1, H_i, W_i, 1)
(a ``None`` entry uses that layer's buffer).

Matmul precision is JAX's default (exact float32 on CPU). On GPUs that use TF32 for float32
convolutions, set ``jax.config.update('jax_default_matmul_precision', 'highest')`` for parity
with the float32 reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax.generators.base import Array, Generator, Params, check_layer
from mgan_jax.generators.conv import conv2d, upsample_conv2d

#: PixelNorm / InstanceNorm epsilon.
NORM_EPS = 1e-8
#: LeakyReLU slope.
LRELU_SLOPE = 0.2
#: Mapping network learning-rate multiplier.
MAPPING_LR_MUL = 0.01


# ----- shared helpers (also used by stylegan2) -------------------------------------------------

def log2_resolution(resolution: int, family: str = "StyleGAN") -> int:
  """log2 of a power-of-two resolution >= 8 (ValueError otherwise)."""
  n = int(round(math.log2(resolution))) if resolution > 0 else 0
  if resolution < 8 or 2 ** n != resolution:
    raise ValueError(f"{family} resolution must be a power of two >= 8, got {resolution}")
  return n


def official_channels(resolution: int, *, fmap_base: int = 16384, fmap_max: int = 512
                      ) -> tuple[int, ...]:
  """genforce ``get_nf(res) = min(fmap_base // res, fmap_max)`` for res = 4..R (the TF
  ``nf(stage)`` with ``fmap_base`` twice the TF value). StyleGAN: 16384; StyleGAN2: 32768."""
  n = log2_resolution(resolution)
  return tuple(min(fmap_base // 2 ** r, fmap_max) for r in range(2, n + 1))


def leaky_relu(x: Array) -> Array:
  return jnp.where(x >= 0, x, LRELU_SLOPE * x)


def pixel_norm(x: Array) -> Array:
  """``x / sqrt(mean over the last axis of x^2 + 1e-8)``."""
  return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + NORM_EPS)


def fir_filter(x: Array, taps: Sequence[float], padding: tuple[int, int]) -> Array:
  """Separable FIR filter of NHWC ``x``: the 1-D ``taps`` along H and along W, zero padding
  ``(before, after)`` on both axes (each in [0, len(taps) - 1]); the 2-D kernel is
  ``outer(taps, taps)``, applied as a correlation. (B, H, W, C) ->
  (B, H + before + after - len(taps) + 1, ..., C).

  Written as shifted adds, not as a depthwise convolution (which XLA:CPU runs slowly, its
  gradient more so inside ``lax.scan``), with a custom input gradient: the same filter with the
  reversed taps and the complementary padding, which XLA fuses as well as the forward."""
  taps = tuple(float(t) for t in taps)
  padding = tuple(int(p) for p in padding)
  if len(padding) != 2 or not all(0 <= p < len(taps) for p in padding):
    raise ValueError(f"fir_filter padding {padding} must be (before, after) in "
                     f"[0, {len(taps) - 1}]")
  return _fir(x, taps, padding)


def _fir_impl(x: Array, taps: tuple[float, ...], padding: tuple[int, int]) -> Array:
  for axis in (1, 2):
    xp = jnp.pad(x, [padding if a == axis else (0, 0) for a in range(x.ndim)])
    n = xp.shape[axis] - len(taps) + 1
    parts = [jax.lax.slice_in_dim(xp, u, u + n, axis=axis) * np.float32(t)
             for u, t in enumerate(taps)]
    x = functools.reduce(jnp.add, parts)
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fir(x: Array, taps: tuple[float, ...], padding: tuple[int, int]) -> Array:
  return _fir_impl(x, taps, padding)


def _fir_fwd(x, taps, padding):
  return _fir_impl(x, taps, padding), None


def _fir_bwd(taps, padding, _, g):
  k = len(taps)
  return (_fir_impl(g, taps[::-1], (k - 1 - padding[0], k - 1 - padding[1])),)


_fir.defvjp(_fir_fwd, _fir_bwd)


def is_prng_key(x: Any) -> bool:
  """A new-style typed key, or a legacy uint32 (2,) key."""
  if not isinstance(x, (jax.Array, np.ndarray)):
    return False
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    return True
  return x.dtype == np.uint32 and tuple(x.shape) == (2,)


def resolve_noise(noise: Any, sides: Sequence[int], batch: int, start: int, stop: int
                  ) -> dict[int, Array | None] | None:
  """Per-layer noise for synthesis layers ``start..stop-1`` (see the module docstring).

  ``sides[i]`` is the side of layer i's noise map. Returns None (use every buffer) or a dict
  layer -> (B or 1, H, W, 1) array or None (use that layer's buffer).
  """
  n = len(sides)
  if noise is None:
    return None
  if isinstance(noise, (list, tuple)):
    if len(noise) != n:
      raise ValueError(f"noise: expected a list of {n} arrays (one per synthesis layer), got "
                       f"{len(noise)}")
    out: dict[int, Array | None] = {}
    for i in range(start, stop):
      if noise[i] is None:
        out[i] = None
        continue
      a = jnp.asarray(noise[i], jnp.float32)
      s = sides[i]
      if a.ndim != 4 or tuple(a.shape[1:]) != (s, s, 1) or a.shape[0] not in (1, batch):
        raise ValueError(f"noise[{i}]: expected shape ({batch} or 1, {s}, {s}, 1), got "
                         f"{tuple(a.shape)}")
      out[i] = a
    return out
  if is_prng_key(noise):
    keys = jax.random.split(noise, n)
    return {i: jax.random.normal(keys[i], (batch, sides[i], sides[i], 1), jnp.float32)
            for i in range(start, stop)}
  raise ValueError("noise must be None (checkpoint buffers), a jax PRNG key, or a list of one "
                   f"array per synthesis layer; got {type(noise).__name__}")


def truncation_args(truncation: Any, default_psi: float, default_layers: int
                    ) -> tuple[Any, int]:
  """``None`` -> the defaults; ``(psi, num_layers)`` -> as given."""
  if truncation is None:
    return default_psi, default_layers
  if isinstance(truncation, (tuple, list)) and len(truncation) == 2:
    psi, layers = truncation
    return psi, int(layers)
  raise ValueError(f"truncation must be None or a (psi, num_layers) tuple, got {truncation!r}")


def truncate(wp: Array, w_avg: Array, psi: Any, layers: int) -> Array:
  """``w_avg + (wp - w_avg) * coef``, coef = psi for layer index < ``layers``, else 1.
  A Python ``psi == 1`` or ``layers <= 0`` returns ``wp`` unchanged."""
  if layers <= 0 or (isinstance(psi, (int, float)) and float(psi) == 1.0):
    return wp
  num = wp.shape[1]
  coef = jnp.where(jnp.arange(num) < layers, jnp.asarray(psi, wp.dtype), 1.0).astype(wp.dtype)
  return w_avg + (wp - w_avg) * coef[None, :, None]


def normal_init(std: float = 1.0) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)
  return init


WEIGHT_INIT = normal_init(1.0)     # equalized-LR storage: N(0, 1)
BIAS_INIT = normal_init(0.1)       # N(0, 0.1^2)


class MappingNetwork(nn.Module):
  """z (B, Z) -> w (B, W): PixelNorm then ``num_layers`` equalized-LR dense layers 'Dense{i}'.

  ``style2=False`` (StyleGAN): ``lrelu((x @ W) * sqrt(2)/sqrt(in) * lr + b * lr)``;
  ``style2=True`` (StyleGAN2): ``lrelu((x @ W) / sqrt(in) * lr + b * lr) * sqrt(2)``.
  """
  num_layers: int
  hidden: int
  w_dim: int
  style2: bool = False
  lr_mul: float = MAPPING_LR_MUL

  @nn.compact
  def __call__(self, z: Array) -> Array:
    x = pixel_norm(z)
    for i in range(self.num_layers):
      fan_in = x.shape[-1]
      out = self.w_dim if i == self.num_layers - 1 else self.hidden
      dense = _Dense(out, name=f"Dense{i}")
      if self.style2:
        x = leaky_relu(dense(x, 1.0 / math.sqrt(fan_in) * self.lr_mul, self.lr_mul))
        x = x * math.sqrt(2.0)
      else:
        x = leaky_relu(dense(x, math.sqrt(2.0) / math.sqrt(fan_in) * self.lr_mul, self.lr_mul))
    return x


class _Dense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x: Array, w_scale: float, b_scale: float) -> Array:
    w = self.param("weight", WEIGHT_INIT, (x.shape[-1], self.features))
    b = self.param("bias", BIAS_INIT, (self.features,))
    return jnp.dot(x, w) * w_scale + b * b_scale


# ----- StyleGAN synthesis blocks ---------------------------------------------------------------

def _instance_norm(x: Array) -> Array:
  x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True) + NORM_EPS)


#: The blur after every up-layer, per axis: ``[1, 2, 1] / 4`` (2-D kernel ``[1,2,1]x[1,2,1] / 16``).
BLUR_TAPS = (0.25, 0.5, 0.25)


class _NoiseWeight(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x: Array, noise: Array) -> Array:
    weight = self.param("weight", normal_init(0.3), (self.channels,))
    return x + noise * weight


class _StyleMod(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    c = self.channels
    weight = self.param("weight", WEIGHT_INIT, (w.shape[-1], 2 * c))
    bias = self.param("bias", BIAS_INIT, (2 * c,))
    style = jnp.dot(w, weight) * (1.0 / math.sqrt(w.shape[-1])) + bias
    return x * (style[:, None, None, :c] + 1.0) + style[:, None, None, c:]


class _SynthesisLayer(nn.Module):
  """One synthesis layer: kind 'const', 'conv' (3x3) or 'up' (nearest x2, 3x3, blur), then the
  epilogue (noise, bias, LeakyReLU, InstanceNorm, StyleMod)."""
  kind: str
  channels: int

  @nn.compact
  def __call__(self, x: Array | None, w: Array, noise: Array) -> Array:
    c = self.channels
    if self.kind == "const":
      const = self.param("const", normal_init(1.0), (1, 4, 4, c))
      x = jnp.broadcast_to(const, (w.shape[0], 4, 4, c))
    else:
      cin = x.shape[-1]
      weight = self.param("weight", WEIGHT_INIT, (3, 3, cin, c))
      scale = math.sqrt(2.0) / math.sqrt(cin * 9)
      if self.kind == "up":
        x = fir_filter(upsample_conv2d(x, weight) * scale, BLUR_TAPS, (1, 1))
      else:
        x = conv2d(x, weight) * scale
    x = _NoiseWeight(c, name="Noise")(x, noise)
    x = x + self.param("bias", BIAS_INIT, (c,))
    x = leaky_relu(x)
    x = _instance_norm(x)
    return _StyleMod(c, name="StyleMod")(x, w)


def _layer_name(i: int) -> tuple[str, str, str]:
  """(resolution scope, TF layer name, kind) of synthesis layer i."""
  b = i // 2
  res = 4 * 2 ** b
  if b == 0:
    name, kind = ("Const", "const") if i == 0 else ("Conv", "conv")
  else:
    name, kind = ("Conv0_up", "up") if i % 2 == 0 else ("Conv1", "conv")
  return f"{res}x{res}", name, kind


class _Resolution(nn.Module):
  """A resolution scope ('4x4', '8x8', ...) holding its two layers."""
  channels: int

  @nn.compact
  def __call__(self, x: Array | None, w: Array, noise: Array, *, i: int) -> Array:
    _, name, kind = _layer_name(i)
    return _SynthesisLayer(kind, self.channels, name=name)(x, w, noise)


class StyleGANSynthesis(nn.Module):
  """Runs synthesis layers ``start..stop-1`` (and the ToRGB if ``to_rgb``).

  ``x``: None when ``start == 0``, else NHWC features after ``start`` layers. ``wp``: (B, L, W).
  ``noise``: None or dict layer -> array or None (see ``resolve_noise``).
  """
  channels: tuple[int, ...]
  start: int = 0
  stop: int = -1
  to_rgb: bool = True

  @nn.compact
  def __call__(self, x: Array | None, wp: Array, noise: Mapping[int, Any] | None) -> Array:
    num = 2 * len(self.channels)
    stop = num if self.stop < 0 else self.stop
    scopes: dict[str, _Resolution] = {}
    for i in range(num):
      scope, _, _ = _layer_name(i)
      side = 4 * 2 ** (i // 2)
      buf = self.param(f"noise{i}", normal_init(1.0), (1, side, side, 1))
      if not self.start <= i < stop:
        continue
      if scope not in scopes:
        scopes[scope] = _Resolution(self.channels[i // 2], name=scope)
      n = buf if noise is None or noise.get(i) is None else noise[i]
      x = scopes[scope](x, wp[:, i], n, i=i)
    if self.to_rgb:
      x = _ToRGB(name="ToRGB")(x)
    return x


class _ToRGB(nn.Module):
  """1x1 conv scaled by 1/sqrt(Cin), + bias, linear."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    weight = self.param("weight", WEIGHT_INIT, (1, 1, cin, 3))
    bias = self.param("bias", BIAS_INIT, (3,))
    return conv2d(x, weight) * (1.0 / math.sqrt(cin)) + bias


def random_params(key: Array, shapes: Any, std: Callable[[str], float]) -> dict:
  """Fill a nested dict of ``ShapeDtypeStruct`` (e.g. from ``jax.eval_shape`` of a Flax
  ``init``) with N(0, std(path)^2) values drawn from ``key``, path '/'-joined. One normal draw
  for all leaves (cheap to compile, unlike one RNG op per parameter)."""
  flat: list[tuple[str, Any]] = []

  def walk(t: Any, prefix: str) -> None:
    for k in sorted(t):
      v = t[k]
      if hasattr(v, "items"):
        walk(v, f"{prefix}{k}/")
      else:
        flat.append((prefix + k, v))

  walk(shapes, "")
  sizes = [int(np.prod(v.shape)) for _, v in flat]
  noise = jax.random.normal(key, (max(sum(sizes), 1),), jnp.float32)
  try:           # concrete key: slice on the host (no per-leaf XLA programs to compile)
    noise = np.asarray(noise)
    concrete = True
  except jax.errors.TracerArrayConversionError:   # under jit / eval_shape
    concrete = False
  out: dict = {}
  offset = 0
  for (path, v), n in zip(flat, sizes):
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    value = noise[offset:offset + n].reshape(v.shape) * np.float32(std(path))
    node[leaf] = jnp.asarray(value) if concrete else value
    offset += n
  return out


def _init_std(path: str) -> float:
  leaf = path.rsplit("/", 1)[-1]
  if path == "dlatent_avg":
    return 0.5
  if path.endswith("Noise/weight") or leaf == "noise_strength":
    return 0.3
  return 0.1 if leaf in ("bias", "mod_bias") else 1.0


# ----- the spec --------------------------------------------------------------------------------

class StyleFamily:
  """What the style-based families (StyleGAN, StyleGAN2) share: size checks and the official
  channel schedule, the mapping network, truncation towards ``dlatent_avg``, the z / w / w+
  spaces, noise shapes, random init and running a slice of the synthesis network.

  Needs the spec fields resolution, latent_dim, w_dim, mapping_layers, mapping_fmaps, channels,
  truncation_psi, truncation_layers; the class constant ``fmap_base``; the properties
  num_layers (w+ entries) and num_synthesis_layers (the synthesis network's layers, which noise,
  ``head`` and ``tail`` count); ``_noise_sides()``, ``_mapping_net()`` and
  ``_synth(start, stop, final)``."""

  fmap_base: ClassVar[int]   # official channels min(fmap_base // res, 512)

  def __post_init__(self):
    name = type(self).__name__
    n = log2_resolution(self.resolution, name)
    if not self.channels:
      object.__setattr__(self, "channels",
                         official_channels(self.resolution, fmap_base=self.fmap_base))
    object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
    if len(self.channels) != n - 1:
      raise ValueError(f"{name} at resolution {self.resolution} needs {n - 1} channel counts "
                       f"(resolutions 4..{self.resolution}), got {len(self.channels)}")
    if (min(self.channels) < 1 or self.latent_dim < 1 or self.w_dim < 1
        or self.mapping_layers < 1 or self.mapping_fmaps < 1):
      raise ValueError(f"invalid {name} sizes: {self}")

  def synthesis_input_shape(self) -> tuple[int, ...]:
    return (self.num_layers, self.w_dim)

  def noise_shapes(self) -> tuple[tuple[int, int, int, int], ...]:
    """Shape (1, H, W, 1) of each synthesis layer's noise."""
    return tuple((1, s, s, 1) for s in self._noise_sides())

  def init_params(self, key: Array) -> dict:
    """Random parameters in the converted structure: weights ~ N(0, 1), biases ~ N(0, 0.1^2),
    const and noise buffers ~ N(0, 1), noise weights ~ N(0, 0.3^2), dlatent_avg ~
    N(0, 0.5^2)."""
    z = jnp.zeros((1, self.latent_dim), jnp.float32)
    wp = jnp.zeros((1, self.num_layers, self.w_dim), jnp.float32)
    k0 = jax.random.key(0)
    shapes = {
        "mapping": jax.eval_shape(self._mapping_net().init, k0, z)["params"],
        "dlatent_avg": jax.ShapeDtypeStruct((self.w_dim,), jnp.float32),
        "synthesis": jax.eval_shape(self._synth(0, self.num_synthesis_layers, True).init, k0,
                                    None, wp, None)["params"]}
    return random_params(key, shapes, _init_std)

  def _run(self, params: Params, state: Any, wp: Array, start: int, stop: int, final: bool,
           noise: Any) -> Any:
    """Synthesis layers ``start .. stop-1`` on ``state`` (None: from the const input)."""
    nz = resolve_noise(noise, self._noise_sides(), wp.shape[0], start, stop)
    return self._synth(start, stop, final).apply({"params": params["synthesis"]}, state, wp, nz)

  def head(self, params: Params, x: Array, layer: int, *, noise: Any = None) -> Any:
    """G1: w+ (B, L, W) -> the features after ``layer`` synthesis layers (uses
    ``x[:, :layer]``): StyleGAN (B, H, W, C); StyleGAN2 {'x': (B, H, W, C), 'img':
    (B, H, W, 3)}."""
    check_layer(self, layer)
    wp = self._check_wp(x)
    return self._run(params, None, wp, 0, layer, False, noise)

  def synthesize(self, params: Params, x: Array, *, noise: Any = None) -> Array:
    """w+ (B, L, W) -> image (B, R, R, 3), raw (no clamp)."""
    wp = self._check_wp(x)
    return self._run(params, None, wp, 0, self.num_synthesis_layers, True, noise)

  def mapping(self, params: Params, z: Array) -> Array:
    """z (B, Z) -> w (B, W)."""
    chex.assert_rank(z, 2)
    chex.assert_axis_dimension(z, 1, self.latent_dim)
    return self._mapping_net().apply({"params": params["mapping"]}, jnp.asarray(z, jnp.float32))

  def truncate(self, params: Params, w: Array, *, truncation: Any = None) -> Array:
    """w (B, W) or w+ (B, L, W) -> truncated w+ (B, L, W) (``truncation`` as in
    ``to_synthesis_input``)."""
    w = jnp.asarray(w, jnp.float32)
    if w.ndim == 2:
      chex.assert_axis_dimension(w, 1, self.w_dim)
      w = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_layers, self.w_dim))
    chex.assert_shape(w, (None, self.num_layers, self.w_dim))
    psi, layers = truncation_args(truncation, self.truncation_psi, self.truncation_layers)
    return truncate(w, params["dlatent_avg"], psi, layers)

  def to_synthesis_input(self, params: Params, latent: Array, *, space: str = "z",
                         truncation: Any = None) -> Array:
    """z (B, Z) -> mapping -> broadcast -> truncation; w (B, W) -> broadcast -> truncation;
    wp (B, L, W) -> unchanged. Returns w+ (B, L, W)."""
    if space == "z":
      return self.truncate(params, self.mapping(params, latent), truncation=truncation)
    if space == "w":
      chex.assert_rank(latent, 2)
      return self.truncate(params, latent, truncation=truncation)
    if space == "wp":
      chex.assert_shape(latent, (None, self.num_layers, self.w_dim))
      return jnp.asarray(latent, jnp.float32)
    raise ValueError(f"unknown latent space {space!r} for {self.family} (known: "
                     f"{', '.join(self.latent_spaces)})")

  def _check_wp(self, wp: Array) -> Array:
    chex.assert_shape(wp, (None, self.num_layers, self.w_dim))
    return jnp.asarray(wp, jnp.float32)


@dataclasses.dataclass(frozen=True)
class StyleGAN(StyleFamily, Generator):
  """StyleGAN v1 (``G_style``) spec.

  Fields:
    resolution: output side R (power of two >= 8).
    latent_dim: size Z of z.
    w_dim: size W of w (and of each w+ layer).
    mapping_layers: number of mapping dense layers (8).
    mapping_fmaps: hidden width of the mapping network.
    channels: feature channels per resolution 4, 8, ..., R; empty means the official schedule
      ``min(16384 // res, 512)``. Converters read it from the weights.
    truncation_psi, truncation_layers: the default truncation (official 0.7 on the first 8
      layers), used for z and w inputs when ``truncation=None``.
  """

  family = "stylegan"
  latent_spaces = ("z", "w", "wp")
  fmap_base = 16384

  resolution: int = 1024
  latent_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  mapping_fmaps: int = 512
  channels: tuple[int, ...] = ()
  truncation_psi: float = 0.7
  truncation_layers: int = 8

  # ----- architecture facts ----------------------------------------------------------------
  @property
  def num_layers(self) -> int:
    """Synthesis layers L = number of w+ entries (2 per resolution)."""
    return 2 * len(self.channels)

  @property
  def num_synthesis_layers(self) -> int:
    return self.num_layers

  def split_layers(self) -> tuple[int, ...]:
    """1..L: k synthesis layers in G1 (k = L leaves only the ToRGB to G2)."""
    return tuple(range(1, self.num_layers + 1))

  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    """(H, W, C) of the output of synthesis layer ``layer - 1``."""
    check_layer(self, layer)
    b = (layer - 1) // 2
    side = 4 * 2 ** b
    return (side, side, self.channels[b])

  def _noise_sides(self) -> tuple[int, ...]:
    return tuple(4 * 2 ** (i // 2) for i in range(self.num_layers))

  def _mapping_net(self) -> MappingNetwork:
    return MappingNetwork(self.mapping_layers, self.mapping_fmaps, self.w_dim, style2=False)

  def _synth(self, start: int, stop: int, to_rgb: bool) -> StyleGANSynthesis:
    return StyleGANSynthesis(self.channels, start, stop, to_rgb)

  # ----- forward (head, synthesize: StyleFamily) -------------------------------------------
  def tail(self, params: Params, features: Array, layer: int, *, latent: Array | None = None,
           noise: Any = None) -> Array:
    """G2: features (B, H, W, C) after ``layer`` layers -> image (B, R, R, 3), styled by
    ``latent[:, layer:]`` (``latent``: the full w+ (B, L, W))."""
    check_layer(self, layer)
    if latent is None:
      raise ValueError("StyleGAN tail needs latent= (the w+ (B, L, W) whose layers >= "
                       f"{layer} style the tail)")
    wp = self._check_wp(latent)
    h, w, c = self.feature_shape(layer)
    chex.assert_shape(features, (None, h, w, c))
    return self._run(params, jnp.asarray(features, jnp.float32), wp, layer, self.num_layers,
                     True, noise)


__all__ = ["BLUR_TAPS", "MappingNetwork", "StyleGAN", "StyleGANSynthesis", "StyleFamily",
           "fir_filter", "official_channels", "resolve_noise", "truncate"]
