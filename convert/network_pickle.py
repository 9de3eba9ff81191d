"""Read NVlabs network pickles (stylegan2-ada-pytorch ``network-snapshot-*.pkl``) as data.

A snapshot is ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...))``. Every network module in it is a ``torch_utils.persistence``
object, pickled as a call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {'type': 'class', 'version', 'module_src', 'class_name', 'state'}``: the official
loader *executes* ``module_src`` (the source of ``training/networks.py``) to rebuild the class.
Here that global is a validating stub returning an inert ``PersistentObject``: ``module_src`` is
kept as a string and never run, ``state`` (the module's ``__dict__``) is kept as plain data.

Each tensor is ``torch._utils._rebuild_tensor_v2`` (or ``_rebuild_parameter``) of a storage
pickled as ``torch.storage._load_from_bytes(b)``, where ``b`` is a complete legacy
``torch.save`` stream; it is read by ``convert.torch_pth.storage_from_bytes`` with the legacy
reader, within the file's byte budget, and its opcodes count against the enclosing pickle's
(``convert.limits``). Files written by Python 3.7 / numpy 1.x / torch 1.x (protocol 3,
``numpy.core.multiarray.scalar``, ``OrderedDict`` module dicts, ``builtins.set``) and by
current versions (protocol 4, ``numpy._core``, plain dicts, ``EMPTY_SET``) read the same.
Any other global -- a payload, a plain ``torch.nn`` module -- raises ``UnsafePickleError``.

Public API:

* ``PersistentObject`` -- ``class_name``, ``module_src`` (str, never executed), ``version``,
  ``state`` (dict); ``attr(name, default)``; ``children()`` (the ``_modules`` dict).
* ``NETWORK_GLOBALS`` -- the allow-list of these pickles.
* ``read_network_pickle(path_or_bytes, *, name=None) -> object`` -- the unpickled snapshot.
* ``is_network_snapshot(obj) -> bool`` -- a ``PersistentObject`` or a dict holding one.
* ``networks(obj) -> dict[str, PersistentObject]`` -- the networks of a snapshot by key.
* ``module_state_dict(net, *, what) -> dict[str, np.ndarray]`` -- what ``net.state_dict()``
  returns in torch (parameters, then persistent buffers, then submodules, dotted keys).
* ``modules(net) -> list[(dotted name, PersistentObject)]`` -- ``net`` and its submodules.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from convert.safe_pickle import (NUMPY_GLOBALS, Frozen, PathOrBytes, PickledDict,
                                 SafeCallable, UnsafePickleError, open_source, plain,
                                 restricted_load, short)
from convert.torch_pth import TORCH_GLOBALS, storage_from_bytes
from mgan_jax.errors import UserError

#: submodules may nest at most this deep (stylegan2-ada-pytorch nests 4: G.synthesis.b64.conv0
#: .affine).
MAX_MODULE_DEPTH = 16
_META_KEYS = {"type", "version", "module_src", "class_name", "state"}
_SET_ITEM_TYPES = (str, int, float, bytes, type(None))


class PersistentObject(Frozen):
  """An inert ``torch_utils.persistence`` object: the class is only named, never rebuilt."""

  __slots__ = ("class_name", "module_src", "version", "state", "depth")

  def __init__(self, class_name: str, module_src: str, version: int, state: dict, depth: int):
    self._init(class_name=class_name, module_src=module_src, version=version, state=state,
               depth=depth)

  def __repr__(self) -> str:
    return f"<persistent {self.class_name} (source not run)>"

  def attr(self, name: str, default: Any = None) -> Any:
    """A plain attribute of the module (``self.<name>`` in the official class)."""
    return self.state.get(name, default)

  def children(self) -> dict:
    mods = self.state.get("_modules") or {}
    return mods if isinstance(mods, dict) else {}


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
  """``torch_utils.persistence._reconstruct_persistent_obj(meta)`` without running the source."""
  if not isinstance(meta, dict) or set(meta) != _META_KEYS:
    keys = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
    raise UnsafePickleError(f"persistent object description {short(keys, 120)} does not have "
                            f"the fields {sorted(_META_KEYS)}")
  if meta["type"] != "class":
    raise UnsafePickleError(f"refusing persistent object of type {short(meta['type'])}: only "
                            "classes are rebuilt")
  version, src, cls = meta["version"], meta["module_src"], meta["class_name"]
  if type(version) is not int:
    raise UnsafePickleError(f"persistent object version {short(version)} is not an integer")
  if not isinstance(src, str):
    raise UnsafePickleError(f"persistent object module_src is a {type(src).__name__}, not text")
  if not isinstance(cls, str) or not cls.isidentifier() or len(cls) > 200:
    raise UnsafePickleError(f"persistent object class name {short(cls)} is not an identifier")
  state = meta["state"]
  if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
    raise UnsafePickleError(f"state of the persistent {cls} is not a dict of attributes")
  state = plain(state)    # a snapshot: later pickle operations cannot change it
  depth = 0
  mods = state.get("_modules")
  if mods is not None:
    if not isinstance(mods, dict):
      raise UnsafePickleError(f"_modules of the persistent {cls} is a {type(mods).__name__}")
    for k, m in mods.items():
      if m is not None and not isinstance(m, PersistentObject):
        raise UnsafePickleError(f"submodule {short(k)} of the persistent {cls} is "
                                f"{short(m)}, not a persistent network module")
      depth = max(depth, m.depth + 1 if m is not None else 0)
  if depth > MAX_MODULE_DEPTH:
    raise UnsafePickleError(f"network modules nested more than {MAX_MODULE_DEPTH} deep")
  return PersistentObject(cls, src, version, state, depth)


def _make_set(items: Any = ()) -> set:
  """``builtins.set(list)`` as protocol < 4 pickles write a set: plain hashable items only."""
  if not isinstance(items, list) or not all(isinstance(i, _SET_ITEM_TYPES) for i in items):
    raise UnsafePickleError(f"refusing set{short(items)}: only a list of plain values")
  return set(items)


def _network_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {**TORCH_GLOBALS, **NUMPY_GLOBALS}
  out[("torch_utils.persistence", "_reconstruct_persistent_obj")] = SafeCallable(
      _reconstruct_persistent_obj, "torch_utils.persistence._reconstruct_persistent_obj")
  out[("torch.storage", "_load_from_bytes")] = SafeCallable(
      storage_from_bytes, "torch.storage._load_from_bytes")
  for module in ("dnnlib.util", "dnnlib"):
    out[(module, "EasyDict")] = PickledDict
  for module in ("builtins", "__builtin__"):
    out[(module, "set")] = SafeCallable(_make_set, f"{module}.set")
  return out


#: globals a network pickle may name (values are local stubs; see the module docstring).
NETWORK_GLOBALS: Mapping[tuple[str, str], Any] = _network_globals()


def read_network_pickle(src: PathOrBytes, *, name: str | None = None) -> Any:
  """The unpickled snapshot (usually a dict of ``PersistentObject`` networks)."""
  data, display = open_source(src, name)
  return restricted_load(data, name=display, allowed=NETWORK_GLOBALS)


def is_network_snapshot(obj: Any) -> bool:
  return isinstance(obj, PersistentObject) or (
      isinstance(obj, dict) and any(isinstance(v, PersistentObject) for v in obj.values()))


def networks(obj: Any) -> dict[str, PersistentObject]:
  """The networks of a snapshot by key (``{'': net}`` for a pickled network by itself)."""
  if isinstance(obj, PersistentObject):
    return {"": obj}
  if isinstance(obj, dict):
    return {k: v for k, v in obj.items() if isinstance(v, PersistentObject)}
  return {}


def modules(net: PersistentObject, prefix: str = "") -> Iterator[tuple[str, PersistentObject]]:
  """``net`` (as ``prefix``) and every submodule under its dotted name, parents first."""
  yield prefix, net
  for k, m in net.children().items():
    if m is not None:
      yield from modules(m, f"{prefix}.{k}" if prefix else k)


def _tensors(net: PersistentObject, field: str, what: str) -> dict:
  d = net.state.get(field) or {}
  if not isinstance(d, dict):
    raise UserError(f"{what}: {field} of a {net.class_name} is a {type(d).__name__}, not a dict")
  for k, v in d.items():
    if not isinstance(k, str) or "." in k or not (v is None or isinstance(v, np.ndarray)):
      raise UserError(f"{what}: {field} entry {short(k)} of a {net.class_name} is "
                      f"{short(v)}, not a named tensor")
  return d


def module_state_dict(net: PersistentObject, *, what: str) -> dict[str, np.ndarray]:
  """``net.state_dict()`` as torch computes it, from the pickled module states: own
  parameters, then buffers not in ``_non_persistent_buffers_set``, then each submodule's
  entries under ``<name>.``. UserError naming ``what`` for malformed module states."""
  out: dict[str, np.ndarray] = {}
  for prefix, m in modules(net):
    lead = f"{prefix}." if prefix else ""
    skip = m.state.get("_non_persistent_buffers_set") or set()
    if not isinstance(skip, (set, frozenset, list, tuple)):
      raise UserError(f"{what}: _non_persistent_buffers_set of a {m.class_name} is a "
                      f"{type(skip).__name__}")
    for field in ("_parameters", "_buffers"):
      for k, v in _tensors(m, field, what).items():
        if v is None or (field == "_buffers" and k in skip):
          continue
        if lead + k in out:
          raise UserError(f"{what}: duplicate tensor {lead + k}")
        out[lead + k] = v
  return out


__all__ = ["PersistentObject", "NETWORK_GLOBALS", "MAX_MODULE_DEPTH", "read_network_pickle",
           "is_network_snapshot", "networks", "modules", "module_state_dict"]
