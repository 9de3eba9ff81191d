"""Image quality metrics of results against clean targets: PSNR, SSIM, LPIPS, colorization AuC.

Images come in as [-1, 1] floats (H, W, 3) or uint8. For PSNR, SSIM and AuC both are mapped to
[0, 1] (floats clipped) before measuring, so a metric computed here from the written PNGs equals
the one in the metrics JSON (the CLI measures the 8-bit images it writes). SSIM is
``dm_pix.ssim`` with its defaults (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03; the mean over
the channels of the SSIM map), PSNR ``dm_pix.psnr`` (max value 1): ``-10 log10(mean (a - b)^2)``;
identical images give +inf, reported as ``float('inf')``.

LPIPS (``lpips``, ``lpips_batch``): version 0.1 with the VGG16 or AlexNet trunk
(``mgan_jax.lpips``; weights from ``mgan_jax.assets.lpips_params(net)``), on [-1, 1] inputs:
uint8 images are decoded as ``u8 / 127.5 - 1`` (float32), float images clipped to [-1, 1].
Lower is more similar; 0 for identical images.

Colorization AuC (``colorization_auc``): the "raw accuracy" of Zhang, Isola & Efros, "Colorful
Image Colorization" (ECCV 2016, Sec. 3.1 and Table 1). For every pixel the error is the
Euclidean distance between the predicted and the true (a*, b*) in CIELAB; the share of pixels
whose error is within a threshold t, swept over t in [0, 150], forms a cumulative curve whose
area is normalised to [0, 1] (1 = every pixel's chroma exact; higher is better). The paper does
not fix the sampling of t; here t = 0, 1, ..., 150 (``step`` 1), the share counts errors
``<= t`` and the area is the trapezoidal rule divided by 150. (As ``step`` -> 0 it tends to the
mean over pixels of ``max(0, 1 - error / 150)``.) Lab is computed from sRGB (IEC 61966-2-1
transfer curve, linear RGB -> XYZ with the sRGB/D65 matrix) relative to the D65 white of the
CIE 1931 2-degree observer (0.95047, 1, 1.08883), with the CIE f(t) = t^(1/3) above
(6/29)^3 = 0.008856 and 7.787 t + 16/116 below -- the constants of ``skimage.color.rgb2lab``,
which the authors' released code (richzhang/colorization) uses. The class-rebalanced variant of
the paper's Table 1 is not provided (it needs the ImageNet ab prior).
"""

from __future__ import annotations

from typing import Mapping

import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax import lpips as lpips_net

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


def quality_batch(a, b) -> dict[str, list[float]]:
  """{'psnr': [...], 'ssim': [...]} of N image pairs (N, H, W, C): ``quality`` of each pair in
  one jitted call (the metrics are per image; a batch of images costs one dispatch)."""
  ua, ub = to_unit(a), to_unit(b)
  chex.assert_equal_shape([ua, ub])
  chex.assert_rank(ua, 4)
  if not ua.shape[0]:
    return {"psnr": [], "ssim": []}
  p, s = _psnr_ssim(jnp.asarray(ua), jnp.asarray(ub))
  return {"psnr": [float(v) for v in np.asarray(p)], "ssim": [float(v) for v in np.asarray(s)]}


def psnr_numpy(a, b) -> float:
  """The same PSNR as ``psnr`` in plain numpy (cheap, for progress lines)."""
  mse = float(np.mean(np.square(to_unit(a).astype(np.float64) - to_unit(b))))
  return float("inf") if mse == 0.0 else -10.0 * float(np.log10(mse))


def to_signed(image) -> np.ndarray:
  """uint8 -> ``u8 / 127.5 - 1`` (float32, as the reference LPIPS decode); float -> clipped to
  [-1, 1], float32. (..., H, W, C)."""
  a = np.asarray(image)
  if a.dtype == np.uint8:
    return a.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return np.clip(a.astype(np.float32), -1.0, 1.0)


