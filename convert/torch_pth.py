"""Read PyTorch ``torch.save`` files without torch and without executing anything from them.

Two on-disk formats are supported:

* **zip** (torch >= 1.6): ``<top>/data.pkl`` (protocol-2 pickle; tensors are persistent ids
  ``('storage', storage_type, key, location, numel)``), ``<top>/data/<key>`` raw storage bytes
  and ``<top>/byteorder``. The top folder name varies (``archive/``, the file stem,
  ``weights/`` for gan-face-generate's ``weights.tar``).
* **legacy** (torch < 1.6, ``_use_new_zipfile_serialization=False``): five consecutive pickles
  -- the magic number ``0x1950a86a20f9469cfc6c``, the protocol version (1001), ``sys_info``
  (endianness), the main object (persistent ids ``('storage', storage_type, root_key, location,
  numel, view_metadata)``), the list of storage keys -- followed, for each key, by an int64
  element count and the raw storage bytes.

Tensors come back as C-contiguous ``np.ndarray`` copies with the dtype, shape, strides and
storage offset of ``torch._utils._rebuild_tensor_v2`` semantics (re-implemented here as local
stubs); ``nn.Parameter`` becomes its array; ``OrderedDict`` becomes ``dict``;
``argparse.Namespace`` (rosinality checkpoints) becomes the inert ``Namespace``. Only the globals
these formats need are allowed (see ``TORCH_GLOBALS``); anything else raises
``convert.safe_pickle.UnsafePickleError`` naming the global.

Memory safety: a storage is an immutable 1-D byte buffer of exactly ``numel * itemsize``
bytes (zip entries are checked against that size before they are read); every tensor view
(offset, sizes, strides) is checked in bytes against that buffer before it is copied, stride-0
and self-overlapping expansions are refused, and every tensor counts against the
``convert.limits`` caps (elements per tensor, bytes per file). A byte-order record that
contradicts the float data is refused (``safe_pickle.check_byte_order``), as are storages
declared twice with different types or sizes.

Public API:

* ``read_torch_file(path_or_bytes, *, name=None) -> object`` -- the unpickled object.
* ``is_torch_zip(data) -> bool``, ``is_torch_legacy(data) -> bool`` -- content sniffing.
* ``open_zip(data, name) -> zipfile.ZipFile`` and ``read_member(zf, info, name, *, expect=None)
  -> bytes`` -- bounded zip access (also used for wheels).
* ``find_state_dict(obj, *, name) -> (dict[str, np.ndarray], wrapper_key or None)``.
* ``flat_state_dict(obj, *, name=...) -> dict[str, np.ndarray]``.
* ``storage_from_bytes(data) -> Storage`` -- ``torch.storage._load_from_bytes`` of network
  pickles (``convert.network_pickle``).
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from convert import limits
from convert.safe_pickle import (Frozen, PathOrBytes, PickledDict, PickleObject,
                                 RestrictedUnpickler, SafeCallable, UnsafePickleError,
                                 check_byte_order, open_source, plain, restricted_load, short,
                                 simple_dtype)
from mgan_jax.errors import UserError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"
#: central directories larger than this are refused before the zip is parsed (a torch file
#: with 1000 tensors needs about 70 KB; parsed, each directory byte costs about 11 bytes).
MAX_ZIP_DIRECTORY_BYTES = 1024 ** 2

# torch storage class name -> numpy type code.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1", "UntypedStorage": "u1",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16",
}
# torch dtype attribute name -> numpy type code.
_TORCH_DTYPES: dict[str, str] = {
    "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2",
    "half": "<f2", "bfloat16": "bfloat16", "int64": "<i8", "long": "<i8", "int32": "<i4",
    "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "b1",
    "complex64": "<c8", "complex128": "<c16",
}


class StorageType(Frozen):
  """Stub for ``torch.FloatStorage`` & co.: only carries the element dtype (immutable)."""

  __slots__ = ("qualname", "dtype")

  def __init__(self, qualname: str, dtype: np.dtype):
    self._init(qualname=qualname, dtype=dtype)

  def __repr__(self) -> str:
    return f"<storage type {self.qualname}>"


class TorchDType(Frozen):
  """Stub for ``torch.float32`` & co. (immutable)."""

  __slots__ = ("qualname", "dtype")

  def __init__(self, qualname: str, dtype: np.dtype):
    self._init(qualname=qualname, dtype=dtype)

  def __repr__(self) -> str:
    return self.qualname


class Storage(Frozen):
  """A storage as a persistent id names it (immutable).

  ``buf`` is the read-only 1-D ``uint8`` array of its exactly ``numel * dtype.itemsize`` bytes
  (stored byte order: ``big_endian``), or None while the bytes are not known (legacy pass 1).
  """

  __slots__ = ("key", "dtype", "numel", "buf", "big_endian")

  def __init__(self, key: str, dtype: np.dtype, numel: int, buf: Optional[np.ndarray] = None,
               big_endian: bool = False):
    if buf is not None:
      if not (isinstance(buf, np.ndarray) and buf.ndim == 1 and buf.dtype == np.uint8
              and buf.flags.c_contiguous and buf.size == numel * dtype.itemsize):
        raise UnsafePickleError(f"storage '{key}' is not a flat buffer of {numel} elements")
      buf.flags.writeable = False
    self._init(key=key, dtype=dtype, numel=numel, buf=buf, big_endian=big_endian)

  def __repr__(self) -> str:
    return f"<storage '{self.key}' {self.dtype.name}[{self.numel}]>"

  def typed(self, dtype: np.dtype) -> np.dtype:
    """``dtype`` in this storage's stored byte order."""
    return dtype.newbyteorder(">") if self.big_endian and dtype.itemsize > 1 else dtype


