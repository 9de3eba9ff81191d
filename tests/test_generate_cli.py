"""`python -m mgan_jax.generate` on the PGGAN fixture: golden images, files, refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from convert.__main__ import main as convert_main
from mgan_jax.generate import image_grid, main
from mgan_jax.imageio import to_uint8
from parity_helpers import FIXTURES, load_ref


@pytest.fixture(scope="module")
def ref():
  return load_ref("pggan64_ref.npz")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("gen") / "pggan64"
  assert convert_main([str(FIXTURES / "pggan64.pth"), str(d)]) == 0
  return d


@pytest.fixture(scope="module")
def z_file(ref, tmp_path_factory):
  p = tmp_path_factory.mktemp("lat") / "z.npy"
  np.save(p, ref["z"])
  return p


def test_latents_match_official(model_dir, z_file, ref, tmp_path, capsys):
  out, png = tmp_path / "out.npz", tmp_path / "png"
  rc = main(["--checkpoint", str(model_dir), "--latents", str(z_file), "--out", str(out),
             "--png", str(png), "--batch-size", "3"])   # 3 + a padded batch of 1
  assert rc == 0, capsys.readouterr().err
  with np.load(out) as d:
    images, latents = d["images"], d["latents"]
    assert str(d["latent_space"]) == "z"
  assert images.dtype == np.float32 and images.shape == (4, 64, 64, 3)
  np.testing.assert_allclose(images, ref["images"].transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
  assert np.abs(images).max() > 1.5          # raw values stored, not clipped
  np.testing.assert_array_equal(latents, ref["z"])
  names = sorted(os.listdir(png))
  assert names == [f"{i:06d}.png" for i in range(4)] + ["grid.png"]
  first = np.asarray(Image.open(png / "000000.png"))
  np.testing.assert_array_equal(first, to_uint8(images[:1])[0])
  assert np.asarray(Image.open(png / "grid.png")).shape == (128, 128, 3)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_seed_num_and_force(model_dir, tmp_path, capsys):
  out = tmp_path / "s.npz"
  args = ["--checkpoint", str(model_dir), "--seed", "7", "--num", "3", "--out", str(out)]
  assert main(args) == 0
  with np.load(out) as d:
    images, latents = d["images"], d["latents"]
  assert images.shape == (3, 64, 64, 3) and latents.shape == (3, 512)
  np.testing.assert_array_equal(
      latents, np.random.default_rng(7).standard_normal((3, 512), dtype=np.float32))
  # an existing --out is kept without --force, replaced with it
  capsys.readouterr()
  before = out.read_bytes()
  assert main(args[:-3] + ["1", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--out" in err and "--force" in err
  assert out.read_bytes() == before
  assert main(args[:-3] + ["1", "--out", str(out), "--force"]) == 0
  with np.load(out) as d:
    assert d["images"].shape == (1, 64, 64, 3)
    np.testing.assert_allclose(d["images"], images[:1], atol=1e-5, rtol=0)  # same seed


@pytest.mark.parametrize("case, needle", [
    ("wrong_shape", "--latents"),
    ("missing_checkpoint", "--checkpoint"),
    ("not_a_model", "model.json"),
    ("bad_space", "--latent-space"),
    ("truncation", "--truncation"),
    ("both_sources", "--latents"),
    ("no_num", "--num"),
    ("unknown_flag", "--bogus"),
    ("png_clash", "--png"),
])
def test_bad_inputs_exit_2_and_write_nothing(model_dir, z_file, tmp_path, capsys, case, needle):
  out = tmp_path / "out.npz"
  ck = str(model_dir)
  base = ["--out", str(out)]
  if case == "wrong_shape":
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 511), np.float32))
    argv = ["--checkpoint", ck, "--latents", str(bad)] + base
  elif case == "missing_checkpoint":
    argv = ["--checkpoint", str(tmp_path / "nope"), "--seed", "0", "--num", "1"] + base
  elif case == "not_a_model":
    (tmp_path / "empty").mkdir()
    argv = ["--checkpoint", str(tmp_path / "empty"), "--seed", "0", "--num", "1"] + base
  elif case == "bad_space":
    argv = ["--checkpoint", ck, "--latents", str(z_file), "--latent-space", "wp"] + base
  elif case == "truncation":
    argv = ["--checkpoint", ck, "--latents", str(z_file), "--truncation", "0.7"] + base
  elif case == "both_sources":
    argv = ["--checkpoint", ck, "--latents", str(z_file), "--seed", "1"] + base
  elif case == "no_num":
    argv = ["--checkpoint", ck, "--seed", "1"] + base
  elif case == "unknown_flag":
    argv = ["--checkpoint", ck, "--seed", "1", "--num", "1", "--bogus"] + base
  else:
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "grid.png").write_bytes(b"keep")
    argv = ["--checkpoint", ck, "--latents", str(z_file), "--png", str(tmp_path / "png")] + base
  before = sorted(p.name for p in tmp_path.rglob("*"))
  assert main(argv) == 2
  captured = capsys.readouterr()
  assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
  assert needle in captured.err
  assert sorted(p.name for p in tmp_path.rglob("*")) == before    # nothing written
  assert not out.exists()


def test_grid_layout():
  imgs = np.stack([np.full((2, 2, 3), i, np.uint8) for i in range(5)])
  g = image_grid(imgs)
  assert g.shape == (4, 6, 3)                   # 3 columns, 2 rows
  assert g[0, 4, 0] == 2 and g[2, 0, 0] == 3 and g[2, 4, 0] == 0   # black fill
  np.testing.assert_array_equal(to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 2.0])),
                                [0, 0, 128, 255, 255])
