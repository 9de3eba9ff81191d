"""Read NVIDIA TensorFlow network pickles (PGGAN / StyleGAN / StyleGAN2) without TensorFlow.

The official files unpickle to a 3-tuple ``(G, D, Gs)`` of ``Network`` objects whose real
``__setstate__`` *executes* the pickled ``build_module_src`` and builds a TF graph. Here the two
network classes -- ``tfutil.Network`` (PGGAN, state version 2) and
``dnnlib.tflib.network.Network`` (StyleGAN v1 version 3, StyleGAN2 version 4) -- resolve to the
inert ``TFNetwork`` stub, whose BUILD step only stores the state dict; ``build_module_src`` is
kept as a string and never run. All other globals except the numpy reconstruction functions
(and ``dnnlib.util.EasyDict``/``collections.OrderedDict``, read as dicts) are refused with
``UnsafePickleError``.

Public API:

* ``TFNetwork`` -- ``version``, ``name``, ``static_kwargs`` (dict), ``build_func_name``,
  ``variables`` (list of (name, np.ndarray); numpy scalars become 0-d arrays), ``components``
  (dict name -> TFNetwork; empty for PGGAN), ``build_module_src`` (str, inert) and
  ``all_variables(prefix='') -> dict[str, np.ndarray]`` (own variables plus the components'
  under ``'mapping/...'``, ``'synthesis/...'``).
* ``load_pickle(path_or_bytes, *, name=None) -> object`` -- any pickle of TF networks / numpy
  arrays / plain containers.
* ``read_tf_pickle(path_or_bytes, *, name=None) -> tuple`` -- the ``(G, D, Gs)`` tuple.
* ``read_gs(path_or_bytes, *, name=None) -> TFNetwork`` -- ``Gs``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from convert.safe_pickle import (NUMPY_GLOBALS, ArrayStub, PathOrBytes, PickledDict,
                                 PickleObject, UnsafePickleError, open_source, plain,
                                 restricted_load, short)
from mgan_jax.errors import UserError

#: the NVIDIA network classes the stub stands in for, with the state versions they pickle.
NETWORK_CLASSES = {("tfutil", "Network"): (2,),
                   ("dnnlib.tflib.network", "Network"): (3, 4)}


#: components may nest at most this deep (Gs -> synthesis is 1 level in official files).
MAX_COMPONENT_DEPTH = 8


class TFNetwork(PickleObject):
  """Inert stand-in for an NVIDIA TF ``Network``: pickle's BUILD only stores its state.

  Attributes (after unpickling): ``version`` (int), ``name`` (str), ``static_kwargs`` (dict),
  ``build_func_name`` (str), ``build_module_src`` (str, never executed), ``variables``
  (list of (str, np.ndarray)), ``components`` (dict[str, TFNetwork]).

  A pickle creates one empty (NEWOBJ) and gives it its state once (BUILD); the state is
  validated then: components must be networks that already have theirs (so a network can
  neither contain itself nor form a cycle), nested at most ``MAX_COMPONENT_DEPTH`` deep. A
  network that never receives its state is refused when the pickle has been read.
  """

  version: int
  name: str
  static_kwargs: dict
  build_func_name: str
  build_module_src: str
  variables: list
  components: dict
  _built = False
  _depth = 0

  def __init__(self, *, version: int = 4, name: str = "", static_kwargs: Optional[dict] = None,
               build_func_name: str = "", variables: Any = (),
               components: Optional[Mapping[str, "TFNetwork"]] = None,
               build_module_src: str = ""):
    self._pickle_build({"version": version, "name": name,
                        "static_kwargs": dict(static_kwargs or {}),
                        "build_func_name": build_func_name, "variables": list(variables),
                        "components": dict(components or {}),
                        "build_module_src": build_module_src})

  @classmethod
  def _pickle_new(cls, args: tuple, kwargs: dict) -> "TFNetwork":
    if args or kwargs:
      raise UnsafePickleError(f"refusing TF Network constructor arguments {short(args)}")
    return cls.__new__(cls)

  def _pickle_unbuilt(self) -> bool:
    return not self._built

  def __setstate__(self, state: Any) -> None:
    self._pickle_build(state)

  def _pickle_build(self, state: Any) -> None:
    """Pickle's BUILD: validate and store the data once; never execute ``build_module_src``."""
    if self._built:
      raise UnsafePickleError("refusing to set the state of a TF Network twice")
    if not isinstance(state, Mapping):
      raise UnsafePickleError(f"TF Network state is a {type(state).__name__}, not a dict")
    version = state.get("version")
    if type(version) is not int or version not in (2, 3, 4):
      raise UserError(f"unsupported TF Network state version {short(version)} (known: 2, 3, 4)")
    raw_vars = state.get("variables", ())
    if not isinstance(raw_vars, (list, tuple)):
      raise UserError(f"TF Network variables are a {type(raw_vars).__name__}, not a list")
    variables = []
    for item in raw_vars:
      if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], ArrayStub):
        item = (item[0], item[1].value())
      if (not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str)
          or isinstance(item[1], bool)
          or not isinstance(item[1], (np.ndarray, np.generic, float, int))):
        raise UserError(f"TF Network variable entry {short(item)} is not (name, array)")
      variables.append((item[0], np.asarray(item[1])))
    raw_comps = state.get("components") or {}
    if not isinstance(raw_comps, Mapping):
      raise UserError(f"TF Network components are a {type(raw_comps).__name__}, not a dict")
    components = dict(raw_comps)
    depth = 0
    for cname, comp in components.items():
      if not isinstance(cname, str) or not isinstance(comp, TFNetwork):
        raise UserError(f"TF Network component {short(cname)} is a {type(comp).__name__}, "
                        "not a Network")
      if not comp._built:
        raise UserError(f"TF Network component {cname!r} has no state yet (a network cannot "
                        "contain itself)")
      depth = max(depth, comp._depth + 1)
    if depth > MAX_COMPONENT_DEPTH:
      raise UserError(f"TF Network components nested more than {MAX_COMPONENT_DEPTH} deep")
    static_kwargs = state.get("static_kwargs") or {}
    if not isinstance(static_kwargs, Mapping):
      raise UserError(f"TF Network static_kwargs is a {type(static_kwargs).__name__}")
    for field in ("name", "build_func_name", "build_module_src"):
      if not isinstance(state.get(field, ""), str):
        raise UserError(f"TF Network {field} is a {type(state.get(field)).__name__}, not a str")
    self.version = version
    self.name = state.get("name", "")
    self.static_kwargs = plain(dict(static_kwargs))
    self.build_func_name = state.get("build_func_name", "")
    self.build_module_src = state.get("build_module_src", "")
    self.variables = variables
    self.components = components
    self._depth = depth
    self._built = True

  def all_variables(self, prefix: str = "") -> dict[str, np.ndarray]:
    """Own variables as ``prefix + name``, components recursively as ``prefix + comp + '/'``."""
    out = {prefix + k: v for k, v in self.variables}
    for cname, comp in self.components.items():
      out.update(comp.all_variables(prefix + cname + "/"))
    return out

  def __repr__(self) -> str:
    if not self._built:
      return "TFNetwork(<no state>)"
    comps = f", components={sorted(self.components)}" if self.components else ""
    return (f"TFNetwork(name={self.name!r}, version={self.version}, "
            f"build_func_name={self.build_func_name!r}, {len(self.variables)} variables{comps})")


