"""VGG16 perceptual features (torchvision ``vgg16().features``) in Flax, NHWC.

mGANprior's perceptual term (official ``inversion/losses.py: VGGLoss``) is an L1 distance between
torchvision ``vgg16(pretrained=True).features[:16]`` activations (relu3_3) of the two images,
after mapping [-1, 1] -> [0, 1], ImageNet mean/std normalisation and a *nearest* resize to
256x256 (``F.interpolate(size=256, mode='nearest')``, source index ``floor(i * in / out)``).

Layer names follow the VGG paper and torchvision's ``features`` indices::

    index  0 conv1_1   1 relu1_1   2 conv1_2   3 relu1_2   4 pool1
           5 conv2_1   6 relu2_1   7 conv2_2   8 relu2_2   9 pool2
          10 conv3_1  11 relu3_1  12 conv3_2  13 relu3_2  14 conv3_3  15 relu3_3  16 pool3
          17 conv4_1 ... 22 relu4_3  23 pool4  24 conv5_1 ... 29 relu5_3  30 pool5

(the official ``--vgg_layer k`` = ``features[:k]`` is the output of index k-1: 16 -> relu3_3,
23 -> relu4_3, 22 -> conv4_3). The network is truncated at the deepest requested layer.

Params: ``{'conv1_1': {'kernel': (3, 3, 3, 64) HWIO, 'bias': (64,)}, ..., 'conv5_3': ...}``.
The real ImageNet weights are read by the asset layer (``mgan_jax.assets.vgg_params`` /
``load_vgg``); this module is the network only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax.generators.conv import conv2d
from mgan_jax.operators import resize

Array = jax.Array

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _layer_table() -> tuple[tuple[str, str, int], ...]:
  """(name, kind, out_channels) per torchvision ``features`` index."""
  out = []
  block, conv = 1, 0
  for v in _CFG:
    if v == "M":
      out.append((f"pool{block}", "pool", out[-1][2]))
      block, conv = block + 1, 0
    else:
      conv += 1
      out.append((f"conv{block}_{conv}", "conv", v))
      out.append((f"relu{block}_{conv}", "relu", v))
  return tuple(out)


_TABLE = _layer_table()
#: torchvision ``features`` order: LAYERS[i] is the output of ``features[i]``.
LAYERS: tuple[str, ...] = tuple(n for n, _, _ in _TABLE)
#: the 13 conv layers, in order.
CONVS: tuple[str, ...] = tuple(n for n, k, _ in _TABLE if k == "conv")
#: torchvision ``features.{i}`` index of each conv in CONVS (0, 2, 5, 7, 10, ...).
TORCHVISION_CONV_INDICES: tuple[int, ...] = tuple(i for i, (_, k, _) in enumerate(_TABLE)
                                                  if k == "conv")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_index(layer: str | int) -> int:
  """Index in torchvision ``features`` of a layer name (``'relu3_3'``), ``'features.15'`` or an
  int index. Raises ValueError naming the valid names."""
  if isinstance(layer, (int, np.integer)):
    i = int(layer)
  elif isinstance(layer, str) and layer.startswith("features."):
    i = int(layer.split(".", 1)[1]) if layer.split(".", 1)[1].isdigit() else -1
  elif layer in LAYERS:
    i = LAYERS.index(layer)
  else:
    i = -1
  if not 0 <= i < len(LAYERS):
    raise ValueError(f"unknown VGG16 layer {layer!r} (use a name {LAYERS[0]} ... {LAYERS[-1]}, "
                     f"e.g. relu3_3 / conv4_3, or features.<0-{len(LAYERS) - 1}>)")
  return i


def official_layer(vgg_layer: int) -> str:
  """Name of the output of the official ``--vgg_layer k`` (``features[:k]``): 16 -> relu3_3."""
  return LAYERS[layer_index(vgg_layer - 1)]


def param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """Expected parameter shapes of the full 13-conv VGG16 feature extractor."""
  shapes = {}
  cin = 3
  for name, kind, c in _TABLE:
    if kind == "conv":
      shapes[name] = {"kernel": (3, 3, cin, c), "bias": (c,)}
      cin = c
  return shapes


def random_params(key: Array, *, layers: Sequence[str] | None = None) -> dict:
  """Random VGG16 params with the real shapes (He-normal kernels), for benchmarks/tests;
  only the convs ``layers`` need when given (default: all 13)."""
  out = {}
  shapes = param_shapes()
  if layers is not None:
    shapes = needed_params(shapes, layers)
  for i, (name, s) in enumerate(shapes.items()):
    k = jax.random.fold_in(key, i)
    fan_in = s["kernel"][0] * s["kernel"][1] * s["kernel"][2]
    out[name] = {"kernel": jax.random.normal(k, s["kernel"]) * np.sqrt(2.0 / fan_in),
                 "bias": jnp.zeros(s["bias"])}
  return out


def conv3x3(x: Array, kernel: Array) -> Array:
  """3x3 SAME (pad 1) cross-correlation, NHWC x HWIO -> NHWC (torch ``Conv2d(3, padding=1)``).

  ``generators.conv.conv2d``: the values of ``lax.conv_general_dilated`` (direct, or Winograd
  for the 256-channel layers on the CPU) with an input gradient that stays fast inside
  ``lax.scan`` (the optimisation loop).
  """
  return conv2d(x, kernel, padding=((1, 1), (1, 1)))


class _Conv3x3(nn.Module):
  """``nn.Conv(c, (3, 3), padding=1)`` with the ``conv3x3`` gradient; params kernel/bias."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv3x3(x, kernel) + bias


