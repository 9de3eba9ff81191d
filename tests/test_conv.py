"""The generators' / VGG's convolution module: every algorithm equals ``lax`` (values and input
gradients, against a float64 reference), the dispatch rule, and no weight-gradient work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgan_jax.generators import conv as C


@pytest.fixture
def algorithm():
  """Set the conv algorithm for one test, restoring 'auto' afterwards."""
  yield C.set_conv_algorithm
  C.set_conv_algorithm("auto")


def _lax(x, w, padding):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


def _up(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


CASES = {  # name: (ours, reference, input shape, kernel shape)
    "conv3x3": (lambda x, w: C.conv2d(x, w), lambda x, w: _lax(x, w, "SAME"),
                (2, 6, 8, 5), (3, 3, 5, 4)),
    "conv2x3_padded": (lambda x, w: C.conv2d(x, w, padding=((1, 0), (0, 2))),
                       lambda x, w: _lax(x, w, ((1, 0), (0, 2))), (2, 5, 6, 3), (2, 3, 3, 4)),
    "upsample_conv3x3": (C.upsample_conv2d, lambda x, w: _lax(_up(x), w, "SAME"),
                         (2, 4, 6, 5), (3, 3, 5, 4)),
}


def _value_and_grads(f, x, w, cot):
  return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("alg", ["direct", "winograd"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_algorithms_match_a_float64_reference(case, alg, algorithm):
  """Outputs and gradients (w.r.t. input and kernel) of every algorithm vs lax in float64."""
  algorithm(alg)
  ours, ref, xs, ws = CASES[case]
  k1, k2, k3 = jax.random.split(jax.random.key(sorted(CASES).index(case)), 3)
  x, w = jax.random.normal(k1, xs), jax.random.normal(k2, ws)
  y = ours(x, w)
  with jax.enable_x64(True):
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y64 = np.asarray(ref(jnp.asarray(x64), jnp.asarray(w64)))
    cot = np.asarray(jax.random.normal(k3, y64.shape), np.float64)
    _, g64 = _value_and_grads(ref, jnp.asarray(x64), jnp.asarray(w64), jnp.asarray(cot))
  assert y.shape == y64.shape and y.dtype == jnp.float32
  scale = np.abs(y64).max()
  np.testing.assert_allclose(y, y64, atol=3e-6 * scale)
  _, g = _value_and_grads(ours, x, w, jnp.asarray(cot, jnp.float32))
  for a, b in zip(g, g64):
    np.testing.assert_allclose(a, b, atol=3e-6 * np.abs(b).max())


def test_winograd_is_really_used_and_differs_only_by_rounding(algorithm):
  """Forced Winograd compiles to matrix products (no convolution) and stays within float32
  rounding of the direct form; the two are not bit-identical (different summation order)."""
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, 16))
  w = jax.random.normal(jax.random.key(2), (3, 3, 16, 16))
  hlo = lambda: jax.jit(C.conv2d).lower(x, w).compile().as_text()
  algorithm("direct")
  direct = C.conv2d(x, w)
  assert " convolution(" in hlo()
  algorithm("winograd")                          # clears the caches: conv2d is traced again
  wino = C.conv2d(x, w)
  text = hlo()
  assert " convolution(" not in text and " dot(" in text
  assert not np.array_equal(direct, wino)
  np.testing.assert_allclose(wino, direct, atol=1e-5 * float(jnp.abs(direct).max()))


def test_dispatch_rule(algorithm):
  cpu = jax.default_backend() == "cpu"
  wide = "winograd" if cpu else "direct"
  assert C.conv_algorithm((20, 16, 16, 512), (3, 3, 512, 512)) == wide
  assert C.conv_algorithm((1, 64, 64, 256), (3, 3, 256, 256), ((1, 1), (1, 1))) == wide
  assert C.conv_algorithm((1, 128, 128, 128), (3, 3, 128, 128)) == "direct"    # narrow
  assert C.conv_algorithm((20, 4, 4, 512), (3, 3, 512, 512)) == "direct"      # tiny map
  assert C.conv_algorithm((1, 15, 16, 512), (3, 3, 512, 512)) == "direct"     # odd side
  assert C.conv_algorithm((1, 16, 16, 512), (1, 1, 512, 512)) == "direct"     # not 3x3
  assert C.conv_algorithm((1, 16, 16, 512), (3, 3, 512, 512), "VALID") == "direct"
  algorithm("direct")
  assert C.conv_algorithm((20, 16, 16, 512), (3, 3, 512, 512)) == "direct"
  algorithm("winograd")
  assert C.conv_algorithm((1, 4, 4, 3), (3, 3, 3, 2)) == "winograd"
  assert C.conv_algorithm((1, 5, 4, 3), (3, 3, 3, 2)) == "direct"
  with pytest.raises(ValueError, match="conv algorithm"):
    C.set_conv_algorithm("fft")


def test_bad_padding_is_refused():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="padding"):
    C.conv2d(x, jnp.zeros((3, 3, 2, 2)), padding=((3, 0), (0, 0)))
  with pytest.raises(ValueError, match="odd"):
    C.conv2d(x, jnp.zeros((2, 2, 2, 2)))
  with pytest.raises(ValueError, match="3x3"):
    C.upsample_conv2d(x, jnp.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize("alg", ["direct", "winograd"])
def test_no_kernel_gradient_work_when_only_the_input_is_differentiated(alg, algorithm):
  """The inversion differentiates w.r.t. the latents only: the compiled input gradient has as
  many matrix products / convolutions as the forward needs, none for the kernel."""
  algorithm(alg)
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 8))
  w = jax.random.normal(jax.random.key(4), (3, 3, 8, 8))
  loss = lambda x, w: jnp.sum(jnp.sin(C.upsample_conv2d(C.conv2d(x, w), w)))
  count = lambda argnums: sum(jax.jit(jax.grad(loss, argnums=argnums)).lower(x, w).compile()
                              .as_text().count(op) for op in (" convolution(", " dot("))
  assert count(0) < count((0, 1))


# ----- every generator family convolves through this module ---------------------------------

def _conv_eqns(jaxpr) -> list:
  """Every conv_general_dilated equation, also inside sub-jaxprs (custom_vjp, pjit)."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive.name == "conv_general_dilated":
      out.append(e)
    for v in e.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          out.extend(_conv_eqns(getattr(inner, "jaxpr", inner)))
  return out


