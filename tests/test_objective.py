"""The objective, latents and the optimisation loop, on tiny generators (fast): formulas,
trace semantics, per-image independence, and a researcher's variant written against the API."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgan_jax import engine
from mgan_jax import latents as L
from mgan_jax import objective as O
from mgan_jax import operators as ops
from mgan_jax import optimize as OP
from mgan_jax import perceptual as P
from mgan_jax.generators.base import Generator
from mgan_jax.generators.pggan import PGGAN


@dataclasses.dataclass(frozen=True)
class TinyGen(Generator):
  """z (B, Z) -> dense 4x4xC -> [conv] -> x2 nearest -> 1x1 to RGB -> tanh; split at 1 or 2."""

  family = "tiny"
  z_dim: int = 6
  ch: int = 4

  @property
  def resolution(self):
    return 8

  @property
  def latent_dim(self):
    return self.z_dim

  @property
  def num_layers(self):
    return 3

  def feature_shape(self, layer):
    return (4, 4, self.ch)

  def init_params(self, key):
    k1, k2, k3 = jax.random.split(key, 3)
    c = self.ch
    return {"dense": jax.random.normal(k1, (self.z_dim, 16 * c)) / np.sqrt(self.z_dim),
            "conv": jax.random.normal(k2, (3, 3, c, c)) / np.sqrt(9 * c),
            "rgb": jax.random.normal(k3, (c, 3)) / np.sqrt(c)}

  def _conv(self, p, h):
    return jax.nn.leaky_relu(P.conv3x3(h, p["conv"]), 0.2)

  def head(self, params, x, layer, *, noise=None):
    h = jax.nn.relu(x @ params["dense"]).reshape(x.shape[0], 4, 4, self.ch)
    return self._conv(params, h) if layer == 2 else h

  def tail(self, params, features, layer, *, latent=None, noise=None):
    h = self._conv(params, features) if layer == 1 else features
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    return jnp.tanh(h @ params["rgb"])


GEN = TinyGen()
GP = GEN.init_params(jax.random.key(0))
NO_VGG = O.LossConfig(perceptual_weight=0.0)


def _target(seed=1):
  z = jax.random.normal(jax.random.key(seed), (1, GEN.latent_dim))
  return GEN.synthesize(GP, z)[0]


def test_loss_config_defaults_are_official_and_validated():
  c = O.LossConfig()
  assert (c.mse_weight, c.l1_weight, c.perceptual_weight) == (1.0, 0.0, 1e-3)
  assert (c.perceptual_layers, c.perceptual_distance, c.perceptual_size) == (
      ("relu3_3",), "l1", 256)
  assert O.LossConfig(perceptual_layers=("features.21", "relu1_2")).perceptual_layers == (
      "conv4_3", "relu1_2")
  assert O.LossConfig(perceptual_layers="features.15") == c  # hashable, equal -> same jit key
  with pytest.raises(ValueError, match="unknown VGG16 layer"):
    O.LossConfig(perceptual_layers=("relu9_9",))
  with pytest.raises(ValueError, match="layer_weights"):
    O.LossConfig(perceptual_layers=("relu1_2", "relu2_2"), layer_weights=(1.0,))


def test_loss_terms_match_the_formula():
  vgg = P.random_params(jax.random.key(2), layers=("relu2_2",))
  k1, k2 = jax.random.split(jax.random.key(3))
  x = jax.random.uniform(k1, (1, 8, 8, 3), minval=-1, maxval=1)
  y = jax.random.uniform(k2, (1, 8, 8, 3), minval=-1, maxval=1)
  cfg = O.LossConfig(mse_weight=0.7, l1_weight=0.5, perceptual_weight=2e-3,
                     perceptual_layers=("relu1_2", "relu2_2"), layer_weights=(1.0, 0.25),
                     perceptual_distance="l2", perceptual_size=16)
  t = O.make_target(y, vgg, config=cfg)
  terms = jax.jit(functools.partial(O.loss_terms, config=cfg))(x, t, vgg)
  feats = jax.jit(lambda v, im: P.features(v, P.preprocess(im, size=16), ["relu1_2", "relu2_2"]))
  fx, fy = feats(vgg, x), feats(vgg, y)
  perc = (jnp.mean((fx["relu1_2"] - fy["relu1_2"]) ** 2)
          + 0.25 * jnp.mean((fx["relu2_2"] - fy["relu2_2"]) ** 2))
  np.testing.assert_allclose(terms["mse"], 0.7 * jnp.mean((x - y) ** 2), rtol=1e-6)
  np.testing.assert_allclose(terms["l1"], 0.5 * jnp.mean(jnp.abs(x - y)), rtol=1e-6)
  np.testing.assert_allclose(terms["perceptual"], 2e-3 * perc, rtol=1e-5)
  np.testing.assert_allclose(terms["total"], terms["mse"] + terms["l1"] + terms["perceptual"],
                             rtol=1e-6)
  assert O.image_loss(y, t, vgg, config=cfg) == pytest.approx(0.0, abs=1e-6)


def test_operator_modes_degrade_both_or_observation_only():
  y = _target()
  down = ops.Downsample(factor=2)
  t = O.make_target(y, None, config=NO_VGG, operator=down)
  assert t.image.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(t.image, down(y[None]))
  obs = O.make_target(down(y[None]), None, config=NO_VGG, operator=down, mode="observation")
  np.testing.assert_allclose(obs.image, t.image)
  x = GEN.synthesize(GP, jnp.zeros((1, GEN.latent_dim)))
  assert O.image_loss(x, t, None, config=NO_VGG) == pytest.approx(
      float(jnp.mean((down(x) - down(y[None])) ** 2)), rel=1e-6)
  with pytest.raises(ValueError, match="mode"):
    O.make_target(y, None, config=NO_VGG, mode="both")
  with pytest.raises(ValueError, match="VGG"):
    O.make_target(y, None)


def test_render_is_the_official_composition_and_batches():
  lat = L.init_latents(jax.random.key(4), GEN, GP, method="multi_z", codes=3, layer=1)
  assert lat["z"].shape == (3, 6) and np.all(np.asarray(lat["alpha"]) == np.float32(1 / 3))
  lat["alpha"] = jax.random.uniform(jax.random.key(5), (3, 4))
  img = L.render(GEN, GP, lat, method="multi_z", layer=1)
  fused = jnp.mean(GEN.head(GP, lat["z"], 1) * lat["alpha"][:, None, None, :], axis=0)[None]
  np.testing.assert_allclose(img, GEN.tail(GP, fused, 1), atol=1e-6)
  batch = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), lat)
  imgs = L.render(GEN, GP, batch, method="multi_z", layer=1)
  assert imgs.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(imgs[0], img[0], atol=1e-6)
  single = L.init_latents(jax.random.key(6), GEN, GP, method="z")
  np.testing.assert_allclose(L.render(GEN, GP, single, method="z"),
                             GEN.synthesize(GP, single["z"]), atol=1e-6)
  with pytest.raises(ValueError, match="latent method"):
    L.init_latents(jax.random.key(0), GEN, GP, method="multi_q")
  with pytest.raises(ValueError, match="latent space 'w'"):
    L.init_latents(jax.random.key(0), GEN, GP, method="multi_w", layer=1)


def test_style_based_multi_code_uses_mean_style_and_noise_latents():
  from mgan_jax.generators.stylegan import StyleGAN
  gen = StyleGAN(resolution=8, latent_dim=8, w_dim=8, mapping_layers=2, mapping_fmaps=8,
                 channels=(8, 8))
  gp = gen.init_params(jax.random.key(7))
  lat = L.init_latents(jax.random.key(8), gen, gp, method="multi_w", codes=2, layer=2)
  assert lat["w"].shape == (2, 8) and lat["alpha"].shape == (2, 8)
  img = jax.jit(lambda p, x: L.render(gen, p, x, method="multi_w", layer=2))(gp, lat)

  @jax.jit
  def manual(gp, lat):
    wp = jnp.broadcast_to(lat["w"][:, None], (2, gen.num_layers, 8))
    fused = gen.compose(gen.head(gp, wp, 2), lat["alpha"])
    return gen.tail(gp, fused, 2, latent=jnp.mean(wp, axis=0, keepdims=True))

  np.testing.assert_allclose(img, manual(gp, lat), atol=1e-5)
  mean = L.init_latents(jax.random.key(8), gen, gp, method="wp", init="mean")
  np.testing.assert_allclose(mean["wp"][0], jnp.broadcast_to(gp["dlatent_avg"], (4, 8)),
                             atol=1e-6)
  nz = L.init_latents(jax.random.key(9), gen, gp, method="wp_noise")
  assert [n.shape for n in nz["noise"]] == [(1, 4, 4, 1), (1, 4, 4, 1), (1, 8, 8, 1),
                                            (1, 8, 8, 1)]
  both = jax.jit(lambda p, x: (L.render(gen, p, x, method="wp_noise"),
                               gen.synthesize(p, x["wp"], noise=x["noise"])))(gp, nz)
  np.testing.assert_allclose(*both, atol=1e-6)


def test_optimize_trace_semantics_chunks_and_no_donation_of_inputs():
  t = O.make_target(_target(), None, config=NO_VGG)
  obj = O.Objective(gen=GEN, method="multi_z", layer=2, config=NO_VGG)
  lat0 = L.init_latents(jax.random.key(10), GEN, GP, method="multi_z", codes=3, layer=2)
  tx = optax.sgd(0.5)
  # reference: a plain Python loop
  lat, st, want = lat0, tx.init(lat0), []
  for _ in range(5):
    loss, g = jax.value_and_grad(obj)(lat, t, GP, None)
    want.append(float(loss))
    upd, st = tx.update(g, st, lat)
    lat = optax.apply_updates(lat, upd)
  for chunk in (5, 2):
    res = engine.optimize(obj, lat0, (t, GP, None), optimizer=tx, iterations=5, chunk=chunk)
    np.testing.assert_allclose(res.losses, want, rtol=1e-5)
    np.testing.assert_allclose(res.latents["z"], lat["z"], rtol=1e-5, atol=1e-6)
  assert res.losses.shape == (5,) and res.losses[-1] < res.losses[0]
  np.asarray(lat0["z"])  # the caller's latents were copied, not donated
  with pytest.raises(ValueError):
    OP.OptimizerConfig(name="lbfgs")


def test_images_are_independent_under_vmap():
  targets = [O.make_target(_target(s), None, config=NO_VGG) for s in (11, 12)]
  obj = O.Objective(gen=GEN, method="multi_z", layer=1, config=NO_VGG)
  tx = OP.as_transformation(OP.OptimizerConfig(name="adam", lr=0.05))
  lats = [L.init_latents(jax.random.key(s), GEN, GP, method="multi_z", codes=2, layer=1)
          for s in (13, 14)]
  step = functools.partial(OP.scan_steps, obj, tx, 4)
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  lat_b, _, loss_b = jax.jit(jax.vmap(step, in_axes=(0, 0, (0, None, None))))(
      stack(lats), stack([tx.init(x) for x in lats]), (stack(targets), GP, None))
  for i in range(2):
    lat_i, _, loss_i = step(lats[i], tx.init(lats[i]), (targets[i], GP, None))
    np.testing.assert_allclose(loss_b[i], loss_i, rtol=1e-5)
    np.testing.assert_allclose(lat_b["alpha"][i], lat_i["alpha"], rtol=1e-5, atol=1e-6)


def test_no_gradients_for_generator_or_vgg_weights():
  vgg = P.random_params(jax.random.key(15), layers=("relu1_2",))
  cfg = O.LossConfig(perceptual_layers=("relu1_2",), perceptual_size=None)
  t = O.make_target(_target(), vgg, config=cfg)
  obj = O.Objective(gen=GEN, method="multi_z", layer=1, config=cfg)
  lat = L.init_latents(jax.random.key(16), GEN, GP, method="multi_z", codes=2, layer=1)

  def n_convs(argnums):
    f = jax.jit(jax.grad(lambda lat, gp, v: obj(lat, t, gp, v), argnums=argnums))
    return f.lower(lat, GP, vgg).compile().as_text().count(" convolution(")

  only_latents, with_weights = n_convs(0), n_convs((0, 1, 2))
  assert only_latents < with_weights   # weight-gradient convolutions are not computed


# A researcher's variant, written in a few lines against the public API: softmax-normalised
# code weights instead of the official (1/N) * alpha, and an L1-only pixel loss.
L1_ONLY = O.LossConfig(mse_weight=0.0, l1_weight=1.0, perceptual_weight=0.0)


def softmax_compose(features, logits):
  w = jax.nn.softmax(logits, axis=0)                    # (N, C), sums to 1 over the codes
  return jnp.sum(features * w[:, None, None, :], axis=0)[None]


def research_loss(latents, target, gen_params, vgg_params=None, *, gen, layer):
  """A researcher's variant: softmax composition, L1 only (the objective's argument order)."""
  del vgg_params
  img = L.render_multi(gen, gen_params, latents["z"], latents["alpha"], space="z", layer=layer,
                       compose=softmax_compose)
  return O.image_loss(img, target, None, config=L1_ONLY)


def test_research_variant_softmax_compose_l1_only_optimises():
  gen = PGGAN(resolution=8, latent_dim=16, channels=(16, 16))
  gp = gen.init_params(jax.random.key(17))
  target = O.make_target(gen.synthesize(gp, jax.random.normal(jax.random.key(18), (1, 16)))[0],
                         None, config=L1_ONLY)
  lat = L.init_latents(jax.random.key(19), gen, gp, method="multi_z", codes=4, layer=3)
  loss_fn = functools.partial(research_loss, gen=gen, layer=3)
  res = engine.optimize(loss_fn, lat, (target, gp),
                    optimizer=OP.OptimizerConfig(name="adam", lr=0.05), iterations=30, chunk=30)
  assert np.all(np.isfinite(res.losses))
  assert res.losses[-1] < 0.6 * res.losses[0]