class _Pending:
  """Placeholder tensor produced while the storage bytes are not known yet (legacy pass 1)."""


def _int(x: Any, what: str) -> int:
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= x < 2 ** 62:
    raise UnsafePickleError(f"tensor {what} {short(x)} is not a natural number")
  return int(x)


def _as_index_tuple(x: Any, what: str) -> tuple[int, ...]:
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    x = (x,)
  if not isinstance(x, (tuple, list)) or len(x) > 32:
    raise UnsafePickleError(f"tensor {what} {short(x)} is not a tuple of ints")
  return tuple(_int(i, what) for i in x)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    dtype: Optional[np.dtype] = None) -> Any:
  """torch._utils._rebuild_tensor semantics on a byte storage (a C-contiguous copy).

  The view ``offset + sum(i_k * stride_k)`` (in elements of ``dtype``) is checked in bytes
  against the storage's flat buffer before anything is read.
  """
  if not isinstance(storage, Storage):
    raise UnsafePickleError(f"tensor storage is a {type(storage).__name__}, not a storage id")
  dt = storage.dtype if dtype is None else dtype
  shape = _as_index_tuple(size, "size")
  strides = _as_index_tuple(stride, "stride")
  offset = _int(storage_offset, "storage offset")
  if len(strides) != len(shape):
    raise UnsafePickleError(f"tensor size {shape} and stride {strides} differ in length")
  numel = math.prod(shape)
  what = f"tensor of size {shape} on storage '{storage.key}'"
  budget = limits.budget()
  budget.check_elements(numel, what)
  if storage.buf is None:
    return _Pending()
  if numel == 0:
    return np.zeros(shape, dt.newbyteorder("="))
  if any(n > 1 and st == 0 for n, st in zip(shape, strides)):
    raise UnsafePickleError(f"{what}: stride {strides} repeats elements (stride-0 expansion "
                            "is not weight-file data)")
  item = dt.itemsize
  nbytes = storage.buf.size
  start = offset * item
  end = start + (sum((n - 1) * st for n, st in zip(shape, strides)) + 1) * item
  if end > nbytes:
    raise UnsafePickleError(
        f"tensor of size {shape}, stride {strides}, offset {offset} reads past its storage "
        f"'{storage.key}' of {nbytes} bytes ({nbytes // item} elements of {dt.name})")
  if numel * item > end - start:
    raise UnsafePickleError(f"{what}: stride {strides} makes elements overlap (a view larger "
                            "than the data it covers is not weight-file data)")
  budget.charge(numel * item, what)
  typed = storage.buf[start:end].view(storage.typed(dt))
  view = np.lib.stride_tricks.as_strided(
      typed, shape=shape, strides=tuple(st * item for st in strides), writeable=False)
  return np.array(view, dtype=dt.newbyteorder("="), order="C", copy=True)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> Any:
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> Any:
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, TorchDType):
    raise UnsafePickleError(f"tensor dtype {short(dtype)} is not a torch dtype")
  return _rebuild_tensor(storage, storage_offset, size, stride, dtype=dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
  del requires_grad, backward_hooks, state
  if not isinstance(data, (np.ndarray, _Pending)):
    raise UnsafePickleError(f"parameter data is {type(data).__name__}, not a tensor")
  return data


class Namespace(Frozen, PickleObject):
  """Inert stand-in for ``argparse.Namespace`` (rosinality's train.py saves its command-line
  arguments in every checkpoint): constructed without arguments, given at most one state, a
  dict with str keys, kept as plain data in ``fields``. Nothing is called or set on a class."""

  __slots__ = ("fields", "_built")

  def __init__(self):
    self._init(fields={}, _built=False)

  @classmethod
  def _pickle_new(cls, args: tuple, kwargs: dict) -> "Namespace":
    if args or kwargs:
      raise UnsafePickleError(f"refusing argparse.Namespace arguments {short((args, kwargs))}")
    return cls()

  def _pickle_build(self, state: Any) -> None:
    if self._built:
      raise UnsafePickleError("refusing to set the state of an argparse.Namespace twice")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise UnsafePickleError(f"argparse.Namespace state {short(state)} is not a dict of "
                              "named fields")
    object.__setattr__(self, "fields", plain(dict(state)))
    object.__setattr__(self, "_built", True)

  def __repr__(self) -> str:
    return f"Namespace({short(self.fields, 200)})"


def _torch_size(items: Any = ()) -> tuple:
  """``torch.Size(iterable)`` -> a tuple of natural numbers."""
  return _as_index_tuple(items, "size")


def _torch_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): PickledDict,
      ("torch", "Size"): SafeCallable(_torch_size, "torch.Size"),
      ("argparse", "Namespace"): Namespace,
  }
  for name, fn in (("_rebuild_tensor", _rebuild_tensor),
                   ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                   ("_rebuild_tensor_v3", _rebuild_tensor_v3),
                   ("_rebuild_parameter", _rebuild_parameter),
                   ("_rebuild_parameter_with_state", _rebuild_parameter)):
    out[("torch._utils", name)] = SafeCallable(fn, f"torch._utils.{name}")
  for name, code in _STORAGE_DTYPES.items():
    dt = simple_dtype(code)
    for module in ("torch", "torch.cuda", "torch.storage"):
      out[(module, name)] = StorageType(f"{module}.{name}", dt)
  out[("torch.storage", "TypedStorage")] = StorageType("torch.storage.TypedStorage",
                                                       np.dtype("u1"))
  for name, code in _TORCH_DTYPES.items():
    out[("torch", name)] = TorchDType(f"torch.{name}", simple_dtype(code))
  return out


