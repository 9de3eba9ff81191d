"""Baselines on small synthetic cases with properties that can fail: exact fills of linear
ramps, constants kept by upsampling, denoisers that reduce the error, the gray image."""

import sys

import numpy as np
import pytest

from mgan_jax import baselines as B
from mgan_jax.errors import UserError


def _ramp(h=24, w=28):
  """A linear colour ramp in [-0.8, 0.8] (H, W, 3)."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  r = 0.02 * x + 0.01 * y - 0.3
  return np.stack([r, -0.5 * r + 0.1, 0.03 * y - 0.35], axis=-1).astype(np.float32)


def _interior_hole(h=24, w=28):
  m = np.zeros((h, w), np.float32)
  m[6:15, 8:20] = 1
  m[15:18, 10:13] = 1
  return m


def _smooth(seed=0, size=64):
  """A smooth colour image in about [-0.7, 0.7] (sums of low-frequency cosines)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  out = np.zeros((size, size, 3))
  for c in range(3):
    for _ in range(4):
      fy, fx, ph = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0, 6.3)
      out[..., c] += 0.17 * np.cos(2 * np.pi * (fy * y + fx * x) + ph)
  return out.astype(np.float32)


@pytest.mark.parametrize("name", ["biharmonic", "harmonic"])
def test_pde_fills_reproduce_a_linear_ramp(name):
  clean, mask = _ramp(), _interior_hole()
  observed = clean * (1 - mask[..., None])
  out = B.apply("inpaint", name, observed, mask=mask)
  assert out.shape == clean.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, clean, rtol=0, atol=2e-6)        # exact up to float32
  known = mask == 0
  np.testing.assert_array_equal(out[known], observed[known])


def test_harmonic_fill_stays_in_range_and_mean_fill():
  rng = np.random.default_rng(0)
  clean = _smooth(1, 32)
  mask = (rng.random((32, 32, 1)) < 0.8).astype(np.float32)      # 80 % missing, as the paper
  mask[0, 0] = 0
  observed = clean * (1 - mask)
  out = B.inpaint_harmonic(observed, mask)
  known = observed[mask[..., 0] == 0]
  assert out.min() >= known.min() - 1e-6 and out.max() <= known.max() + 1e-6  # max principle
  mean = B.inpaint_mean(observed, mask)
  assert np.mean((out - clean) ** 2) < 0.5 * np.mean((mean - clean) ** 2)
  np.testing.assert_allclose(mean[mask[..., 0] == 1], np.broadcast_to(
      known.mean(axis=0), (int(mask.sum()), 3)), atol=1e-6)
  with pytest.raises(ValueError, match="removes every pixel"):
    B.inpaint_mean(observed, np.ones((32, 32)))
  with pytest.raises(ValueError, match=r"mask must be \(H, W\)"):
    B.inpaint_harmonic(observed, np.zeros((16, 16)))


@pytest.mark.parametrize("name", ["bicubic", "bicubic-torch", "nearest"])
def test_upsampling_keeps_constants_and_sizes(name):
  const = np.full((8, 6, 3), [0.25, -0.5, 0.75], np.float32)
  out = B.apply("super-resolve", name, const, factor=4)
  assert out.shape == (32, 24, 3)
  np.testing.assert_allclose(out, np.broadcast_to(const[:1, :1], out.shape), atol=1e-6)
  assert B.apply("super-resolve", name, const, factor=1).shape == (8, 6, 3)


def test_bicubic_interpolates_and_nearest_replicates():
  low = _ramp(10, 12)
  # away from the borders, cubic convolution with a = -0.5 (PIL) reproduces linear functions;
  # the 4x grid's pixel centres sit at (i + 0.5) / 4 - 0.5 in input coordinates
  ys, xs = np.mgrid[0:40, 0:48]
  sy, sx = (ys + 0.5) / 4 - 0.5, (xs + 0.5) / 4 - 0.5
  r = 0.02 * sx + 0.01 * sy - 0.3
  want = np.stack([r, -0.5 * r + 0.1, 0.03 * sy - 0.35], axis=-1)[8:-8, 8:-8]
  np.testing.assert_allclose(B.upsample_bicubic(low, factor=4)[8:-8, 8:-8], want, atol=1e-6)
  # PyTorch's a = -0.75 does not: at phase t its first moment is off by up to 0.047 px
  # (0.046875 at t = 1/4), i.e. 0.047 * 0.03 / px on the steepest channel
  err = np.abs(B.upsample_bicubic_torch(low, factor=4)[8:-8, 8:-8] - want)
  assert 1e-3 < err.max() < 0.047 * 0.03 + 1e-6
  near = B.upsample_nearest(low, factor=3)
  np.testing.assert_array_equal(near, np.repeat(np.repeat(low, 3, 0), 3, 1))
  assert B.upsample_bicubic(low, size=(15, 17)).shape == (15, 17, 3)


@pytest.mark.parametrize("name", ["tv", "wavelet", "nl-means"])
def test_denoisers_lower_the_error_at_sigma_0_1(name):
  clean = _smooth(2)
  rng = np.random.default_rng(3)
  sigma = 0.1                                           # on [0, 1], as the CLI's --noise
  noisy = np.clip(clean + 2 * sigma * rng.standard_normal(clean.shape), -1, 1).astype(np.float32)
  out = B.apply("denoise", name, noisy, sigma=sigma)
  assert out.shape == clean.shape and out.dtype == np.float32
  mse_in, mse_out = np.mean((noisy - clean) ** 2), np.mean((out - clean) ** 2)
  assert mse_out < 0.5 * mse_in, (mse_in, mse_out)      # at least 3 dB better


def test_colorization_baseline_is_the_gray_image():
  color = _smooth(4, 16)
  gray = B.colorize_gray(color)
  luma = color @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-6)
  np.testing.assert_allclose(B.colorize_gray(gray), gray, atol=1e-6)       # idempotent
  np.testing.assert_allclose(B.apply("colorize", "gray", luma), gray, atol=1e-6)


def test_registry_and_missing_dependency(monkeypatch):
  assert set(B.BASELINES) == {"super-resolve", "inpaint", "denoise", "colorize"}
  assert list(B.BASELINES["denoise"]) == ["tv", "wavelet", "nl-means"]
  with pytest.raises(UserError, match="unknown inpaint baseline 'telea'"):
    B.apply("inpaint", "telea", np.zeros((4, 4, 3)), mask=np.zeros((4, 4)))
  with pytest.raises(ValueError, match="needs factor"):
    B.apply("super-resolve", "bicubic", np.zeros((4, 4, 3)))
  with pytest.raises(AssertionError, match=r"observed must be \(H, W, 3\)"):
    B.upsample_nearest(np.zeros((4, 4)), factor=2)
  monkeypatch.setitem(sys.modules, "skimage.restoration", None)       # as if not installed
  with pytest.raises(UserError, match=r"needs scikit-image, which is not installed; install the "
                                      r"evaluation extra: pip install 'mgan_jax\[eval\]'"):
    B.denoise_tv(np.zeros((8, 8, 3), np.float32), sigma=0.1)
