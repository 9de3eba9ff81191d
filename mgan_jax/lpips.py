"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018), version 0.1, with the VGG16 and AlexNet trunks, in Flax/JAX, NHWC.

The function computed is the one of the reference ``lpips`` package (0.1.x, ``lpips.LPIPS(net=...,
version='0.1')`` in eval mode, ``spatial=False``, ``normalize=False``):

1. inputs in [-1, 1] (RGB, (B, H, W, 3)) pass the scaling layer
   ``x <- (x - SHIFT) / SCALE`` with ``SHIFT = (-0.030, -0.088, -0.188)`` and
   ``SCALE = (0.458, 0.448, 0.450)``;
2. the trunk gives five feature maps ``f_l`` per image (``TAPS``): VGG16 relu1_2, relu2_2,
   relu3_3, relu4_3, relu5_3 (torchvision ``vgg16().features``, ``mgan_jax.perceptual``), or
   AlexNet relu1 ... relu5 (torchvision ``alexnet().features``: conv1 11x11 stride 4 pad 2, 3x3/2
   max-pools before conv2 and conv3, no pool after relu5);
3. each map is unit-normalised over channels, ``f / (sqrt(sum_c f^2) + 1e-10)`` (eps *outside*
   the square root);
4. per layer ``d_l = mean_{h,w} sum_c w_{l,c} (f0_hat - f1_hat)^2`` -- the v0.1 linear head is a
   1x1 convolution with one output and no bias (dropout is off in eval mode);
5. ``d = d_0 + d_1 + ... + d_4`` (summed in that order).

Params (explicit pytree, see ``param_shapes``)::

    {'trunk': {'conv1_1': {'kernel': (3, 3, 3, 64) HWIO, 'bias': (64,)}, ...}   # vgg
              {'conv1': {'kernel': (11, 11, 3, 64), 'bias': (64,)}, ..., 'conv5'}   # alex
     'lin': {'lin0': {'kernel': (1, 1, C0, 1)}, ..., 'lin4': {...}}}

The real weights (torchvision ImageNet trunks + the v0.1 heads) come from
``mgan_jax.assets.lpips_params(net)``; this module itself never reads files.

All convolutions and head contractions run at ``'highest'`` matmul precision: with TF32/bf16
passes (the default on some GPUs and TPUs) LPIPS moves by far more than its 1e-5 parity.