#: every global a torch weight file may name (values are local stubs, never torch).
TORCH_GLOBALS: Mapping[tuple[str, str], Any] = _torch_globals()


def _text(x: Any) -> Any:
  return x.decode("ascii") if isinstance(x, bytes) else x


def _key(x: Any, what: str) -> str:
  x = _text(x)
  if not isinstance(x, str) or not x or len(x) > 256:
    raise UnsafePickleError(f"{what} {short(x)} is not a storage key")
  return x


class _TorchUnpickler(RestrictedUnpickler):
  """Restricted unpickler resolving storage persistent ids through ``self.storages``."""

  #: callback (key, dtype, numel) -> Storage or None (bytes not known yet); set by the reader.
  fetch = None
  storages: dict

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
      kind = _text(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__
      raise UnsafePickleError(
          f"refusing persistent id of kind {short(kind)} in {self.name}: only tensor storages "
          "are allowed (whole pickled models are not weight files; save a state_dict)")
    if len(pid) == 5:
      _, stype, key, _location, numel = pid
      view = None
    elif len(pid) == 6:
      _, stype, key, _location, numel, view = pid
    else:
      raise UnsafePickleError(f"malformed storage id {short(pid)} in {self.name}")
    if not isinstance(stype, StorageType):
      raise UnsafePickleError(f"storage type {short(stype)} in {self.name} is not a torch "
                              "storage")
    key = _key(key, "storage key")
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
      raise UnsafePickleError(f"storage '{key}' in {self.name} has invalid size {short(numel)}")
    limits.check_file_size(numel * stype.dtype.itemsize, self.name, f"storage '{key}'")
    st = self.storages.get(key)
    if st is None:
      st = self.fetch(key, stype.dtype, numel)
      self.storages[key] = st
    elif st.dtype != stype.dtype or st.numel != numel:
      raise UnsafePickleError(
          f"storage '{key}' in {self.name} is declared as {st.dtype.name}[{st.numel}] and as "
          f"{stype.dtype.name}[{numel}]")
    if view is None:
      return st
    if not isinstance(view, tuple) or len(view) != 3:
      raise UnsafePickleError(f"malformed storage view {short(view)} in {self.name}")
    view_key = _key(view[0], "storage view key")
    offset = _int(view[1], "storage view offset")
    size = _int(view[2], "storage view size")
    if offset + size > st.numel:
      raise UnsafePickleError(f"storage view {short(view)} in {self.name} exceeds its storage "
                              f"'{key}' of {st.numel} elements")
    if st.buf is None:
      return Storage(view_key, st.dtype, size, None, st.big_endian)
    item = st.dtype.itemsize
    return Storage(view_key, st.dtype, size, st.buf[offset * item:(offset + size) * item],
                   st.big_endian)


def _load_with_storages(data: Any, *, name: str, fetch, storages: dict) -> Any:
  def make(f, *, name, allowed):
    u = _TorchUnpickler(f, name=name, allowed=allowed)
    u.fetch = fetch
    u.storages = storages
    return u
  return restricted_load(data, name=name, allowed=TORCH_GLOBALS, unpickler=make)


def _storage(key: str, raw: bytes, dtype: np.dtype, numel: int, *, big_endian: bool,
             what: str) -> Storage:
  """A ``Storage`` over exactly ``numel * itemsize`` bytes of ``raw`` (checked)."""
  need = numel * dtype.itemsize
  if len(raw) != need:
    raise UserError(f"{what}: storage has {len(raw)} bytes, expected {need} "
                    f"({numel} elements of {dtype.name})")
  st = Storage(key, dtype, numel, np.frombuffer(raw, dtype=np.uint8), big_endian)
  if numel:
    check_byte_order(st.buf.view(st.typed(dtype)), declared="big" if big_endian else "little",
                     what=what)
  return st


def is_torch_zip(data: bytes) -> bool:
  """True for a zip archive holding a ``*/data.pkl`` (torch >= 1.6 format)."""
  if not data.startswith(ZIP_MAGIC):
    return False
  try:
    with open_zip(data, "<zip>") as zf:
      return _zip_prefix(zf) is not None
  except UserError:
    return False


def _zip_prefix(zf: zipfile.ZipFile) -> Optional[str]:
  cands = [n[: -len("data.pkl")] for n in zf.namelist()
           if n == "data.pkl" or n.endswith("/data.pkl")]
  return min(cands, key=len) if cands else None


def is_torch_legacy(data: bytes) -> bool:
  """True if the first pickle of ``data`` is torch's legacy magic number."""
  if not data[:1] == b"\x80":
    return False
  try:
    magic = restricted_load(data[:64], name="<header>", allowed={})
  except UserError:
    return False
  return isinstance(magic, int) and magic == LEGACY_MAGIC


def _central_directory_size(data: bytes) -> Optional[int]:
  """Size in bytes of a zip's central directory from its end records (None if not found)."""
  pos = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
  if pos < 0 or pos + 22 > len(data):
    return None
  (size,) = struct.unpack_from("<I", data, pos + 12)
  if size == 0xFFFFFFFF and pos >= 20 and data[pos - 20:pos - 16] == b"PK\x06\x07":
    (eocd64,) = struct.unpack_from("<Q", data, pos - 12)
    if eocd64 + 56 <= len(data) and data[eocd64:eocd64 + 4] == b"PK\x06\x06":
      (size,) = struct.unpack_from("<Q", data, eocd64 + 40)
  return size


def open_zip(data: bytes, name: str) -> zipfile.ZipFile:
  """The zip archive in ``data``; a UserError naming ``name`` if it is not one, or if its
  central directory is over ``MAX_ZIP_DIRECTORY_BYTES`` (checked before parsing it)."""
  size = _central_directory_size(data)
  if size is not None and size > MAX_ZIP_DIRECTORY_BYTES:
    raise UserError(f"{name}: zip central directory of {size:,} bytes is over the limit of "
                    f"{MAX_ZIP_DIRECTORY_BYTES:,} (far more entries than any weight file)")
  try:
    return zipfile.ZipFile(io.BytesIO(data))
  except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
          struct.error, UnicodeDecodeError) as e:
    raise UserError(f"{name}: not a readable zip archive ({short(str(e), 100)})") from None


