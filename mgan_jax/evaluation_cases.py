"""What the evaluation evaluates: the cases (a task with its parameters) and their inpainting
masks, the outputs a task can write, the held-out images (prior samples, the user's photos) and
their degraded observations. The overview is ``mgan_jax.evaluation``'s docstring."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax import imageio, tasks
from mgan_jax.errors import UserError

#: seeds of the prior samples in examples/ (scripts/make_examples.py): never evaluated on
EXAMPLE_SEEDS = (9001, 9002, 9003, 9004)
MASK_KINDS = ("centre", "random80", "strokes", "half")
POSTS = ("raw", "luma", "paste", "back-project")
LPIPS_NETS = ("alex", "vgg")
GAN_METHODS = ("multi-code", "z", "w", "w+")


# ----------------------------------------------------------------------------------------------
# Cases and masks.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
  """One evaluated task: ``task`` (``tasks.TASKS``), super-resolution ``factor``, inpainting
  ``mask`` kind (``MASK_KINDS``), denoising ``noise`` sigma; ``title`` for tables."""
  name: str
  task: str
  title: str
  factor: int | None = None
  mask: str | None = None
  noise: float | None = None


CASES: dict[str, Case] = {c.name: c for c in (
    Case("reconstruct", "reconstruct", "reconstruction"),
    Case("colorize", "colorize", "colorization"),
    Case("sr4", "super-resolve", "super-resolution x4", factor=4),
    Case("sr8", "super-resolve", "super-resolution x8", factor=8),
    Case("inpaint-centre", "inpaint", "inpainting, centre box (25 %)", mask="centre"),
    Case("inpaint-random80", "inpaint", "inpainting, random 80 % of the pixels",
         mask="random80"),
    Case("inpaint-strokes", "inpaint", "inpainting, strokes", mask="strokes"),
    Case("inpaint-half", "inpaint", "inpainting, left half", mask="half"),
    Case("denoise", "denoise", "denoising, sigma 0.1", noise=0.1),
)}


def make_mask(kind: str, size: int) -> np.ndarray:
  """A (size, size, 1) float32 mask, 1 = missing, built by code with fixed seeds (at 64 px the
  masks of ``examples/``): 'centre' the central half-side box, 'half' the left half, 'random80'
  each pixel missing with probability 0.8 (seed 7), 'strokes' ten thick random polylines
  (seed 8; widths and steps scale with the size)."""
  if kind not in MASK_KINDS:
    raise UserError(f"unknown mask kind {kind!r} (known: {', '.join(MASK_KINDS)})")
  hole = np.zeros((size, size), bool)
  if kind == "centre":
    hole[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
  elif kind == "half":
    hole[:, :size // 2] = True
  elif kind == "random80":
    hole = np.random.default_rng(7).random((size, size)) < 0.8
  else:
    from PIL import Image, ImageDraw
    s = size / 64.0
    rng = np.random.default_rng(8)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lo, hi = int(round(4 * s)), size - int(round(4 * s))
    for _ in range(10):
      points = [tuple(rng.integers(lo, hi, 2).tolist())]
      for _ in range(int(rng.integers(2, 5))):
        step = np.round(rng.integers(-20, 21, 2) * s).astype(int)
        points.append(tuple(np.clip(np.add(points[-1], step), 0, size - 1).tolist()))
      draw.line(points, fill=255, width=max(1, int(round(int(rng.integers(4, 7)) * s))),
                joint="curve")
    hole = np.asarray(canvas) > 127
  return hole.astype(np.float32)[..., None]


def case_task(case: Case, gen: Any, defaults: Mapping[str, Any]) -> tasks.Task:
  """The ``tasks.Task`` of a case with the model's default output options."""
  names = tasks.parse_task(case.task).tasks
  return tasks.parse_task(
      case.task, factor=case.factor or defaults.get("factor", 4),
      noise=case.noise if case.noise is not None else 0.1,
      paste_known=bool(defaults.get("paste_known", False)) and names == ("inpaint",),
      back_project=bool(defaults.get("back_project", False)) and "super-resolve" in names,
      resolution=gen.resolution)


def posts_of(task: tasks.Task) -> tuple[str, ...]:
  """The outputs a task can write: ``POSTS`` that apply to it."""
  if task.tasks == ("colorize",):
    return ("luma", "raw")
  if task.tasks == ("inpaint",):
    return ("raw", "paste")
  if task.has("super-resolve") and tasks.BACK_PROJECT_TASKS.issuperset(task.tasks):
    return ("raw", "back-project")
  return ("raw",)


