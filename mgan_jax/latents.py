"""Latent parameterisations for inversion, as pytrees, and how they render to an image.

One image's latents are a dict of arrays (a pytree; vmap over a leading axis for many images):

==========  ======================================  ========================================
method      latents                                 image
==========  ======================================  ========================================
multi_z     ``{'z': (N, Z), 'alpha': (N, C)}``      ``tail(compose(head(x_n), alpha), l)``,
                                                    x_n = to_synthesis_input(z_n, 'z')
multi_w     ``{'w': (N, W), 'alpha': (N, C)}``      same, x_n = w_n broadcast to w+
multi_wp    ``{'wp': (N, L, W), 'alpha': (N, C)}``  same, x_n = wp_n
z           ``{'z': (1, Z)}``                       ``generate(z, space='z')``
w           ``{'w': (1, W)}``                       ``generate(w, space='w')``
wp          ``{'wp': (1, L, W)}``                   ``synthesize(wp)``
wp_noise    ``{'wp': (1, L, W), 'noise':            ``synthesize(wp, noise=noise)``
            [(1, H_i, W_i, 1), ...]}``
==========  ======================================  ========================================

Multi-code (mGANprior, official ``PGGAN_multi_z.forward``): the N codes go through G1 = ``head``
as **one batch** of N, their features are combined by ``Generator.compose`` (official
``(1/N) sum_n F_n * alpha_n``, alpha broadcast over H, W), and G2 = ``tail`` renders the fused
features. C = ``gen.feature_shape(layer)[2]``.

Multi-code for style-based generators (StyleGAN/StyleGAN2; not in the official code, which is
PGGAN-only; the maintainers call it "an over-parameterised w+ inversion", issue #3): each code is
a w or w+; ``head`` runs per code (styled by that code's w+ layers < l), and the tail, which needs
one style, is styled by the **mean of the codes' w+** (layers >= l). The mean is the natural
single style consistent with the composition of features (it equals every code's style when the
codes agree) and keeps the tail differentiable w.r.t. every code. Documented choice; a researcher
can pass another rule by writing their own render (see ``render_multi``).

Truncation: ``None`` uses the family default for the 'z' space (official ``StyleGAN-z`` path)
and **disables** it for 'w' (an optimised w is already a free point of W); pass ``(psi, layers)``
to override. Noise: the checkpoint buffers unless the latents carry ``noise`` (method wp_noise).

Every function accepts latents with an optional leading image axis (B, ...): they are vmapped.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from mgan_jax.generators.base import Generator, check_layer

Array = jax.Array
Latents = dict

MULTI_METHODS = ("multi_z", "multi_w", "multi_wp")
SINGLE_METHODS = ("z", "w", "wp", "wp_noise")
METHODS = MULTI_METHODS + SINGLE_METHODS
INITS = ("official", "normal", "zeros", "mean")
ALPHA_INITS = ("official", "ones")


def method_space(method: str) -> tuple[bool, str]:
  """(is_multi_code, latent space) of a method name; ValueError listing the valid names."""
  if method not in METHODS:
    raise ValueError(f"unknown latent method {method!r} (known: {', '.join(METHODS)})")
  if method.startswith("multi_"):
    return True, method[len("multi_"):]
  return False, "wp" if method == "wp_noise" else method


def _check_space(gen: Generator, space: str, method: str) -> None:
  if space not in gen.latent_spaces:
    raise ValueError(f"method {method!r} needs latent space {space!r}, but {gen.family} "
                     f"generators have {', '.join(gen.latent_spaces)}")


def _default_truncation(space: str, truncation: Any) -> Any:
  if truncation is not None:
    return truncation
  return (1.0, 0) if space == "w" else None


def _code_shape(gen: Generator, space: str) -> tuple[int, ...]:
  if space == "z":
    return (gen.latent_dim,)
  shape = tuple(gen.synthesis_input_shape())
  return shape[-1:] if space == "w" else shape


def latent_shapes(gen: Generator, *, method: str, codes: int = 1,
                  layer: int | None = None) -> dict[str, Any]:
  """Shapes of one image's latents (a tree of tuples; ``noise`` a list of tuples)."""
  multi, space = method_space(method)
  _check_space(gen, space, method)
  if multi:
    if layer is None:
      raise ValueError(f"method {method!r} needs a composition layer")
    check_layer(gen, layer)
    return {space: (codes,) + _code_shape(gen, space),
            "alpha": (codes, gen.feature_shape(layer)[2])}
  out: dict[str, Any] = {space: (1,) + _code_shape(gen, space)}
  if method == "wp_noise":
    shapes = getattr(gen, "noise_shapes", None)
    if shapes is None:
      raise ValueError(f"method 'wp_noise' needs a generator with noise maps; {gen.family} has "
                       "none")
    out["noise"] = [tuple(s) for s in shapes()]
  return out


