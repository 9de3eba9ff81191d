"""Image quality metrics on [0, 1] (``dm_pix``): PSNR and SSIM of results against clean targets.

Images come in as [-1, 1] floats (H, W, 3) or uint8; both are mapped to [0, 1] (floats clipped)
before measuring, so a metric computed here from the written PNGs equals the one in the metrics
JSON (the CLI measures the 8-bit images it writes). SSIM is ``dm_pix.ssim`` with its defaults
(Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03; the mean over the channels of the SSIM map),
PSNR ``dm_pix.psnr`` (max value 1): ``-10 log10(mean (a - b)^2)``; identical images give +inf,
reported as ``float('inf')``.
"""

from __future__ import annotations


import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def to_unit(image) -> np.ndarray:
  """uint8 -> /255; float in [-1, 1] -> clipped, (x + 1) / 2. (..., H, W, C) float32."""
  a = np.asarray(image)
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  return (np.clip(a.astype(np.float32), -1.0, 1.0) + 1.0) * 0.5


@jax.jit
def _psnr_ssim(a: Array, b: Array) -> tuple[Array, Array]:
  return dm_pix.psnr(a, b), dm_pix.ssim(a, b)


def psnr(a, b) -> float:
  """PSNR in dB of two images (H, W, C) (uint8 or [-1, 1] float) measured on [0, 1]."""
  return quality(a, b)["psnr"]


def ssim(a, b) -> float:
  """SSIM of two images (H, W, C) (uint8 or [-1, 1] float) measured on [0, 1]."""
  return quality(a, b)["ssim"]


def quality(a, b) -> dict[str, float]:
  """{'psnr': dB, 'ssim': ...} of two equally shaped images (H, W, C)."""
  ua, ub = to_unit(a), to_unit(b)
  chex.assert_equal_shape([ua, ub])
  chex.assert_rank(ua, 3)
  p, s = _psnr_ssim(jnp.asarray(ua), jnp.asarray(ub))
  return {"psnr": float(p), "ssim": float(s)}


def psnr_numpy(a, b) -> float:
  """The same PSNR as ``psnr`` in plain numpy (cheap, for progress lines)."""
  mse = float(np.mean(np.square(to_unit(a).astype(np.float64) - to_unit(b))))
  return float("inf") if mse == 0.0 else -10.0 * float(np.log10(mse))


__all__ = ["to_unit", "psnr", "ssim", "quality", "psnr_numpy"]
