"""DCGAN family: real-weight parity, split round trips, the zero-free transposed conv, converter."""

import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.dcgan import CONVERTER
from mgan_jax import assets
from mgan_jax.checkpoint import load_model
from mgan_jax.errors import UserError
from mgan_jax.generators import family_class
from mgan_jax.generators import dcgan as dcgan_module
from mgan_jax.generators.dcgan import DCGAN, conv_transpose_subpixel

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = DCGAN(z_dim=8, channels=(16, 12, 8, 4))


@pytest.fixture(scope="module")
def small_params():
  return jax.jit(SMALL.init_params)(jax.random.key(1))


def _reference_module():
  """tests/fixtures/dcgan_make_ref.py: the independent float64 numpy forward (torch layout)."""
  spec = importlib.util.spec_from_file_location("dcgan_make_ref", FIXTURES / "dcgan_make_ref.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _dilated_reference(x, kernel, *, stride, padding):
  """The textbook transposed conv: a stride-1 conv of the zero-dilated input."""
  q = kernel.shape[0] - 1 - padding
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(q, q)] * 2,
                                      lhs_dilation=(stride, stride),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _torch_state_dict(spec: DCGAN, params) -> dict:
  """Inverse of convert/dcgan.py's layout change: HWIO forward-conv kernels -> torch weights."""
  sd = {}
  names = [f"block{i}" for i in range(len(spec.channels))] + ["output"]
  for j, name in enumerate(names):
    kernel = np.asarray(params[name]["kernel"])
    sd[f"main.{3 * j}.weight"] = kernel[::-1, ::-1].transpose(2, 3, 0, 1)
    if name != "output":
      for src, dst in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                       ("running_var", "var")):
        sd[f"main.{3 * j + 1}.{src}"] = np.asarray(params[name][dst])
      sd[f"main.{3 * j + 1}.num_batches_tracked"] = np.array(7, np.int64)
  return sd


def test_real_weights_match_independent_reference():
  spec, params = load_model(assets.model_dir("dcgan-faces64"))
  assert spec == DCGAN(z_dim=100, channels=(512, 256, 128, 64))
  ref = np.load(FIXTURES / "dcgan_ref.npz")
  images = jax.jit(spec.synthesize)(params, jnp.asarray(ref["z"]))
  assert images.shape == (4, 64, 64, 3)
  np.testing.assert_allclose(images, ref["images"].transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
  feats = jax.jit(spec.head, static_argnums=2)(params, jnp.asarray(ref["z"][:1]), 2)
  np.testing.assert_allclose(feats, ref["features_k2"].transpose(0, 2, 3, 1), rtol=0, atol=1e-5)


def test_subpixel_transposed_conv_equals_dilation_reference():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
  for k, s, p in [(4, 2, 1), (2, 2, 0), (6, 2, 2), (3, 3, 0), (8, 4, 2)]:
    kernel = rng.standard_normal((k, k, 3, 6)).astype(np.float32)
    out = jax.jit(conv_transpose_subpixel, static_argnames=("stride", "padding"))(
        x, kernel, stride=s, padding=p)
    ref = _dilated_reference(x, kernel, stride=s, padding=p)
    assert out.shape == (2, 5 * s, 7 * s, 6)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))


def test_subpixel_rejects_non_exact_upsampling():
  with pytest.raises(ValueError, match="k - 2p == s"):
    conv_transpose_subpixel(jnp.zeros((1, 2, 2, 1)), jnp.zeros((4, 4, 1, 1)), stride=2, padding=0)


try:  # jax >= 0.7 moved it to jax.extend.core
  from jax.extend.core import jaxprs_in_params as _jaxprs_in_params
except ImportError:  # pragma: no cover - older jax
  from jax.core import jaxprs_in_params as _jaxprs_in_params


