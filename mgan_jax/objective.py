"""The inversion objective: a pure function of the latents (and explicit weights).

Official "Combine" loss (``inversion/losses.py``) on images in [-1, 1]::

    L(x, y) = l1_weight * mean|x - y| + mse_weight * mean (x - y)^2
              + perceptual_weight * sum_l layer_weight_l * dist(VGG_l(P(x)), VGG_l(P(y)))

with ``P`` the VGG preprocessing ([-1, 1] -> [0, 1], ImageNet mean/std, nearest resize to
``perceptual_size``) and ``dist`` the mean L1 (or mean squared) distance. Official defaults:
``mse_weight=1``, ``l1_weight=0``, ``perceptual_weight=1e-3`` (the hard-coded 0.001 times
``--vgg_lambda`` 1; inpainting uses vgg_lambda 0.1 -> 1e-4), layer relu3_3, size 256.

A task operator ``D`` (``mgan_jax.operators``) enters as ``L(D(G(latents)), target.image)``:

* ``mode='degrade'`` (official): the target given is the clean image and ``target.image =
  D(target)``, computed once by ``make_target``;
* ``mode='observation'``: the target given *is* the degraded observation (a real low-resolution
  or gray photo, a masked image); ``D`` is applied to the generated image only.

The target's VGG features are computed once (``make_target``) and carried in the ``Target``
pytree with the operator, so the per-step objective runs VGG on the generated image only.
Generator and VGG params are explicit arguments (never closed over), gradients are taken w.r.t.
the latents only (``optimize``). Everything is per image: vmap over a leading image axis of
latents and targets for batches (each image's loss is its own mean, as the official batch 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
from flax import struct

from mgan_jax import perceptual
from mgan_jax.generators.base import Generator
from mgan_jax.latents import render
from mgan_jax.operators import Identity, Operator

Array = jax.Array
MODES = ("degrade", "observation")
DISTANCES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static (hashable) loss options. Defaults = the official mGANprior "Combine" loss.

  Fields:
    mse_weight: weight of the pixel MSE (official ``--l2_lambda`` 1).
    l1_weight: weight of the pixel L1 (official ``--l1_lambda`` 0).
    perceptual_weight: overall weight of the VGG term (official ``0.001 * --vgg_lambda``).
    perceptual_layers: VGG16 layers by name (``relu1_2`` ... ``relu5_3``, ``conv4_3``,
      ``features.N``); normalised to names.
    layer_weights: one multiplier per layer (default all 1; the terms are summed).
    perceptual_distance: ``'l1'`` (official default) or ``'l2'`` (mean squared, official
      ``--vgg_loss_type L2``).
    perceptual_size: VGG input side (nearest resize, official 256) or None = the image's own.
  """

  mse_weight: float = 1.0
  l1_weight: float = 0.0
  perceptual_weight: float = 1e-3
  perceptual_layers: tuple[str, ...] = ("relu3_3",)
  layer_weights: tuple[float, ...] | None = None
  perceptual_distance: str = "l1"
  perceptual_size: int | None = 256

  def __post_init__(self):
    layers = self.perceptual_layers
    if isinstance(layers, str):
      layers = (layers,)
    names = tuple(perceptual.LAYERS[perceptual.layer_index(n)] for n in layers)
    if not names and self.perceptual_weight:
      raise ValueError("perceptual_layers is empty but perceptual_weight is not 0")
    object.__setattr__(self, "perceptual_layers", names)
    if self.layer_weights is not None:
      lw = tuple(float(w) for w in self.layer_weights)
      if len(lw) != len(names):
        raise ValueError(f"layer_weights has {len(lw)} entries for {len(names)} layers")
      object.__setattr__(self, "layer_weights", lw)
    if self.perceptual_distance not in DISTANCES:
      raise ValueError(f"perceptual_distance must be one of {DISTANCES}, got "
                       f"{self.perceptual_distance!r}")
    if self.perceptual_size is not None and int(self.perceptual_size) < 1:
      raise ValueError(f"perceptual_size must be positive or None, got {self.perceptual_size}")

  @property
  def uses_vgg(self) -> bool:
    return bool(self.perceptual_weight) and bool(self.perceptual_layers)

  def weights(self) -> tuple[float, ...]:
    return self.layer_weights or (1.0,) * len(self.perceptual_layers)


class Target(struct.PyTreeNode):
  """What one image's loss compares against (a pytree; vmap over images).

  image: (1, h, w, 3) the (degraded) target the loss sees; features: {layer: (1, h', w', c)}
  its VGG features (empty when the config has no perceptual term); operator: the task
  operator D applied to the generated image.
  """

  image: Array
  features: dict
  operator: Operator = Identity()


def _as_batch1(image: Array) -> Array:
  image = jnp.asarray(image, jnp.float32)
  if image.ndim == 3:
    image = image[None]
  chex.assert_shape(image, (1, None, None, 3))
  return image


def target_features(vgg_params: Mapping, image: Array, *, config: LossConfig) -> dict:
  """VGG features of a (1, h, w, 3) image for ``config`` ({} if no perceptual term)."""
  if not config.uses_vgg:
    return {}
  return _image_features(vgg_params, image, config.perceptual_layers, config.perceptual_size)


