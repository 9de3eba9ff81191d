"""User tasks: a task string -> the degradation to synthesise, the loss operator, the
post-processing.

Tasks (``TASKS``; several may be combined with commas, e.g. ``super-resolve,colorize``):

==============  ================================  ============================================
task            degradation D / observation       official source
==============  ================================  ============================================
reconstruct     identity                          ``multi_code_inversion.py``
colorize        gray 0.299 R + 0.587 G + 0.114 B  ``colorization.py`` (``Color_loss``)
super-resolve   downsample by ``factor``          ``super_resolution.py`` (``SR_loss``: bilinear,
                (``resample``, default bilinear,  no antialias)
                no antialias)
inpaint         ``x * (1 - mask)``, white = hole  ``inpainting.py`` (``masked_loss``)
denoise         ``x + sigma * N(0, 1)``           not in the official code; see below
==============  ================================  ============================================

**Order.** Whatever the order in the string, the degradation is applied in the canonical order
gray -> downsample -> noise -> holes, so a combination means one thing: ``--mask`` marks pixels
of the *observation* (its size is the model resolution divided by ``factor`` when
super-resolving). Gray commutes with the others (a per-pixel linear channel mix); the only
non-commuting pair, downsample vs mask, is fixed by that rule.

**Two modes.**

* default (official semantics, ``observed=False``): the input image is the **clean target**;
  the observation ``y`` is synthesised from it (``degrade``) and the loss is
  ``L(D(G(latents)), y)``, so PSNR / SSIM against the clean input can be reported.
* ``observed=True`` (genforce/mganprior#5): the input *is* the observation (a real gray photo,
  a low-resolution image at resolution / factor, an image with holes); ``D`` is applied to the
  generated image only, and there is no clean reference unless one is given separately.
  The idempotent parts of ``D`` are applied to the observation too (gray for colorize, the
  holes for inpaint), so a color photo given to ``--task colorize --observed`` is grayed.

**Denoising** is not in the official code. The maintainers describe it as "the noise positions
are assumed known and only noise-free pixels enter the loss" (issues #10, #19). Both readings
are available: ``noise_fraction < 1`` corrupts that fraction of the pixels (known positions) and
masks them out of the loss (a masked reconstruction, as the maintainers describe); with
``noise_fraction = 1`` (default) every pixel is noisy, positions carry no information, and the
loss is the plain distance to the noisy observation: the GAN prior is the denoiser (stop early:
a flexible prior will eventually fit the noise too). ``noise`` is sigma on the [0, 1] pixel
scale (0.1 ~ 25/255); the noisy observation is clipped to the valid range. In observed mode,
``--mask`` (if given) marks the corrupted pixels.

**Post-processing** (``postprocess``), official where the official code has one:

* colorize alone: the luma Y of the observation with the chroma of the result (BT.601 YCbCr,
  ``operators.merge_luma``), as the official ``colorization.py`` writes;
* inpaint alone with ``paste_known``: the known pixels of the observation, the result in the
  holes (``operators.paste_known``; the official output is the raw result);
* super-resolve (alone or with colorize) with ``back_project``: the result plus the smooth
  correction (bicubic-upsampled) that makes ``D(result)`` equal the observation exactly
  (``operators.back_project``; not in the official code, which writes the raw result);
* otherwise the raw generator output (clipped only when written).

Which of these a run uses by default is the model's choice (``mgan_jax.defaults``, from the
measurements in docs/RESULTS.md); the CLI flags turn each on or off.

The randomness of the synthesis (noise, noise positions) comes from a ``numpy`` generator seeded
by (seed, a CRC of the clean image's 8-bit pixels): the same image gets the same observation
whatever its name, position in a batch or batch size.
"""

from __future__ import annotations

import dataclasses
import zlib
import chex
import jax.numpy as jnp
import numpy as np

from mgan_jax import operators as ops
from mgan_jax.errors import UserError

