"""The interface every generator family implements.

A generator is split in two objects, as everywhere in JAX:

* a *spec*: a frozen, hashable dataclass describing the architecture (resolution, channel
  schedule, ...). It holds no arrays, so it can be a static argument of ``jax.jit`` and is
  serialised to ``model.json`` in a converted model directory;
* its *params*: a nested dict of arrays (a pytree), passed explicitly to every function.

All images are NHWC float32, nominally in [-1, 1] (raw generator output, never clamped here).

Splitting (mGANprior's ``--composing_layer``): ``layer`` = k means "after the k-th block" in the
official convention of the family (for PGGAN, k=4 gives the 8x8 features, k=6 16x16, k=8 32x32).
For every valid k::

    tail(params, head(params, x, k), k, latent=x) == synthesize(params, x)

where ``x`` is the *synthesis input* of the family (PGGAN/DCGAN: z of shape (B, Z); StyleGAN and
StyleGAN2: per-layer w+ of shape (B, L, W)). ``to_synthesis_input`` maps z / w / w+ to it.

Features may be a single array (B, H, W, C) or, for families that carry more state across the
split (StyleGAN2's skip image), a pytree; ``compose`` is the one place that knows how to combine
the features of N codes, so a researcher can swap the composition rule by overriding it.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp

Params = Mapping[str, Any]
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Generator(abc.ABC):
  """Abstract generator spec. Subclasses are frozen dataclasses registered by ``family``."""

  family: ClassVar[str] = ""
  #: Latent spaces ``synthesize_from`` accepts, first is the default ("z" for all families).
  latent_spaces: ClassVar[tuple[str, ...]] = ("z",)

  # ----- architecture facts -------------------------------------------------------------
  @property
  @abc.abstractmethod
  def resolution(self) -> int:
    """Output image side in pixels."""

  @property
  @abc.abstractmethod
  def latent_dim(self) -> int:
    """Size Z of the input latent z."""

  @property
  @abc.abstractmethod
  def num_layers(self) -> int:
    """Number of blocks; valid split layers are ``1 .. num_layers - 1`` unless documented."""

  def split_layers(self) -> tuple[int, ...]:
    """The layers at which ``head``/``tail`` may split."""
    return tuple(range(1, self.num_layers))

  @abc.abstractmethod
  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    """(H, W, C) of the main feature map after ``layer`` blocks; C is alpha's size."""

  def synthesis_input_shape(self) -> tuple[int, ...]:
    """Shape of one synthesis input (without batch): (Z,) for z-input families."""
    return (self.latent_dim,)

  # ----- parameters -------------------------------------------------------------------------
  @abc.abstractmethod
  def init_params(self, key: Array) -> dict:
    """Random parameters with the exact structure a converted checkpoint has (for tests and
    benchmarks; weights drawn as the official storage expects)."""

  # ----- forward ---------------------------------------------------------------------------
  @abc.abstractmethod
  def head(self, params: Params, x: Array, layer: int, *, noise: Any = None) -> Any:
    """G1: synthesis input (B, ...) -> features after ``layer`` blocks ((B, H, W, C) or pytree)."""

  @abc.abstractmethod
  def tail(self, params: Params, features: Any, layer: int, *, latent: Array | None = None,
           noise: Any = None) -> Array:
    """G2: features after ``layer`` blocks -> image (B, R, R, 3). Style-based families need
    ``latent`` (the synthesis input whose layers >= ``layer`` style the tail)."""

  def synthesize(self, params: Params, x: Array, *, noise: Any = None) -> Array:
    """Full forward from the synthesis input: (B, ...) -> (B, R, R, 3)."""
    return self.tail(params, self.head(params, x, 1, noise=noise), 1, latent=x, noise=noise)

  def to_synthesis_input(self, params: Params, latent: Array, *, space: str = "z",
                         truncation: Any = None) -> Array:
    """Map a latent in ``space`` to the synthesis input. Default: identity for ``z``."""
    del params, truncation
    if space != "z":
      raise ValueError(f"{self.family} generators take only z latents, got space={space!r}")
    return latent

  def generate(self, params: Params, latent: Array, *, space: str = "z", truncation: Any = None,
               noise: Any = None) -> Array:
    """Image from a latent of ``space`` (z, w or wp): (B, ...) -> (B, R, R, 3)."""
    x = self.to_synthesis_input(params, latent, space=space, truncation=truncation)
    return self.synthesize(params, x, noise=noise)

  def compose(self, features: Any, alpha: Array) -> Any:
    """mGANprior composition of N codes' features (leading axis N, no batch axis):
    ``mean_n features_n * alpha_n`` with alpha (N, C) broadcast over H and W. Keeps the official
    1/N. Returns features with a leading batch axis of 1."""
    fused = jnp.mean(features * alpha[:, None, None, :], axis=0)
    return fused[None]

  # ----- serialisation ---------------------------------------------------------------------
  def to_json(self) -> dict:
    """JSON-serialisable description; ``from_json`` inverts it."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {"family": self.family, "config": _jsonable(d)}

  @classmethod
  def from_json(cls, config: Mapping[str, Any]) -> "Generator":
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name in config:
        v = config[f.name]
        kwargs[f.name] = tuple(_tupled(x) for x in v) if isinstance(v, list) else v
    return cls(**kwargs)


def _jsonable(v):
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (tuple, list)):
    return [_jsonable(x) for x in v]
  return v


def _tupled(v):
  return tuple(_tupled(x) for x in v) if isinstance(v, list) else v


def check_layer(gen: Generator, layer: int) -> int:
  """Validate a split layer, raising ValueError that names the valid range."""
  valid: Sequence[int] = gen.split_layers()
  if layer not in valid:
    raise ValueError(f"layer {layer} is not a valid split point of this {gen.family} generator "
                     f"(valid: {valid[0]}..{valid[-1]})")
  return layer


# ----- convolution helpers for generator families (added with the inversion engine) ----------
#
# XLA:CPU runs JAX's default input-gradient of a convolution (a conv whose kernel dims are
# ``01oi``) about 3x slower inside ``while`` loops -- and the inversion loop is a ``lax.scan``.
# ``conv2d`` computes the same forward but writes its input gradient as a forward conv with the
# explicitly flipped and transposed kernel, which stays on the fast path there (measured: a
# 256x256x64 conv's gradient in a scan 4x faster). ``upsample_conv2d`` is "nearest x2 upsample,
# then 3x3 SAME conv" (PGGAN Conv0, StyleGAN Conv0_up) computed as four 2x2 sub-pixel convs at
# the input resolution: 16/36 of the multiply-adds, same result up to float rounding.

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


def conv2d(x: Array, w: Array, *, padding: Any = "SAME") -> Array:
  """Stride-1 cross-correlation, x (B, H, W, Cin) NHWC, w (kh, kw, Cin, Cout) HWIO.

  ``padding``: ``'SAME'`` (odd kernels: (k-1)/2 each side), ``'VALID'`` or
  ``((top, bottom), (left, right))`` with every entry in [0, k-1]. Same values and gradients as
  ``lax.conv_general_dilated``; see the note above for why the gradient is custom.
  """
  kh, kw = w.shape[:2]
  if padding == "SAME":
    if kh % 2 == 0 or kw % 2 == 0:
      raise ValueError("conv2d padding='SAME' needs odd kernel sizes; give explicit padding")
    padding = (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)
  elif padding == "VALID":
    padding = ((0, 0), (0, 0))
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  if any(not 0 <= v <= k - 1 for p, k in zip(padding, (kh, kw)) for v in p):
    raise ValueError(f"conv2d padding {padding} must lie in [0, k-1] for a {kh}x{kw} kernel")
  return _conv_pad(x, w, padding)


def upsample_conv2d(x: Array, w: Array) -> Array:
  """Nearest x2 upsampling followed by a 3x3 SAME conv: (B, H, W, Cin) -> (B, 2H, 2W, Cout).

  Output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0) or {i, i+1} (a=1) with the 3x3 taps
  merged to 2 per axis ([w0, w1+w2] or [w0+w1, w2]), so each of the 4 phases is a 2x2 conv at
  the input resolution.
  """
  if w.shape[:2] != (3, 3):
    raise ValueError(f"upsample_conv2d takes a 3x3 kernel, got {w.shape[:2]}")

  def merge(k, phase, axis):
    k0, k1, k2 = (jnp.take(k, t, axis=axis) for t in range(3))
    return jnp.stack([k0, k1 + k2] if phase == 0 else [k0 + k1, k2], axis=axis)

  rows = []
  for a in (0, 1):
    ka = merge(w, a, 0)
    cols = [conv2d(x, merge(ka, b, 1), padding=((1 - a, a), (1 - b, b))) for b in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))                    # (B, H, W, 2, Cout)
  y = jnp.stack(rows, axis=2)                               # (B, H, 2, W, 2, Cout)
  bsz, h, _, wd, _, c = y.shape
  return y.reshape(bsz, 2 * h, 2 * wd, c)
