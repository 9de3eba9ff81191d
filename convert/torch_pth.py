"""Read PyTorch ``torch.save`` files without torch and without executing anything from them.

Two on-disk formats are supported:

* **zip** (torch >= 1.6): ``<top>/data.pkl`` (protocol-2 pickle; tensors are persistent ids
  ``('storage', storage_type, key, location, numel)``), ``<top>/data/<key>`` raw little-endian
  storage bytes and ``<top>/byteorder``. The top folder name varies (``archive/``, the file stem,
  ``weights/`` for gan-face-generate's ``weights.tar``).
* **legacy** (torch < 1.6, ``_use_new_zipfile_serialization=False``): five consecutive pickles
  -- the magic number ``0x1950a86a20f9469cfc6c``, the protocol version (1001), ``sys_info``
  (endianness), the main object (persistent ids ``('storage', storage_type, root_key, location,
  numel, view_metadata)``), the list of storage keys -- followed, for each key, by an int64
  element count and the raw storage bytes.

Tensors come back as C-contiguous ``np.ndarray`` copies with the dtype, shape, strides and
storage offset of ``torch._utils._rebuild_tensor_v2`` semantics (re-implemented here as local
stubs); ``nn.Parameter`` becomes its array; ``OrderedDict`` becomes ``dict``. Only the globals
these formats need are allowed (see ``TORCH_GLOBALS``); anything else raises
``convert.safe_pickle.UnsafePickleError`` naming the global.

Public API:

* ``read_torch_file(path_or_bytes, *, name=None) -> object`` -- the unpickled object.
* ``is_torch_zip(data) -> bool``, ``is_torch_legacy(data) -> bool`` -- content sniffing.
* ``find_state_dict(obj, *, name) -> (dict[str, np.ndarray], wrapper_key or None)``.
* ``flat_state_dict(obj, *, name=...) -> dict[str, np.ndarray]``.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from convert.safe_pickle import (Frozen, PathOrBytes, PickledDict, RestrictedUnpickler,
                                 SafeCallable, UnsafePickleError, open_source, plain,
                                 restricted_load)
from mgan_jax.errors import UserError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"


def _bfloat16() -> np.dtype:
  import ml_dtypes  # shipped with jax
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class name -> numpy dtype (name of a numpy dtype, or a callable for bfloat16).
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": _bfloat16,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16",
}
# torch dtype attribute name -> numpy dtype.
_TORCH_DTYPES: dict[str, Any] = {
    "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2",
    "half": "<f2", "bfloat16": _bfloat16, "int64": "<i8", "long": "<i8", "int32": "<i4",
    "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "complex64": "<c8", "complex128": "<c16",
}


def _np_dtype(spec: Any) -> np.dtype:
  return spec() if callable(spec) else np.dtype(spec)


class StorageType(Frozen):
  """Stub for ``torch.FloatStorage`` & co.: only carries the element dtype (immutable)."""

  __slots__ = ("qualname", "dtype")

  def __init__(self, qualname: str, dtype: np.dtype):
    self._init(qualname=qualname, dtype=dtype)

  def __repr__(self) -> str:
    return f"<storage type {self.qualname}>"

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    raise UnsafePickleError(f"refusing to construct {self.qualname} from pickle data")


class TorchDType(Frozen):
  """Stub for ``torch.float32`` & co. (immutable)."""

  __slots__ = ("qualname", "dtype")

  def __init__(self, qualname: str, dtype: np.dtype):
    self._init(qualname=qualname, dtype=dtype)

  def __repr__(self) -> str:
    return self.qualname


class Storage:
  """A (typed view of a) storage: ``array`` is the 1-D element array, None until its bytes
  are known (legacy files store the bytes after the main pickle)."""

  def __init__(self, key: str, dtype: np.dtype, numel: int, array: Optional[np.ndarray] = None):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.array = array


class _Pending:
  """Placeholder tensor produced while the storage bytes are not known yet (legacy pass 1)."""


def _as_index_tuple(x: Any, what: str) -> tuple[int, ...]:
  if isinstance(x, (int, np.integer)):
    x = (x,)
  if not isinstance(x, (tuple, list)) or not all(isinstance(i, (int, np.integer)) for i in x):
    raise UnsafePickleError(f"tensor {what} {x!r} is not a tuple of ints")
  out = tuple(int(i) for i in x)
  if any(i < 0 for i in out):
    raise UnsafePickleError(f"tensor {what} {out} has negative entries")
  return out


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    dtype: Optional[np.dtype] = None) -> Any:
  """torch._utils._rebuild_tensor semantics on a numpy storage (copy, C-contiguous)."""
  if not isinstance(storage, Storage):
    raise UnsafePickleError(f"tensor storage is {type(storage).__name__}, not a storage id")
  if storage.array is None:
    return _Pending()
  arr = storage.array
  if dtype is not None and dtype != arr.dtype:  # untyped (byte) storage read as `dtype`
    nbytes = arr.size * arr.dtype.itemsize
    arr = arr[: nbytes - nbytes % dtype.itemsize].view(dtype)
  shape = _as_index_tuple(size, "size")
  strides = _as_index_tuple(stride, "stride")
  if not isinstance(storage_offset, (int, np.integer)) or storage_offset < 0:
    raise UnsafePickleError(f"tensor storage offset {storage_offset!r} is not a natural number")
  offset = int(storage_offset)
  if len(strides) != len(shape):
    raise UnsafePickleError(f"tensor size {shape} and stride {strides} differ in length")
  if any(s == 0 for s in shape):
    return np.zeros(shape, arr.dtype)
  last = offset + sum((n - 1) * st for n, st in zip(shape, strides))
  if last >= arr.size:
    raise UnsafePickleError(
        f"tensor of size {shape}, stride {strides}, offset {offset} reads past its storage "
        f"'{storage.key}' of {arr.size} elements")
  view = np.lib.stride_tricks.as_strided(
      arr[offset:], shape=shape, strides=tuple(st * arr.dtype.itemsize for st in strides),
      writeable=False)
  return np.array(view, order="C", copy=True)


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
    raise UnsafePickleError(f"tensor dtype {dtype!r} is not a torch dtype")
  return _rebuild_tensor(storage, storage_offset, size, stride, dtype=dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
  del requires_grad, backward_hooks, state
  if not isinstance(data, (np.ndarray, _Pending)):
    raise UnsafePickleError(f"parameter data is {type(data).__name__}, not a tensor")
  return data


def _torch_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): PickledDict,
      ("torch", "Size"): tuple,
  }
  for name, fn in (("_rebuild_tensor", _rebuild_tensor),
                   ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                   ("_rebuild_tensor_v3", _rebuild_tensor_v3),
                   ("_rebuild_parameter", _rebuild_parameter),
                   ("_rebuild_parameter_with_state", _rebuild_parameter)):
    out[("torch._utils", name)] = SafeCallable(fn, f"torch._utils.{name}")
  for name, spec in _STORAGE_DTYPES.items():
    dt = _np_dtype(spec)
    for module in ("torch", "torch.cuda", "torch.storage"):
      out[(module, name)] = StorageType(f"{module}.{name}", dt)
  out[("torch.storage", "TypedStorage")] = StorageType("torch.storage.TypedStorage",
                                                       np.dtype("u1"))
  for name, spec in _TORCH_DTYPES.items():
    out[("torch", name)] = TorchDType(f"torch.{name}", _np_dtype(spec))
  return out


#: every global a torch weight file may name (values are local stubs, never torch).
TORCH_GLOBALS: Mapping[tuple[str, str], Any] = _torch_globals()


def _text(x: Any) -> Any:
  return x.decode("ascii") if isinstance(x, bytes) else x


class _TorchUnpickler(RestrictedUnpickler):
  """Restricted unpickler resolving storage persistent ids through ``self.storages``."""

  #: callback (key, dtype, numel) -> np.ndarray or None; set by the reader.
  fetch = None
  storages: dict

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
      kind = _text(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__
      raise UnsafePickleError(
          f"refusing persistent id of kind {kind!r} in {self.name}: only tensor storages are "
          "allowed (whole pickled models are not weight files; save a state_dict)")
    if len(pid) == 5:
      _, stype, key, _location, numel = pid
      view = None
    elif len(pid) == 6:
      _, stype, key, _location, numel, view = pid
    else:
      raise UnsafePickleError(f"malformed storage id {pid!r} in {self.name}")
    if not isinstance(stype, StorageType):
      raise UnsafePickleError(f"storage type {stype!r} in {self.name} is not a torch storage")
    key = str(_text(key))
    if not isinstance(numel, (int, np.integer)) or numel < 0:
      raise UnsafePickleError(f"storage '{key}' in {self.name} has invalid size {numel!r}")
    st = self.storages.get(key)
    if st is None:
      st = Storage(key, stype.dtype, int(numel), self.fetch(key, stype.dtype, int(numel)))
      self.storages[key] = st
    if view is None:
      return st
    view_key, offset, view_size = view
    if st.array is None:
      return Storage(str(_text(view_key)), st.dtype, int(view_size))
    if offset < 0 or view_size < 0 or offset + view_size > st.array.size:
      raise UnsafePickleError(f"storage view {view!r} in {self.name} exceeds its storage")
    return Storage(str(_text(view_key)), st.dtype, int(view_size),
                   st.array[offset:offset + view_size])


def _load_with_storages(data: bytes, *, name: str, fetch, storages: dict) -> Any:
  def make(f, *, name, allowed):
    u = _TorchUnpickler(f, name=name, allowed=allowed)
    u.fetch = fetch
    u.storages = storages
    return u
  return restricted_load(data, name=name, allowed=TORCH_GLOBALS, unpickler=make)


def _storage_array(raw: bytes, dtype: np.dtype, numel: int, *, big_endian: bool,
                   what: str) -> np.ndarray:
  need = numel * dtype.itemsize
  if len(raw) < need:
    raise UserError(f"{what}: storage has {len(raw)} bytes, expected {need}")
  dt = dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype
  arr = np.frombuffer(raw, dtype=dt, count=numel)
  return arr.astype(dtype.newbyteorder("="), copy=False) if big_endian else arr


def is_torch_zip(data: bytes) -> bool:
  """True for a zip archive holding a ``*/data.pkl`` (torch >= 1.6 format)."""
  if not data.startswith(ZIP_MAGIC):
    return False
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
      return _zip_prefix(zf) is not None
  except zipfile.BadZipFile:
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


def open_zip(data: bytes, name: str) -> zipfile.ZipFile:
  """The zip archive in ``data``; a UserError naming ``name`` if it is not one."""
  try:
    return zipfile.ZipFile(io.BytesIO(data))
  except zipfile.BadZipFile as e:
    raise UserError(f"{name}: not a readable zip archive ({e})") from None


def _read_zip(data: bytes, name: str) -> Any:
  with open_zip(data, name) as zf:
    prefix = _zip_prefix(zf)
    if prefix is None:
      raise UserError(f"{name}: zip archive without data.pkl, not a torch.save file")
    names = set(zf.namelist())
    big = False
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise UserError(f"{name}: unknown byteorder {order!r}")
      big = order == "big"

    def fetch(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
      entry = f"{prefix}data/{key}"
      if entry not in names:
        raise UserError(f"{name}: missing storage {entry}")
      return _storage_array(zf.read(entry), dtype, numel, big_endian=big,
                            what=f"{name}:{entry}")

    obj = _load_with_storages(zf.read(prefix + "data.pkl"), name=f"{name}:{prefix}data.pkl",
                              fetch=fetch, storages={})
  return plain(obj)


def _read_legacy(data: bytes, name: str) -> Any:
  f = io.BytesIO(data)

  def next_pickle(what: str, allowed=None) -> Any:
    return restricted_load(f, name=f"{name} ({what})", allowed=allowed or {})

  magic = next_pickle("magic number")
  if magic != LEGACY_MAGIC:
    raise UserError(f"{name}: not a legacy torch file (bad magic number)")
  proto = next_pickle("protocol version")
  if proto != LEGACY_PROTOCOL:
    raise UserError(f"{name}: unsupported legacy torch protocol version {proto!r}")
  sys_info = next_pickle("sys_info")
  big = isinstance(sys_info, dict) and sys_info.get("little_endian", True) is False
  main_start = f.tell()
  storages: dict = {}
  # Pass 1: learn the storages (dtype, size) and find where the main pickle ends.
  _load_with_storages(f, name=name, fetch=lambda key, dtype, numel: None, storages=storages)
  keys = next_pickle("storage keys")
  if not isinstance(keys, list):
    raise UserError(f"{name}: malformed legacy torch file (storage key list is "
                    f"{type(keys).__name__})")
  filled: dict = {}
  order = "<" if not big else ">"
  for key in keys:
    key = str(_text(key))
    st = storages.get(key)
    if st is None:
      raise UserError(f"{name}: storage key {key!r} not referenced by the pickle")
    head = f.read(8)
    if len(head) != 8:
      raise UserError(f"{name}: truncated storage {key!r}")
    (count,) = struct.unpack(order + "q", head)
    if count != st.numel:
      raise UserError(f"{name}: storage {key!r} has {count} elements, expected {st.numel}")
    raw = f.read(count * st.dtype.itemsize)
    filled[key] = Storage(key, st.dtype, st.numel,
                          _storage_array(raw, st.dtype, count, big_endian=big,
                                         what=f"{name} storage {key!r}"))
  # Pass 2: rebuild the tensors from the filled storages.
  f.seek(main_start)

  def fetch(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    if key not in filled:
      raise UserError(f"{name}: storage {key!r} has no data")
    return filled[key].array

  return plain(_load_with_storages(f, name=name, fetch=fetch, storages={}))


def read_torch_file(src: PathOrBytes, *, name: str | None = None) -> Any:
  """Read a ``torch.save`` file (zip or legacy) into numpy arrays and plain containers.

  Args:
    src: a path, or the file's bytes (then ``name`` is used in messages).
    name: display name for messages (default: the path).
  Returns:
    The saved object; tensors as ``np.ndarray`` (C-contiguous copies), OrderedDict as dict.
  Raises:
    UnsafePickleError: the file names a global outside the allow-list.
    UserError: anything else wrong with the file (one line naming it).
  """
  data, display = open_source(src, name)
  if data.startswith(ZIP_MAGIC):
    return _read_zip(data, display)
  if is_torch_legacy(data):
    return _read_legacy(data, display)
  if data[:262][257:262] == b"ustar":
    raise UserError(f"{display}: torch's old tar format (torch < 0.4) is not supported; "
                    "re-save it as a zip .pth")
  raise UserError(f"{display}: not a torch.save file (neither the zip nor the legacy format)")


def _is_state_dict(x: Any) -> bool:
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
  if _is_state_dict(obj):
    return dict(obj), None
  if not isinstance(obj, Mapping):
    raise UserError(f"{name}: holds a {type(obj).__name__}, not a state dict")
  for key in WRAPPER_KEYS:
    if _is_state_dict(obj.get(key)):
      return dict(obj[key]), key
  found = [k for k, v in obj.items() if _is_state_dict(v)]
  if len(found) == 1:
    return dict(obj[found[0]]), found[0]
  keys = ", ".join(map(repr, list(obj)[:8])) + (" ..." if len(obj) > 8 else "")
  if found:
    raise UserError(f"{name}: several state dicts ({', '.join(map(repr, found))}); "
                    "cannot tell which is the generator")
  raise UserError(f"{name}: no state dict (a dict of tensors) found; top-level keys: {keys}")


def flat_state_dict(obj: Any, *, name: str = "checkpoint") -> dict[str, np.ndarray]:
  """``find_state_dict(obj)[0]``: the flat ``{key: ndarray}`` state dict of a checkpoint."""
  return find_state_dict(obj, name=name)[0]


__all__ = ["read_torch_file", "is_torch_zip", "is_torch_legacy", "find_state_dict",
           "flat_state_dict", "open_zip", "TORCH_GLOBALS", "LEGACY_MAGIC", "WRAPPER_KEYS"]
