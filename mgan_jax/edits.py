"""Editing inverted latents: moving along a direction, interpolating two inversions, style
mixing, and rendering the frames.

Every function takes one image's latents as written by the inversion (``latents_io.save``;
``latents`` module table: ``multi_z`` {'z': (N, Z), 'alpha': (N, C)}, ``multi_w``,
``multi_wp``, ``z`` {'z': (1, Z)}, ``w``, ``wp``) and returns **frames**: the same dict with a
leading frame axis F on every array, ready for ``render_frames`` (one jitted, vmapped
``latents.render``). The code arithmetic runs on the host in float64 and is rounded once to
float32 (as numpy >= 2 does in the official scripts); a step of 0 returns the input codes
exactly, so that frame renders the inversion bit for bit.

Moving along a direction v (``move``), by steps s_f (e.g. ``line_steps(-3, 3, 7)``):

* multi-code (``multi_z``, ``multi_w``, ``multi_wp``): **every code** moves by ``s_f * v`` and
  alpha stays fixed -- the official mGANprior ``face_semantic_editing.py``
  (``get_interpolated_wp``: ``wp + t * max_step * n`` for t in ``linspace(-1, 1, frames)``).
  As there, the raw inverted codes move (their norms drift during the inversion);
* single z: ``z + s_f * r(z) * v`` where r(z) = ``sqrt(mean(z^2) + 1e-8)`` for families that
  pixel-normalise z first (PGGAN, StyleGAN, StyleGAN2). After that normalisation it is SeFa's
  and InterFaceGAN's edit of the normalised code (``z / r(z) + s_f * v``) while step 0 keeps
  the stored z. DCGAN uses z as is: ``z + s_f * v``;
* single w: ``w + s_f * v``;
* w+ (``wp``, and every code of ``multi_wp``): rows ``layers`` move by ``s_f * v`` (SeFa's
  edit of the layers it factorised; default all rows, as InterFaceGAN moves w+).

InterFaceGAN's own ``linear_interpolate`` measures z / w steps as *signed distances to the
hyperplane* (it subtracts ``z . n``); the edits here are offsets from the inverted code, as
mGANprior and SeFa do.

Interpolation (``interpolate``; official ``utils/manipulate.py`` ``interpolate_two_latent``):
every latent array (codes and alpha) goes linearly from A to B, ``A + t (B - A)`` for t in
``linspace(0, 1, frames)``; when B has more codes than A, B's first N are used (official
``[:, :z_number]``).

Style mixing (``mix``; StyleGAN and StyleGAN2): the w+ rows of a level are copied from B into
A. Levels by the resolution of the layer a w+ row styles, as the StyleGAN paper defines them:
coarse 4-8 px, middle 16-32 px, fine 64 px and up (``level_layers``). For StyleGAN row i styles
synthesis layer i at ``4 * 2**(i // 2)`` (1024 px: coarse 0-3, middle 4-7, fine 8-17, the
official ``LEVEL`` table of ``utils/manipulate.py``); for StyleGAN2 row i styles conv layer i at
``4 * 2**ceil(i / 2)`` (and the ToRGB of the previous resolution; the last row the final ToRGB),
so 1024 px gives coarse 0-2, middle 3-6, fine 7-17. A multi-code B gives the mean of its codes'
w+ (the style its tail uses).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import chex
import jax
import numpy as np

from mgan_jax import latents as latents_lib
from mgan_jax.directions import parse_layers
from mgan_jax.generators.base import Generator

#: Families whose first operation on z is a pixel norm (the image ignores the scale of z).
Z_NORMALISED_FAMILIES = ("pggan", "stylegan", "stylegan2")
STYLE_FAMILIES = ("stylegan", "stylegan2")
#: Style-mixing levels: (min, max) resolution of the layers a w+ row styles (StyleGAN paper).
LEVELS: dict[str, tuple[int, float]] = {"coarse": (4, 8), "middle": (16, 32),
                                        "fine": (64, math.inf)}
PIXEL_NORM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Spaces.
# ----------------------------------------------------------------------------------------------
def edit_key(method: str) -> str:
  """The latents key an edit moves: 'z', 'w' or 'wp'."""
  _, space = latents_lib.method_space(method)
  return space


def edit_dim(gen: Generator, method: str) -> int:
  """Dimension a direction must have to edit latents of ``method``: Z for z, W for w / w+."""
  key = edit_key(method)
  if key == "z":
    return gen.latent_dim
  return int(gen.synthesis_input_shape()[-1])


def line_steps(start: float, stop: float, num: int) -> np.ndarray:
  """``num`` evenly spaced steps from ``start`` to ``stop`` inclusive (float64)."""
  if num < 1:
    raise ValueError(f"need at least one step, got {num}")
  return np.linspace(float(start), float(stop), int(num))


def _codes(latents: Mapping[str, Any], key: str, method: str) -> np.ndarray:
  if key not in latents:
    raise ValueError(f"latents of method {method!r} need the key {key!r}; got "
                     f"{sorted(latents)}")
  return np.asarray(latents[key], np.float32)


def _tile(x: Any, frames: int) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return np.ascontiguousarray(np.broadcast_to(x[None], (frames,) + x.shape))


def _code_shape(gen: Generator, key: str) -> tuple[int, ...]:
  if key == "z":
    return (gen.latent_dim,)
  shape = tuple(gen.synthesis_input_shape())
  return shape[-1:] if key == "w" else shape


def _check_shapes(gen: Generator, latents: Mapping[str, Any], method: str) -> int:
  """Number of codes N; ValueError when the codes do not fit ``gen`` and ``method``."""
  multi, _ = latents_lib.method_space(method)
  key = edit_key(method)
  code = _codes(latents, key, method)
  want = _code_shape(gen, key)
  if code.ndim != 1 + len(want) or tuple(code.shape[1:]) != want or code.shape[0] < 1 \
      or (not multi and code.shape[0] != 1):
    lead = "N" if multi else "1"
    raise ValueError(f"latents[{key!r}] has shape {tuple(code.shape)}, which does not fit "
                     f"method {method!r} of this {gen.family} generator (expected "
                     f"({lead}, {', '.join(map(str, want))}))")
  if multi:
    alpha = np.shape(latents.get("alpha", ()))
    if len(alpha) != 2 or alpha[0] != code.shape[0]:
      raise ValueError(f"multi-code latents need 'alpha' of shape ({code.shape[0]}, C); got "
                       f"{alpha if 'alpha' in latents else 'none'}")
  return code.shape[0]


# ----------------------------------------------------------------------------------------------
# Moving along a direction.
# ----------------------------------------------------------------------------------------------
def move(gen: Generator, latents: Mapping[str, Any], direction: Any, steps: Sequence[float], *,
         method: str, layers: str | Sequence[int] | None = None,
         rescale_z: bool | None = None) -> dict:
  """Frames of ``latents`` moved by ``steps[f] * direction`` (see the module docstring).

  Args:
    gen: the generator spec (for shapes and the family).
    latents: one image's latents of ``method``.
    direction: (D,) with D = ``edit_dim(gen, method)``.
    steps: (F,) offsets along ``direction``.
    layers: w+ rows to move (``wp`` / ``multi_wp``): 'all' / None (every row), '0-3', a list.
    rescale_z: single z only: scale the step by ``sqrt(mean(z^2) + 1e-8)`` (default: True for
      the families in ``Z_NORMALISED_FAMILIES``).
  Returns:
    dict of (F, ...) float32 arrays (every other key, e.g. alpha, repeated per frame).
  """
  multi, _ = latents_lib.method_space(method)
  key = edit_key(method)
  _check_shapes(gen, latents, method)
  code = _codes(latents, key, method).astype(np.float64)
  v = np.asarray(direction, np.float64).reshape(-1)
  dim = edit_dim(gen, method)
  if v.shape != (dim,):
    raise ValueError(f"direction has {v.size} dimensions; {key} codes of this model have {dim}")
  s = np.asarray(steps, np.float64)
  chex.assert_rank(s, 1)
  if key == "wp":
    rows = parse_layers(layers, code.shape[1])
    delta = np.zeros(code.shape[1:], np.float64)                      # (L, W)
    delta[list(rows)] = v
    moved = code[None] + s[:, None, None, None] * delta[None, None]     # (F, N, L, W)
  else:
    if layers is not None and not (isinstance(layers, str) and layers.strip().lower() == "all"):
      raise ValueError(f"layers apply to w+ latents; method {method!r} edits {key} codes")
    if rescale_z is None:
      rescale_z = key == "z" and not multi and gen.family in Z_NORMALISED_FAMILIES
    scale = (np.sqrt(np.mean(np.square(code), axis=-1, keepdims=True) + PIXEL_NORM_EPS)
             if rescale_z else np.ones(code.shape[:-1] + (1,)))
    moved = code[None] + s[:, None, None] * (scale * v)[None]          # (F, N, D)
  out = {k: _tile(v_, len(s)) for k, v_ in latents.items() if k != key}
  out[key] = moved.astype(np.float32)
  return out


# ----------------------------------------------------------------------------------------------
# Interpolation.
# ----------------------------------------------------------------------------------------------
def interpolate(latents_a: Mapping[str, Any], latents_b: Mapping[str, Any], num: int, *,
                method: str) -> dict:
  """Frames from A to B: every array ``A + t (B - A)``, t in ``linspace(0, 1, num)`` (official
  ``interpolate_two_latent``). Multi-code: B's first N codes when it has more (official), a
  ValueError when it has fewer. Frame 0 is A exactly."""
  if set(latents_a) != set(latents_b):
    raise ValueError(f"the two latents hold different keys: {sorted(latents_a)} vs "
                     f"{sorted(latents_b)}")
  multi, _ = latents_lib.method_space(method)
  t = line_steps(0.0, 1.0, num)
  out = {}
  for k in latents_a:
    a = np.asarray(latents_a[k], np.float64)
    b = np.asarray(latents_b[k], np.float64)
    if multi and b.ndim == a.ndim and b.shape[1:] == a.shape[1:] and b.shape[0] > a.shape[0]:
      b = b[:a.shape[0]]
    if a.shape != b.shape:
      raise ValueError(f"latents[{k!r}]: shapes {a.shape} and {b.shape} do not match")
    tt = t.reshape((-1,) + (1,) * a.ndim)
    out[k] = (tt * (b - a)[None] + a[None]).astype(np.float32)
  return out


# ----------------------------------------------------------------------------------------------
# Style mixing.
# ----------------------------------------------------------------------------------------------
def layer_resolutions(gen: Generator) -> tuple[int, ...]:
  """Resolution of the layer each w+ row styles (StyleGAN: synthesis layer i; StyleGAN2: conv
  layer i, the last row the final ToRGB)."""
  if gen.family not in STYLE_FAMILIES:
    raise ValueError(f"style mixing needs a StyleGAN or StyleGAN2 generator, not "
                     f"{gen.family!r}")
  n = gen.num_layers
  if gen.family == "stylegan":
    return tuple(4 * 2 ** (i // 2) for i in range(n))
  return tuple(gen.resolution if i == n - 1 else 4 * 2 ** ((i + 1) // 2) for i in range(n))


def level_layers(gen: Generator, level: str) -> tuple[int, ...]:
  """w+ rows of a style-mixing level ('coarse' 4-8 px, 'middle' 16-32, 'fine' 64+)."""
  if level not in LEVELS:
    raise ValueError(f"unknown style-mixing level {level!r} (known: {', '.join(LEVELS)})")
  lo, hi = LEVELS[level]
  return tuple(i for i, r in enumerate(layer_resolutions(gen)) if lo <= r <= hi)


@functools.partial(jax.jit, static_argnames=("gen", "space"))
def _to_wp(gen, params, codes, *, space):
  trunc = (1.0, 0) if space == "w" else None        # latents.render's default per space
  return gen.to_synthesis_input(params, codes, space=space, truncation=trunc)


def to_wp(gen: Generator, params: Mapping[str, Any], latents: Mapping[str, Any], *,
          method: str) -> tuple[dict, str]:
  """Latents of a style family as w+ latents with the same image: (latents, method) with
  method 'wp' or 'multi_wp' (z goes through the mapping and the family's default truncation,
  w is broadcast, as ``latents.render`` does)."""
  multi, space = latents_lib.method_space(method)
  if gen.family not in STYLE_FAMILIES:
    raise ValueError(f"w+ latents need a StyleGAN or StyleGAN2 generator, not {gen.family!r}")
  if method == "wp_noise":
    raise ValueError("latents with their own noise maps (wp_noise) cannot be mixed")
  out = {k: np.asarray(v, np.float32) for k, v in latents.items() if k != space}
  code = np.asarray(latents[space], np.float32)
  out["wp"] = code if space == "wp" else np.asarray(_to_wp(gen, params, code, space=space))
  return out, ("multi_wp" if multi else "wp")


def mix(wp_a: Any, wp_b: Any, rows: Sequence[int]) -> np.ndarray:
  """A's w+ codes (N, L, W) with ``rows`` taken from B (M, L, W) (B's mean over codes when
  M > 1). Returns (N, L, W) float32; the other rows are A's, unchanged."""
  a = np.array(wp_a, np.float32)
  b = np.asarray(wp_b, np.float32)
  if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
    raise ValueError(f"w+ codes of different shapes: {a.shape} and {b.shape}")
  style = b[0] if b.shape[0] == 1 else np.mean(b.astype(np.float64), axis=0).astype(np.float32)
  rows = list(rows)
  a[:, rows] = style[rows]
  return a