TASKS = ("reconstruct", "colorize", "super-resolve", "inpaint", "denoise")
_ALIASES = {
    "reconstruction": "reconstruct", "invert": "reconstruct", "inversion": "reconstruct",
    "colorization": "colorize", "colourization": "colorize", "colourize": "colorize",
    "colorise": "colorize",
    "super-resolution": "super-resolve", "superresolve": "super-resolve", "sr": "super-resolve",
    "super_resolve": "super-resolve", "inpainting": "inpaint", "denoising": "denoise",
}
_CANONICAL = ("colorize", "super-resolve", "denoise", "inpaint")   # degradation order
#: task combinations whose degradation is known exactly (no holes, no noise): back-projection
BACK_PROJECT_TASKS = frozenset({"super-resolve", "colorize"})


@dataclasses.dataclass(frozen=True)
class Task:
  """A parsed task (hashable, static).

  tasks: the task names in canonical order (``('reconstruct',)`` alone for reconstruction);
  factor: super-resolution factor (used only with super-resolve); resample: its downsampling
  method (``operators.RESAMPLE_METHODS``); noise: sigma on the [0, 1] scale (denoise);
  noise_fraction: share of noisy pixels (denoise; < 1 = known positions, masked out of the
  loss); observed: the input is the observation (see the module docstring); paste_known:
  inpainting output keeps the known pixels; back_project: super-resolution output is made
  data-consistent (``operators.back_project``).
  """
  tasks: tuple[str, ...]
  factor: int = 4
  resample: str = "bilinear"
  noise: float = 0.1
  noise_fraction: float = 1.0
  observed: bool = False
  paste_known: bool = False
  back_project: bool = False

  @property
  def label(self) -> str:
    return "+".join(self.tasks)

  def has(self, task: str) -> bool:
    return task in self.tasks

  @property
  def needs_mask(self) -> bool:
    """inpaint always needs ``--mask``."""
    return self.has("inpaint")

  @property
  def accepts_mask(self) -> bool:
    return self.has("inpaint") or (self.observed and self.has("denoise"))

  def observation_size(self, resolution: int) -> int:
    """Side of the observation for a model of ``resolution``."""
    if self.has("super-resolve"):
      return resolution // self.factor
    return resolution

  def to_json(self) -> dict:
    d = {"task": self.label, "mode": "observed" if self.observed else "degrade"}
    if self.has("super-resolve"):
      d.update(factor=self.factor, resample=self.resample, back_project=self.back_project)
    if self.has("denoise"):
      d.update(noise_sigma=self.noise, noise_fraction=self.noise_fraction)
    if self.has("inpaint"):
      d.update(paste_known=self.paste_known)
    return d