def lpips_batch(a, b, *, params: Mapping, net: str = "vgg", batch_size: int = 8) -> np.ndarray:
  """LPIPS v0.1 distances (N,) of N image pairs a, b (N, H, W, 3) (uint8 or [-1, 1] float).

  ``params``: ``mgan_jax.assets.lpips_params(net)`` (or any tree of ``lpips.param_shapes``).
  Runs the jitted ``mgan_jax.lpips.distance`` on chunks of ``batch_size`` pairs (the last chunk
  padded, so one compiled program serves every chunk).
  """
  xa, xb = to_signed(a), to_signed(b)
  chex.assert_equal_shape([xa, xb])
  chex.assert_shape(xa, (None, None, None, 3))
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = xa.shape[0]
  bs = min(batch_size, n)
  out = []
  for start in range(0, n, bs):
    ca, cb = xa[start:start + bs], xb[start:start + bs]
    m = ca.shape[0]
    if m < bs:
      pad = ((0, bs - m),) + ((0, 0),) * 3
      ca, cb = np.pad(ca, pad, mode="edge"), np.pad(cb, pad, mode="edge")
    d, _ = lpips_net.distance(params, jnp.asarray(ca), jnp.asarray(cb), net=net)
    out.append(np.asarray(d)[:m])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def lpips(a, b, *, params: Mapping, net: str = "vgg") -> float:
  """LPIPS v0.1 distance of two images (H, W, 3) (uint8 or [-1, 1] float); see ``lpips_batch``."""
  chex.assert_rank(np.asarray(a), 3)
  return float(lpips_batch(np.asarray(a)[None], np.asarray(b)[None], params=params, net=net)[0])


# ----- colorization AuC ---------------------------------------------------------------------

#: sRGB (linear) -> XYZ, D65 (``skimage.color.xyz_from_rgb``).
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
#: D65 reference white, CIE 1931 2-degree observer.
_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb) -> np.ndarray:
  """sRGB in [0, 1] (..., 3) -> CIELAB (..., 3) float64 (L* in [0, 100]), D65 / 2 degrees."""
  c = np.asarray(rgb, np.float64)
  lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
  xyz = lin @ _XYZ_FROM_RGB.T / _D65
  f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def ab_error(a, b) -> np.ndarray:
  """Per-pixel Euclidean distance in CIELAB (a*, b*) of two images (..., H, W, 3) (uint8 or
  [-1, 1] float) -> (..., H, W) float64."""
  ua, ub = to_unit(a), to_unit(b)
  chex.assert_equal_shape([ua, ub])
  chex.assert_shape(ua, (..., 3))
  d = rgb_to_lab(ua)[..., 1:] - rgb_to_lab(ub)[..., 1:]
  return np.sqrt(np.sum(np.square(d), axis=-1))


def auc_from_errors(errors, *, max_threshold: float = 150.0, step: float = 1.0) -> float:
  """Normalised area under the cumulative error curve: thresholds t = 0, step, ...,
  max_threshold; share of ``errors`` <= t; trapezoidal area / max_threshold. In [0, 1]."""
  e = np.sort(np.asarray(errors, np.float64).reshape(-1))
  if e.size == 0:
    raise ValueError("no errors to measure (empty image)")
  n_steps = max_threshold / step
  if not (max_threshold > 0 and step > 0 and abs(n_steps - round(n_steps)) < 1e-9):
    raise ValueError(f"max_threshold ({max_threshold}) must be a positive multiple of step "
                     f"({step})")
  t = step * np.arange(int(round(n_steps)) + 1)
  cmf = np.searchsorted(e, t, side="right") / e.size
  area = step * (np.sum(cmf) - 0.5 * (cmf[0] + cmf[-1]))
  return float(area / max_threshold)


def colorization_auc(a, b, *, max_threshold: float = 150.0, step: float = 1.0) -> float:
  """Colorization AuC (Zhang et al. 2016 "raw accuracy", see the module note) of a result
  ``a`` against the true colour image ``b``: (H, W, 3) or (N, H, W, 3), uint8 or [-1, 1] float;
  the curve is pooled over all pixels of all images. 1 for identical chroma."""
  return auc_from_errors(ab_error(a, b), max_threshold=max_threshold, step=step)


__all__ = ["to_unit", "to_signed", "psnr", "ssim", "quality", "quality_batch", "psnr_numpy",
           "lpips", "lpips_batch", "rgb_to_lab", "ab_error", "auc_from_errors", "colorization_auc"]