Public API: ``distance`` (jitted, (B, H, W, 3) pairs -> (B,) distances and (B, 5) per-layer
terms; vmap-able), ``features``, ``normalize``, ``param_shapes``, ``random_params``,
``scale``, ``AlexNetFeatures``, ``NETS``, ``TAPS``, ``CHANNELS``, ``SHIFT``, ``SCALE``.
"""

from __future__ import annotations

import functools
from typing import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax import perceptual

Array = jax.Array

NETS = ("vgg", "alex")
#: the five trunk outputs LPIPS compares, per net.
TAPS: dict[str, tuple[str, ...]] = {
    "vgg": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
    "alex": ("relu1", "relu2", "relu3", "relu4", "relu5"),
}
#: channels of the five taps (= input channels of the five linear heads).
CHANNELS: dict[str, tuple[int, ...]] = {
    "vgg": (64, 128, 256, 512, 512),
    "alex": (64, 192, 384, 256, 256),
}
#: the scaling layer's constants (``lpips.ScalingLayer``), RGB.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
#: smallest image side each trunk accepts (VGG: 4 pools before relu5_3; AlexNet: conv1/4 and
#: two 3/2 pools must leave at least one pixel).
MIN_SIZE = {"vgg": 16, "alex": 31}

#: AlexNet convs: (name, kernel, stride, padding, out channels); torchvision ``features``
#: indices 0, 3, 6, 8, 10.
_ALEX = (("conv1", 11, 4, 2, 64), ("conv2", 5, 1, 2, 192), ("conv3", 3, 1, 1, 384),
         ("conv4", 3, 1, 1, 256), ("conv5", 3, 1, 1, 256))


def _check_net(net: str) -> str:
  if net not in NETS:
    raise ValueError(f"unknown LPIPS net {net!r} (known: {', '.join(NETS)})")
  return net


def param_shapes(net: str = "vgg") -> dict:
  """Parameter shapes ``{'trunk': {...}, 'lin': {'lin0': {'kernel': (1, 1, C, 1)}, ...}}``.

  The VGG trunk holds the 13 convs of ``perceptual.param_shapes`` (the LPIPS taps need all of
  them up to conv5_3).
  """
  _check_net(net)
  if net == "vgg":
    trunk = perceptual.param_shapes()
  else:
    trunk, cin = {}, 3
    for name, k, _, _, c in _ALEX:
      trunk[name] = {"kernel": (k, k, cin, c), "bias": (c,)}
      cin = c
  lin = {f"lin{i}": {"kernel": (1, 1, c, 1)} for i, c in enumerate(CHANNELS[net])}
  return {"trunk": trunk, "lin": lin}


def random_params(key: Array, *, net: str = "vgg") -> dict:
  """Random params with the real shapes (He-normal convs, zero biases, |N(0, 1)| / C heads),
  for tests and benchmarks."""
  shapes = param_shapes(net)
  trunk = {}
  for i, (name, s) in enumerate(shapes["trunk"].items()):
    kh, kw, cin, _ = s["kernel"]
    trunk[name] = {"kernel": jax.random.normal(jax.random.fold_in(key, i), s["kernel"])
                             * np.sqrt(2.0 / (kh * kw * cin)),
                   "bias": jnp.zeros(s["bias"])}
  lin = {}
  for i, (name, s) in enumerate(shapes["lin"].items()):
    w = jnp.abs(jax.random.normal(jax.random.fold_in(key, 100 + i), s["kernel"]))
    lin[name] = {"kernel": w / s["kernel"][2]}
  return {"trunk": trunk, "lin": lin}


def _max_pool_3x3_s2(x: Array) -> Array:
  """torch ``MaxPool2d(kernel_size=3, stride=2)`` (no padding, floor mode), NHWC."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class _Conv(nn.Module):
  """torch ``Conv2d(k, stride, padding)`` with params kernel (HWIO) / bias, NHWC."""

  features: int
  size: int
  stride: int
  pad: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.size, self.size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride),
                                     ((self.pad, self.pad), (self.pad, self.pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + bias


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet ``features`` up to relu5 (the LPIPS taps relu1 ... relu5).

  conv1 11x11/4 pad 2 -> ReLU [relu1] -> max-pool 3/2 -> conv2 5x5 pad 2 -> ReLU [relu2] ->
  max-pool 3/2 -> conv3 3x3 pad 1 -> ReLU [relu3] -> conv4 -> ReLU [relu4] -> conv5 -> ReLU
  [relu5]. Input (B, H, W, 3) (already scaled, H, W >= 63 so that relu5 is not empty);
  output {'relu1': (B, h1, w1, 64), ..., 'relu5': (B, h3, w3, 256)}.
  """

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    feats = {}
    for i, (name, k, stride, pad, c) in enumerate(_ALEX):
      if i in (1, 2):
        x = _max_pool_3x3_s2(x)
      x = nn.relu(_Conv(c, k, stride, pad, name=name)(x))
      feats[f"relu{i + 1}"] = x
    return feats


def features(trunk: Mapping, x: Array, *, net: str = "vgg") -> list[Array]:
  """The five tap activations of scaled images x (B, H, W, 3), in ``TAPS[net]`` order."""
  _check_net(net)
  chex.assert_rank(x, 4)
  if net == "vgg":
    out = perceptual.VGG16Features(outputs=TAPS["vgg"]).apply({"params": dict(trunk)}, x)
  else:
    out = AlexNetFeatures().apply({"params": dict(trunk)}, x)
  return [out[name] for name in TAPS[net]]


def normalize(f: Array, eps: float = EPS) -> Array:
  """Unit-normalise over channels: ``f / (sqrt(sum_c f^2) + eps)`` (lpips ``normalize_tensor``)."""
  return f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + eps)


def scale(x: Array) -> Array:
  """The scaling layer: ``(x - SHIFT) / SCALE`` on [-1, 1] RGB images (..., 3)."""
  return (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)


def _distance(params: Mapping, x0: Array, x1: Array, net: str) -> tuple[Array, Array]:
  chex.assert_equal_shape([x0, x1])
  chex.assert_shape(x0, (None, None, None, 3))
  if min(x0.shape[1:3]) < MIN_SIZE[net]:
    raise ValueError(f"LPIPS-{net} needs images of at least {MIN_SIZE[net]}x{MIN_SIZE[net]} "
                     f"pixels, got {x0.shape[1]}x{x0.shape[2]}")
  with jax.default_matmul_precision("highest"):
    b = x0.shape[0]
    feats = features(params["trunk"], scale(jnp.concatenate([x0, x1], axis=0)), net=net)
    terms = []
    for i, f in enumerate(feats):
      f = normalize(f)
      diff = jnp.square(f[:b] - f[b:])
      w = params["lin"][f"lin{i}"]["kernel"].reshape(-1)
      terms.append(jnp.mean(jnp.einsum("bhwc,c->bhw", diff, w, precision="highest"),
                            axis=(1, 2)))
    per_layer = jnp.stack(terms, axis=1)
    d = terms[0]
    for t in terms[1:]:
      d = d + t
  return d, per_layer


@functools.partial(jax.jit, static_argnames=("net",))
def distance(params: Mapping, x0: Array, x1: Array, *, net: str = "vgg") -> tuple[Array, Array]:
  """LPIPS v0.1 of image pairs: x0, x1 (B, H, W, 3) in [-1, 1] -> (d (B,), per_layer (B, 5)).

  ``per_layer[:, l]`` is the term of tap ``TAPS[net][l]``; ``d`` is their sum in order. Pure
  and jitted with ``params`` an argument; ``jax.vmap`` over an extra leading pair axis works
  (e.g. x0, x1 (N, B, H, W, 3)).
  """
  return _distance(params, x0, x1, _check_net(net))


__all__ = ["NETS", "TAPS", "CHANNELS", "SHIFT", "SCALE", "EPS", "MIN_SIZE", "AlexNetFeatures",
           "param_shapes", "random_params", "features", "normalize", "scale", "distance"]