def parse_task(text: str, *, factor: int = 4, resample: str = "bilinear", noise: float = 0.1,
               noise_fraction: float = 1.0, observed: bool = False, paste_known: bool = False,
               back_project: bool = False, resolution: int | None = None) -> Task:
  """Parse ``'super-resolve,colorize'`` etc. into a Task; UserError (one line naming
  ``--task`` / the flag) for unknown names or impossible settings."""
  names = []
  for raw in str(text).replace("+", ",").split(","):
    name = raw.strip().lower()
    if not name:
      continue
    name = _ALIASES.get(name, name)
    if name not in TASKS:
      raise UserError(f"--task: unknown task {raw.strip()!r} (choose from {', '.join(TASKS)}; "
                      "combine with commas, e.g. super-resolve,colorize)")
    if name not in names:
      names.append(name)
  if not names:
    raise UserError(f"--task: no task given (choose from {', '.join(TASKS)})")
  if "reconstruct" in names and len(names) > 1:
    names.remove("reconstruct")   # reconstruction is the identity: nothing to chain
  tasks = tuple(n for n in _CANONICAL if n in names) or ("reconstruct",)
  if "super-resolve" in tasks:
    if int(factor) != factor or factor < 2:
      raise UserError(f"--factor must be an integer >= 2, got {factor}")
    if resample not in ops.RESAMPLE_METHODS:
      raise UserError(f"--resample must be one of {', '.join(ops.RESAMPLE_METHODS)}, got "
                      f"{resample!r}")
    if resolution is not None and (resolution % factor or resolution // factor < 1):
      raise UserError(f"--factor {factor} does not divide the model resolution {resolution}")
  if "denoise" in tasks:
    if not noise >= 0:
      raise UserError(f"--noise must be >= 0, got {noise}")
    if not 0.0 < noise_fraction <= 1.0:
      raise UserError(f"--noise-fraction must be in (0, 1], got {noise_fraction}")
  if back_project and ("super-resolve" not in tasks
                       or not BACK_PROJECT_TASKS.issuperset(tasks)):
    raise UserError("--back-project applies to --task super-resolve (alone or with colorize), "
                    f"not to {'+'.join(tasks)}")
  return Task(tasks, factor=int(factor), resample=resample, noise=float(noise),
              noise_fraction=float(noise_fraction), observed=bool(observed),
              paste_known=bool(paste_known), back_project=bool(back_project))


@dataclasses.dataclass
class Observation:
  """One image's observation.

  image: (r, r, 3) float32 in [-1, 1], what a camera would give (gray, low-res, noisy, holes at
  0 = mid-gray); loss_mask: (r, r, 1) float32, 1 = excluded from the loss (holes and known
  noisy pixels), or None; target: (r, r, 3) the image the loss compares against
  (``image * (1 - loss_mask)``).
  """
  image: np.ndarray
  loss_mask: np.ndarray | None

  @property
  def target(self) -> np.ndarray:
    if self.loss_mask is None:
      return self.image
    return self.image * (1.0 - self.loss_mask)


def image_key(seed: int, clean: np.ndarray) -> np.random.Generator:
  """numpy generator seeded by (seed, CRC32 of the 8-bit pixels of ``clean``)."""
  pixels = np.round((np.clip(clean, -1, 1) + 1) * 127.5).astype(np.uint8)
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(pixels.tobytes())])


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float32)


