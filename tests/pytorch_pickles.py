"""Writers of PyTorch-era weight files for the tests (not a test module), without torch.

``network_pickle(snapshot, ...)`` writes a stylegan2-ada-pytorch network pickle and
``torch_legacy_file(obj)`` a legacy (torch < 1.6) ``torch.save`` file from data as the readers
return it (``PersistentObject`` networks, ``Namespace``, dicts of ``np.ndarray``), in the byte
layouts of several Python / numpy / torch generations:

* ``protocol``: 3 (Python 3.7, the released NVIDIA pickles: GLOBAL, BINPUT, ``builtins.set``
  REDUCE) or 4 (current: STACK_GLOBAL, MEMOIZE, FRAME, EMPTY_SET);
* ``numpy_module``: ``'numpy.core'`` (numpy 1.x) or ``'numpy._core'`` (numpy 2);
* ``ordered``: module dicts (``_parameters``, ``_buffers``, ``_modules``, hooks) as
  ``collections.OrderedDict`` (torch 1.x) or plain dicts (current torch).

Globals are written by name (``Ref``) and never imported; objects are written as the official
code writes them (``Call``: REDUCE, then SETITEMS / BUILD), storages as
``torch.storage._load_from_bytes(legacy stream)`` in network pickles and as persistent ids in
torch files.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import numpy as np

from convert.network_pickle import PersistentObject
from convert.torch_pth import Namespace
from hostile_corpus import pkl, storage_pid, torch_legacy

_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


class Ref:
  """A global written by name (``module.name``), never imported."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires a callable REDUCE target
    raise TypeError("a reference only")


class Call:
  """Written as ``fn(*args)`` (REDUCE), then its dict items (SETITEMS) and state (BUILD)."""

  def __init__(self, fn: Ref, args: tuple, state: Any = None, items: dict | None = None):
    self.fn, self.args, self.state, self.items = fn, args, state, items

  def __reduce__(self):
    return (self.fn, self.args, self.state, None,
            iter(self.items.items()) if self.items else None)


class _Pid:
  """A torch storage written as a persistent id (torch.save files)."""

  def __init__(self, key: str, numel: int):
    self.key, self.numel = key, numel


class _Writer(pickle._Pickler):
  dispatch = dict(pickle._Pickler.dispatch)

  def save_ref(self, obj: Ref) -> None:
    if self.proto >= 4:
      self.save(obj.module)
      self.save(obj.name)
      self.write(pickle.STACK_GLOBAL)
    else:
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[Ref] = save_ref

  def persistent_id(self, obj: Any) -> Any:
    if isinstance(obj, _Pid):
      return ("storage", Ref("torch", "FloatStorage"), obj.key, "cpu", obj.numel, None)
    return None


def dumps(obj: Any, protocol: int) -> bytes:
  buf = io.BytesIO()
  _Writer(buf, protocol).dump(obj)
  return buf.getvalue()


def _storage_blob(a: np.ndarray, key: str) -> bytes:
  """A legacy torch.save stream of one float32 storage (what ``pickle.dump`` embeds)."""
  a = np.asarray(a, "<f4").reshape(-1)
  return torch_legacy(pkl(storage_pid(key, "FloatStorage", a.size, legacy=True)),
                      {key: (a.size, a.tobytes())})