def mix_levels(gen: Generator, params: Mapping[str, Any], latents_a: Mapping[str, Any],
               latents_b: Mapping[str, Any], *, method_a: str, method_b: str,
               levels: Sequence[str] = tuple(LEVELS)) -> tuple[dict, str]:
  """Frames [A, A with B's level_1 rows, ..., B] as w+ latents: (frames, method). B is a
  single code or its codes' mean (see ``mix``); the last frame is B rendered with A's alpha
  (multi-code A) or B itself (single-code A)."""
  a, method = to_wp(gen, params, latents_a, method=method_a)
  b, _ = to_wp(gen, params, latents_b, method=method_b)
  frames = [a["wp"]]
  for level in levels:
    frames.append(mix(a["wp"], b["wp"], level_layers(gen, level)))
  frames.append(mix(a["wp"], b["wp"], range(gen.num_layers)))
  out = {k: _tile(v, len(frames)) for k, v in a.items() if k != "wp"}
  out["wp"] = np.stack(frames).astype(np.float32)
  return out, method


# ----------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("gen", "method", "layer", "truncation", "vmap"))
def _render(gen, params, frames, *, method, layer, truncation, vmap):
  def one(lat):
    return latents_lib.render(gen, params, lat, method=method, layer=layer,
                              truncation=truncation)[0]
  return jax.vmap(one)(frames) if vmap else jax.lax.map(one, frames)