def default_post(task: tasks.Task) -> str:
  """The output the CLI writes by default for ``task`` (with its model defaults)."""
  if task.tasks == ("colorize",):
    return "luma"
  if task.tasks == ("inpaint",) and task.paste_known:
    return "paste"
  if task.back_project:
    return "back-project"
  return "raw"


def apply_post(post: str, task: tasks.Task, raw: np.ndarray,
               observation: tasks.Observation) -> np.ndarray:
  """One image's output ``post`` (``POSTS``) from the raw generator output (R, R, 3)."""
  if post == "raw":
    return np.asarray(raw, np.float32)
  flags = {"luma": {}, "paste": {"paste_known": True, "back_project": False},
           "back-project": {"back_project": True, "paste_known": False}}[post]
  image, _ = tasks.postprocess(dataclasses.replace(task, **flags), raw, observation)
  return image


# ----------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageSet:
  """Clean images (n, R, R, 3) float32 in [-1, 1] (8-bit values), their names and sources."""
  names: list[str]
  clean: np.ndarray
  sources: list[dict]

  def __len__(self) -> int:
    return len(self.names)

  def fingerprint(self) -> str:
    h = hashlib.sha256(imageio.to_uint8(self.clean).tobytes())
    h.update(json.dumps(self.names).encode())
    return h.hexdigest()[:16]

  def subset(self, n: int) -> "ImageSet":
    return ImageSet(self.names[:n], self.clean[:n], self.sources[:n])

  def __add__(self, other: "ImageSet") -> "ImageSet":
    if not len(other):
      return self
    if not len(self):
      return other
    return ImageSet(self.names + other.names, np.concatenate([self.clean, other.clean]),
                    self.sources + other.sources)


def check_seeds(start: int, n: int, *, what: str) -> None:
  """UserError when seeds start .. start + n - 1 include those of examples/."""
  clash = [s for s in EXAMPLE_SEEDS if start <= s < start + n]
  if clash:
    raise UserError(f"{what}: seeds {start}..{start + n - 1} include {clash[0]}, a seed of the "
                    "samples in examples/ (9001-9004); choose another start seed")


def prior_samples(gen: Any, gen_params: Any, n: int, *, seed: int, batch: int = 64) -> ImageSet:
  """``n`` samples of the prior from seeds ``seed`` ... (one seed per image, the recipe of
  scripts/make_examples.py), rounded to 8 bits."""
  import jax.numpy as jnp
  check_seeds(seed, n, what="sample seeds")
  seeds = list(range(seed, seed + n))
  z = np.stack([np.random.default_rng(s).standard_normal(gen.latent_dim) for s in seeds])
  z = z.astype(np.float32).reshape((n, gen.latent_dim))
  out = []
  for i in range(0, n, batch):
    out.append(np.asarray(gen.generate(gen_params, jnp.asarray(z[i:i + batch]), space="z")))
  images = np.concatenate(out) if out else np.zeros((0, gen.resolution, gen.resolution, 3))
  clean = imageio.from_uint8(imageio.to_uint8(images)).astype(np.float32)
  return ImageSet([f"sample-{s}" for s in seeds], clean,
                  [{"kind": "prior sample", "seed": s} for s in seeds])


def photo_set(specs: Sequence[str], resolution: int, *, fit: str) -> ImageSet:
  """The user's photos (files, directories, globs, lists), fitted to ``resolution``."""
  if not specs:
    return ImageSet([], np.zeros((0, resolution, resolution, 3), np.float32), [])
  paths = imageio.list_inputs(list(specs), flag="--image")
  names = imageio.output_names(paths)
  images, sources = [], []
  for p in paths:
    im, rep = imageio.read_image(p, size=resolution, fit=fit)
    images.append(imageio.from_uint8(imageio.to_uint8(im)))
    sources.append({"kind": "photo", "path": os.fspath(p), "fit": rep.to_json()})
  return ImageSet(list(names), np.stack(images).astype(np.float32), sources)


def observations(case: Case, task: tasks.Task, images: ImageSet, *, seed: int
                 ) -> list[tasks.Observation]:
  """The degraded observation of each image (``tasks.degrade``; the case's mask)."""
  mask = None
  if case.mask is not None:
    mask = make_mask(case.mask, task.observation_size(images.clean.shape[1]))
  return [tasks.degrade(task, c, mask=mask, seed=seed) for c in images.clean]


__all__ = ["EXAMPLE_SEEDS", "MASK_KINDS", "POSTS", "LPIPS_NETS", "GAN_METHODS", "Case", "CASES",
           "make_mask", "case_task", "posts_of", "default_post", "apply_post", "ImageSet",
           "check_seeds", "prior_samples", "photo_set", "observations"]