class _Builder:
  def __init__(self, *, numpy_module: str, ordered: bool, storages: str):
    self.np = numpy_module
    self.ordered = ordered
    self.storages = storages              # 'bytes' (network pickles) or 'pid' (torch files)
    self.count = 0
    self.raw: dict[str, tuple[int, bytes]] = {}    # 'pid': storage key -> (numel, bytes)
    self.cache: dict[int, Any] = {}
    self.f8 = Call(Ref("numpy", "dtype"), ("f8", False, True),
                   state=(3, "<", None, None, None, -1, -1, 0))

  def tensor(self, a: np.ndarray, parameter: bool) -> Call:
    key = str(94000000000000 + self.count)
    self.count += 1
    a = np.array(a, np.float32, order="C")          # (0-d stays 0-d)
    if self.storages == "bytes":
      storage: Any = Call(Ref("torch.storage", "_load_from_bytes"), (_storage_blob(a, key),))
    else:
      storage = _Pid(key, a.size)
      self.raw[key] = (a.size, a.astype("<f4").tobytes())
    stride = tuple(s // 4 for s in a.strides)
    t = Call(Ref("torch._utils", "_rebuild_tensor_v2"),
             (storage, 0, a.shape, stride, False, collections.OrderedDict()))
    if parameter:
      t = Call(Ref("torch._utils", "_rebuild_parameter"), (t, True, collections.OrderedDict()))
    return t

  def value(self, x: Any, field: str = "") -> Any:
    if id(x) in self.cache:               # shared objects stay shared (memo references)
      return self.cache[id(x)]
    out = self._value(x, field)
    self.cache[id(x)] = out
    return out

  def _value(self, x: Any, field: str) -> Any:
    if isinstance(x, PersistentObject):
      meta = {"type": "class", "version": x.version, "module_src": x.module_src,
              "class_name": x.class_name, "state": self.value(x.state)}
      return Call(Ref("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))
    if isinstance(x, Namespace):
      return Call(Ref("argparse", "Namespace"), (), state=self.value(x.fields))
    if isinstance(x, np.ndarray):
      return self.tensor(x, parameter=field == "_parameters")
    if isinstance(x, np.float64):
      return Call(Ref(f"{self.np}.multiarray", "scalar"), (self.f8, x.tobytes()))
    if isinstance(x, dict):
      items = {k: self.value(v, k if isinstance(k, str) and k.startswith("_") else field)
               for k, v in x.items()}
      if self.ordered and (field in _MODULE_DICTS or field.endswith("_hooks")
                           or self.storages == "pid"):
        return collections.OrderedDict(items)
      return items
    if isinstance(x, (list, tuple)):
      return type(x)(self.value(v, field) for v in x)
    return x                               # str, int, float, bool, None, set


def network_pickle(snapshot: dict, *, protocol: int, numpy_module: str, ordered: bool) -> bytes:
  """A stylegan2-ada-pytorch network pickle of ``snapshot`` (as read by
  ``convert.network_pickle``) in the given layout (see the module docstring)."""
  b = _Builder(numpy_module=numpy_module, ordered=ordered, storages="bytes")
  return dumps(b.value(snapshot), protocol)


def with_state(net: PersistentObject, path: tuple = (), **updates: Any) -> PersistentObject:
  """A copy of ``net`` whose submodule at ``path`` (names under ``_modules``) has its state
  updated with ``updates``."""
  if path:
    child = with_state(net.children()[path[0]], path[1:], **updates)
    updates = {"_modules": {**net.children(), path[0]: child}}
  return PersistentObject(net.class_name, net.module_src, net.version,
                          {**net.state, **updates}, net.depth)


def cut_generator(net: PersistentObject, resolution: int) -> PersistentObject:
  """A stylegan2-ada-pytorch ``Generator`` cut to its blocks up to ``resolution`` (a smaller
  generator with the same weights, attributes updated as the official class sets them)."""
  blocks = [r for r in net.children()["synthesis"].attr("block_resolutions") if r <= resolution]
  num_ws = 2 * len(blocks)
  synth = net.children()["synthesis"]
  net = with_state(net, ("synthesis",), img_resolution=resolution, block_resolutions=blocks,
                   img_resolution_log2=len(blocks) + 1, num_ws=num_ws,
                   _modules={f"b{r}": synth.children()[f"b{r}"] for r in blocks})
  net = with_state(net, ("synthesis", f"b{resolution}"), is_last=True)
  net = with_state(net, ("mapping",), num_ws=num_ws)
  return with_state(net, img_resolution=resolution, num_ws=num_ws)


def torch_legacy_file(obj: Any) -> bytes:
  """A legacy (torch < 1.6) ``torch.save`` file of ``obj`` (tensors float32; dicts as
  OrderedDict; ``Namespace`` as ``argparse.Namespace``)."""
  b = _Builder(numpy_module="numpy.core", ordered=True, storages="pid")
  main = dumps(b.value(obj), 2)
  return torch_legacy(main, b.raw)
