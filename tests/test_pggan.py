"""PGGAN: the Flax generator and its converter against the official PyTorch outputs.

Golden values: tests/fixtures/pggan64_ref.npz (official genforce forward, see
tests/fixtures/README.md); the same weights in three official formats are converted with
``python -m convert`` (its ``main``) and must reproduce them within 1e-4.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import TFNetwork, flat_state_dict, read_gs, read_torch_file
from convert.pggan import CONVERTER, from_state_dict, from_tf
from mgan_jax.checkpoint import expected_params, flatten
from mgan_jax.errors import UserError
from mgan_jax.generators import family_class, spec_from_json
from mgan_jax.generators import pggan as pggan_module
from mgan_jax.generators.pggan import PGGAN, official_channels, param_names
from parity_helpers import FIXTURES, assert_same_params, convert_formats, load_ref, nhwc

FORMATS = ("pggan64.pth", "pggan64_legacy.pth", "pggan64_tf.pkl")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
  return load_ref("pggan64_ref.npz")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return convert_formats(tmp_path_factory, FORMATS)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _split(spec, params, z, k):
  f = spec.head(params, z, k)
  return f, spec.tail(params, f, k)


@functools.partial(jax.jit, static_argnums=(0,))
def _synth(spec, params, z):
  return spec.synthesize(params, z)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _multi_code(spec, params, z, alpha, k):
  return spec.tail(params, spec.compose(spec.head(params, z, k), alpha), k)


def test_converted_spec_and_structure(models):
  for fmt, (spec, params) in models.items():
    assert spec == PGGAN(resolution=64, latent_dim=512, channels=(64, 64, 64, 64, 32)), fmt
    assert spec.family == "pggan" and spec.num_blocks == 10 and spec.num_layers == 11
    assert spec.split_layers() == tuple(range(1, 11))
    assert sorted(flatten(params)) == sorted(param_names(spec))
    assert params["4x4"]["Dense"]["weight"].shape == (512, 64 * 16)
    assert params["64x64"]["Conv0"]["weight"].shape == (3, 3, 64, 32)
    assert params["ToRGB"]["weight"].shape == (1, 1, 32, 3)
  # all three formats give bit-identical parameters
  assert_same_params(models)


@pytest.mark.parametrize("fmt", FORMATS)
def test_images_match_official(models, ref, fmt):
  spec, params = models[fmt]
  img = np.asarray(_synth(spec, params, jnp.asarray(ref["z"])))
  assert img.shape == (4, 64, 64, 3)
  np.testing.assert_allclose(img, nhwc(ref["images"]), atol=TOL, rtol=0)
  assert np.abs(img).max() > 1.5        # raw output: never clamped


@pytest.mark.parametrize("fmt", FORMATS)
def test_features_and_split_match_official(models, ref, fmt):
  spec, params = models[fmt]
  z = jnp.asarray(ref["z"])
  full = nhwc(ref["images"])
  for k in spec.split_layers():
    f, img = _split(spec, params, z, k)
    assert f.shape[1:] == spec.feature_shape(k)
    np.testing.assert_allclose(np.asarray(f[:1]), nhwc(ref[f"features_k{k}"]), atol=TOL, rtol=0,
                               err_msg=f"features_k{k}")
    np.testing.assert_allclose(np.asarray(img), full, atol=TOL, rtol=0,
                               err_msg=f"G2(G1(z)) at k={k}")
    if k == spec.num_blocks:  # module 11 of the official split: the final ToRGB
      np.testing.assert_allclose(np.asarray(img[:1]), nhwc(ref["features_k11"]), atol=TOL,
                                 rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_multi_code_image_matches_official(models, ref, fmt):
  spec, params = models[fmt]
  k = int(ref["mc_k"])
  img = _multi_code(spec, params, jnp.asarray(ref["mc_z"]), jnp.asarray(ref["mc_alpha"]), k)
  np.testing.assert_allclose(np.asarray(img), nhwc(ref["mc_image"]), atol=TOL, rtol=0)


def test_split_is_exact_and_head_tail_consistent(models, ref):
  """G2(G1(z)) == G(z) (same float ops) at every split; invalid layers are refused."""
  spec, params = models[FORMATS[0]]
  z = jnp.asarray(ref["z"])   # same shapes as above: reuses the compiled programs
  full = np.asarray(_synth(spec, params, z))
  for k in spec.split_layers():
    _, img = _split(spec, params, z, k)
    np.testing.assert_allclose(np.asarray(img), full, atol=1e-5, rtol=0, err_msg=f"k={k}")
  for bad in (0, spec.num_blocks + 1):
    with pytest.raises(ValueError, match="valid: 1..10"):
      spec.head(params, z, bad)
  assert spec.feature_shape(4) == (8, 8, 64)
  assert spec.feature_shape(10) == (64, 64, 32)


def test_init_params_and_json(models):
  spec, params = models[FORMATS[0]]
  init = spec.init_params(jax.random.key(0))
  assert jax.tree.structure(init) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params)):
    assert a.shape == b.shape and a.dtype == jnp.float32
  w = np.asarray(init["8x8"]["Conv1"]["weight"])
  assert abs(w.std() - 1.0) < 0.05 and abs(np.asarray(init["8x8"]["Conv1"]["bias"]).std()
                                           - 0.1) < 0.05
  assert jax.tree.structure(expected_params(spec)) == jax.tree.structure(params)
  assert spec_from_json(spec.to_json()) == spec
  assert family_class("pggan") is PGGAN
  assert PGGAN(resolution=256).channels == (512,) * 4 + (256, 128, 64) == \
      official_channels(256)
  with pytest.raises(ValueError, match="channel counts"):
    PGGAN(resolution=64, channels=(8, 8))
  with pytest.raises(ValueError, match="power of two"):
    PGGAN(resolution=48)


def test_label_dim_zero_labels():
  """A conditional G_paper with zero labels == the unconditional model with the first Z Dense
  rows (PixelNorm's mean over Z+L cancels the Dense's 1/sqrt(Z+L) fan-in)."""
  z_dim, labels = 16, 4
  cond = PGGAN(resolution=8, latent_dim=z_dim, channels=(8, 4), label_dim=labels)
  plain = PGGAN(resolution=8, latent_dim=z_dim, channels=(8, 4))
  p = cond.init_params(jax.random.key(1))
  assert p["4x4"]["Dense"]["weight"].shape == (z_dim + labels, 8 * 16)
  q = jax.tree.map(lambda a: a, p)
  q["4x4"] = dict(p["4x4"], Dense=dict(p["4x4"]["Dense"],
                                       weight=p["4x4"]["Dense"]["weight"][:z_dim]))
  z = jax.random.normal(jax.random.key(2), (3, z_dim))
  np.testing.assert_allclose(np.asarray(_synth(cond, p, z)), np.asarray(_synth(plain, q, z)),
                             atol=1e-5, rtol=0)


# ----- converter: strictness ----------------------------------------------------------------

@pytest.fixture(scope="module")
def state_dict():
  return flat_state_dict(read_torch_file(FIXTURES / "pggan64.pth"))


@pytest.fixture(scope="module")
def gs():
  return read_gs(FIXTURES / "pggan64_tf.pkl")


def test_converter_leftovers_and_matching(state_dict, gs):
  assert CONVERTER.family == "pggan"
  assert CONVERTER.matches_state_dict(state_dict) and CONVERTER.matches_tf(gs)
  assert not CONVERTER.matches_state_dict({"main.0.weight": np.zeros((4, 4, 4, 4))})
  conv = from_state_dict(state_dict)
  assert set(conv.leftover) == {"lod"} | {f"output{b}.{s}" for b in range(4)
                                          for s in ("conv.weight", "wscale.bias")}
  conv_tf = from_tf(gs)
  assert set(conv_tf.leftover) == {"lod"} | {f"ToRGB_lod{L}/{s}" for L in range(1, 5)
                                             for s in ("weight", "bias")}
  # the layer0 padded-conv form is inverted exactly (TF Dense == view/permute/flip inverse)
  tf_dense = dict(gs.variables)["4x4/Dense/weight"]
  np.testing.assert_array_equal(conv.params["4x4"]["Dense"]["weight"], tf_dense)
  np.testing.assert_array_equal(
      state_dict["layer0.conv.weight"],
      tf_dense.reshape(512, 64, 4, 4).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


@pytest.mark.parametrize("edit, key", [
    (lambda sd: sd.update({"layer3.conv.weight": np.zeros((64, 64, 3, 2), np.float32)}),
     "layer3.conv.weight"),
    (lambda sd: sd.pop("layer5.wscale.bias"), "layer5.wscale.bias"),
    (lambda sd: sd.pop("layer9.conv.weight"), "layer9.conv.weight"),
    (lambda sd: sd.pop("output4.conv.weight"), "output4.conv.weight"),
    (lambda sd: sd.update({"output4.wscale.bias": np.zeros((4,), np.float32)}),
     "output4.wscale.bias"),
    (lambda sd: sd.update({"layer4.weight": np.zeros((3, 3, 64, 64), np.float32)}),
     "layer4.weight"),
    (lambda sd: sd.update({"lod": np.array(1.0, np.float32)}), "lod"),
])
def test_state_dict_hostile(state_dict, edit, key):
  sd = dict(state_dict)
  edit(sd)
  with pytest.raises(UserError, match=key.replace(".", r"\.")):
    from_state_dict(sd)


@pytest.mark.parametrize("edit, key", [
    (lambda v: v.pop("8x8/Conv1/bias"), "8x8/Conv1/bias"),
    (lambda v: v.update({"16x16/Conv0/weight": np.zeros((3, 3, 32, 64), np.float32)}),
     "16x16/Conv0/weight"),
    (lambda v: v.pop("ToRGB_lod0/weight"), "ToRGB_lod0/weight"),
    (lambda v: v.update({"16x16/Conv0_up/weight": np.zeros((3, 3, 64, 64), np.float32)}),
     "16x16/Conv0_up/weight"),
    (lambda v: v.update({"lod": np.array(2.0, np.float32)}), "lod"),
])
def test_tf_hostile(gs, edit, key):
  variables = dict(gs.variables)
  edit(variables)
  net = TFNetwork(version=2, name="Gs", static_kwargs=gs.static_kwargs,
                  build_func_name="G_paper", variables=list(variables.items()))
  with pytest.raises(UserError, match=key):
    from_tf(net)


def test_tf_static_kwargs_checked(gs):
  net = TFNetwork(version=2, name="Gs", static_kwargs={**gs.static_kwargs, "label_size": 2,
                                                          "latent_size": 510},
                  build_func_name="G_paper", variables=gs.variables)
  spec = from_tf(net).spec
  assert (spec.latent_dim, spec.label_dim) == (510, 2)
  bad = TFNetwork(version=2, name="Gs", static_kwargs={**gs.static_kwargs, "use_wscale": False},
                  build_func_name="G_paper", variables=gs.variables)
  with pytest.raises(UserError, match="use_wscale"):
    from_tf(bad)


def test_documented_split_table():
  """The module docstring's table k -> feature_shape(k) (H, W, C) is what the spec computes."""
  rows = re.findall(r"^ +(\d+) +\((\d+), (\d+), (\d+)\) +\S+$", pggan_module.__doc__, re.M)
  table = {int(k): (int(h), int(w), int(c)) for k, h, w, c in rows}
  spec = PGGAN(resolution=256)
  assert list(table) == list(spec.split_layers())
  assert table == {k: spec.feature_shape(k) for k in spec.split_layers()}
