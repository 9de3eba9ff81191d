"""How generator families plug into ``python -m convert``.

A family module in ``convert/`` exposes one ``FamilyConverter``. The dispatcher
(``convert.__main__``) reads the source file with the safe readers, then asks each converter in
``CONVERTERS`` whether it recognises the content:

* torch ``.pth`` state dicts arrive as a flat ``dict[str, np.ndarray]`` (genforce keys such as
  ``layer0.conv.weight``);
* NVIDIA TF pickles arrive as the ``Gs`` ``convert.tf_pickle.TFNetwork`` (stub object with
  ``version``, ``name``, ``static_kwargs``, ``build_func_name``, ``variables`` (list of
  (name, ndarray)), ``components`` (dict name -> TFNetwork));
* NVlabs network pickles (stylegan2-ada-pytorch) arrive as the chosen network, a
  ``convert.network_pickle.PersistentObject`` (``matches_network`` / ``from_network``).

Checkpoints that keep a generator's extra arrays next to its state dict (rosinality's
convert_weight.py: ``{'g_ema': ..., 'latent_avg': ...}``) have them handed over inside the
state dict under the same key (``CHECKPOINT_EXTRAS``).

A converter returns ``Conversion(spec, params, leftover, notes)``: the Flax spec, the params
pytree (already checked against ``spec.init_params`` structure by ``checkpoint.save_model``),
the source keys it deliberately did not use (reported to the user, e.g. ``lod``) and notes for
the user (e.g. a value the file does not record and the converter assumed).

Converters turn every source tensor they use as a weight into float32 with ``weight(key,
value, what)``, which refuses integer / bool tensors (e.g. an int64 storage where a weight is
expected) and NaN or infinite values, naming the source key. Integer buffers a converter does
not use as weights (``num_batches_tracked``) are left alone.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

import numpy as np

from mgan_jax.errors import UserError


def weight(key: str, value: Any, what: str) -> np.ndarray:
  """``value`` (source key ``key``) as a C-contiguous float32 weight.

  Raises UserError naming ``what`` and ``key`` if it is not floating point (ints and bools are
  never silently cast) or holds NaN / infinite values.
  """
  arr = np.asarray(value)
  if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
    raise UserError(f"{what}: {key} holds {arr.dtype} values, expected floating point weights")
  with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
    out = np.asarray(arr, dtype=np.float32, order="C")  # (keeps 0-d arrays 0-d)
  if not np.isfinite(out).all():
    bad = int(out.size - np.isfinite(out).sum())
    raise UserError(f"{what}: {key} has {bad} NaN or infinite value(s)")
  return out


#: top-level arrays of a checkpoint handed to the converters inside its state dict.
CHECKPOINT_EXTRAS = ("latent_avg",)


@dataclasses.dataclass(frozen=True)
class Conversion:
  spec: Any            # mgan_jax.generators.Generator
  params: dict         # nested dict of np.float32 arrays
  leftover: tuple = () # source keys not used (reported, not an error)
  notes: tuple = ()    # lines for the user (printed as "note: ...")


@dataclasses.dataclass(frozen=True)
class FamilyConverter:
  family: str
  #: does this flat torch state dict belong to the family?
  matches_state_dict: Callable[[Mapping[str, np.ndarray]], bool]
  from_state_dict: Callable[[Mapping[str, np.ndarray]], Conversion]
  #: does this TF Gs network belong to the family? (usually by build_func_name)
  matches_tf: Optional[Callable[[Any], bool]] = None
  from_tf: Optional[Callable[[Any], Conversion]] = None
  #: does this network of an NVlabs network pickle (a PersistentObject) belong to the family?
  matches_network: Optional[Callable[[Any], bool]] = None
  from_network: Optional[Callable[[Any], Conversion]] = None


#: module:attribute of each family converter, imported lazily.
_CONVERTERS = {
    "pggan": "convert.pggan:CONVERTER",
    "stylegan": "convert.stylegan:CONVERTER",
    "stylegan2": "convert.stylegan2:CONVERTER",
    "dcgan": "convert.dcgan:CONVERTER",
}


def converters() -> list[FamilyConverter]:
  """The installed family converters (modules that fail to import for a missing dependency of
  their own are an error; a missing family module is skipped)."""
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