def init_latents(key: Array, gen: Generator, params: Mapping, *, method: str = "multi_z",
                 codes: int = 20, layer: int | None = None, init: str = "official",
                 alpha_init: str = "official", truncation: Any = None) -> Latents:
  """Initial latents for one image.

  Args:
    key: PRNG key (the only source of randomness; same key -> same latents).
    gen, params: the generator spec and its params.
    method: one of ``METHODS``.
    codes: N, the number of codes (multi-code methods).
    layer: composition layer l (multi-code methods).
    init: ``'official'`` / ``'normal'``: z ~ N(0, 1) (official ``init_value``); w / w+ codes are
      the mapping of z ~ N(0, 1) (untruncated). ``'zeros'``: all zeros (official ``Zero``).
      ``'mean'``: z = 0; w / w+ = the generator's average w (``truncation=(0, L)``).
    alpha_init: ``'official'``: alpha = 1/N (official); ``'ones'``: alpha = 1 (better for
      generators without a normalisation after the split, e.g. DCGAN).
    truncation: only for ``init='official'`` mapping of w codes (default: none).
  Noise maps (wp_noise) start as N(0, 1) draws (zeros for ``init='zeros'``).
  """
  if init not in INITS:
    raise ValueError(f"unknown init {init!r} (known: {', '.join(INITS)})")
  if alpha_init not in ALPHA_INITS:
    raise ValueError(f"unknown alpha_init {alpha_init!r} (known: {', '.join(ALPHA_INITS)})")
  multi, space = method_space(method)
  if multi and codes < 1:
    raise ValueError(f"codes must be >= 1, got {codes}")
  shapes = latent_shapes(gen, method=method, codes=codes, layer=layer)
  n = shapes[space][0]
  kz, kn = jax.random.split(key)
  out: Latents = {}
  if init == "zeros":
    code = jnp.zeros(shapes[space], jnp.float32)
  elif space == "z":
    code = (jnp.zeros(shapes[space], jnp.float32) if init == "mean"
            else jax.random.normal(kz, shapes[space], jnp.float32))
  else:
    z = jax.random.normal(kz, (n, gen.latent_dim), jnp.float32)
    num = gen.synthesis_input_shape()[0]
    trunc = (0.0, num) if init == "mean" else (truncation if truncation is not None else (1.0, 0))
    wp = gen.to_synthesis_input(params, z, space="z", truncation=trunc)
    code = wp[:, 0] if space == "w" else wp
  out[space] = jnp.asarray(code, jnp.float32)
  if multi:
    c = shapes["alpha"][1]
    value = 1.0 / n if alpha_init == "official" else 1.0
    out["alpha"] = jnp.full((n, c), value, jnp.float32)
  if "noise" in shapes:
    keys = jax.random.split(kn, len(shapes["noise"]))
    out["noise"] = [jnp.zeros(s, jnp.float32) if init == "zeros" else
                    jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes["noise"])]
  return out


def _leading_batch(gen: Generator, latents: Mapping, method: str) -> bool:
  """True when ``latents`` carry an extra leading image axis."""
  _, space = method_space(method)
  want = 1 + len(_code_shape(gen, space))
  got = jnp.ndim(latents[space])
  if got == want:
    return False
  if got == want + 1:
    return True
  raise ValueError(f"latents[{space!r}] has rank {got}; method {method!r} expects rank {want} "
                   f"(one image) or {want + 1} (a batch of images)")


def render_multi(gen: Generator, params: Mapping, codes: Array, alpha: Array, *, space: str,
                 layer: int, truncation: Any = None, noise: Any = None,
                 compose: Callable[[Any, Array], Any] | None = None) -> Array:
  """Multi-code image of one target: codes (N, ...) in ``space``, alpha (N, C) -> (1, R, R, 3).

  ``compose(features (N, ...), alpha (N, C)) -> fused (1, ...)`` defaults to ``gen.compose``
  (official 1/N mean); pass another rule to experiment (e.g. softmax-weighted).
  """
  x = gen.to_synthesis_input(params, codes, space=space,
                             truncation=_default_truncation(space, truncation))
  feats = gen.head(params, x, layer, noise=noise)
  fused = (compose or gen.compose)(feats, alpha)
  style = jnp.mean(x, axis=0, keepdims=True)  # tail style for style-based families (see above)
  return gen.tail(params, fused, layer, latent=style, noise=noise)


def render(gen: Generator, params: Mapping, latents: Mapping, *, method: str = "multi_z",
           layer: int | None = None, truncation: Any = None,
           compose: Callable[[Any, Array], Any] | None = None) -> Array:
  """Image of latents: one image's latents -> (1, R, R, 3); a batch (B, ...) -> (B, R, R, 3).

  Raw generator output (nominally [-1, 1], never clamped).
  """
  multi, space = method_space(method)
  if _leading_batch(gen, latents, method):
    one = lambda lat: render(gen, params, lat, method=method, layer=layer,
                             truncation=truncation, compose=compose)[0]
    return jax.vmap(one)(dict(latents))
  code = latents[space]
  if multi:
    if layer is None:
      raise ValueError(f"method {method!r} needs layer=")
    chex.assert_equal_shape_prefix([code, latents["alpha"]], 1)
    return render_multi(gen, params, code, latents["alpha"], space=space, layer=layer,
                        truncation=truncation, compose=compose)
  noise = latents.get("noise") if method == "wp_noise" else None
  if noise is not None:
    noise = list(noise)
  return gen.generate(params, code, space=space, noise=noise,
                      truncation=_default_truncation(space, truncation))


__all__ = ["METHODS", "MULTI_METHODS", "SINGLE_METHODS", "INITS", "ALPHA_INITS", "method_space",
           "latent_shapes", "init_latents", "render", "render_multi", "Latents"]
