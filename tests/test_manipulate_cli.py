"""``python -m mgan_jax.manipulate`` end to end: edits of latents files on the fixture models
(outputs against the official edit and SeFa references), batches against single runs,
interpolation and style mixing, the --image path on the default prior, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert.__main__ import main as convert_main
from mgan_jax import imageio, latents_io, manipulate
from edit_helpers import FIXTURES, fixture_model, load_ref, nhwc, render_one

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "dcgan_sample_9001.png"
BOUNDARY = FIXTURES / "boundary_unit.npy"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  """The fixture generators as converted model directories (python -m convert)."""
  out = {}
  for name in ("pggan64", "stylegan2_64"):
    d = tmp_path_factory.mktemp("models") / name
    assert convert_main([str(FIXTURES / f"{name}.pth"), str(d)]) == 0
    out[name] = d
  return out


def _save(path: Path, latents: dict, *, model, method, codes=1, layer=None, family="pggan",
          resolution=64) -> Path:
  path.mkdir(parents=True, exist_ok=True)
  latents_io.save(path / "latents.npz", latents, {
      "method": method, "codes": codes, "layer": layer, "model": str(model), "family": family,
      "resolution": resolution})
  return path / "latents.npz"


def _png(p: Path) -> np.ndarray:
  return np.asarray(Image.open(p))


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def _face(tmp_path, model_dirs, name="face", scale=1.0):
  ref = load_ref("interfacegan_edit_ref.npz")
  return _save(tmp_path / "inv" / name, {"z": ref["z"] * scale, "alpha": ref["alpha"]},
               model=model_dirs["pggan64"], method="multi_z", codes=20, layer=4)


def test_edit_of_a_latents_file_matches_the_official_edit(tmp_path, model_dirs, capsys):
  ref = load_ref("interfacegan_edit_ref.npz")
  f = _face(tmp_path, model_dirs)
  out = tmp_path / "out"
  argv = ["--latents", str(f), "--direction", str(BOUNDARY), "--range", "-3", "3",
          "--steps", "5", "--out", str(out), "--quiet"]
  assert manipulate.main(argv) == 0
  d = out / "face" / "boundary_unit"
  frames = [f"frame_{i:02d}.png" for i in range(5)]
  assert sorted(p.name for p in d.iterdir()) == sorted(
      frames + ["strip.png", "edit.gif", "frames.npz", "settings.json"])
  assert sorted(p.name for p in out.iterdir()) == ["face"]            # no temporaries left
  got = np.stack([_png(d / n) for n in frames]).astype(int)
  want = imageio.to_uint8(nhwc(ref["images"])).astype(int)
  assert np.max(np.abs(got - want)) <= 1                              # images within 1e-4
  with np.load(d / "frames.npz") as z:
    assert np.max(np.abs(z["z"] - ref["wp_list"])) <= 1e-5
    np.testing.assert_array_equal(z["steps"], ref["steps"])
  gen, params = fixture_model("pggan64")
  step0 = render_one(gen, params, {"z": ref["z"], "alpha": ref["alpha"]}, method="multi_z",
                     layer=4)
  np.testing.assert_array_equal(_png(d / "frame_02.png"), imageio.to_uint8(step0))
  assert _png(d / "strip.png").shape == (68, 5 * 64 + 6 * 2, 3)
  with Image.open(d / "edit.gif") as gif:
    assert gif.n_frames == 8 and gif.size == (64, 64)                 # forth and back
  s = json.loads((d / "settings.json").read_text())
  assert s["direction"]["source"] == "boundary" and s["step0_frame"] == 2
  assert s["model"] == str(model_dirs["pggan64"]) and s["method"] == "multi_z"
  assert s["layer"] == 4 and s["steps"] == [-3.0, -1.5, 0.0, 1.5, 3.0]

  before = _png(d / "frame_04.png")
  assert manipulate.main(argv) == 2                                   # never overwrites
  assert "already holds outputs" in _one_error_line(capsys)
  assert manipulate.main([*argv, "--force", "--range", "-1", "1"]) == 0
  assert not np.array_equal(_png(d / "frame_04.png"), before)


def test_a_batch_equals_single_runs(tmp_path, model_dirs):
  a = _face(tmp_path, model_dirs, "a")
  b = _face(tmp_path, model_dirs, "b", scale=0.5)
  common = ["--direction", str(BOUNDARY), "--steps", "5", "--quiet"]
  assert manipulate.main(["--latents", str(tmp_path / "inv"), *common, "--out",
                          str(tmp_path / "both")]) == 0
  for f in (a, b):
    assert manipulate.main(["--latents", str(f), *common, "--out", str(tmp_path / "one")]) == 0
  for name in ("a", "b"):
    for n in [f"frame_{i:02d}.png" for i in range(5)] + ["strip.png"]:
      np.testing.assert_array_equal(_png(tmp_path / "both" / name / "boundary_unit" / n),
                                    _png(tmp_path / "one" / name / "boundary_unit" / n))
  assert not np.array_equal(_png(tmp_path / "both" / "a" / "boundary_unit" / "frame_00.png"),
                            _png(tmp_path / "both" / "b" / "boundary_unit" / "frame_00.png"))


def test_sefa_interpolation_and_mixing_on_stylegan2(tmp_path, model_dirs, monkeypatch):
  monkeypatch.setattr(manipulate, "_sefa_cache", lambda: tmp_path / "cache" / "sefa")
  ref = load_ref("sefa_ref.npz")
  sg = load_ref("stylegan2_64_ref.npz")
  t = "stylegan2_64_L01"
  kw = dict(model=model_dirs["stylegan2_64"], family="stylegan2")
  a = _save(tmp_path / "inv" / "a", {"wp": ref[f"{t}_edit_code0"][None]}, method="wp", **kw)
  b = _save(tmp_path / "inv" / "b", {"z": sg["z"][:1]}, method="z", **kw)
  c = _save(tmp_path / "inv" / "c", {"wp": sg["wp_free"][:1]}, method="wp", **kw)
  out = tmp_path / "out"
  assert manipulate.main(["--latents", str(a), "--direction", "sefa:0-1", "--sefa-layers",
                          "0-1", "--steps", "3", "--out", str(out), "--quiet"]) == 0
  assert (out / "a" / "grid.png").is_file() and (out / "a" / "sefa1" / "strip.png").is_file()
  assert len(list((tmp_path / "cache" / "sefa").glob("stylegan2-*.npz"))) == 1
  order = slice(None) if ref[f"{t}_signs"][0] > 0 else slice(None, None, -1)
  with np.load(out / "a" / "sefa0" / "frames.npz") as z:
    assert np.max(np.abs(z["wp"][order, 0] - ref[f"{t}_edit_codes"])) <= 1e-5
  got = np.stack([_png(out / "a" / "sefa0" / f"frame_{i:02d}.png") for i in range(3)])
  want = imageio.to_uint8(nhwc(ref[f"{t}_edit_images"]))[order]
  assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1
  s = json.loads((out / "a" / "sefa0" / "settings.json").read_text())
  assert s["layers"] == [0, 1] and s["direction"]["sefa_layers"] == [0, 1]
  assert abs(s["direction"]["eigenvalue"] - ref[f"{t}_eigenvalues"][0]) < 1e-4

  assert manipulate.main(["--latents", str(a), "--mix", str(b), "--out", str(out),
                          "--quiet"]) == 0
  mixed = out / "a-mix-b"
  s = json.loads((mixed / "settings.json").read_text())
  assert s["rows"] == {"coarse": [0, 1, 2], "middle": [3, 4, 5, 6], "fine": [7, 8, 9]}
  gen, params = fixture_model("stylegan2_64")
  np.testing.assert_array_equal(_png(mixed / "frame_00.png"), imageio.to_uint8(render_one(
      gen, params, {"wp": ref[f"{t}_edit_code0"][None]}, method="wp")))
  assert np.max(np.abs(_png(mixed / "frame_04.png").astype(int)
                       - imageio.to_uint8(nhwc(sg["images"])[0]).astype(int))) <= 1

  assert manipulate.main(["--interpolate", str(a), str(c), "--steps", "5", "--out", str(out),
                          "--quiet"]) == 0
  with np.load(out / "a-to-c" / "frames.npz") as z:
    np.testing.assert_array_equal(z["wp"][0], ref[f"{t}_edit_code0"][None])
    np.testing.assert_array_equal(z["wp"][-1], sg["wp_free"][:1])


def test_image_is_inverted_then_edited(tmp_path, monkeypatch):
  monkeypatch.setattr(manipulate, "_sefa_cache", lambda: tmp_path / "cache" / "sefa")
  out = tmp_path / "out"
  assert manipulate.main(["--image", str(SAMPLE), "--direction", "sefa:0", "--steps", "3",
                          "--invert-args", "--codes 4 --iterations 1", "--out",
                          str(out), "--quiet"]) == 0
  inv = out / "inversion" / SAMPLE.stem
  assert (inv / "result.png").is_file()
  lat, meta = latents_io.load(inv / "latents.npz")
  assert meta["model"] == "dcgan-faces64" and meta["codes"] == 4 and meta["method"] == "multi_z"
  gen, params, _ = manipulate.load_model(model="dcgan-faces64")
  step0 = render_one(gen, params, lat, method="multi_z", layer=meta["layer"])
  d = out / SAMPLE.stem / "sefa0"
  np.testing.assert_array_equal(_png(d / "frame_01.png"), imageio.to_uint8(step0))
  assert not np.array_equal(_png(d / "frame_00.png"), _png(d / "frame_02.png"))


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, model_dirs, capsys, monkeypatch):
  monkeypatch.setattr(manipulate, "_sefa_cache", lambda: tmp_path / "cache" / "sefa")
  f = _face(tmp_path, model_dirs)
  out = tmp_path / "out"
  dc = _save(tmp_path / "inv2" / "dc", {"z": np.zeros((1, 100), np.float32)},
             model="dcgan-faces64", method="z", family="dcgan")
  sg = _save(tmp_path / "inv3" / "sg", {"z": np.zeros((1, 64), np.float32)},
             model=model_dirs["stylegan2_64"], method="z", family="stylegan2")
  bad100 = tmp_path / "b100.npy"
  np.save(bad100, np.ones((1, 100)))
  cases = [
      (["--latents", str(dc), "--checkpoint", str(model_dirs["pggan64"]), "--direction",
        str(BOUNDARY)], "inverted with 'dcgan-faces64' (dcgan 64x64)"),
      (["--latents", str(f), "--direction", str(bad100)], "100-dimensional"),
      (["--latents", str(f), "--direction", "sefa:999"], "999 is out of range"),
      (["--latents", str(tmp_path / "nope.npz"), "--direction", "sefa:0"], "no such file"),
      (["--latents", str(f), "--direction", "sefa:0", "--mix", str(f)], "cannot be combined"),
      (["--latents", str(f), "--direction", "sefa:0", "--layers", "0-1"], "--layers applies"),
      (["--latents", str(sg), "--direction", "sefa:0"], "move w codes"),
      (["--latents", str(f), str(sg), "--direction", "sefa:0"], "different models"),
      (["--latents", str(f), "--direction", "sefa:0", "--steps", "0"], "--steps must be"),
  ]
  for argv, msg in cases:
    assert manipulate.main([*argv, "--out", str(out), "--quiet"]) == 2, argv
    line = _one_error_line(capsys)
    assert msg in line, (argv, line)
  assert not out.exists()


def test_module_entry_point_reports_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "mgan_jax.manipulate", "--latents",
                      str(tmp_path / "missing.npz"), "--direction", "sefa:0", "--out",
                      str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --latents") and "missing" in lines[0]
  assert not (tmp_path / "o").exists()
  assert "--direction" in manipulate.build_parser().format_help()
