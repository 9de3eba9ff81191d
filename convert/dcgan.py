"""DCGAN converter: PyTorch-tutorial generator state dicts (``main.*`` keys) -> Flax.

Source (e.g. ``gan-face-generate==1.1.1``'s ``weights.tar`` ``netG_state_dict``; the dispatcher
unwraps the checkpoint)::

    main.{3j}.weight                  (Cin, Cout, 4, 4)  ConvTranspose2d, j = 0 .. L (no bias)
    main.{3j+1}.{weight, bias, running_mean, running_var}  (Cout,)  BatchNorm2d, j = 0 .. L-1
    main.{3j+1}.num_batches_tracked   ()  optional, reported as leftover

Target (``mgan_jax.generators.dcgan``): ``block{j}`` {kernel, scale, bias, mean, var} and
``output`` {kernel}; every kernel is the torch weight spatially flipped and transposed
``(in, out, kh, kw) -> (kh, kw, in, out)`` (the forward-conv form of the transposed conv).
Z, the channel schedule and the image channels are read from the shapes; every expected key must
be present with the right shape, and any other key is an error. BatchNorm eps is the PyTorch
default 1e-5 (it is not stored in a state dict).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from convert.registry import Conversion, FamilyConverter, weight
from mgan_jax.errors import UserError
from mgan_jax.generators.dcgan import DCGAN

_WHAT = "DCGAN state dict"
_KEY = re.compile(r"main\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def matches_state_dict(sd: Mapping[str, Any]) -> bool:
  """A ``main.*`` sequential whose first module is a 4-D (transposed) conv weight."""
  return (np.ndim(sd.get("main.0.weight")) == 4 and "main.1.running_mean" in sd
          and all(k.startswith("main.") for k in sd))


def _kernel(key: str, w: np.ndarray) -> np.ndarray:
  w = weight(key, w, _WHAT)
  """torch ConvTranspose2d weight (in, out, kh, kw) -> forward-conv HWIO (flipped)."""
  if w.shape[2:] != (4, 4):
    raise UserError(f"{_WHAT}: {key} has kernel size {w.shape[2:]}; the DCGAN generator "
                    "uses 4x4 transposed convolutions")
  return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))


def from_state_dict(sd: Mapping[str, Any]) -> Conversion:
  """Flat torch state dict -> ``Conversion(DCGAN spec, params, leftover)``."""
  for key in sd:
    if not _KEY.fullmatch(key):
      raise UserError(f"{_WHAT}: unexpected key {key}")

  def get(key: str) -> np.ndarray:
    if key not in sd:
      raise UserError(f"{_WHAT}: missing key {key}")
    return np.asarray(sd[key])

  def shaped(key: str, shape: tuple) -> np.ndarray:
    v = get(key)
    if v.shape != shape:
      raise UserError(f"{_WHAT}: wrong shape for {key}: expected {shape}, got {v.shape}")
    return v

  # The last conv (main.{3L}.weight) fixes the number L of BatchNorm blocks.
  conv_ids = [int(m.group(1)) for m in map(_KEY.fullmatch, sd)
              if m.group(2) == "weight" and int(m.group(1)) % 3 == 0]
  num_blocks = max(conv_ids, default=0) // 3
  if num_blocks == 0:
    raise UserError(f"{_WHAT}: missing key main.3.weight (no transposed conv after main.0)")
  w0 = get("main.0.weight")
  if w0.ndim != 4:
    raise UserError(f"{_WHAT}: main.0.weight has shape {w0.shape}; expected (Z, C, 4, 4)")

  params: dict[str, Any] = {}
  channels: list[int] = []
  used: set[str] = set()
  cin = w0.shape[0]
  for j in range(num_blocks + 1):
    key = f"main.{3 * j}.weight"
    w = get(key)
    if w.ndim != 4 or w.shape[0] != cin:
      raise UserError(f"{_WHAT}: wrong shape for {key}: expected ({cin}, C, 4, 4), got {w.shape}")
    used.add(key)
    cout = w.shape[1]
    if j == num_blocks:
      params["output"] = {"kernel": _kernel(key, w)}
      break
    block = {"kernel": _kernel(key, w)}
    for src, dst in _BN.items():
      bkey = f"main.{3 * j + 1}.{src}"
      block[dst] = weight(bkey, shaped(bkey, (cout,)), _WHAT)
      used.add(bkey)
    if not np.all(block["var"] >= 0):
      raise UserError(f"{_WHAT}: main.{3 * j + 1}.running_var has negative entries")
    params[f"block{j}"] = block
    channels.append(cout)
    cin = cout

  leftover = []
  for key in sd:
    if key in used:
      continue
    m = _KEY.fullmatch(key)
    if m.group(2) == "num_batches_tracked" and int(m.group(1)) in range(1, 3 * num_blocks, 3):
      leftover.append(key)
      continue
    raise UserError(f"{_WHAT}: unexpected key {key} (the model has {num_blocks} BatchNorm "
                    f"blocks and its last conv is main.{3 * num_blocks}.weight)")

  spec = DCGAN(z_dim=int(w0.shape[0]), channels=tuple(channels),
               out_channels=int(params["output"]["kernel"].shape[-1]))
  return Conversion(spec=spec, params=params, leftover=tuple(sorted(leftover)))


CONVERTER = FamilyConverter(family="dcgan", matches_state_dict=matches_state_dict,
                            from_state_dict=from_state_dict)

__all__ = ["CONVERTER", "from_state_dict", "matches_state_dict"]
