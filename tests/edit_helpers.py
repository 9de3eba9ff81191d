"""Helpers shared by the editing tests (not a test module): the fixture generators converted
in memory once per process, the official reference arrays, and one-image rendering."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from convert import flat_state_dict, read_torch_file
from convert.registry import converter
from mgan_jax import latents as latents_lib

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY = {"pggan64": "pggan", "stylegan128": "stylegan", "stylegan2_64": "stylegan2"}


@functools.lru_cache(maxsize=None)
def fixture_model(name: str):
  """(spec, params) of tests/fixtures/<name>.pth through the converter (as `python -m
  convert` does, without writing a model directory)."""
  sd = flat_state_dict(read_torch_file(FIXTURES / f"{name}.pth"))
  conv = converter(FAMILY[name]).from_state_dict(sd)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), conv.params)
  return conv.spec, params


@functools.lru_cache(maxsize=None)
def load_ref(name: str) -> dict:
  with np.load(FIXTURES / name, allow_pickle=False) as d:
    return {k: d[k] for k in d.files}


def nhwc(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


@functools.partial(jax.jit, static_argnames=("gen", "method", "layer"))
def _render_one(gen, params, latents, *, method, layer):
  return latents_lib.render(gen, params, latents, method=method, layer=layer)


def render_one(gen, params, latents, *, method, layer=None) -> np.ndarray:
  """``latents.render`` of one image's latents, jitted on its own: (R, R, 3)."""
  lat = {k: np.asarray(v, np.float32) for k, v in latents.items()}
  return np.asarray(_render_one(gen, params, lat, method=method, layer=layer))[0]
