"""Generator families behind one split-at-layer interface (see ``base.Generator``).

Families register themselves with ``register``; ``spec_from_json`` rebuilds a spec from the
``model.json`` of a converted model directory.
"""

from __future__ import annotations

import importlib
from typing import Mapping

from mgan_jax.generators.base import Generator, check_layer

# family name -> "module:Class", imported lazily so one family's import cost is not paid by all.
_FAMILIES: dict[str, str] = {
    "pggan": "mgan_jax.generators.pggan:PGGAN",
    "stylegan": "mgan_jax.generators.stylegan:StyleGAN",
    "stylegan2": "mgan_jax.generators.stylegan2:StyleGAN2",
    "dcgan": "mgan_jax.generators.dcgan:DCGAN",
}


def families() -> tuple[str, ...]:
  return tuple(_FAMILIES)


def family_class(name: str) -> type[Generator]:
  if name not in _FAMILIES:
    raise ValueError(f"unknown generator family {name!r} (known: {', '.join(_FAMILIES)})")
  module, cls = _FAMILIES[name].split(":")
  return getattr(importlib.import_module(module), cls)


def spec_from_json(d: Mapping) -> Generator:
  """Inverse of ``Generator.to_json``."""
  return family_class(d["family"]).from_json(d["config"])


__all__ = ["Generator", "check_layer", "families", "family_class", "spec_from_json"]
