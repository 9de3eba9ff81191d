"""Helpers shared by the official-parity tests of the generator families (not a test module).

Every family is checked the same way: the fixture weights in each official layout (genforce
``.pth``, NVIDIA TF pickle) converted with ``python -m convert`` must give bit-identical
parameters and reproduce the official outputs (NCHW in the fixtures). For StyleGAN and StyleGAN2
the w / w+ comparison and the split, noise and random-init checks run the same jitted programs.
The family-specific assertions stay in the test files.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from convert import TFNetwork
from convert.__main__ import main as convert_main
from mgan_jax.checkpoint import flatten, load_model

FIXTURES = Path(__file__).parent / "fixtures"


def nhwc(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def maxdiff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def load_ref(name: str) -> dict:
  with np.load(FIXTURES / name) as d:
    return {k: d[k] for k in d.files}


def convert_formats(tmp_path_factory, formats: Sequence[str]) -> dict:
  """Each fixture file converted once with `python -m convert`, then loaded: {name: (spec,
  params)}."""
  out = {}
  for fmt in formats:
    d = tmp_path_factory.mktemp("converted") / fmt.replace(".", "_")
    assert convert_main([str(FIXTURES / fmt), str(d)]) == 0
    out[fmt] = load_model(d)
  return out


def assert_same_params(models: dict) -> None:
  """Every format converts to bit-identical parameters."""
  (first, a), *others = ((fmt, flatten(params)) for fmt, (_, params) in models.items())
  for fmt, b in others:
    assert sorted(a) == sorted(b), (first, fmt)
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{fmt} {k}")


@functools.partial(jax.jit, static_argnums=(0,))
def _latents(spec, params, z):
  w = spec.mapping(params, z)
  return w, spec.truncate(params, w)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate(spec, params, latent, space):
  return spec.generate(params, latent, space=space)


def assert_official_forward(spec, params, ref: dict, tol: float) -> None:
  """w, truncated w+, images from z and from free w+ against the official outputs."""
  w, wp = _latents(spec, params, ref["z"])
  assert maxdiff(w, ref["w"]) <= 1e-4 * np.abs(ref["w"]).max()    # w is ~1e-3 here
  assert maxdiff(wp, ref["wp_trunc"]) <= 1e-6
  assert maxdiff(_generate(spec, params, ref["z"], "z"), nhwc(ref["images"])) <= tol
  assert maxdiff(_generate(spec, params, ref["wp_free"], "wp"), nhwc(ref["images_wp"])) <= tol


def noise_variants(spec, params, wp, buffers, key, layer: int):
  """(default, listed buffers, noise from ``key``, head/tail at ``layer`` with ``key``)."""
  @jax.jit
  def run(params, wp, buffers, key):
    return (spec.synthesize(params, wp),
            spec.synthesize(params, wp, noise=buffers),
            spec.synthesize(params, wp, noise=key),
            spec.tail(params, spec.head(params, wp, layer, noise=key), layer, latent=wp,
                      noise=key))
  return run(params, wp, buffers, key)


def random_model_split_check(spec, p) -> None:
  """Params ``p`` (e.g. random init): finite images, tail(head(x, k), k) == synthesize(x) for
  every k."""
  @jax.jit
  def run(p, z):
    wp = spec.to_synthesis_input(p, z)
    full = spec.synthesize(p, wp)
    return full, jnp.stack([jnp.max(jnp.abs(spec.tail(p, spec.head(p, wp, k), k, latent=wp)
                                            - full)) for k in spec.split_layers()])

  img, diffs = run(p, jnp.ones((2, spec.latent_dim)))
  r = spec.resolution
  assert img.shape == (2, r, r, 3) and bool(jnp.all(jnp.isfinite(img)))
  assert float(diffs.max()) <= 1e-5


def with_component(gs: TFNetwork, name: str, variables: Any, **static_kwargs) -> TFNetwork:
  """``gs`` with its component ``name`` given other variables (and extra static kwargs)."""
  c = gs.components[name]
  new = TFNetwork(version=c.version, name=c.name, static_kwargs={**c.static_kwargs,
                                                                  **static_kwargs},
                  build_func_name=c.build_func_name, variables=variables)
  return TFNetwork(version=gs.version, name=gs.name, static_kwargs=gs.static_kwargs,
                   build_func_name=gs.build_func_name, variables=gs.variables,
                   components={**gs.components, name: new})
