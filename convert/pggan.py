"""PGGAN converter: NVIDIA TF ``G_paper`` pickles and genforce PyTorch state dicts -> Flax.

Both sources map onto the parameter tree of ``mgan_jax.generators.pggan`` (TF layouts):

* TF ``Gs`` (``tfutil.Network``, ``build_func_name == 'G_paper'``): variables are copied as
  they are (``4x4/Dense/weight`` (Z+L, C*16), conv kernels HWIO); the final
  ``ToRGB_lod0/{weight,bias}`` becomes ``ToRGB``. ``lod`` and the intermediate
  ``ToRGB_lod{L>0}`` are reported as leftover.
* genforce state dict: ``layer0.conv.weight`` (C, Z, 4, 4) is the padded-conv form the official
  converter makes from the TF Dense (``view(Z, C, 4, 4).permute(1, 0, 2, 3).flip(2, 3)``); it
  is inverted exactly: ``flip(2, 3).permute(1, 0, 2, 3).reshape(Z, C*16)``. Other conv weights
  are OIHW -> HWIO. ``layer{i}.wscale.bias`` are copied. The last ``output{b}`` is the ToRGB;
  ``lod`` and the other ``output{b}`` are leftover.

Resolution, Z and the channel schedule are read from the shapes. Every expected key must be
present with the right shape; any unknown key (e.g. a fused up-conv ``Conv0_up`` /
``layer{i}.weight``) is an error. ``lod`` must be 0: the progressive-growing blend used during
training (lod > 0) is not supported.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from convert.registry import Conversion, FamilyConverter, weight
from convert.tf_pickle import check_lod, tf_resolution
from mgan_jax.errors import UserError
from mgan_jax.generators.pggan import PGGAN


def _arr(key: str, v: Any, what: str) -> np.ndarray:
  return weight(key, v, what)


def _check_shape(key: str, value: np.ndarray, shape: tuple[int, ...], what: str) -> None:
  if tuple(value.shape) != tuple(shape):
    raise UserError(f"{what}: wrong shape for {key}: expected {tuple(shape)}, "
                    f"got {tuple(value.shape)}")


def _resolution_from_blocks(num_blocks: int, what: str) -> int:
  if num_blocks < 4 or num_blocks % 2:
    raise UserError(f"{what}: found {num_blocks} conv blocks; a PGGAN has an even number >= 4")
  return 2 ** (num_blocks // 2 + 1)


# ----- TF pickle ---------------------------------------------------------------------------

_TF_KWARGS_REQUIRED = {"normalize_latents": True, "use_wscale": True, "use_pixelnorm": True,
                       "use_leakyrelu": True, "use_batchnorm": False}


def matches_tf(net: Any) -> bool:
  return getattr(net, "build_func_name", None) == "G_paper"


def from_tf(net: Any) -> Conversion:
  """TF ``Gs`` network stub (``variables`` list of (name, ndarray), ``static_kwargs``)."""
  what = f"TF network {getattr(net, 'name', 'Gs')!r} (G_paper)"
  kwargs = dict(getattr(net, "static_kwargs", None) or {})
  for k, want in _TF_KWARGS_REQUIRED.items():
    if k in kwargs and bool(kwargs[k]) != want:
      raise UserError(f"{what}: static_kwargs {k}={kwargs[k]!r} is not supported "
                      f"(only {want})")
  if "pixelnorm_epsilon" in kwargs and float(kwargs["pixelnorm_epsilon"]) != 1e-8:
    raise UserError(f"{what}: static_kwargs pixelnorm_epsilon={kwargs['pixelnorm_epsilon']!r} "
                    "is not supported (only 1e-8)")
  if kwargs.get("num_channels", 3) != 3:
    raise UserError(f"{what}: static_kwargs num_channels={kwargs['num_channels']!r}; only RGB "
                    "(3) generators are supported")
  variables = {}
  for name, value in getattr(net, "variables", None) or []:
    if name in variables:
      raise UserError(f"{what}: duplicate variable {name}")
    variables[name] = value
  for name in variables:
    if "Conv0_up" in name:
      raise UserError(f"{what}: variable {name}: fused up-convolutions (fused_scale=True) are "
                      "not supported")

  def get(key: str) -> np.ndarray:
    if key not in variables:
      raise UserError(f"{what}: missing variable {key}")
    return _arr(key, variables[key], what)

  dense_w = get("4x4/Dense/weight")
  if dense_w.ndim != 2 or dense_w.shape[1] % 16:
    raise UserError(f"{what}: 4x4/Dense/weight has shape {dense_w.shape}; expected "
                    "(Z, C*16)")
  label_dim = int(kwargs.get("label_size", 0) or 0)
  latent_dim = dense_w.shape[0] - label_dim
  if latent_dim < 1:
    raise UserError(f"{what}: 4x4/Dense/weight has {dense_w.shape[0]} inputs but "
                    f"label_size={label_dim}")
  if kwargs.get("latent_size") not in (None, latent_dim):
    raise UserError(f"{what}: static_kwargs latent_size={kwargs['latent_size']} disagrees with "
                    f"4x4/Dense/weight {dense_w.shape} (label_size={label_dim})")
  resolution = tf_resolution(variables, "", kwargs.get("resolution"), what)
  n = int(math.log2(resolution))

  channels = [dense_w.shape[1] // 16]
  for r in range(3, n + 1):
    channels.append(get(f"{2 ** r}x{2 ** r}/Conv0/weight").shape[-1])
  spec = PGGAN(resolution=resolution, latent_dim=latent_dim, channels=tuple(channels),
               label_dim=label_dim)

  shapes = _tf_shapes(spec)
  params: dict = {}
  used = set()
  for key, shape in shapes.items():
    src = "ToRGB_lod0/" + key.split("/")[-1] if key.startswith("ToRGB/") else key
    value = get(src)
    _check_shape(src, value, shape, what)
    _set(params, key, value)
    used.add(src)
  leftover = []
  for name in variables:
    if name in used:
      continue
    if name == "lod":
      check_lod(name, variables[name], what)
    elif not re.fullmatch(r"ToRGB_lod[1-9]\d*/(weight|bias)", name):
      raise UserError(f"{what}: unexpected variable {name}")
    leftover.append(name)
  return Conversion(spec=spec, params=params, leftover=tuple(leftover))


def _tf_shapes(spec: PGGAN) -> dict[str, tuple[int, ...]]:
  """Flat param name -> shape of ``spec`` (equal to the TF variable shapes)."""
  c = spec.channels
  out = {"4x4/Dense/weight": (spec.latent_dim + spec.label_dim, c[0] * 16),
         "4x4/Dense/bias": (c[0],),
         "4x4/Conv/weight": (3, 3, c[0], c[0]), "4x4/Conv/bias": (c[0],)}
  for r in range(1, len(c)):
    res = 4 * 2 ** r
    out[f"{res}x{res}/Conv0/weight"] = (3, 3, c[r - 1], c[r])
    out[f"{res}x{res}/Conv0/bias"] = (c[r],)
    out[f"{res}x{res}/Conv1/weight"] = (3, 3, c[r], c[r])
    out[f"{res}x{res}/Conv1/bias"] = (c[r],)
  out["ToRGB/weight"] = (1, 1, c[-1], 3)
  out["ToRGB/bias"] = (3,)
  return out


def _set(tree: dict, key: str, value: np.ndarray) -> None:
  *parents, leaf = key.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


# ----- genforce state dict -----------------------------------------------------------------

_SD_KEY = re.compile(r"(layer|output)(\d+)\.(conv\.weight|wscale\.bias)")


def matches_state_dict(sd: Mapping[str, Any]) -> bool:
  return ("layer0.conv.weight" in sd and "layer0.wscale.bias" in sd
          and np.ndim(sd["layer0.conv.weight"]) == 4
          and tuple(np.shape(sd["layer0.conv.weight"])[2:]) == (4, 4))


def from_state_dict(sd: Mapping[str, Any]) -> Conversion:
  """genforce ``PGGANGeneratorNet`` state dict (flat, numpy) -> Conversion (label_dim = 0)."""
  what = "PGGAN state dict"
  layers, outputs = set(), set()
  for key in sd:
    m = _SD_KEY.fullmatch(key)
    if m:
      (layers if m.group(1) == "layer" else outputs).add(int(m.group(2)))
    elif key != "lod":
      hint = (" (fused up-convolutions are not supported)" if re.fullmatch(r"layer\d+\.weight", key)
              else "")
      raise UserError(f"{what}: unexpected key {key}{hint}")
  num_blocks = max(layers) + 1 if layers else 0
  if num_blocks % 2:
    raise UserError(f"{what}: missing key layer{num_blocks}.conv.weight (layer{num_blocks - 1} "
                    "exists and every resolution has two conv blocks)")
  resolution = _resolution_from_blocks(num_blocks, what)

  def get(key: str) -> np.ndarray:
    if key not in sd:
      raise UserError(f"{what}: missing key {key}")
    return _arr(key, sd[key], what)

  w0 = get("layer0.conv.weight")
  if w0.ndim != 4 or w0.shape[2:] != (4, 4):
    raise UserError(f"{what}: layer0.conv.weight has shape {w0.shape}; expected (C, Z, 4, 4)")
  c4, latent_dim = w0.shape[:2]
  channels = [c4]
  for r in range(1, num_blocks // 2):
    w = get(f"layer{2 * r}.conv.weight")
    if w.ndim != 4:
      raise UserError(f"{what}: layer{2 * r}.conv.weight has shape {w.shape}; expected OIHW")
    channels.append(w.shape[0])
  spec = PGGAN(resolution=resolution, latent_dim=latent_dim, channels=tuple(channels))

  final = num_blocks // 2 - 1
  params: dict = {}
  used = set()
  for key, shape in _tf_shapes(spec).items():
    src_key = _genforce_key(key, final)
    value = get(src_key)
    _check_shape(src_key, value, _genforce_shape(key, shape), what)
    _set(params, key, _genforce_to_tf(key, value))
    used.add(src_key)
  leftover = []
  for key in sd:
    if key in used:
      continue
    if key == "lod":
      check_lod(key, sd[key], what)
    elif not key.startswith("output"):
      raise UserError(f"{what}: unexpected key {key} (model has {num_blocks} conv blocks)")
    elif int(_SD_KEY.fullmatch(key).group(2)) > final:
      raise UserError(f"{what}: unexpected key {key} (final ToRGB is output{final})")
    leftover.append(key)
  return Conversion(spec=spec, params=params, leftover=tuple(leftover))


def _genforce_key(key: str, final: int) -> str:
  """Flax param name -> genforce key."""
  *path, leaf = key.split("/")
  suffix = "conv.weight" if leaf == "weight" else "wscale.bias"
  if path == ["ToRGB"]:
    return f"output{final}.{suffix}"
  res, sub = path
  r = int(math.log2(int(res.split("x")[0]))) - 2
  block = 2 * r + (0 if sub in ("Dense", "Conv0") else 1)
  return f"layer{block}.{suffix}"


def _genforce_shape(key: str, tf_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Expected genforce shape of the param ``key`` whose TF shape is ``tf_shape``."""
  if key == "4x4/Dense/weight":
    z, c16 = tf_shape
    return (c16 // 16, z, 4, 4)
  if len(tf_shape) == 4:
    kh, kw, cin, cout = tf_shape
    return (cout, cin, kh, kw)
  return tf_shape


def _genforce_to_tf(key: str, value: np.ndarray) -> np.ndarray:
  if key == "4x4/Dense/weight":
    c, z = value.shape[:2]
    # inverse of view(Z, C, 4, 4).permute(1, 0, 2, 3).flip(2, 3)
    return np.ascontiguousarray(value[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(z, c * 16))
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))   # OIHW -> HWIO
  return np.ascontiguousarray(value)


CONVERTER = FamilyConverter(family="pggan", matches_state_dict=matches_state_dict,
                            from_state_dict=from_state_dict, matches_tf=matches_tf,
                            from_tf=from_tf)

__all__ = ["CONVERTER", "from_state_dict", "from_tf", "matches_state_dict", "matches_tf"]
