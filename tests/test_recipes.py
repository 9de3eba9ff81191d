"""Recipes (``--recipe``, ``mgan_jax.defaults.RECIPES``): the official recipe is the paper's
settings, a recipe resolves per family / model / task, explicit flags override it, and both
modes of ``python -m mgan_jax.invert`` run each recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from mgan_jax import cli, defaults as D, invert_images, invert_reproduce
from mgan_jax.errors import UserError
from mgan_jax.generators.dcgan import DCGAN
from mgan_jax.generators.pggan import PGGAN

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "dcgan_sample_9001.png"
MASK = EXAMPLES / "mask_center.png"


def _settings(argv, gen, *, model=None, tasks=("reconstruct",), defaults=None):
  p = argparse.ArgumentParser()
  cli.add_inversion_arguments(p, defaults=None, title="t")
  args = p.parse_args(argv)
  if defaults is None:
    defaults = D.defaults_for(gen.family, model, tasks)
  return cli.resolve_settings(args, gen, defaults, model=model, tasks=tasks)


# The official mGANprior scripts (genforce/mganprior): GD = SGD lr 1, MSE + 1e-3 * L1 of VGG16
# relu3_3 features on a 256 nearest resize; 3000 iterations (inversion), colorization 1500,
# super-resolution 2000, inpainting with vgg_lambda 0.1 of the 1e-3.
PUBLISHED = {"optimizer": "sgd", "lr": 1.0, "schedule": "constant", "warmup_steps": 0,
             "lr_multipliers": {}, "mse_weight": 1.0, "l1_weight": 0.0,
             "perceptual_weight": 1e-3, "perceptual_size": 256, "perceptual_layer": "relu3_3",
             "iterations": 3000}


@pytest.mark.parametrize("family,model", [("pggan", None), ("dcgan", "dcgan-faces64"),
                                          ("stylegan2", None)])
def test_official_recipe_is_the_published_settings(family, model):
  d = D.defaults_for(family, model, ("reconstruct",), recipe="official")
  assert {k: d[k] for k in PUBLISHED} == PUBLISHED
  assert d["recipe"] == "official"
  assert D.defaults_for(family, model, ("colorize",), recipe="official")["iterations"] == 1500
  assert D.defaults_for(family, model, ("super-resolve",), recipe="official")["iterations"] == 2000
  inpaint = D.defaults_for(family, model, ("inpaint",), recipe="official")
  assert inpaint["perceptual_weight"] == pytest.approx(1e-4) and inpaint["iterations"] == 3000
  # a combined task runs the longest of its tasks' counts
  assert D.defaults_for(family, model, ("super-resolve", "colorize"),
                        recipe="official")["iterations"] == 2000
  # what the recipe does not set (what is optimised) stays the model's
  base = D.defaults_for(family, model, ("reconstruct",))
  for key in ("method", "codes", "layer", "alpha_init", "factor"):
    assert d[key] == base[key]
  # the reproducibility mode's defaults are the same settings
  assert {k: D.OFFICIAL[k] for k in PUBLISHED if k in D.OFFICIAL} == \
      {k: PUBLISHED[k] for k in PUBLISHED if k in D.OFFICIAL}
  # the official output is the raw generator image, whatever the model's default
  assert inpaint["paste_known"] is False
  assert D.defaults_for(family, model, ("super-resolve",), recipe="official")["back_project"] \
      is False


def test_a_recipe_keeps_the_output_options_it_does_not_name():
  own = D.defaults_for("dcgan", "dcgan-faces64", ("inpaint",))
  assert own["paste_known"] is True and own["recipe"] is None
  assert D.defaults_for("dcgan", "dcgan-faces64", ("inpaint",), recipe="fast")["paste_known"]


def test_official_recipe_resolves_to_the_official_optimiser_and_loss():
  gen = PGGAN(resolution=32, channels=(16, 16, 16, 16))
  s = _settings(["--recipe", "official", "--layer", "2"], gen)
  assert (s.optimizer.name, s.optimizer.lr, s.optimizer.schedule, s.optimizer.momentum,
          s.optimizer.lr_multipliers, s.iterations) == ("sgd", 1.0, "constant", 0.0, (), 3000)
  assert (s.loss.mse_weight, s.loss.l1_weight, s.loss.perceptual_weight,
          s.loss.perceptual_layers, s.loss.perceptual_size) == (1.0, 0.0, 1e-3, ("relu3_3",), 256)
  # the same settings as the table's PGGAN defaults (the official scripts' values)
  base = _settings(["--layer", "2", "--codes", "20"], gen)
  assert (base.optimizer, base.loss, base.iterations) == (s.optimizer, s.loss, s.iterations)


def test_fast_recipe_resolves_per_family():
  for gen, model in ((PGGAN(resolution=32, channels=(16, 16, 16, 16)), None),
                     (DCGAN(), "dcgan-faces64")):
    d = D.defaults_for(gen.family, model, ("reconstruct",), recipe="fast")
    rec = {**D.RECIPES["fast"], **D.RECIPES["fast"].get("family", {}).get(gen.family, {})}
    s = _settings(["--recipe", "fast"], gen, model=model)
    assert s.optimizer.name == rec["optimizer"] and s.optimizer.lr == rec["lr"]
    assert s.iterations == rec["iterations"] == d["iterations"]
    assert s.optimizer.schedule == rec.get("schedule", "constant")
    assert dict(s.optimizer.lr_multipliers) == rec.get("lr_multipliers", {})
    if s.optimizer.schedule != "constant":     # the schedule decays over the run
      assert s.optimizer.decay_steps == s.iterations - s.optimizer.warmup_steps
    assert s.loss.perceptual_size == rec.get("perceptual_size", 256)


def test_flags_override_the_recipe():
  gen = PGGAN(resolution=32, channels=(16, 16, 16, 16))
  s = _settings(["--recipe", "fast", "--lr", "0.5", "--iterations", "40",
                 "--perceptual-weight", "0", "--layer", "2"], gen)
  assert s.optimizer.name == D.RECIPES["fast"]["optimizer"] and s.optimizer.lr == 0.5
  assert s.iterations == 40 and s.loss.perceptual_weight == 0.0
  if s.optimizer.schedule != "constant":
    assert s.optimizer.decay_steps == 40 - s.optimizer.warmup_steps
  # switching the optimiser without --lr: that optimiser's usual scale, not the recipe's lr
  s = _settings(["--recipe", "official", "--optimizer", "adam", "--layer", "2"], gen)
  assert (s.optimizer.name, s.optimizer.lr) == ("adam", D.OPTIMIZER_LR["adam"])
  s = _settings(["--recipe", "official", "--optimizer", "sgd", "--layer", "2"], gen)
  assert (s.optimizer.name, s.optimizer.lr) == ("sgd", 1.0)
  # the flags that say what is optimised are the model's, with or without a recipe
  s = _settings(["--recipe", "official", "--codes", "3", "--layer", "3"], gen)
  assert (s.codes, s.layer) == (3, 3)


def test_a_recipe_as_data_and_unknown_names():
  d = D.apply_recipe({"codes": 7}, {"name": "mine", "optimizer": "adam", "lr": 0.2,
                                    "family": {"pggan": {"lr": 0.3}}},
                     family="pggan", model=None, tasks=("reconstruct",))
  assert (d["codes"], d["optimizer"], d["lr"], d["recipe"]) == (7, "adam", 0.3, "mine")
  assert d["perceptual_size"] == D.RECIPE_KEYS["perceptual_size"]   # unset: the neutral value
  with pytest.raises(UserError, match="--recipe: unknown recipe 'slow'"):
    D.defaults_for("pggan", None, ("reconstruct",), recipe="slow")
  with pytest.raises(UserError, match="unknown recipe keys lrr"):
    D.apply_recipe({}, {"lrr": 1}, family="pggan", model=None, tasks=())


def test_user_mode_runs_each_recipe(tmp_path, capsys):
  for name in D.RECIPES:
    out = tmp_path / name
    rc = invert_images.main(["--image", str(SAMPLE), "--recipe", name, "--codes", "4",
                             "--iterations", "2", "--chunk", "2", "--quiet", "--out", str(out),
                             "--task", "inpaint", "--mask", str(MASK)])
    assert rc == 0
    m = json.loads((out / SAMPLE.stem / "metrics.json").read_text())
    assert m["recipe"] == name
    rec = D.defaults_for("dcgan", "dcgan-faces64", ("inpaint",), recipe=name)
    assert m["paste_known"] is rec["paste_known"] is (name != "official")
    assert m["settings"]["optimizer"]["name"] == rec["optimizer"]
    assert m["settings"]["optimizer"]["lr"] == rec["lr"]
    assert m["settings"]["iterations"] == 2
    assert m["settings"]["loss"]["perceptual_size"] == rec["perceptual_size"]
  # --help shows the recipe's values
  with pytest.raises(SystemExit):
    invert_images.main(["--recipe", "official", "--task", "inpaint", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "optimisation steps (default 3000)" in text and "(default sgd)" in text
  assert "(official) (default: off for this model)" in text


def test_reproduce_mode_runs_each_recipe(tmp_path):
  from mgan_jax import checkpoint
  import jax
  gen = DCGAN(z_dim=8, channels=(16, 8))     # 16x16
  params = gen.init_params(jax.random.key(0))
  model = tmp_path / "model"
  checkpoint.save_model(model, gen, params)
  target = np.clip(np.asarray(gen.synthesize(params, np.ones((1, 8), np.float32)))[0], -1, 1)
  np.save(tmp_path / "t.npy", target)
  finals = {}
  for name in D.RECIPES:
    out = tmp_path / f"{name}.npz"
    rc = invert_reproduce.main(["--model", str(model), "--target", str(tmp_path / "t.npy"),
                                "--recipe", name, "--codes", "3", "--layer", "1",
                                "--iterations", "3", "--perceptual-weight", "0", "--quiet",
                                "--trace", str(tmp_path / f"{name}_trace.npz"),
                                "--out", str(out)])
    assert rc == 0
    trace = np.load(tmp_path / f"{name}_trace.npz")["loss"]
    assert trace.shape == (3,) and trace[-1] < trace[0]
    finals[name] = float(np.load(out)["final_loss"])
  assert len(set(finals.values())) == len(finals)     # different recipes, different runs
