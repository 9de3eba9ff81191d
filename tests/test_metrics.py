"""Colorization AuC (Zhang et al. 2016 raw accuracy) on cases with known answers, the Lab
conversion against scikit-image, and the input conventions of the metrics."""

import numpy as np
import pytest
from skimage import color

from mgan_jax import metrics as M


def _lab_image(rng, shape=(12, 16)):
  """A CIELAB image well inside the sRGB gamut (L 55..65, |a|, |b| <= 10)."""
  lab = np.stack([rng.uniform(55, 65, shape), rng.uniform(-10, 10, shape),
                  rng.uniform(-10, 10, shape)], axis=-1)
  return lab


def test_rgb_to_lab_matches_skimage():
  rng = np.random.default_rng(0)
  x = rng.random((20, 30, 3))
  x[0, :4] = [[0, 0, 0], [1, 1, 1], [0.01, 0.02, 0.03], [0.04045, 0.5, 1.0]]  # both branches
  np.testing.assert_allclose(M.rgb_to_lab(x), color.rgb2lab(x), rtol=0, atol=1e-10)
  lab = M.rgb_to_lab(np.array([1.0, 1.0, 1.0]))
  np.testing.assert_allclose(lab, [100.0, 0.0, 0.0], atol=5e-3)   # D65 white


def test_auc_identical_images_is_one():
  rng = np.random.default_rng(1)
  u8 = rng.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
  assert M.colorization_auc(u8, u8) == 1.0
  f = u8.astype(np.float32) / 127.5 - 1
  assert M.colorization_auc(f[0], f[0]) == 1.0


@pytest.mark.parametrize("shift, want", [(10.5, 139.5 / 150), (10.0, 140.5 / 150),
                                         (0.0, 1.0), (149.5, 0.5 / 150), (151.0, 0.0)])
def test_auc_of_a_constant_error(shift, want):
  # thresholds 0, 1, ..., 150; share of errors <= t; trapezoid / 150
  assert M.auc_from_errors(np.full((5, 4), shift)) == pytest.approx(want, abs=1e-12)


def test_auc_hand_computed_case_and_continuous_limit():
  e = np.array([0.0, 75.0, 200.0])
  # CMF = 1/3 on t = 0..74, 2/3 on t = 75..150: 74/3 + (1/3 + 2/3)/2 + 75 * 2/3 = 451/6
  assert M.auc_from_errors(e) == pytest.approx(451 / 900, abs=1e-12)
  assert M.auc_from_errors(e, max_threshold=200, step=50) == pytest.approx(
      (0.5 * (1 / 3 + 1 / 3) + 0.5 * (1 / 3 + 2 / 3) + 0.5 * (2 / 3 + 2 / 3) + 0.5 * (2 / 3 + 1))
      * 50 / 200, abs=1e-12)
  rng = np.random.default_rng(2)
  e = rng.uniform(0, 200, 1000)
  limit = np.mean(np.maximum(0.0, 1.0 - e / 150))      # the integral of the exact step curve
  assert M.auc_from_errors(e, step=0.01) == pytest.approx(limit, abs=1e-4)
  assert abs(M.auc_from_errors(e) - limit) < 5e-3
  with pytest.raises(ValueError, match="multiple of step"):
    M.auc_from_errors(e, step=0.7)


def test_auc_of_a_known_ab_shift_between_images():
  rng = np.random.default_rng(3)
  lab = _lab_image(rng)
  shifted = lab.copy()
  angle = rng.uniform(0, 2 * np.pi, lab.shape[:2])
  shifted[..., 1] += 10.5 * np.cos(angle)          # |delta ab| = 10.5 everywhere
  shifted[..., 2] += 10.5 * np.sin(angle)
  a = color.lab2rgb(shifted) * 2 - 1                # [-1, 1] images (float32 inside the metric)
  b = color.lab2rgb(lab) * 2 - 1
  assert a.min() > -1 and a.max() < 1 and b.min() > -1 and b.max() < 1     # in gamut
  err = M.ab_error(a, b)
  np.testing.assert_allclose(err, 10.5, atol=1e-3)
  assert M.colorization_auc(a, b) == pytest.approx(139.5 / 150, abs=1e-12)
  # half the pixels exact, half shifted by 10.5: the average of the two curves
  half = a.copy()
  half[: lab.shape[0] // 2] = b[: lab.shape[0] // 2]
  assert M.colorization_auc(half, b) == pytest.approx((1 + 139.5 / 150) / 2, abs=1e-12)


def test_gray_image_loses_chroma_only():
  rng = np.random.default_rng(4)
  b = color.lab2rgb(_lab_image(rng)) * 2 - 1
  gray = np.repeat(b @ np.array([0.299, 0.587, 0.114])[:, None], 3, axis=-1)
  chroma = np.hypot(M.rgb_to_lab(M.to_unit(b))[..., 1], M.rgb_to_lab(M.to_unit(b))[..., 2])
  np.testing.assert_allclose(M.ab_error(gray, b), chroma, atol=0.05)   # gray: a*, b* ~ 0
  assert 0.8 < M.colorization_auc(gray, b) < 1.0


def test_to_signed_and_to_unit_conventions():
  u8 = np.array([[[0, 127, 255]]], np.uint8)
  np.testing.assert_array_equal(M.to_signed(u8), (u8.astype(np.float32) / np.float32(127.5)
                                                  - np.float32(1)))
  assert M.to_signed(u8).dtype == np.float32
  np.testing.assert_array_equal(M.to_signed(np.array([-3.0, 0.25, 2.0])), [-1.0, 0.25, 1.0])
  np.testing.assert_allclose(M.to_unit(np.array([-1.0, 0.0, 1.0])), [0.0, 0.5, 1.0])


def test_quality_batch_is_quality_of_each_pair():
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
  b[1] = a[1]                                     # identical pair: PSNR inf, SSIM 1
  got = M.quality_batch(a, b)
  for i in range(3):
    want = M.quality(a[i], b[i])
    assert got["psnr"][i] == pytest.approx(want["psnr"], rel=1e-6)
    assert got["ssim"][i] == pytest.approx(want["ssim"], abs=1e-6)
  assert got["psnr"][1] == float("inf") and got["ssim"][1] == pytest.approx(1.0)
  assert M.quality_batch(a[:0], b[:0]) == {"psnr": [], "ssim": []}
