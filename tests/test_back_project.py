"""Output options of the tasks: data-consistent super-resolution (``operators.back_project``,
``--back-project``) and pasted known pixels; the evaluation's masks are examples/'s masks."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mgan_jax import evaluation, invert_images, operators as ops, tasks
from mgan_jax.errors import UserError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "dcgan_sample_9001.png"


@pytest.mark.parametrize("method", ops.RESAMPLE_METHODS)
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_back_project_makes_the_observation_exact(method, factor):
  rng = np.random.default_rng(factor)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (2, 32 // factor, 32 // factor, 3)).astype(np.float32)
  # the dense matrices are the resampling functions (separable)
  d1 = ops.downsample_matrix(32, factor, method)
  np.testing.assert_allclose(np.einsum("ih,bhwc,jw->bijc", d1, x, d1),
                             ops.downsample_image(jnp.asarray(x), factor, method=method),
                             atol=1e-6)
  out = ops.back_project(x, y, factor=factor, method=method)
  assert out.shape == x.shape
  np.testing.assert_allclose(ops.downsample_image(jnp.asarray(out), factor, method=method), y,
                             atol=1e-5)
  # already consistent: nothing changes
  same = np.asarray(ops.downsample_image(jnp.asarray(x), factor, method=method))
  np.testing.assert_allclose(ops.back_project(x, same, factor=factor, method=method), x,
                             atol=1e-5)


def test_back_project_gray_observation_keeps_the_chroma():
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.5, 0.5, (64, 64, 3)).astype(np.float32)
  y = np.asarray(ops.downsample_image(ops.grayscale(jnp.asarray(x[None] * 0.5)), 4))[0]
  out = ops.back_project(x, y, factor=4, gray=True)
  seen = np.asarray(ops.downsample_image(ops.grayscale(jnp.asarray(out[None])), 4))[0]
  np.testing.assert_allclose(seen, y, atol=1e-5)
  corr = out - x                       # the same correction in the three channels
  np.testing.assert_allclose(corr[..., 0], corr[..., 2], atol=1e-6)


def test_back_project_task_option_and_its_limits():
  t = tasks.parse_task("super-resolve", factor=4, back_project=True)
  clean = np.random.default_rng(1).uniform(-1, 1, (64, 64, 3)).astype(np.float32)
  obs = tasks.degrade(t, clean)
  raw = np.zeros_like(clean)
  out, how = tasks.postprocess(t, raw, obs)
  assert "--back-project" in how and t.to_json()["back_project"] is True
  np.testing.assert_allclose(ops.downsample_image(jnp.asarray(out[None]), 4)[0], obs.image,
                             atol=1e-5)
  assert tasks.postprocess(tasks.parse_task("super-resolve"), raw, obs)[0] is not out
  for bad in ("inpaint", "reconstruct", "super-resolve,denoise"):
    with pytest.raises(UserError, match="--back-project applies to"):
      tasks.parse_task(bad, back_project=True)


def test_cli_back_project_result_downsamples_to_the_observation(tmp_path):
  out = tmp_path / "sr"
  assert invert_images.main(["--image", str(SAMPLE), "--task", "super-resolve",
                             "--back-project", "--out", str(out), "--codes", "4",
                             "--iterations", "8", "--chunk", "4", "--quiet"]) == 0
  d = out / SAMPLE.stem
  res = np.asarray(Image.open(d / "result.png")).astype(np.float32) / 127.5 - 1
  deg = np.asarray(Image.open(d / "degraded.png")).astype(np.float32) / 127.5 - 1
  seen = np.asarray(ops.downsample_image(jnp.asarray(res[None]), 4))[0]
  assert np.abs(seen - deg).max() < 2.5 / 127.5      # exact up to the 8-bit rounding
  raw = np.asarray(Image.open(d / "raw.png")).astype(np.float32) / 127.5 - 1
  assert np.abs(np.asarray(ops.downsample_image(jnp.asarray(raw[None]), 4))[0] - deg).max() \
      > 0.05
  m = json.loads((d / "metrics.json").read_text())
  assert m["back_project"] is True and "back-project" in m["postprocess"]


@pytest.mark.parametrize("kind, file", [("centre", "mask_center.png"),
                                        ("half", "mask_left_half.png"),
                                        ("random80", "mask_random80.png"),
                                        ("strokes", "mask_strokes.png")])
def test_evaluation_masks_are_the_examples_masks(kind, file):
  want = np.asarray(Image.open(EXAMPLES / file)) > 127
  got = evaluation.make_mask(kind, 64)[..., 0] > 0.5
  np.testing.assert_array_equal(got, want)
  assert evaluation.make_mask(kind, 128).shape == (128, 128, 1)
