"""Baselines: the answers a user already has without a GAN prior, one per task, to compare with.

Every baseline maps numpy images in [-1, 1] to an image (H, W, 3) float32 in [-1, 1] (clipped),
from the *observation* a task produces (``mgan_jax.tasks``): the low-resolution image for
super-resolution, the masked image and its mask (1 = missing) for inpainting, the noisy image for
denoising, the gray image for colorization. None of them sees the clean target.

Super-resolution (``factor`` = the task's downsampling factor; output ``factor`` times larger,
or ``size=(H, W)``):

* ``upsample_bicubic`` -- PIL ``Image.resize(..., BICUBIC)`` per channel on float32 ('F' mode, no
  8-bit rounding): Keys' cubic convolution with a = -0.5 (exact on linear ramps), kernel
  truncated and renormalised at the borders. The usual "bicubic" row of SR tables (as MATLAB's
  ``imresize``, which also uses a = -0.5).
* ``upsample_bicubic_torch`` -- PyTorch ``F.interpolate(mode='bicubic', align_corners=False)``
  (a = -0.75, clamped borders; not exact on ramps), via ``mgan_jax.operators.resize``.
* ``upsample_nearest`` -- pixel replication (``F.interpolate(mode='nearest')``).

Inpainting (``mask`` (H, W) or (H, W, 1), 1 = missing; known pixels are returned unchanged):

* ``inpaint_biharmonic`` -- scikit-image ``restoration.inpaint_biharmonic`` (Damelin & Hoang,
  "On Surface Completion and Image Inpainting by Biharmonic Functions: Numerical Aspects",
  IJMMS 2018): the hole solves the biharmonic equation with the surrounding pixels as boundary
  values.
* ``inpaint_harmonic`` -- the Laplace equation: every missing pixel is the mean of its
  4-neighbours inside the image (neighbours outside are left out: a zero-flux border), solved
  exactly as one sparse linear system (``scipy.sparse.linalg.spsolve``). Smooth, and by the
  maximum principle never leaves the range of the known pixels.
* ``inpaint_mean`` -- every missing pixel gets the mean colour of the known pixels.

Denoising (``sigma``: the noise standard deviation on the [0, 1] pixel scale, as the CLI's
``--noise``; the images are denoised on [0, 1]):

* ``denoise_tv`` -- total-variation denoising, Chambolle's projection algorithm (Chambolle, "An
  Algorithm for Total Variation Minimization and Applications", JMIV 2004; scikit-image
  ``restoration.denoise_tv_chambolle``, channels jointly) with ``weight = 0.75 * sigma``.
* ``denoise_wavelet`` -- scikit-image ``restoration.denoise_wavelet``: BayesShrink (Chang, Yu &
  Vetterli, IEEE TIP 2000) soft thresholds in YCbCr with the noise level *estimated* per
  channel (the library's documented colour setting; passing the known sigma through its YCbCr
  rescaling did worse).
* ``denoise_nl_means`` -- non-local means (Buades, Coll & Morel 2005; scikit-image
  ``restoration.denoise_nl_means``, fast mode, 5x5 patches, search distance 6) with the known
  ``sigma`` and filtering strength ``h = 0.6 * sigma``.

  The factors come from a sweep (``scripts/sweep_denoise_baselines.py`` prints the table):
  mean PSNR over centre crops of four scikit-image photos (astronaut, coffee, chelsea, rocket)
  resized to 64 and 128 pixels, sigma in {0.05, 0.1, 0.2}. TV: k = 0.75 is the best of
  {0.5, 0.75, 1, 1.5, 2} at every sigma. NL-means: h = 0.6 sigma is the best of
  {0.3, 0.4, 0.5, 0.6, 0.8, 1} at sigma 0.05 and 0.1 (the CLI default); at 0.2, h = 0.3 sigma
  would gain 0.7 dB. At sigma 0.1 the noisy input has 20.4 dB there; TV gives 27.4 dB, wavelets
  26.5 dB, NL-means 28.4 dB.
  With known noise positions (``--noise-fraction`` < 1) the inpainting baselines with the noise
  mask are the natural comparison.

Colorization:

* ``colorize_gray`` -- the gray image itself (its luma 0.299 R + 0.587 G + 0.114 B repeated to
  3 channels): zero chroma, the trivial answer whose colorization AuC is already high.

``BASELINES`` lists them by task (the ``tasks.TASKS`` names) and ``apply(task, name, observed,
*, mask, factor, sigma)`` calls one with the arguments it needs. scikit-image (and PyWavelets for
``denoise_wavelet``, scipy for ``inpaint_harmonic``) come with the ``eval`` extra
(``pip install 'mgan_jax[eval]'``); without them these baselines raise one ``UserError`` line
naming the extra.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import chex
import numpy as np

from mgan_jax.errors import UserError

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)
#: TV weight and NL-means h as multiples of the noise sigma (see the module note).
TV_WEIGHT_PER_SIGMA = 0.75
NLM_H_PER_SIGMA = 0.6
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6


def _require(module: str, *, what: str):
  """Import an optional dependency of the ``eval`` extra, or raise one UserError line."""
  try:
    return importlib.import_module(module)
  except ImportError:
    dist = {"skimage": "scikit-image", "pywt": "PyWavelets"}.get(module.split(".")[0],
                                                                 module.split(".")[0])
    raise UserError(f"{what} needs {dist}, which is not installed; install the evaluation "
                    "extra: pip install 'mgan_jax[eval]'") from None


def _image(x, *, name: str = "image") -> np.ndarray:
  a = np.asarray(x, np.float32)
  chex.assert_shape(a, (None, None, 3), custom_message=f"{name} must be (H, W, 3) in [-1, 1]")
  return a


def _mask(mask, shape: tuple[int, int]) -> np.ndarray:
  """(H, W) bool, True = missing, from (H, W) or (H, W, 1) values (> 0.5 = missing)."""
  m = np.asarray(mask)
  if m.ndim == 3 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.shape != tuple(shape):
    raise ValueError(f"mask must be (H, W) or (H, W, 1) with (H, W) = {tuple(shape)}, "
                     f"got {np.asarray(mask).shape}")
  return m > 0.5


def _out(x: np.ndarray) -> np.ndarray:
  return np.clip(np.asarray(x, np.float32), -1.0, 1.0)


def _target_size(shape: tuple[int, int], factor: int | None,
                 size: int | tuple[int, int] | None) -> tuple[int, int]:
  if size is not None:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
  if factor is None or int(factor) < 1:
    raise ValueError(f"give the upsampling factor (>= 1) or the output size, got factor={factor}")
  return shape[0] * int(factor), shape[1] * int(factor)


# ----- super-resolution -------------------------------------------------------------------

def upsample_bicubic(observed, *, factor: int | None = None,
                     size: int | tuple[int, int] | None = None) -> np.ndarray:
  """PIL bicubic (a = -0.5) upsampling, per channel in float32: (h, w, 3) -> (H, W, 3)."""
  from PIL import Image
  x = _image(observed, name="observed")
  h, w = _target_size(x.shape[:2], factor, size)
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]))
                      .resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)]
  return _out(np.stack(chans, axis=-1))


def upsample_bicubic_torch(observed, *, factor: int | None = None,
                           size: int | tuple[int, int] | None = None) -> np.ndarray:
  """PyTorch-style bicubic (a = -0.75, align_corners False): (h, w, 3) -> (H, W, 3)."""
  from mgan_jax.operators import resize
  x = _image(observed, name="observed")
  hw = _target_size(x.shape[:2], factor, size)
  return _out(resize(x[None], hw, method="bicubic")[0])


def upsample_nearest(observed, *, factor: int | None = None,
                     size: int | tuple[int, int] | None = None) -> np.ndarray:
  """Nearest-neighbour upsampling (PyTorch index rule): (h, w, 3) -> (H, W, 3)."""
  from mgan_jax.operators import resize
  x = _image(observed, name="observed")
  hw = _target_size(x.shape[:2], factor, size)
  return _out(resize(x[None], hw, method="nearest")[0])


# ----- inpainting --------------------------------------------------------------------------

def _known_check(m: np.ndarray) -> None:
  if m.all():
    raise ValueError("the mask removes every pixel: nothing to fill from")


def inpaint_biharmonic(observed, mask) -> np.ndarray:
  """scikit-image biharmonic inpainting of the pixels where ``mask`` is 1: (H, W, 3)."""
  restoration = _require("skimage.restoration", what="the biharmonic inpainting baseline")
  x = _image(observed, name="observed")
  m = _mask(mask, x.shape[:2])
  _known_check(m)
  out = restoration.inpaint_biharmonic(x.astype(np.float64), m, channel_axis=-1)
  out = np.where(m[..., None], out, x)
  return _out(out)


def inpaint_harmonic(observed, mask) -> np.ndarray:
  """Harmonic (Laplace) fill of the pixels where ``mask`` is 1: each equals the mean of its
  4-neighbours (neighbours outside the image are left out). One sparse solve. (H, W, 3)."""
  sparse = _require("scipy.sparse", what="the harmonic inpainting baseline")
  linalg = _require("scipy.sparse.linalg", what="the harmonic inpainting baseline")
  x = _image(observed, name="observed").astype(np.float64)
  m = _mask(mask, x.shape[:2])
  _known_check(m)
  h, w = m.shape
  n = int(m.sum())
  if n == 0:
    return _out(x)
  index = -np.ones((h, w), np.int64)
  index[m] = np.arange(n)
  ys, xs = np.nonzero(m)
  rows, cols, vals = [], [], []
  degree = np.zeros(n)
  rhs = np.zeros((n, 3))
  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    ny, nx = ys + dy, xs + dx
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    degree += inside
    p = np.nonzero(inside)[0]
    q = index[ny[p], nx[p]]
    unknown = q >= 0
    rows.append(p[unknown])
    cols.append(q[unknown])
    vals.append(-np.ones(int(unknown.sum())))
    known = p[~unknown]
    np.add.at(rhs, known, x[ny[known], nx[known]])
  rows.append(np.arange(n))
  cols.append(np.arange(n))
  vals.append(degree)
  a = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n, n))
  sol = np.asarray(linalg.spsolve(a, rhs)).reshape(n, 3)
  out = x.copy()
  out[ys, xs] = sol
  return _out(out)


def inpaint_mean(observed, mask) -> np.ndarray:
  """Fill the pixels where ``mask`` is 1 with the mean colour of the known pixels. (H, W, 3)."""
  x = _image(observed, name="observed")
  m = _mask(mask, x.shape[:2])
  _known_check(m)
  mean = x[~m].astype(np.float64).mean(axis=0)
  return _out(np.where(m[..., None], mean, x))


# ----- denoising ---------------------------------------------------------------------------

def _sigma(sigma: float) -> float:
  s = float(sigma)
  if not s > 0:
    raise ValueError(f"the noise sigma must be > 0, got {sigma}")
  return s


def denoise_tv(noisy, *, sigma: float) -> np.ndarray:
  """TV denoising (Chambolle), weight 0.75 sigma, on [0, 1]; sigma on the [0, 1] scale."""
  restoration = _require("skimage.restoration", what="the TV denoising baseline")
  u = (_image(noisy, name="noisy").astype(np.float64) + 1.0) * 0.5
  out = restoration.denoise_tv_chambolle(u, weight=TV_WEIGHT_PER_SIGMA * _sigma(sigma),
                                         channel_axis=-1)
  return _out(out * 2.0 - 1.0)


def denoise_wavelet(noisy, *, sigma: float | None = None) -> np.ndarray:
  """Wavelet denoising (BayesShrink, soft, YCbCr, noise level estimated per channel) on [0, 1].
  ``sigma`` is accepted for a uniform call and not used (see the module note)."""
  restoration = _require("skimage.restoration", what="the wavelet denoising baseline")
  _require("pywt", what="the wavelet denoising baseline")
  del sigma
  u = (_image(noisy, name="noisy").astype(np.float64) + 1.0) * 0.5
  out = restoration.denoise_wavelet(u, channel_axis=-1, convert2ycbcr=True,
                                    method="BayesShrink", mode="soft", rescale_sigma=True)
  return _out(out * 2.0 - 1.0)


def denoise_nl_means(noisy, *, sigma: float) -> np.ndarray:
  """Non-local means (fast mode, 5x5 patches, distance 6, h = 0.6 sigma, the known sigma) on
  [0, 1]; sigma on the [0, 1] scale."""
  restoration = _require("skimage.restoration", what="the non-local means denoising baseline")
  s = _sigma(sigma)
  u = (_image(noisy, name="noisy").astype(np.float64) + 1.0) * 0.5
  out = restoration.denoise_nl_means(u, h=NLM_H_PER_SIGMA * s, sigma=s,
                                     patch_size=NLM_PATCH_SIZE,
                                     patch_distance=NLM_PATCH_DISTANCE, fast_mode=True,
                                     channel_axis=-1)
  return _out(out * 2.0 - 1.0)


# ----- colorization ------------------------------------------------------------------------

def colorize_gray(observed) -> np.ndarray:
  """The gray image itself: (H, W), (H, W, 1) or (H, W, 3) -> its luma repeated, (H, W, 3)."""
  x = np.asarray(observed, np.float32)
  if x.ndim == 3 and x.shape[-1] == 3:
    x = x @ _GRAY
  elif x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"observed must be (H, W), (H, W, 1) or (H, W, 3), got "
                     f"{np.asarray(observed).shape}")
  return _out(np.repeat(x[..., None], 3, axis=-1))


# ----- registry ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Baseline:
  """A baseline: ``fn`` and which of ``mask`` / ``factor`` / ``sigma`` it takes."""
  task: str
  name: str
  fn: Callable[..., np.ndarray]
  needs: tuple[str, ...]
  source: str


BASELINES: dict[str, dict[str, Baseline]] = {}
for _b in (
    Baseline("super-resolve", "bicubic", upsample_bicubic, ("factor",), "PIL bicubic (a=-0.5)"),
    Baseline("super-resolve", "bicubic-torch", upsample_bicubic_torch, ("factor",),
             "PyTorch F.interpolate bicubic (a=-0.75)"),
    Baseline("super-resolve", "nearest", upsample_nearest, ("factor",), "nearest neighbour"),
    Baseline("inpaint", "biharmonic", inpaint_biharmonic, ("mask",),
             "skimage.restoration.inpaint_biharmonic"),
    Baseline("inpaint", "harmonic", inpaint_harmonic, ("mask",), "Laplace equation, 4-neighbour"),
    Baseline("inpaint", "mean", inpaint_mean, ("mask",), "mean colour of the known pixels"),
    Baseline("denoise", "tv", denoise_tv, ("sigma",),
             "skimage.restoration.denoise_tv_chambolle, weight 0.75 sigma"),
    Baseline("denoise", "wavelet", denoise_wavelet, ("sigma",),
             "skimage.restoration.denoise_wavelet, BayesShrink, YCbCr"),
    Baseline("denoise", "nl-means", denoise_nl_means, ("sigma",),
             "skimage.restoration.denoise_nl_means, h 0.6 sigma"),
    Baseline("colorize", "gray", colorize_gray, (), "the gray input"),
):
  BASELINES.setdefault(_b.task, {})[_b.name] = _b
del _b


def apply(task: str, name: str, observed, *, mask=None, factor: int | None = None,
          sigma: float | None = None) -> np.ndarray:
  """Run baseline ``name`` of ``task`` on ``observed`` with the arguments it needs.

  Raises UserError for an unknown task or name (listing the known ones) and ValueError when a
  needed argument is missing.
  """
  if task not in BASELINES:
    raise UserError(f"no baselines for task {task!r} (known: {', '.join(BASELINES)})")
  if name not in BASELINES[task]:
    raise UserError(f"unknown {task} baseline {name!r} (known: {', '.join(BASELINES[task])})")
  b = BASELINES[task][name]
  given = {"mask": mask, "factor": factor, "sigma": sigma}
  missing = [k for k in b.needs if given[k] is None]
  if missing:
    raise ValueError(f"the {task} baseline {name!r} needs {', '.join(missing)}")
  if b.needs == ("mask",):
    return b.fn(observed, mask)
  return b.fn(observed, **{k: given[k] for k in b.needs})


__all__ = ["BASELINES", "Baseline", "apply", "upsample_bicubic", "upsample_bicubic_torch",
           "upsample_nearest", "inpaint_biharmonic", "inpaint_harmonic", "inpaint_mean",
           "denoise_tv", "denoise_wavelet", "denoise_nl_means", "colorize_gray",
           "TV_WEIGHT_PER_SIGMA", "NLM_H_PER_SIGMA", "NLM_PATCH_SIZE", "NLM_PATCH_DISTANCE"]