def read_member(zf: zipfile.ZipFile, member: str | zipfile.ZipInfo, name: str, *,
                expect: Optional[int] = None) -> bytes:
  """The bytes of one zip member, bounded: its declared size must equal ``expect`` (if given)
  and fit the per-file cap *before* anything is inflated; inflation stops at the declared size
  and every byte counts against the file budget. UserError naming ``name:member``."""
  try:
    info = member if isinstance(member, zipfile.ZipInfo) else zf.getinfo(member)
  except KeyError:
    raise UserError(f"{name}: missing zip member {member}") from None
  what = f"{name}:{info.filename}"
  if expect is not None and info.file_size != expect:
    raise UserError(f"{what}: storage has {info.file_size} bytes, expected {expect}")
  limits.check_file_size(info.file_size, what, "zip member")
  limits.budget(name).charge(info.file_size, f"zip member {info.filename}")
  try:
    with zf.open(info) as f:
      raw = f.read(info.file_size + 1)
  except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError,
          RuntimeError, struct.error) as e:  # zlib.error is an Exception too
    raise UserError(f"{what}: cannot read zip member ({short(str(e), 100)})") from None
  except Exception as e:
    raise UserError(f"{what}: cannot read zip member ({type(e).__name__}: "
                    f"{short(str(e), 100)})") from None
  if len(raw) != info.file_size:
    raise UserError(f"{what}: zip member has {len(raw)} bytes, its header says "
                    f"{info.file_size}")
  return raw