def _combine(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
  if a is None:
    return b
  if b is None:
    return a
  return np.maximum(a, b)


def degrade(task: Task, clean: np.ndarray, *, mask: np.ndarray | None = None,
            seed: int = 0) -> Observation:
  """Synthesise the observation of a clean image (official mode).

  clean: (R, R, 3) in [-1, 1]; mask: (r, r, 1) holes (inpaint), r = ``observation_size(R)``.
  """
  chex.assert_shape(clean, (None, None, 3))
  y = _np(clean)[None]
  if task.has("colorize"):
    y = _np(ops.grayscale(jnp.asarray(y)))
  if task.has("super-resolve"):
    y = _np(ops.downsample_image(jnp.asarray(y), task.factor, method=task.resample))
  y = y[0]
  loss_mask = None
  if task.has("denoise"):
    rng = image_key(seed, clean)
    noise = rng.standard_normal(y.shape).astype(np.float32) * np.float32(2.0 * task.noise)
    if task.noise_fraction < 1.0:
      where = (rng.random(y.shape[:2] + (1,)) < task.noise_fraction).astype(np.float32)
      noise = noise * where
      loss_mask = where
    y = np.clip(y + noise, -1.0, 1.0)
  if task.has("inpaint"):
    _check_mask(task, mask, y.shape[0])
    y = y * (1.0 - mask)
    loss_mask = _combine(loss_mask, mask)
  return Observation(y.astype(np.float32), loss_mask)


def observe(task: Task, image: np.ndarray, *, mask: np.ndarray | None = None) -> Observation:
  """An observation given by the user (``observed`` mode): gray it for colorize, zero the
  holes; ``mask`` marks holes (inpaint) or corrupted pixels (denoise)."""
  chex.assert_shape(image, (None, None, 3))
  y = _np(image)
  if task.has("colorize"):
    y = _np(ops.grayscale(jnp.asarray(y[None])))[0]
  if mask is not None:
    _check_mask(task, mask, y.shape[0])
    y = y * (1.0 - mask)
  elif task.needs_mask:
    _check_mask(task, mask, y.shape[0])
  return Observation(y, mask)


def check_mask(mask: np.ndarray, *, what: str = "--mask") -> tuple[np.ndarray, str]:
  """The rule for masks (1 / white = missing): a pixel is a hole when its gray value is at
  least 50 %; a mask with intermediate values (a soft or anti-aliased mask, JPEG noise) is
  binarized by that rule and a note says so. A mask with no hole, or with nothing but holes,
  is refused (UserError naming ``what``): there would be nothing to restore, or nothing known
  to restore from. Returns (binary mask (H, W, 1) float32, note or '')."""
  m = np.asarray(mask, np.float32)
  binary = (m >= 0.5).astype(np.float32)
  holes = int(binary.sum())
  if holes == 0:
    raise UserError(f"{what}: marks no missing pixel (no pixel is 50% gray or brighter); "
                    "white = missing")
  if holes == binary.size:
    raise UserError(f"{what}: marks every pixel missing (all white); nothing is known to "
                    "restore from")
  soft = int(np.count_nonzero((m > 0.02) & (m < 0.98)))
  note = (f"soft mask binarized at 50% gray ({soft} intermediate pixel(s)); "
          f"{100 * holes / binary.size:.1f}% missing" if soft else "")
  return binary, note


def _check_mask(task: Task, mask: np.ndarray | None, side: int) -> None:
  if mask is None:
    raise UserError(f"--task {task.label} needs --mask (white = missing pixels)")
  if mask.shape[:2] != (side, side):
    raise UserError(f"--mask is {mask.shape[1]}x{mask.shape[0]} but the observation is "
                    f"{side}x{side}")


def operator(task: Task, observation: Observation) -> ops.Operator:
  """The loss operator D applied to the generated image (R, R, 3) -> the observation's space:
  ``chain(Grayscale, Downsample, Mask)`` with the parts the task needs (Identity for
  reconstruct)."""
  parts: list[ops.Operator] = []
  if task.has("colorize"):
    parts.append(ops.Grayscale())
  if task.has("super-resolve"):
    parts.append(ops.Downsample(factor=task.factor, method=task.resample))
  if observation.loss_mask is not None:
    parts.append(ops.Mask(mask=jnp.asarray(observation.loss_mask)))
  return ops.chain(*parts)


def upsample_for_display(image: np.ndarray, side: int) -> np.ndarray:
  """Nearest-upsample an (r, r, 3) observation to (side, side, 3) (official ``-nn.png``)."""
  r = image.shape[0]
  if r == side:
    return image
  k = side // r
  return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def postprocess(task: Task, result: np.ndarray, observation: Observation
                ) -> tuple[np.ndarray, str]:
  """(final image (R, R, 3), description) from the raw generator output (R, R, 3)."""
  chex.assert_shape(result, (None, None, 3))
  result = _np(result)
  if task.tasks == ("colorize",):
    out = _np(ops.merge_luma(jnp.asarray(observation.image), jnp.asarray(result)))
    return out, "luma of the observation + chroma of the result (official colorization output)"
  if task.tasks == ("inpaint",) and task.paste_known:
    out = _np(ops.paste_known(jnp.asarray(result), jnp.asarray(observation.image),
                              jnp.asarray(observation.loss_mask)))
    return out, "known pixels of the observation, result in the holes (--paste-known)"
  if task.back_project and task.has("super-resolve"):
    out = ops.back_project(result, observation.image, factor=task.factor, method=task.resample,
                           gray=task.has("colorize"))
    return out, ("generator output + bicubic-upsampled correction so that D(result) equals the "
                 "observation (--back-project)")
  return result, "raw generator output"


__all__ = ["TASKS", "BACK_PROJECT_TASKS", "Task", "Observation", "parse_task", "check_mask",
           "degrade", "observe", "operator", "postprocess", "upsample_for_display", "image_key"]
