"""Task operators: official semantics (fixture from the PyTorch functions), pytree behaviour,
post-processing."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgan_jax import operators as ops

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ref():
  d = np.load(FIXTURES / "operators_traj64_ref.npz")
  return {k: d[k].transpose(0, 2, 3, 1) for k in d.files}  # NCHW -> NHWC


@pytest.mark.parametrize("name,fn", [
    ("gray64", lambda r: ops.Grayscale()(r["x64"])),
    ("sr4_64", lambda r: ops.Downsample(factor=4)(r["x64"])),
    ("sr4_256", lambda r: ops.Downsample(factor=4)(r["x256"])),
    ("sr16_256", lambda r: ops.Downsample(factor=16, method="bilinear")(r["x256"])),
    ("masked64", lambda r: ops.Mask(mask=r["mask64"])(r["x64"])),
    ("nearest256_from64", lambda r: ops.resize(r["x64"], 256, method="nearest")),
])
def test_matches_official_torch_functions(ref, name, fn):
  out = np.asarray(fn({k: jnp.asarray(v) for k, v in ref.items()}))
  assert out.shape == ref[name].shape
  np.testing.assert_allclose(out, ref[name], rtol=0, atol=1e-6)


def test_sr16_is_mean_of_central_2x2():
  x = jax.random.normal(jax.random.key(0), (1, 64, 32, 3))
  y = ops.downsample_image(x, 16)
  want = x.reshape(1, 4, 16, 2, 16, 3)[:, :, 7:9, :, 7:9].mean(axis=(2, 4))
  np.testing.assert_allclose(y, want, atol=1e-6)


def test_nearest_index_convention():
  x = jnp.arange(16.0).reshape(1, 16, 1, 1)
  # floor(i * in / out): 16 -> 4 picks 0, 4, 8, 12; 16 -> 6 picks floor(i * 2.6667)
  np.testing.assert_array_equal(ops.resize(x, (4, 1))[0, :, 0, 0], [0, 4, 8, 12])
  np.testing.assert_array_equal(ops.resize(x, (6, 1))[0, :, 0, 0], [0, 2, 5, 8, 10, 13])


def test_bicubic_and_area_values():
  x = jnp.tile(jnp.asarray([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 4, 1), (1, 2, 1, 1))
  # PyTorch bicubic (a=-0.75, align_corners=False, clamped borders), derived by hand:
  # out[0] = -3/32*x0 + 19/32*x0 + 19/32*x1 - 3/32*x2, out[1] = -3/32*x1 + 19/32*(x2+x3) - 3/32*x3
  y = ops.downsample_image(x, 2, method="bicubic")[0, 0, :, 0]
  np.testing.assert_allclose(y, [1.3125, 6.1875], atol=1e-6)
  np.testing.assert_allclose(ops.downsample_image(x, 2, method="area")[0, 0, :, 0], [1.5, 6.0])
  # adaptive average pooling with uneven windows: 5 -> 2 uses [0:3] and [2:5]
  x5 = jnp.arange(5.0).reshape(1, 1, 5, 1)
  np.testing.assert_allclose(ops.resize(x5, (1, 2), method="area")[0, 0, :, 0], [1.0, 3.0])
  # constants are preserved by every method, also for non-integer ratios
  c = jnp.full((1, 30, 18, 3), 0.37)
  for m in ops.RESAMPLE_METHODS:
    np.testing.assert_allclose(ops.resize(c, (7, 11), method=m), 0.37, atol=1e-6)
    np.testing.assert_allclose(ops.downsample_image(c, 3, method=m), 0.37, atol=1e-6)


def test_chain_order_and_flattening():
  x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3), minval=-1, maxval=1)
  m = (jnp.arange(16)[:, None] < 8).astype(jnp.float32) * jnp.ones((16, 16))
  op = ops.chain(ops.Mask(mask=m), ops.Identity(), ops.chain(ops.Grayscale(),
                                                                 ops.Downsample(factor=2)))
  assert isinstance(op, ops.Chain) and len(op.ops) == 3
  want = ops.downsample_image(ops.grayscale(x * (1 - m[None, :, :, None])), 2)
  np.testing.assert_allclose(op(x), want, atol=1e-6)
  assert op.output_shape((1, 16, 16, 3)) == (1, 8, 8, 3)
  assert isinstance(ops.chain(), ops.Identity)
  with pytest.raises(TypeError):
    ops.chain(lambda v: v)
  f = ops.Function(fn=lambda v: -v)
  np.testing.assert_allclose(ops.chain(f, f)(x), x)


def test_operators_are_pytrees_jit_and_vmap_per_image_masks():
  x = jax.random.normal(jax.random.key(2), (3, 1, 8, 8, 3))
  masks = jax.random.bernoulli(jax.random.key(3), 0.5, (3, 8, 8, 1)).astype(jnp.float32)
  op = ops.chain(ops.Mask(mask=masks), ops.Downsample(factor=2))
  apply = jax.jit(jax.vmap(lambda o, v: o(v)))
  out = apply(op, x)
  for i in range(3):
    np.testing.assert_allclose(out[i], ops.downsample_image(x[i] * (1 - masks[i][None]), 2),
                               atol=1e-6)
  # differentiable: the mask blocks gradients exactly in the holes
  g = jax.grad(lambda v: jnp.sum(ops.Mask(mask=masks[0])(v) ** 2))(x[0])
  assert np.all(np.asarray(g)[0][np.asarray(masks[0])[..., 0] == 1] == 0)


def test_merge_luma_and_paste_known():
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  obs = jax.random.uniform(k1, (1, 8, 8, 3), minval=-0.5, maxval=0.5)
  res = jax.random.uniform(k2, (1, 8, 8, 3), minval=-0.5, maxval=0.5)
  out = ops.merge_luma(ops.grayscale(obs), res)
  ycc_out, ycc_res = ops.rgb_to_ycbcr(out), ops.rgb_to_ycbcr(res)
  np.testing.assert_allclose(ycc_out[..., 0], ops.grayscale(obs)[..., 0], atol=1e-5)
  np.testing.assert_allclose(ycc_out[..., 1:], ycc_res[..., 1:], atol=1e-5)
  np.testing.assert_allclose(ops.ycbcr_to_rgb(ops.rgb_to_ycbcr(res)), res, atol=1e-5)
  # PIL's full-range YCbCr of pure red (255, 0, 0) is (76, 85, 255): check on the [-1,1] scale
  red = jnp.asarray([1.0, -1.0, -1.0])
  np.testing.assert_allclose((ops.rgb_to_ycbcr(red) + jnp.asarray([1, 0, 0])) * 127.5
                             + jnp.asarray([0, 128, 128]), [76.245, 84.97, 255.5], atol=0.01)
  mask = (jax.random.uniform(k3, (8, 8, 1)) < 0.3).astype(jnp.float32)
  pasted = ops.paste_known(res, obs, mask)
  m = np.asarray(mask)[None]
  assert pasted.shape == res.shape
  np.testing.assert_allclose(pasted, np.where(m == 1, res, obs))
  # one image without a batch axis keeps its shape (H, W, 3)
  one = ops.paste_known(res[0], obs[0], mask)
  assert one.shape == (8, 8, 3)
  np.testing.assert_allclose(one, pasted[0])
