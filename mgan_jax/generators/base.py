"""The interface every generator family implements.

A generator is split in two objects, as everywhere in JAX:

* a *spec*: a frozen, hashable dataclass describing the architecture (resolution, channel
  schedule, ...). It holds no arrays, so it can be a static argument of ``jax.jit`` and is
  serialised to ``model.json`` in a converted model directory;
* its *params*: a nested dict of arrays (a pytree), passed explicitly to every function.

All images are NHWC float32, nominally in [-1, 1] (raw generator output, never clamped here).

Split layers (mGANprior's ``--composing_layer``; the convention of every family):
``layer = k`` means "the features after the k-th block"; ``head(params, x, k)`` runs blocks
1..k and ``tail(params, f, k, ...)`` the rest. Valid k: ``split_layers()``; ``feature_shape(k)``
is (H, W, C) of those features (C is the size of alpha). Each family's module docstring says
what its blocks are, gives a table k -> ``feature_shape(k)`` for a representative config and
how k relates to an official ``--composing_layer`` where one exists (PGGAN: k is exactly the
official value). For every valid k::

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
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp

Params = Mapping[str, Any]
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Generator(abc.ABC):
  """Abstract generator spec. Subclasses are frozen dataclasses registered by ``family``."""

  family: ClassVar[str] = ""
  #: Latent spaces ``generate`` accepts, first is the default ("z" for all families).
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
    """Number of layers; valid split layers are ``1 .. num_layers - 1`` unless the family
    overrides ``split_layers``."""

  def split_layers(self) -> tuple[int, ...]:
    """The layers at which ``head``/``tail`` may split."""
    return tuple(range(1, self.num_layers))

  @abc.abstractmethod
  def feature_shape(self, layer: int) -> tuple[int, int, int]:
    """(H, W, C) of the main feature map after the ``layer``-th block; C is alpha's size."""

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