def _read_zip(data: bytes, name: str) -> Any:
  with open_zip(data, name) as zf:
    prefix = _zip_prefix(zf)
    if prefix is None:
      raise UserError(f"{name}: zip archive without data.pkl, not a torch.save file")
    names = set(zf.namelist())
    big = False
    if prefix + "byteorder" in names:
      info = zf.getinfo(prefix + "byteorder")
      if info.file_size > 16:
        raise UserError(f"{name}: byteorder record of {info.file_size} bytes (expected "
                        "'little' or 'big')")
      order = read_member(zf, info, name).decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise UserError(f"{name}: unknown byteorder {order!r}")
      big = order == "big"

    def fetch(key: str, dtype: np.dtype, numel: int) -> Storage:
      entry = f"{prefix}data/{key}"
      if entry not in names:
        raise UserError(f"{name}: missing storage {entry}")
      raw = read_member(zf, entry, name, expect=numel * dtype.itemsize)
      return _storage(key, raw, dtype, numel, big_endian=big, what=f"{name}:{entry}")

    pkl = read_member(zf, prefix + "data.pkl", name)
    return _load_with_storages(pkl, name=f"{name}:{prefix}data.pkl", fetch=fetch, storages={})


def _read_legacy(data: bytes, name: str) -> Any:
  f = io.BytesIO(data)

  def next_pickle(what: str, allowed=None) -> Any:
    return restricted_load(f, name=f"{name} ({what})", allowed=allowed or {})

  magic = next_pickle("magic number")
  if magic != LEGACY_MAGIC:
    raise UserError(f"{name}: not a legacy torch file (bad magic number)")
  proto = next_pickle("protocol version")
  if proto != LEGACY_PROTOCOL:
    raise UserError(f"{name}: unsupported legacy torch protocol version {short(proto)}")
  sys_info = next_pickle("sys_info")
  little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
  if little not in (True, False):
    raise UserError(f"{name}: sys_info little_endian is {short(little)}, not a bool")
  big = little is False
  main_start = f.tell()
  storages: dict = {}
  # Pass 1: learn the storages (dtype, size) and find where the main pickle ends.
  _load_with_storages(f, name=name, fetch=lambda key, dtype, numel: Storage(key, dtype, numel),
                      storages=storages)
  keys = next_pickle("storage keys")
  if not isinstance(keys, list):
    raise UserError(f"{name}: malformed legacy torch file (storage key list is "
                    f"{type(keys).__name__})")
  filled: dict = {}
  order = ">" if big else "<"
  for key in keys:
    key = _key(key, f"{name}: storage key")
    st = storages.get(key)
    if st is None:
      raise UserError(f"{name}: storage key {key!r} not referenced by the pickle")
    if key in filled:
      raise UserError(f"{name}: storage key {key!r} listed twice")
    head = f.read(8)
    if len(head) != 8:
      raise UserError(f"{name}: truncated storage {key!r}")
    (count,) = struct.unpack(order + "q", head)
    if count != st.numel:
      (swapped,) = struct.unpack(("<" if big else ">") + "q", head)
      if swapped == st.numel:
        raise UserError(
            f"{name}: sys_info says {'big' if big else 'little'}-endian but the size of storage "
            f"{key!r} is written {'little' if big else 'big'}-endian: the byte-order record "
            "contradicts the data")
      raise UserError(f"{name}: storage {key!r} has {count} elements, expected {st.numel}")
    nbytes = count * st.dtype.itemsize
    limits.budget(name).charge(nbytes, f"storage {key!r}")
    raw = f.read(nbytes)
    filled[key] = _storage(key, raw, st.dtype, count, big_endian=big,
                           what=f"{name} storage {key!r}")
  # Pass 2: rebuild the tensors from the filled storages.
  f.seek(main_start)

  def fetch(key: str, dtype: np.dtype, numel: int) -> Storage:
    if key not in filled:
      raise UserError(f"{name}: storage {key!r} has no data")
    return filled[key]

  return _load_with_storages(f, name=name, fetch=fetch, storages={})


