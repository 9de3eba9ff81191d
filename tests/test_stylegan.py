"""StyleGAN v1: the Flax generator and its converters against the official PyTorch outputs.

Golden values: tests/fixtures/stylegan128_ref.npz (official genforce ``StyleGANGeneratorNet``
forward, see tests/fixtures/README.md). The same weights in the genforce ``.pth`` and the
NVIDIA TF pickle layouts are converted with ``python -m convert`` (its ``main``), loaded with
``load_model`` and must reproduce w, the truncated w+, and the images within 3e-4.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import flat_state_dict, read_gs, read_torch_file
from convert.stylegan import CONVERTER, from_state_dict, from_tf
from convert.stylegan2 import CONVERTER as CONVERTER2
from mgan_jax.checkpoint import check_tree
from mgan_jax.errors import UserError
from mgan_jax.generators import spec_from_json
from mgan_jax.generators import stylegan as stylegan_module
from mgan_jax.generators.stylegan import BLUR_TAPS, StyleGAN, fir_filter
from parity_helpers import (FIXTURES, assert_official_forward, assert_same_params,
                            convert_formats, load_ref, maxdiff, nhwc, noise_variants,
                            random_model_split_check, with_component)

FORMATS = ("stylegan128.pth", "stylegan128_tf.pkl")
TOL = 3e-4   # README: outputs reach about +-6, float64 rerun moves them by <= 2e-5


@pytest.fixture(scope="module")
def ref():
  return load_ref("stylegan128_ref.npz")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return convert_formats(tmp_path_factory, FORMATS)


@pytest.fixture(scope="module")
def state_dict():
  return flat_state_dict(read_torch_file(FIXTURES / "stylegan128.pth"))


def test_converted_spec_and_structure(models):
  want = StyleGAN(resolution=128, latent_dim=128, w_dim=128, mapping_layers=8,
                  mapping_fmaps=32, channels=(32, 32, 32, 32, 32, 16))
  for fmt, (spec, params) in models.items():
    assert spec == want, fmt
    assert (spec.truncation_psi, spec.truncation_layers) == (0.7, 8)
    assert spec.num_layers == 12 and spec.split_layers() == tuple(range(1, 13))
    assert spec.synthesis_input_shape() == (12, 128)
    assert spec.feature_shape(1) == (4, 4, 32) and spec.feature_shape(3) == (8, 8, 32)
    assert spec.feature_shape(11) == (128, 128, 16) and spec.feature_shape(12) == (128, 128, 16)
    assert spec_from_json(spec.to_json()) == spec
    s = params["synthesis"]
    assert s["4x4"]["Const"]["const"].shape == (1, 4, 4, 32)
    assert s["128x128"]["Conv0_up"]["weight"].shape == (3, 3, 32, 16)
    assert s["ToRGB"]["weight"].shape == (1, 1, 16, 3)
    assert s["noise11"].shape == (1, 128, 128, 1)
    assert params["mapping"]["Dense0"]["weight"].shape == (128, 32)
  # both formats give bit-identical parameters (fused kernel flipped the same way)
  assert_same_params(models)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_official_forward(models, ref, fmt):
  assert_official_forward(*models[fmt], ref, TOL)


def test_truncation_and_spaces(models, ref):
  spec, params = models[FORMATS[0]]
  w = jnp.asarray(ref["w"])
  avg = np.asarray(params["dlatent_avg"])
  wb = np.broadcast_to(np.asarray(w)[:, None], (4, 12, 128))
  got = spec.truncate(params, w, truncation=(0.25, 3))
  want = wb.copy()
  want[:, :3] = avg + (wb[:, :3] - avg) * 0.25
  assert maxdiff(got, want) <= 1e-7
  assert maxdiff(spec.truncate(params, w, truncation=(1.0, 12)), wb) == 0.0
  assert maxdiff(spec.to_synthesis_input(params, w, space="w"), ref["wp_trunc"]) <= 1e-6
  wp = jnp.asarray(ref["wp_free"])
  assert spec.to_synthesis_input(params, wp, space="wp", truncation=(0.5, 8)) is not None
  assert maxdiff(spec.to_synthesis_input(params, wp, space="wp", truncation=(0.5, 8)), wp) == 0
  with pytest.raises(ValueError, match="latent space"):
    spec.to_synthesis_input(params, w, space="y")
  with pytest.raises(ValueError, match="truncation"):
    spec.truncate(params, w, truncation=0.5)


def test_head_tail_split_every_layer(models, ref):
  spec, params = models[FORMATS[0]]
  wp = jnp.asarray(ref["wp_free"][:1])

  @jax.jit
  def run(params, wp):
    full = spec.synthesize(params, wp)
    feats = [spec.head(params, wp, k) for k in spec.split_layers()]
    diffs = [jnp.max(jnp.abs(spec.tail(params, f, k, latent=wp) - full))
             for k, f in zip(spec.split_layers(), feats)]
    # multi-code composition of 3 identical codes with alpha = 1 is the identity (k = 5)
    k = 5
    f3 = spec.head(params, jnp.repeat(wp, 3, axis=0), k)
    fused = spec.compose(f3, jnp.ones((3, spec.feature_shape(k)[-1])))
    mc = spec.tail(params, fused, k, latent=wp)
    return full, [f.shape for f in feats], jnp.stack(diffs), jnp.max(jnp.abs(mc - full))

  full, _, diffs, mc = run(params, wp)
  assert maxdiff(full, nhwc(ref["images_wp"][:1])) <= TOL
  assert float(diffs.max()) <= 1e-5, diffs
  assert float(mc) <= 1e-4   # (x + x + x) / 3 rounding, amplified by InstanceNorm
  for k in spec.split_layers():
    assert jax.eval_shape(lambda p, x: spec.head(p, x, k), params, wp).shape == (
        1, *spec.feature_shape(k))
  with pytest.raises(ValueError, match="not a valid split"):
    spec.head(params, wp, 13)


def test_noise_inputs(models, ref):
  spec, params = models[FORMATS[0]]
  wp = jnp.asarray(ref["wp_free"][:1])
  buffers = [params["synthesis"][f"noise{i}"] for i in range(spec.num_layers)]
  assert [tuple(b.shape) for b in buffers] == list(spec.noise_shapes())
  default, listed, rand, split = noise_variants(spec, params, wp, buffers, jax.random.key(1), 7)
  assert maxdiff(default, nhwc(ref["images_wp"][:1])) <= TOL
  assert maxdiff(listed, default) <= 1e-6
  assert maxdiff(rand, default) > 1e-2
  assert maxdiff(split, rand) <= 1e-5
  with pytest.raises(ValueError, match="one per synthesis layer"):
    spec.synthesize(params, wp, noise=buffers[:-1])
  bad = list(buffers)
  bad[3] = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ValueError, match=r"noise\[3\]"):
    spec.synthesize(params, wp, noise=bad)


def test_init_params_structure(models):
  spec, params = models[FORMATS[0]]
  check_tree(params, spec.init_params(jax.random.key(0)), what="init_params")
  # a small model with a changing channel schedule: shapes, finiteness, split identity
  small = StyleGAN(resolution=16, latent_dim=16, w_dim=8, mapping_layers=2, mapping_fmaps=8,
                   channels=(16, 8, 4))
  p = small.init_params(jax.random.key(1))
  assert p["synthesis"]["16x16"]["Conv0_up"]["weight"].shape == (3, 3, 8, 4)
  random_model_split_check(small, p)


def test_state_dict_errors_and_leftovers(state_dict):
  sd = state_dict
  assert CONVERTER.matches_state_dict(sd) and not CONVERTER2.matches_state_dict(sd)
  left = set(from_state_dict(sd).leftover)
  assert {"synthesis.lod", "synthesis.layer2.blur.kernel", "synthesis.output0.conv.weight",
          "synthesis.output4.bias"} <= left
  assert not any(k.startswith("synthesis.output5") for k in left)

  missing = {k: v for k, v in sd.items() if k != "synthesis.layer5.conv.weight"}
  with pytest.raises(UserError, match=r"synthesis\.layer5\.conv\.weight"):
    from_state_dict(missing)
  key = "synthesis.layer6.epilogue.style_mod.dense.fc.weight"
  with pytest.raises(UserError, match=rf"wrong shape for {key}"):
    from_state_dict({**sd, key: np.zeros((64, 127), np.float32)})
  with pytest.raises(UserError, match=r"unexpected key synthesis\.layer3\.extra"):
    from_state_dict({**sd, "synthesis.layer3.extra": np.zeros(3, np.float32)})
  with pytest.raises(UserError, match=r"synthesis\.lod"):
    from_state_dict({**sd, "synthesis.lod": np.float32(1.0)})


def test_tf_errors():
  gs = read_gs(FIXTURES / "stylegan128_tf.pkl")
  assert CONVERTER.matches_tf(gs) and not CONVERTER2.matches_tf(gs)
  synth = gs.components["synthesis"]
  with_synth_vars = lambda variables: with_component(gs, "synthesis", variables)

  conv = from_tf(with_synth_vars(synth.variables))
  assert "synthesis/lod" in conv.leftover and "synthesis/ToRGB_lod1/weight" in conv.leftover
  with pytest.raises(UserError, match="synthesis/16x16/Conv0_up/StyleMod/bias"):
    from_tf(with_synth_vars([(k, v) for k, v in synth.variables
                             if k != "16x16/Conv0_up/StyleMod/bias"]))
  with pytest.raises(UserError, match="wrong shape for synthesis/noise4"):
    from_tf(with_synth_vars([(k, np.zeros((1, 1, 8, 8), np.float32) if k == "noise4" else v)
                             for k, v in synth.variables]))


@pytest.mark.parametrize("taps,padding", [(BLUR_TAPS, (1, 1)), ((0.5, -1.0, 2.0, 0.25), (3, 0))])
def test_fir_filter_matches_a_depthwise_conv_in_float64(taps, padding):
  """The shifted-add FIR (the up-layers' blur) and its custom input gradient vs the depthwise
  convolution with kernel outer(taps, taps); asymmetric taps and padding check the gradient's
  reversal."""
  k1, k2 = jax.random.split(jax.random.key(5))
  x = jax.random.normal(k1, (2, 6, 5, 3))

  def depthwise(x):
    k = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, 1, 3))
    return jax.lax.conv_general_dilated(x, jnp.asarray(k, x.dtype), (1, 1), (padding, padding),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=3, precision="highest")

  value_and_grad = lambda f: jax.jit(lambda x, cot: (f(x),) + jax.vjp(f, x)[1](cot))
  with jax.enable_x64(True):
    x64 = jnp.asarray(np.asarray(x, np.float64))
    cot = np.asarray(jax.random.normal(k2, jax.eval_shape(depthwise, x64).shape), np.float64)
    y64, g64 = value_and_grad(depthwise)(x64, jnp.asarray(cot))
  y, g = value_and_grad(lambda x: fir_filter(x, taps, padding))(x, jnp.asarray(cot, jnp.float32))
  assert y.shape == y64.shape
  np.testing.assert_allclose(y, y64, atol=3e-6 * np.abs(y64).max())
  np.testing.assert_allclose(g, g64, atol=3e-6 * np.abs(g64).max())
  with pytest.raises(ValueError, match="padding"):
    fir_filter(x, taps, (len(taps), 0))


def test_documented_split_table():
  """The module docstring's table k -> feature_shape(k) (H, W, C) is what the spec computes."""
  rows = re.findall(r"^ +(\d+) +\((\d+), (\d+), (\d+)\) +\S+$", stylegan_module.__doc__, re.M)
  table = {int(k): (int(h), int(w), int(c)) for k, h, w, c in rows}
  spec = StyleGAN(resolution=256)
  assert list(table) == list(spec.split_layers())
  assert table == {k: spec.feature_shape(k) for k in spec.split_layers()}