def _tf_globals() -> dict[tuple[str, str], Any]:
  out = dict(NUMPY_GLOBALS)
  for key in NETWORK_CLASSES:
    out[key] = TFNetwork
  out[("dnnlib.util", "EasyDict")] = PickledDict
  out[("dnnlib", "EasyDict")] = PickledDict
  out[("collections", "OrderedDict")] = PickledDict
  return out


#: globals a TF network pickle may name.
TF_GLOBALS: Mapping[tuple[str, str], Any] = _tf_globals()


def load_pickle(src: PathOrBytes, *, name: str | None = None) -> Any:
  """Load a pickle that may hold TF ``Network`` stubs, numpy arrays and plain containers."""
  data, display = open_source(src, name)
  return restricted_load(data, name=display, allowed=TF_GLOBALS)


def read_tf_pickle(src: PathOrBytes, *, name: str | None = None) -> tuple:
  """The ``(G, D, Gs)`` tuple of ``TFNetwork`` stubs of an NVIDIA TF pickle.

  Raises UserError (naming the file) if the pickle is not a tuple of networks.
  """
  data, display = open_source(src, name)
  obj = load_pickle(data, name=display)
  if not isinstance(obj, tuple) or not obj or not all(isinstance(n, TFNetwork) for n in obj):
    what = (f"a tuple of {', '.join(type(n).__name__ for n in obj)}" if isinstance(obj, tuple)
            else f"a {type(obj).__name__}")
    raise UserError(f"{display}: holds {what}, not the (G, D, Gs) networks of an NVIDIA TF "
                    "pickle")
  return obj


def read_gs(src: PathOrBytes, *, name: str | None = None) -> TFNetwork:
  """``Gs`` (the EMA generator, third of ``(G, D, Gs)``) of an NVIDIA TF pickle."""
  data, display = open_source(src, name)
  nets = read_tf_pickle(data, name=display)
  if len(nets) != 3:
    raise UserError(f"{display}: holds {len(nets)} networks, expected the 3-tuple (G, D, Gs)")
  return nets[2]


def check_lod(key: str, value: Any, what: str) -> None:
  """The progressive-growing level ``lod`` (TF variable, or the genforce buffer copied from it)
  must be the scalar 0 of a final generator; UserError naming ``what`` and ``key`` otherwise."""
  v = np.asarray(value)
  if v.size != 1:
    raise UserError(f"{what}: {key} must be a scalar, got shape {v.shape}")
  if float(v.reshape(())) != 0.0:
    raise UserError(f"{what}: {key} = {float(v.reshape(()))} != 0: the progressive-growing "
                    "blend (a network saved mid-training) is not supported; use a final "
                    "generator (lod = 0)")


def tf_resolution(names: Any, prefix: str, declared: Any, what: str) -> int:
  """Output resolution of an NVIDIA PGGAN / StyleGAN generator from its variable names: the
  largest R with ``{prefix}RxR/Conv1/weight`` for every R = 8, 16, ... (``names``: a container
  of variable names). ``declared``: the pickle's ``resolution`` static kwarg (or None), which
  must agree. Raises UserError naming ``what``."""
  res = 8
  while f"{prefix}{res}x{res}/Conv1/weight" in names:
    res *= 2
  resolution = res // 2
  if resolution < 8:
    raise UserError(f"{what}: missing variable {prefix}8x8/Conv1/weight")
  if declared not in (None, resolution):
    raise UserError(f"{what}: static_kwargs resolution={declared} but the variables stop at "
                    f"{resolution}x{resolution}")
  return resolution


__all__ = ["TFNetwork", "TF_GLOBALS", "NETWORK_CLASSES", "load_pickle", "read_tf_pickle",
           "read_gs", "check_lod", "tf_resolution"]