SMALL_SPECS = {
    "pggan": dict(resolution=16, latent_dim=8, channels=(8, 6, 4)),
    "stylegan": dict(resolution=16, latent_dim=8, w_dim=8, mapping_layers=2, mapping_fmaps=8,
                     channels=(8, 6, 4)),
    "stylegan2": dict(resolution=16, latent_dim=8, w_dim=8, mapping_layers=2, mapping_fmaps=8,
                      channels=(8, 6, 4)),
    "dcgan": dict(z_dim=8, channels=(8, 6)),
}


@pytest.mark.parametrize("family", sorted(SMALL_SPECS))
def test_generators_convolve_through_this_module(family, algorithm):
  """No zero-inserted or grouped convolution in any family's forward or latent gradient (the
  transposed and FIR convolutions are zero-free phase convolutions and shifted adds), and with
  Winograd forced no 3x3 convolution is left: every 3x3 conv, the StyleGAN2 modulated ones
  included (x * s -> conv with the shared kernel -> * d), goes through ``conv2d`` /
  ``upsample_conv2d``. (Traced only: shapes, no compilation.)"""
  from mgan_jax.generators import family_class
  spec = family_class(family)(**SMALL_SPECS[family])
  params = jax.eval_shape(spec.init_params, jax.random.key(0))
  x = jnp.ones((2, *spec.synthesis_input_shape()))
  loss = lambda params, x: jnp.sum(jnp.sin(spec.synthesize(params, x)))
  eqns = (_conv_eqns(jax.make_jaxpr(loss)(params, x).jaxpr)
          + _conv_eqns(jax.make_jaxpr(jax.grad(loss, argnums=1))(params, x).jaxpr))
  assert eqns and all(tuple(e.params["lhs_dilation"]) == (1, 1)
                      and e.params["feature_group_count"] == 1 for e in eqns)
  assert any(e.invars[1].aval.shape[:2] == (3, 3) for e in eqns) == (family != "dcgan")
  algorithm("winograd")
  convs = _conv_eqns(jax.make_jaxpr(loss)(params, x).jaxpr)
  assert not any(e.invars[1].aval.shape[:2] == (3, 3) for e in convs)
