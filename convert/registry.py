"""How generator families plug into ``python -m convert``.

A family module in ``convert/`` exposes one ``FamilyConverter``. The dispatcher
(``convert.__main__``) reads the source file with the safe readers, then asks each converter in
``CONVERTERS`` whether it recognises the content:

* torch ``.pth`` state dicts arrive as a flat ``dict[str, np.ndarray]`` (genforce keys such as
  ``layer0.conv.weight``);
* NVIDIA TF pickles arrive as the ``Gs`` ``convert.tf_pickle.TFNetwork`` (stub object with
  ``version``, ``name``, ``static_kwargs``, ``build_func_name``, ``variables`` (list of
  (name, ndarray)), ``components`` (dict name -> TFNetwork)).

A converter returns ``Conversion(spec, params, leftover)``: the Flax spec, the params pytree
(already checked against ``spec.init_params`` structure by ``checkpoint.save_model``) and the
source keys it deliberately did not use (reported to the user, e.g. ``lod``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Conversion:
  spec: Any            # mgan_jax.generators.Generator
  params: dict         # nested dict of np.float32 arrays
  leftover: tuple = () # source keys not used (reported, not an error)


@dataclasses.dataclass(frozen=True)
class FamilyConverter:
  family: str
  #: does this flat torch state dict belong to the family?
  matches_state_dict: Callable[[Mapping[str, np.ndarray]], bool]
  from_state_dict: Callable[[Mapping[str, np.ndarray]], Conversion]
  #: does this TF Gs network belong to the family? (usually by build_func_name)
  matches_tf: Optional[Callable[[Any], bool]] = None
  from_tf: Optional[Callable[[Any], Conversion]] = None


#: module:attribute of each family converter, imported lazily.
_CONVERTERS = {
    "pggan": "convert.pggan:CONVERTER",
    "stylegan": "convert.stylegan:CONVERTER",
    "stylegan2": "convert.stylegan2:CONVERTER",
    "dcgan": "convert.dcgan:CONVERTER",
}


def converters() -> list[FamilyConverter]:
  out = []
  for name, target in _CONVERTERS.items():
    module, attr = target.split(":")
    try:
      out.append(getattr(importlib.import_module(module), attr))
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
  return out


def converter(family: str) -> FamilyConverter:
  for c in converters():
    if c.family == family:
      return c
  raise KeyError(family)