def max_pool_2x2(x: Array) -> Array:
  """2x2/2 max-pool (torch ``MaxPool2d(2, 2)``, floor mode), (B, H, W, C) -> (B, H/2, W/2, C).

  Written as two pairwise maxima of strided slices: the same forward as ``nn.max_pool``, but
  its gradient is element-wise selects (XLA:CPU's ``select_and_scatter`` for reduce_window
  gradients is ~10x slower). Ties between equal positive maxima split the gradient (torch
  routes it to the first); post-ReLU zeros carry no gradient either way.
  """
  h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
  x = x[:, :h, :w]
  x = jnp.maximum(x[:, 0::2], x[:, 1::2])
  return jnp.maximum(x[:, :, 0::2], x[:, :, 1::2])


class VGG16Features(nn.Module):
  """torchvision VGG16 ``features`` (conv3x3 pad 1 + ReLU, 2x2/2 max-pool), truncated at the
  deepest of ``outputs``. Input: preprocessed (B, H, W, 3); output: {name: (B, h, w, c)}."""

  outputs: tuple[str, ...] = ("relu3_3",)

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    wanted = set(self.outputs)
    last = max(layer_index(n) for n in self.outputs)
    feats = {}
    for name, kind, c in _TABLE[:last + 1]:
      if kind == "conv":
        x = _Conv3x3(c, name=name)(x)
      elif kind == "relu":
        x = nn.relu(x)
      else:
        x = max_pool_2x2(x)
      if name in wanted:
        feats[name] = x
    return feats


def needed_params(params: Mapping, layers: Sequence[str]) -> dict:
  """The subset of ``params`` the truncated network for ``layers`` uses."""
  last = max(layer_index(n) for n in layers)
  return {n: params[n] for n in CONVS if LAYERS.index(n) <= last}


def features(params: Mapping, x: Array, layers: Sequence[str] = ("relu3_3",)) -> dict[str, Array]:
  """VGG16 activations of preprocessed images. x: (B, H, W, 3) -> {layer: (B, h, w, c)}."""
  chex.assert_rank(x, 4)
  names = tuple(LAYERS[layer_index(n)] for n in layers)
  return VGG16Features(outputs=names).apply({"params": needed_params(params, names)}, x)


def preprocess(images: Array, *, size: int | None = 256) -> Array:
  """Official VGG input: [-1, 1] -> [0, 1] -> ImageNet mean/std -> nearest resize to
  ``size`` x ``size`` (PyTorch index convention); ``size=None`` keeps the resolution.
  images: (B, H, W, 3) -> (B, size, size, 3)."""
  chex.assert_shape(images, (None, None, None, 3))
  x = images * 0.5 + 0.5
  x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
  if size is not None:
    x = resize(x, size, method="nearest")
  return x


def image_features(params: Mapping, images: Array, *, layers: Sequence[str] = ("relu3_3",),
                   size: int | None = 256) -> dict[str, Array]:
  """``features(params, preprocess(images, size=size), layers)`` for [-1, 1] images."""
  return features(params, preprocess(images, size=size), layers)


__all__ = [
    "LAYERS", "CONVS", "TORCHVISION_CONV_INDICES", "IMAGENET_MEAN", "IMAGENET_STD",
    "VGG16Features", "layer_index", "official_layer", "param_shapes", "random_params",
    "needed_params", "features", "preprocess", "image_features", "conv3x3", "max_pool_2x2",
]