def storage_from_bytes(data: Any) -> Storage:
  """``torch.storage._load_from_bytes(data)`` as network pickles use it: ``data`` is a complete
  legacy ``torch.save`` stream of one storage (how ``pickle.dump`` writes a torch storage).
  Read with the legacy reader, inside the enclosing file's byte budget and opcode count;
  UserError (naming the file) if it is anything else."""
  name = f"{limits.budget().name} (storage stream)"
  if not isinstance(data, (bytes, bytearray)):
    raise UnsafePickleError(f"{name}: is a {type(data).__name__}, not bytes")
  data = bytes(data)
  if not is_torch_legacy(data):
    raise UserError(f"{name}: not a legacy torch.save stream")
  obj = _read_legacy(data, name)
  if not isinstance(obj, Storage) or obj.buf is None:
    raise UserError(f"{name}: holds {short(obj)}, not one storage")
  return obj


def read_torch_file(src: PathOrBytes, *, name: str | None = None) -> Any:
  """Read a ``torch.save`` file (zip or legacy) into numpy arrays and plain containers.

  Args:
    src: a path, or the file's bytes (then ``name`` is used in messages).
    name: display name for messages (default: the path).
  Returns:
    The saved object; tensors as ``np.ndarray`` (C-contiguous copies), OrderedDict as dict.
  Raises:
    UnsafePickleError: the file names a global outside the allow-list.
    UserError: anything else wrong with the file (one line naming it), including a file over
      the ``convert.limits`` caps.
  """
  data, display = open_source(src, name)
  with limits.file_budget(display):
    if data.startswith(ZIP_MAGIC):
      return _read_zip(data, display)
    if is_torch_legacy(data):
      return _read_legacy(data, display)
  if data[:262][257:262] == b"ustar":
    raise UserError(f"{display}: torch's old tar format (torch < 0.4) is not supported; "
                    "re-save it as a zip .pth")
  raise UserError(f"{display}: not a torch.save file (neither the zip nor the legacy format)")