def _convs(jaxpr):
  """Every conv_general_dilated equation, including those inside sub-jaxprs (custom_vjp)."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive.name == "conv_general_dilated":
      out.append(e)
    for sub in _jaxprs_in_params(e.params):
      out.extend(_convs(sub))
  return out


def test_forward_multiplies_no_dilation_zeros(small_params):
  jaxpr = jax.make_jaxpr(SMALL.synthesize)(small_params, jnp.zeros((2, 8)))
  convs = _convs(jaxpr.jaxpr)
  assert len(convs) == len(SMALL.channels)   # stride-2 layers; block 0 is a dense product
  assert all(tuple(e.params["lhs_dilation"]) == (1, 1) for e in convs)
  # the gradient w.r.t. the latent (what inversion differentiates) does not dilate either
  grad = jax.make_jaxpr(jax.grad(lambda z: SMALL.synthesize(small_params, z).sum()))(
      jnp.zeros((2, 8)))
  assert all(tuple(e.params["lhs_dilation"]) == (1, 1) for e in _convs(grad.jaxpr))


def test_head_tail_round_trip_and_compose_all_layers(small_params):
  z = jax.random.normal(jax.random.key(2), (3, 8))

  @jax.jit
  def run(params, z):
    out = {"full": SMALL.synthesize(params, z)}
    for layer in SMALL.split_layers():
      feats = SMALL.head(params, z, layer)
      out[f"feats{layer}"] = feats
      out[f"split{layer}"] = SMALL.tail(params, feats, layer)
      # one code with alpha = 1 composes to its own features
      fused = SMALL.compose(feats[:1], jnp.ones((1, feats.shape[-1])))
      out[f"composed{layer}"] = SMALL.tail(params, fused, layer)
    return out

  out = run(small_params, z)
  full = out["full"]
  assert full.shape == (3, 64, 64, 3)
  assert float(jnp.std(full)) > 1e-3
  assert SMALL.split_layers() == (1, 2, 3, 4)
  for layer in SMALL.split_layers():
    assert out[f"feats{layer}"].shape == (3, *SMALL.feature_shape(layer))
    np.testing.assert_allclose(out[f"split{layer}"], full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[f"composed{layer}"], full[:1], rtol=0, atol=1e-6)
  assert SMALL.feature_shape(1) == (4, 4, 16) and SMALL.feature_shape(4) == (32, 32, 4)
  with pytest.raises(ValueError, match="valid: 1..4"):
    SMALL.head(small_params, z, 5)


def test_spec_json_round_trip_and_registry():
  assert family_class("dcgan") is DCGAN
  assert DCGAN.from_json(SMALL.to_json()["config"]) == SMALL
  assert SMALL.resolution == 64 and SMALL.latent_dim == 8 and SMALL.num_layers == 5


def test_converter_layout_against_independent_reference(small_params):
  """Random weights in torch layout: converter + JAX forward == float64 definition forward."""
  params = small_params
  sd = _torch_state_dict(SMALL, params)
  assert CONVERTER.matches_state_dict(sd)
  conv = CONVERTER.from_state_dict(sd)
  assert conv.spec == SMALL
  assert conv.leftover == tuple(sorted(f"main.{3 * j + 1}.num_batches_tracked" for j in range(4)))
  jax.tree.map(np.testing.assert_array_equal, conv.params, jax.tree.map(np.asarray, params))
  z = np.asarray(jax.random.normal(jax.random.key(4), (2, 8)))
  ref_images, _ = _reference_module().forward(sd, z)
  images = jax.jit(SMALL.synthesize)(conv.params, z)
  np.testing.assert_allclose(images, ref_images.transpose(0, 2, 3, 1), rtol=0, atol=1e-5)


def test_converter_errors_name_the_key(small_params):
  sd = _torch_state_dict(SMALL, small_params)
  cases = [
      ({k: v for k, v in sd.items() if k != "main.7.running_var"},
       "missing key main.7.running_var"),
      ({**sd, "main.3.weight": sd["main.3.weight"][:5]}, "main.3.weight"),
      ({**sd, "main.4.bias": np.zeros(3, np.float32)}, "wrong shape for main.4.bias"),
      ({**sd, "main.2.weight": np.zeros(3, np.float32)}, "unexpected key main.2.weight"),
      ({**sd, "extra.weight": np.zeros(3, np.float32)}, "unexpected key extra.weight"),
      ({**sd, "main.6.weight": sd["main.6.weight"][:, :, :3, :3]}, "main.6.weight has kernel size"),
      ({**sd, "main.1.running_var": -np.ones(16, np.float32)}, "main.1.running_var"),
  ]
  for bad, message in cases:
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
      CONVERTER.from_state_dict(bad)
  assert not CONVERTER.matches_state_dict({"layer0.conv.weight": np.zeros((4, 4, 4, 4))})


def test_documented_split_table():
  """The module docstring's table k -> feature_shape(k) (H, W, C) is what the spec computes."""
  rows = re.findall(r"^ +(\d+) +\((\d+), (\d+), (\d+)\) +\S+$", dcgan_module.__doc__, re.M)
  table = {int(k): (int(h), int(w), int(c)) for k, h, w, c in rows}
  spec = DCGAN()
  assert list(table) == list(spec.split_layers())
  assert table == {k: spec.feature_shape(k) for k in spec.split_layers()}
