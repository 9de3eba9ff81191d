"""StyleGAN2 (config-f, skip): the Flax generator and its converters against the official outputs.

Golden values: tests/fixtures/stylegan2_64_ref.npz (official genforce ``StyleGAN2GeneratorNet``
forward, see tests/fixtures/README.md). The same weights in the genforce ``.pth`` and the
NVIDIA TF pickle layouts are converted with ``python -m convert`` (its ``main``), loaded with
``load_model`` and must reproduce w, the truncated w+, and the images within 1e-4.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import TFNetwork, flat_state_dict, read_gs, read_torch_file
from convert.stylegan import CONVERTER as CONVERTER1
from convert.stylegan2 import CONVERTER, from_state_dict, from_tf
from mgan_jax.checkpoint import check_tree
from mgan_jax.errors import UserError
from mgan_jax.generators import spec_from_json
from mgan_jax.generators import stylegan2 as stylegan2_module
from mgan_jax.generators.stylegan import fir_filter
from mgan_jax.generators.stylegan2 import (FIR_TAPS, StyleGAN2, conv_transpose_up,
                                           upsample_fir2x)
from parity_helpers import (FIXTURES, assert_official_forward, assert_same_params,
                            convert_formats, load_ref, maxdiff, nhwc, noise_variants,
                            random_model_split_check, with_component)

FORMATS = ("stylegan2_64.pth", "stylegan2_64_tf.pkl")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
  return load_ref("stylegan2_64_ref.npz")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return convert_formats(tmp_path_factory, FORMATS)


@pytest.fixture(scope="module")
def state_dict():
  return flat_state_dict(read_torch_file(FIXTURES / "stylegan2_64.pth"))


def test_converted_spec_and_structure(models):
  want = StyleGAN2(resolution=64, latent_dim=64, w_dim=64, mapping_layers=8, mapping_fmaps=32,
                   channels=(32, 32, 32, 32, 32))
  for fmt, (spec, params) in models.items():
    assert spec == want, fmt
    assert (spec.truncation_psi, spec.truncation_layers) == (0.5, 18)
    assert spec.num_layers == 10 and spec.num_conv_layers == 9
    assert spec.split_layers() == tuple(range(1, 10))
    assert spec.synthesis_input_shape() == (10, 64)
    assert spec.feature_shape(1) == (4, 4, 32) and spec.feature_shape(2) == (8, 8, 32)
    assert spec.feature_shape(9) == (64, 64, 32)
    assert spec_from_json(spec.to_json()) == spec
    s = params["synthesis"]
    assert s["4x4"]["Const"]["const"].shape == (1, 4, 4, 32)
    assert s["8x8"]["Conv0_up"]["weight"].shape == (3, 3, 32, 32)
    assert s["8x8"]["Conv0_up"]["noise_strength"].shape == ()
    assert s["8x8"]["Conv0_up"]["mod_weight"].shape == (64, 32)
    assert s["64x64"]["ToRGB"]["weight"].shape == (1, 1, 32, 3)
    assert s["noise8"].shape == (1, 64, 64, 1) and "noise9" not in s
  assert_same_params(models)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_official_forward(models, ref, fmt):
  assert_official_forward(*models[fmt], ref, TOL)


def test_truncation_and_spaces(models, ref):
  spec, params = models[FORMATS[0]]
  w = jnp.asarray(ref["w"])
  avg = np.asarray(params["dlatent_avg"])
  wb = np.broadcast_to(np.asarray(w)[:, None], (4, 10, 64))
  assert maxdiff(spec.truncate(params, w), avg + (wb - avg) * 0.5) <= 1e-7   # psi 0.5, all
  got = spec.truncate(params, w, truncation=(0.8, 4))
  want = wb.copy()
  want[:, :4] = avg + (wb[:, :4] - avg) * 0.8
  assert maxdiff(got, want) <= 1e-7
  assert maxdiff(spec.to_synthesis_input(params, w, space="w"), ref["wp_trunc"]) <= 1e-6
  wp = jnp.asarray(ref["wp_free"])
  assert maxdiff(spec.to_synthesis_input(params, wp, space="wp"), wp) == 0.0


def test_split_every_layer_and_compose(models, ref):
  spec, params = models[FORMATS[0]]
  wp = jnp.asarray(ref["wp_free"])             # (2, L, W)
  k_mc = 4
  c = spec.feature_shape(k_mc)[-1]
  alpha = jnp.asarray(np.random.default_rng(0).uniform(0.1, 1.1, (2, c)), jnp.float32)

  @jax.jit
  def run(params, wp, alpha):
    full = spec.synthesize(params, wp)
    feats = {k: spec.head(params, wp, k) for k in spec.split_layers()}
    diffs = jnp.stack([jnp.max(jnp.abs(spec.tail(params, f, k, latent=wp) - full))
                       for k, f in feats.items()])
    f = feats[k_mc]
    fused = spec.compose(f, alpha)                      # the 2 codes of wp, one image
    mc = spec.tail(params, fused, k_mc, latent=wp[:1])
    # 2 identical codes with alpha = 1 compose to the code itself
    same = spec.compose(jax.tree.map(lambda a: jnp.concatenate([a[:1], a[:1]]), f),
                        jnp.ones((2, c)))
    ident = spec.tail(params, same, k_mc, latent=wp[:1])
    return full, f, fused, mc, diffs, ident

  full, f, fused, mc, diffs, ident = run(params, wp, alpha)
  assert maxdiff(full, nhwc(ref["images_wp"])) <= TOL
  assert float(diffs.max()) <= 1e-5, diffs
  assert set(f) == {"x", "img"} and f["x"].shape == (2, 16, 16, 32)
  assert f["img"].shape == (2, 16, 16, 3) and float(jnp.abs(f["img"]).max()) > 0
  a = np.asarray(alpha)
  assert maxdiff(fused["x"], np.mean(np.asarray(f["x"]) * a[:, None, None, :], 0)[None]) <= 1e-6
  assert maxdiff(fused["img"], np.mean(np.asarray(f["img"]), 0)[None]) <= 1e-6
  assert mc.shape == (1, 64, 64, 3) and bool(jnp.all(jnp.isfinite(mc)))
  assert maxdiff(ident, full[:1]) <= 1e-5
  # at k = 1 the skip image is empty (zeros) and 'x' is the 4x4 conv output
  f1 = jax.eval_shape(lambda p, x: spec.head(p, x, 1), params, wp)
  assert f1["x"].shape == (2, 4, 4, 32) and f1["img"].shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match="not a valid split"):
    spec.head(params, wp, 10)
  with pytest.raises(ValueError, match="'x' and 'img'"):
    spec.tail(params, f["x"], k_mc, latent=wp)


def test_noise_inputs(models, ref):
  spec, params = models[FORMATS[0]]
  wp = jnp.asarray(ref["wp_free"])
  buffers = [params["synthesis"][f"noise{i}"] for i in range(spec.num_conv_layers)]
  assert [tuple(b.shape) for b in buffers] == list(spec.noise_shapes())
  default, listed, rand, split = noise_variants(spec, params, wp, buffers, jax.random.key(3), 5)
  assert maxdiff(listed, default) <= 1e-6
  assert maxdiff(rand, default) > 1e-2
  assert maxdiff(split, rand) <= 1e-5
  with pytest.raises(ValueError, match="one per synthesis layer"):
    spec.synthesize(params, wp, noise=buffers + buffers[:1])


def test_init_params_structure(models):
  spec, params = models[FORMATS[0]]
  check_tree(params, spec.init_params(jax.random.key(0)), what="init_params")
  # a small model with a changing channel schedule: shapes, finiteness, split identity
  small = StyleGAN2(resolution=16, latent_dim=16, w_dim=8, mapping_layers=2, mapping_fmaps=8,
                    channels=(16, 8, 4))
  p = small.init_params(jax.random.key(1))
  s = p["synthesis"]
  assert s["16x16"]["Conv0_up"]["weight"].shape == (3, 3, 8, 4)
  assert s["16x16"]["Conv0_up"]["mod_weight"].shape == (8, 8)
  assert s["8x8"]["ToRGB"]["weight"].shape == (1, 1, 8, 3)
  random_model_split_check(small, p)


def test_state_dict_errors_and_leftovers(state_dict):
  sd = state_dict
  assert CONVERTER.matches_state_dict(sd) and not CONVERTER1.matches_state_dict(sd)
  left = set(from_state_dict(sd).leftover)
  assert left == {"synthesis.layer1.filter.kernel", "synthesis.layer3.filter.kernel",
                  "synthesis.layer5.filter.kernel", "synthesis.layer7.filter.kernel",
                  "synthesis.upsample.kernel"}
  assert "truncation.truncation" in from_state_dict(
      {**sd, "truncation.truncation": np.ones((1, 10, 1), np.float32)}).leftover
  missing = {k: v for k, v in sd.items() if k != "synthesis.output2.style.bias"}
  with pytest.raises(UserError, match=r"missing key synthesis\.output2\.style\.bias"):
    from_state_dict(missing)
  key = "synthesis.layer3.style.fc.weight"
  with pytest.raises(UserError, match=rf"wrong shape for {key}"):
    from_state_dict({**sd, key: np.zeros((64, 32), np.float32)})
  with pytest.raises(UserError, match=r"unexpected key synthesis\.skip_layer0\.weight"):
    from_state_dict({**sd, "synthesis.skip_layer0.weight": np.zeros((1, 1, 32, 32), np.float32)})


def test_tf_errors():
  gs = read_gs(FIXTURES / "stylegan2_64_tf.pkl")
  assert CONVERTER.matches_tf(gs) and not CONVERTER1.matches_tf(gs)
  mapping = gs.components["mapping"]
  with_mapping_vars = functools.partial(with_component, gs, "mapping")

  assert from_tf(with_mapping_vars(mapping.variables)).leftover == ()
  with pytest.raises(UserError, match="missing variable mapping/Dense3/bias"):
    from_tf(with_mapping_vars([(k, v) for k, v in mapping.variables if k != "Dense3/bias"]))
  with pytest.raises(UserError, match="unexpected variable mapping/Extra"):
    from_tf(with_mapping_vars(list(mapping.variables) + [("Extra", np.zeros(2, np.float32))]))
  with pytest.raises(UserError, match="mapping_lrmul"):
    from_tf(with_mapping_vars(mapping.variables, mapping_lrmul=1.0))
  # NVIDIA's G_main has an own `lod` variable next to dlatent_avg: leftover when 0
  gs_lod = TFNetwork(version=gs.version, name=gs.name, static_kwargs=gs.static_kwargs,
                     build_func_name=gs.build_func_name, components=gs.components,
                     variables=list(gs.variables) + [("lod", np.zeros((), np.float32))])
  assert from_tf(gs_lod).leftover == ("lod",)
  gs_lod.variables[-1] = ("lod", np.full((), 0.5, np.float32))
  with pytest.raises(UserError, match="lod = 0.5"):
    from_tf(gs_lod)


# ----- the convolutions: routed through generators.conv, equal to the lax forms -------------

def _lax(x, w, padding, *, dilation=1, groups=1):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, lhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups, precision="highest")


def _depthwise(x, taps, padding, *, dilation=1):
  k = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, 1, x.shape[-1]))
  return _lax(x, jnp.asarray(k, x.dtype), (padding, padding), dilation=dilation,
              groups=x.shape[-1])


# name: (ours, the previous lax form (zero-inserted / grouped convolutions), input, kernel)
OPS = {
    "up_layer": (lambda x, w: fir_filter(conv_transpose_up(x, w), FIR_TAPS, (1, 1)),
                 lambda x, w: _depthwise(_lax(x, w, ((2, 2), (2, 2)), dilation=2), FIR_TAPS,
                                         (1, 1)), (2, 5, 6, 3), (3, 3, 3, 4)),
    "transposed_conv": (conv_transpose_up, lambda x, w: _lax(x, w, ((2, 2), (2, 2)), dilation=2),
                        (2, 4, 3, 2), (3, 3, 2, 3)),
    "skip_upsample": (lambda x, w: upsample_fir2x(x),
                      lambda x, w: _depthwise(x, FIR_TAPS, (2, 2), dilation=2), (2, 5, 4, 3),
                      (1, 1, 1, 1)),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_ops_match_the_lax_forms_in_float64(op):
  """Values and input gradients of the zero-free forms vs the dilated / depthwise convs."""
  ours, ref, xs, ws = OPS[op]
  k1, k2, k3 = jax.random.split(jax.random.key(sorted(OPS).index(op)), 3)
  x, w = jax.random.normal(k1, xs), jax.random.normal(k2, ws)
  value_and_grad = lambda f: jax.jit(lambda x, w, cot: jax.vjp(lambda x: f(x, w), x)[1](cot)
                                     + (f(x, w),))
  with jax.enable_x64(True):
    x64, w64 = jnp.asarray(np.asarray(x, np.float64)), jnp.asarray(np.asarray(w, np.float64))
    shape = jax.eval_shape(ref, x64, w64).shape
    cot = np.asarray(jax.random.normal(k3, shape), np.float64)
    g64, y64 = value_and_grad(ref)(x64, w64, jnp.asarray(cot))
  g, y = value_and_grad(ours)(x, w, jnp.asarray(cot, jnp.float32))
  assert y.shape == y64.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, y64, atol=3e-6 * np.abs(y64).max())
  np.testing.assert_allclose(g, g64, atol=3e-6 * np.abs(g64).max())
  with pytest.raises(ValueError, match="3x3"):
    conv_transpose_up(x, w[:1, :1])


def test_documented_split_table():
  """The module docstring's table k -> feature_shape(k) (H, W, C) is what the spec computes."""
  rows = re.findall(r"^ +(\d+) +\((\d+), (\d+), (\d+)\) +\S+$", stylegan2_module.__doc__, re.M)
  table = {int(k): (int(h), int(w), int(c)) for k, h, w, c in rows}
  spec = StyleGAN2(resolution=256)
  assert list(table) == list(spec.split_layers())
  assert table == {k: spec.feature_shape(k) for k in spec.split_layers()}