def render_frames(gen: Generator, params: Mapping[str, Any], frames: Mapping[str, Any], *,
                  method: str, layer: int | None = None, truncation: Any = None,
                  vmap: bool = False) -> np.ndarray:
  """Images of frames (leading axis F on every array) -> (F, R, R, 3) float32, raw generator
  output, from one jitted program over the frames (params are an argument, so one compiled
  program serves every model of the same shapes).

  ``vmap=False`` (default): the frames run one after another inside the program
  (``lax.map``), each with the shapes of a single render, so every frame is bit for bit the
  image ``latents.render`` gives for its latents alone: the step-0 frame of an edit is the
  inversion's image, and a frame does not depend on how many frames are rendered with it.
  ``vmap=True`` batches the frames (``jax.vmap``): faster on accelerators, but XLA's batched
  convolutions round differently (measured on CPU: up to 5e-6 on images of magnitude ~2).
  """
  frames = {k: np.asarray(v, np.float32) for k, v in frames.items()}
  chex.assert_equal_shape_prefix(list(frames.values()), 1)      # one leading frame axis F
  return np.asarray(_render(gen, params, frames, method=method, layer=layer,
                            truncation=truncation, vmap=bool(vmap)))


__all__ = ["LEVELS", "Z_NORMALISED_FAMILIES", "STYLE_FAMILIES", "edit_key", "edit_dim",
           "line_steps", "move", "interpolate", "layer_resolutions", "level_layers", "to_wp",
           "mix", "mix_levels", "render_frames"]