def is_state_dict(x: Any) -> bool:
  """A non-empty mapping of str keys to ``np.ndarray`` tensors."""
  return (isinstance(x, Mapping) and len(x) > 0
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in x.items()))


#: wrapper keys tried in order before any other key holding a state dict.
WRAPPER_KEYS = ("state_dict", "netG_state_dict", "generator", "g_ema", "G_ema", "netG", "G",
                "model_state_dict", "model", "params")


def find_state_dict(obj: Any, *, name: str = "checkpoint"
                    ) -> tuple[dict[str, np.ndarray], Optional[str]]:
  """Locate the flat ``{key: ndarray}`` state dict inside a loaded checkpoint.

  Returns ``(state_dict, wrapper_key)``; ``wrapper_key`` is None when ``obj`` itself is the
  state dict, else the top-level key it was found under (``'netG_state_dict'``, ...).
  """
  if is_state_dict(obj):
    return dict(obj), None
  if not isinstance(obj, Mapping):
    raise UserError(f"{name}: holds a {type(obj).__name__}, not a state dict")
  for key in WRAPPER_KEYS:
    if is_state_dict(obj.get(key)):
      return dict(obj[key]), key
  found = [k for k, v in obj.items() if is_state_dict(v)]
  if len(found) == 1:
    return dict(obj[found[0]]), found[0]
  keys = ", ".join(map(repr, list(obj)[:8])) + (" ..." if len(obj) > 8 else "")
  if found:
    raise UserError(f"{name}: several state dicts ({', '.join(map(repr, found))}); "
                    "cannot tell which is the generator (python -m convert: choose one with "
                    "--network)")
  raise UserError(f"{name}: no state dict (a dict of tensors) found; top-level keys: {keys}")


def flat_state_dict(obj: Any, *, name: str = "checkpoint") -> dict[str, np.ndarray]:
  """``find_state_dict(obj)[0]``: the flat ``{key: ndarray}`` state dict of a checkpoint."""
  return find_state_dict(obj, name=name)[0]


__all__ = ["read_torch_file", "is_torch_zip", "is_torch_legacy", "find_state_dict", "read_member",
           "flat_state_dict", "is_state_dict", "open_zip", "storage_from_bytes", "Namespace",
           "Storage", "TORCH_GLOBALS", "LEGACY_MAGIC", "WRAPPER_KEYS"]