def _image_features_impl(vgg_params, image, layers, size):
  return perceptual.image_features(vgg_params, image, layers=layers, size=size)


_image_features = jax.jit(_image_features_impl, static_argnums=(2, 3))


def make_target(image: Array, vgg_params: Mapping | None, *, config: LossConfig = LossConfig(),
                operator: Operator = Identity(), mode: str = "degrade") -> Target:
  """Prepare one image's target: apply ``operator`` (mode 'degrade') and compute its VGG
  features once. image: (H, W, 3) or (1, H, W, 3) in [-1, 1]."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not isinstance(operator, Operator):
    raise TypeError(f"operator must be a mgan_jax.operators.Operator, got "
                    f"{type(operator).__name__}")
  image = _as_batch1(image)
  seen = operator(image) if mode == "degrade" else image
  if config.uses_vgg and vgg_params is None:
    raise ValueError("the loss has a perceptual term but no VGG params were given")
  feats = target_features(vgg_params, seen, config=config) if config.uses_vgg else {}
  return Target(image=seen, features=feats, operator=operator)


def _dist(a: Array, b: Array, kind: str) -> Array:
  d = a - b
  return jnp.mean(jnp.abs(d)) if kind == "l1" else jnp.mean(jnp.square(d))


def loss_terms(image: Array, target: Target, vgg_params: Mapping | None, *,
               config: LossConfig = LossConfig()) -> dict[str, Array]:
  """Weighted loss terms of a generated image (1, R, R, 3) (before the operator) against the
  target: ``{'mse', 'l1', 'perceptual', 'total'}`` (unused terms are 0)."""
  seen = target.operator(image)
  chex.assert_equal_shape([seen, target.image])
  zero = jnp.zeros((), jnp.float32)
  terms = {"mse": zero, "l1": zero, "perceptual": zero}
  if config.l1_weight:
    terms["l1"] = config.l1_weight * _dist(seen, target.image, "l1")
  if config.mse_weight:
    terms["mse"] = config.mse_weight * _dist(seen, target.image, "l2")
  if config.uses_vgg:
    feats = perceptual.image_features(vgg_params, seen, layers=config.perceptual_layers,
                                      size=config.perceptual_size)
    p = zero
    for name, w in zip(config.perceptual_layers, config.weights()):
      p = p + w * _dist(feats[name], target.features[name], config.perceptual_distance)
    terms["perceptual"] = config.perceptual_weight * p
  terms["total"] = terms["l1"] + terms["mse"] + terms["perceptual"]
  return terms


def image_loss(image: Array, target: Target, vgg_params: Mapping | None, *,
               config: LossConfig = LossConfig()) -> Array:
  """Scalar loss of a generated image (1, R, R, 3) (the operator is applied here)."""
  return loss_terms(image, target, vgg_params, config=config)["total"]


def objective(latents: Mapping, target: Target, gen_params: Mapping, vgg_params: Mapping | None,
              *, gen: Generator, method: str = "multi_z", layer: int | None = None,
              config: LossConfig = LossConfig(), truncation: Any = None,
              compose: Callable | None = None) -> Array:
  """The scalar objective of one image's latents: ``image_loss(render(latents), target)``."""
  image = render(gen, gen_params, latents, method=method, layer=layer, truncation=truncation,
                 compose=compose)
  return image_loss(image, target, vgg_params, config=config)


@dataclasses.dataclass(frozen=True)
class Objective:
  """``objective`` with its static options bound, as a hashable value (equal options -> equal
  objects -> jit cache hits). Call: ``Objective(...)(latents, target, gen_params, vgg_params)``.
  """

  gen: Generator
  method: str = "multi_z"
  layer: int | None = None
  config: LossConfig = LossConfig()
  truncation: Any = None
  compose: Callable | None = None

  def __call__(self, latents: Mapping, target: Target, gen_params: Mapping,
               vgg_params: Mapping | None) -> Array:
    return objective(latents, target, gen_params, vgg_params, gen=self.gen, method=self.method,
                     layer=self.layer, config=self.config, truncation=self.truncation,
                     compose=self.compose)

  @property
  def renderer(self) -> "Renderer":
    """The image of the latents this objective scores (same arguments as the objective)."""
    return Renderer(gen=self.gen, method=self.method, layer=self.layer,
                    truncation=self.truncation, compose=self.compose)


@dataclasses.dataclass(frozen=True)
class Renderer:
  """``render`` with its static options bound, called with the objective's arguments:
  ``Renderer(...)(latents, target, gen_params, vgg_params) -> (1, R, R, 3)`` (target and VGG
  params unused). Hashable, so the engine can compile it into its programs."""

  gen: Generator
  method: str = "multi_z"
  layer: int | None = None
  truncation: Any = None
  compose: Callable | None = None

  def __call__(self, latents: Mapping, target: Any = None, gen_params: Mapping | None = None,
               vgg_params: Mapping | None = None) -> Array:
    del target, vgg_params
    return render(self.gen, gen_params, latents, method=self.method, layer=self.layer,
                  truncation=self.truncation, compose=self.compose)


__all__ = ["LossConfig", "Target", "make_target", "target_features", "loss_terms", "image_loss",
           "objective", "Objective", "Renderer", "MODES", "DISTANCES"]
