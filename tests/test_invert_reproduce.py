"""The reproducibility mode of ``python -m mgan_jax.invert`` (``--target``): outputs,
determinism, CLI/API agreement, the shared vocabulary and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgan_jax import assets, checkpoint, invert
from mgan_jax import objective as O
from mgan_jax.generators.pggan import PGGAN

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("invert")
  gen = PGGAN(resolution=8, latent_dim=8, channels=(8, 8))
  params = gen.init_params(jax.random.key(0))
  checkpoint.save_model(d / "gen", gen, params)
  target = np.clip(np.asarray(gen.synthesize(params, jax.random.normal(jax.random.key(1),
                                                                        (1, 8)))[0]), -1, 1)
  np.save(d / "target.npy", target.astype(np.float32))
  np.savez(d / "init.npz", z=np.asarray(jax.random.normal(jax.random.key(2), (3, 8))),
           alpha=np.full((3, 8), 1 / 3, np.float32))
  return d, gen, params


def _args(d, out, *extra):
  return ["--checkpoint", str(d / "gen"), "--target", str(d / "target.npy"), "--codes", "3",
          "--layer", "2", "--iterations", "12", "--chunk", "5", "--perceptual-weight", "0",
          "--out", str(out), "--quiet", *extra]


def test_outputs_and_determinism(files, tmp_path):
  d, _, _ = files
  for name in ("a", "b"):
    assert invert.main(_args(d, tmp_path / f"{name}.npz", "--seed", "7",
                             "--trace", str(tmp_path / f"{name}_trace.npz"))) == 0
  res, trace = np.load(tmp_path / "a.npz"), np.load(tmp_path / "a_trace.npz")
  assert sorted(res.files) == ["alpha", "final_loss", "image", "z"]
  assert res["z"].shape == (3, 8) and res["alpha"].shape == (3, 8)
  assert res["image"].shape == (8, 8, 3) and res["image"].dtype == np.float32
  assert trace["loss"].shape == (12,) and trace["loss"][-1] < trace["loss"][0]
  assert np.isfinite(res["final_loss"]) and res["final_loss"] < trace["loss"][0]
  np.testing.assert_array_equal(trace["loss"], np.load(tmp_path / "b_trace.npz")["loss"])
  # missing output directories are created, as in the user mode
  assert invert.main(_args(d, tmp_path / "new" / "r.npz", "--seed", "7",
                           "--trace", str(tmp_path / "new2" / "sub" / "t.npz"))) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "new2" / "sub" / "t.npz")["loss"],
                                trace["loss"])
  # existing outputs are kept unless --force
  assert invert.main(_args(d, tmp_path / "a.npz")) == 2
  assert invert.main(_args(d, tmp_path / "a.npz", "--force")) == 0
  # one vocabulary: --model DIR = --checkpoint DIR; the engine's method names are aliases of
  # the user mode's; the latents.npz a run writes (with its meta) is a valid --init
  args = _args(d, tmp_path / "c.npz", "--seed", "7", "--method", "multi_z")
  args[0] = "--model"
  assert invert.main(args) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["z"], res["z"])
  from mgan_jax import latents_io
  latents_io.save(tmp_path / "run_latents.npz", {"z": res["z"], "alpha": res["alpha"]},
                  {"method": "multi_z", "codes": 3, "layer": 2})
  args = _args(d, tmp_path / "e.npz", "--init", str(tmp_path / "run_latents.npz"),
               "--iterations", "0", "--method", "multi-code")
  assert invert.main(args) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "e.npz")["image"], res["image"])


def test_cli_agrees_with_the_api_including_vgg(files, tmp_path):
  d, gen, params = files
  vgg_path = assets.vgg16_weights_path()
  out, trace = tmp_path / "r.npz", tmp_path / "t.npz"
  assert invert.main(_args(d, out, "--init", str(d / "init.npz"), "--iterations", "3",
                           "--perceptual-weight", "0.01", "--perceptual-layers", "relu1_2",
                           "--perceptual-size", "0", "--perceptual-weights", vgg_path,
                           "--optimizer", "adam", "--lr", "0.05",
                           "--trace", str(trace))) == 0
  cfg = O.LossConfig(perceptual_weight=0.01, perceptual_layers=("relu1_2",),
                     perceptual_size=None)
  vgg = assets.load_vgg(vgg_path)
  target = O.make_target(np.load(d / "target.npy"), vgg, config=cfg)
  init = {k: jnp.asarray(v) for k, v in np.load(d / "init.npz").items()}
  loss0 = O.Objective(gen=gen, method="multi_z", layer=2, config=cfg)(init, target, params, vgg)
  np.testing.assert_allclose(np.load(trace)["loss"][0], loss0, rtol=1e-5)


@pytest.mark.parametrize("case,flag", [
    ("missing_target", "--target"), ("target_channels", "--target"),
    ("target_resolution", "--target"), ("target_range", "--target"),
    ("init_no_alpha", "--init"), ("init_bad_z", "--init"), ("codes_mismatch", "--codes"),
    ("bad_layer", "--layer"), ("missing_checkpoint", "--checkpoint"),
    ("bad_vgg", "--perceptual-weights"), ("negative_iterations", "--iterations"),
    ("unknown_flag", "--bogus"), ("bad_optimizer", "--optimizer"),
    ("trace_under_a_file", "--trace"),
])
def test_bad_input_is_one_error_line_exit_2_nothing_written(files, tmp_path, capsys, case,
                                                            flag):
  d, _, _ = files
  out, trace = tmp_path / "out.npz", tmp_path / "trace.npz"
  args = _args(d, out, "--trace", str(trace))
  t = tmp_path / "t.npy"
  init = tmp_path / "i.npz"

  def replace(name, value):
    args[args.index(name) + 1] = value

  if case == "missing_target":
    replace("--target", str(tmp_path / "nope.npy"))
  elif case == "target_channels":
    np.save(t, np.zeros((8, 8, 4), np.float32))
    replace("--target", str(t))
  elif case == "target_resolution":
    np.save(t, np.zeros((16, 16, 3), np.float32))
    replace("--target", str(t))
  elif case == "target_range":
    np.save(t, np.full((8, 8, 3), 255.0, np.float32))
    replace("--target", str(t))
  elif case == "init_no_alpha":
    np.savez(init, z=np.zeros((3, 8), np.float32))
    args += ["--init", str(init)]
  elif case == "init_bad_z":
    np.savez(init, z=np.zeros((3, 9), np.float32), alpha=np.zeros((3, 8), np.float32))
    args += ["--init", str(init)]
  elif case == "codes_mismatch":
    args += ["--init", str(d / "init.npz")]
    replace("--codes", "4")
  elif case == "bad_layer":
    replace("--layer", "99")
  elif case == "missing_checkpoint":
    replace("--checkpoint", str(tmp_path / "nodir"))
  elif case == "bad_vgg":
    (tmp_path / "vgg.bin").write_bytes(b"not weights")
    replace("--perceptual-weight", "0.001")
    args += ["--perceptual-weights", str(tmp_path / "vgg.bin")]
  elif case == "negative_iterations":
    replace("--iterations", "-1")
  elif case == "unknown_flag":
    args += ["--bogus"]
  elif case == "bad_optimizer":
    args += ["--optimizer", "lbfgs"]
  elif case == "trace_under_a_file":
    (tmp_path / "file").write_text("user data")
    replace("--trace", str(tmp_path / "file" / "sub" / "trace.npz"))
  assert invert.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0], err
  assert not out.exists() and not trace.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_module_entry_point_exit_status(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "mgan_jax.invert", "--checkpoint",
                         str(tmp_path), "--target", str(tmp_path / "x.npy"),
                         "--out", str(tmp_path / "o.npz")],
                        capture_output=True, text=True, env=env, cwd=tmp_path)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--checkpoint" in lines[0] and "model.json" in lines[0]
