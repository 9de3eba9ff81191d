"""End to end: ``mgan_jax.invert_images.main`` (the user mode of ``python -m mgan_jax.invert``)
on the real default prior ``dcgan-faces64`` (fetched into the asset cache on first use), with
few iterations and few codes. Runs share compiled programs (the engine's cache) where the
settings agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgan_jax import assets, invert_images, latents_io, metrics, outputs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "dcgan_sample_9001.png"
SAMPLE2 = EXAMPLES / "dcgan_sample_9002.png"
MASK = EXAMPLES / "mask_center.png"
# Small settings shared by the tests so that they reuse one compiled program per task.
TINY = ["--codes", "4", "--iterations", "8", "--chunk", "4", "--quiet"]


def _png(path: Path) -> np.ndarray:
  return np.asarray(Image.open(path))


def _metrics(d: Path) -> dict:
  return json.loads((d / "metrics.json").read_text())


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("error: "), err
  return err[0]


def test_inpaint_outputs_reload_and_init_reproduces(tmp_path):
  out = tmp_path / "out"
  rc = invert_images.main(["--image", str(SAMPLE), "--task", "inpaint", "--mask", str(MASK),
                 "--out", str(out), *TINY])
  assert rc == 0
  d = out / SAMPLE.stem
  names = {p.name for p in d.iterdir()}
  assert set(outputs.FILES) <= names <= set(outputs.FILES) | set(outputs.OPTIONAL_FILES)
  assert not [p for p in out.iterdir()          # no temporaries left (the resume state stays)
              if p.name.startswith(".") and p.name != ".mgan_jax_run"]
  result, degraded, grid = _png(d / "result.png"), _png(d / "degraded.png"), _png(d / "grid.png")
  assert result.shape == (64, 64, 3) and degraded.shape == (64, 64, 3)
  # input | degraded | result, each 2x upscaled, labelled: column names above, PSNR/SSIM below
  assert grid.shape[1] == 4 + 3 * (128 + 4) and grid.shape[0] > 128 + 20
  assert (grid[:14] < 128).any() and (grid[-17:-4] < 128).any()        # text above and below
  hole = _png(MASK) > 127
  assert np.all(np.abs(degraded[hole].astype(int) - 128) <= 1)        # holes are mid-gray
  m = _metrics(d)
  assert m["task"] == "inpaint" and m["settings"]["codes"] == 4
  assert m["settings"]["method"] == "multi_z" and m["settings"]["layer"] == 1
  assert np.isfinite(m["metrics"]["psnr"]) and 0 < m["metrics"]["ssim"] <= 1
  # LPIPS (AlexNet) of the written result.png against the clean input, recomputed here.
  assert m["metrics"]["lpips_net"].startswith("alex")
  want = metrics.lpips(result, _png(SAMPLE), params=assets.lpips_params("alex"), net="alex")
  assert m["metrics"]["lpips"] == pytest.approx(want, abs=1e-5)
  assert 0 < m["metrics"]["lpips"] < m["metrics"]["degraded_lpips"]
  assert (d / "curves.png").is_file()          # matplotlib is in the test extra
  assert len(m["trace"]) == 2 and m["trace"][-1]["iteration"] == 8
  lat, meta = latents_io.load(d / "latents.npz")
  assert lat["z"].shape == (4, 100) and lat["alpha"].shape == (4, 512)
  assert meta["method"] == "multi_z" and meta["layer"] == 1

  # --init with 0 iterations re-renders the saved latents: the same result.png, bit for bit.
  out2 = tmp_path / "again"
  rc = invert_images.main(["--image", str(SAMPLE), "--task", "inpaint", "--mask", str(MASK),
                 "--init", str(d / "latents.npz"), "--iterations", "0", "--out", str(out2),
                 "--quiet"])
  assert rc == 0
  np.testing.assert_array_equal(_png(out2 / SAMPLE.stem / "result.png"), result)
  assert _metrics(out2 / SAMPLE.stem)["settings"]["codes"] == 4       # taken from the file


def test_psnr_rises_and_multi_code_beats_single_z(tmp_path):
  common = ["--image", str(SAMPLE2), "--iterations", "24", "--chunk", "8", "--quiet",
            "--lr", "0.1"]
  assert invert_images.main([*common, "--codes", "8", "--out", str(tmp_path / "multi")]) == 0
  assert invert_images.main([*common, "--method", "z", "--out", str(tmp_path / "z")]) == 0
  multi = _metrics(tmp_path / "multi" / SAMPLE2.stem)
  single = _metrics(tmp_path / "z" / SAMPLE2.stem)
  trace = [r["psnr"] for r in multi["trace"]]
  assert trace[-1] > trace[0] + 1.0, trace
  losses = [r["loss"] for r in multi["trace"]]
  assert losses[-1] < losses[0]
  assert single["settings"]["method"] == "z" and single["settings"]["layer"] is None
  assert multi["metrics"]["psnr"] > single["metrics"]["psnr"] + 2.0, (
      multi["metrics"]["psnr"], single["metrics"]["psnr"])


def test_super_resolve_colorize_observed_and_denoise(tmp_path):
  # Synthesised x4 low-res gray observation: degraded.png is 16x16 and gray, result 64x64.
  out = tmp_path / "srcolor"
  assert invert_images.main(["--image", str(SAMPLE), "--task", "colorize,super-resolve", "--out", str(out),
                   *TINY]) == 0
  d = out / SAMPLE.stem
  deg = _png(d / "degraded.png").astype(int)
  assert deg.shape == (16, 16, 3) and np.abs(deg[..., 0] - deg[..., 2]).max() <= 1
  assert _png(d / "result.png").shape == (64, 64, 3)
  m = _metrics(d)
  assert m["task"] == "colorize+super-resolve" and m["factor"] == 4
  assert "back-project" in m["postprocess"]     # the default prior's super-resolution default

  # --observed: the low-res gray input is the observation itself; no clean metrics.
  lowres = tmp_path / "lowres.png"
  Image.fromarray(_png(d / "degraded.png")).save(lowres)
  out_obs = tmp_path / "observed"
  assert invert_images.main(["--image", str(lowres), "--task", "super-resolve,colorize", "--observed",
                   "--out", str(out_obs), *TINY]) == 0
  mo = _metrics(out_obs / "lowres")
  assert mo["mode"] == "observed" and "psnr" not in mo["metrics"]
  assert mo["metrics"]["psnr_observed"] is not None

  # Denoise with known noise positions: noisy pixels are masked out of the loss.
  out_dn = tmp_path / "denoise"
  assert invert_images.main(["--image", str(SAMPLE), "--task", "denoise", "--noise", "0.2",
                   "--noise-fraction", "0.3", "--out", str(out_dn), *TINY]) == 0
  md = _metrics(out_dn / SAMPLE.stem)
  assert md["noise_sigma"] == 0.2 and md["metrics"]["degraded_psnr"] < 30


@pytest.mark.parametrize("argv, expected", [
    (["--image", "README_NOT_THERE.png"], "no such file"),
    (["--image", str(EXAMPLES / "README.md")], "cannot read as an image"),
    (["--image", str(SAMPLE), "--task", "inpaint", "--mask", "{small_mask}"],
     "mask is 32x32 but 64x64 is needed"),
    (["--image", str(SAMPLE), "--task", "deblur"], "unknown task 'deblur'"),
    (["--image", str(SAMPLE), "--layer", "9"], "--layer 9 is not a composition layer"),
    (["--image", str(SAMPLE), "--codes", "0"], "--codes: must be >= 1"),
    (["--image", str(SAMPLE), "--task", "super-resolve", "--factor", "0"], "--factor: must be >= 2"),
    (["--image", str(SAMPLE), "--lr", "0"], "--lr: must be > 0"),
    (["--image", str(SAMPLE), "--iterations", "-1"], "--iterations: must be >= 0"),
    (["--image", str(SAMPLE), "--method", "q"], "--method: unknown method 'q'"),
    (["--image", str(SAMPLE), "--task", "colorize", "--paste-known"],
     "--paste-known applies to --task inpaint alone"),
    (["--image", str(SAMPLE), "--factor", "2"],
     "--factor is not used by --task reconstruct (it applies to super-resolve)"),
    (["--image", str(SAMPLE), "--task", "inpaint", "--mask", str(MASK), "--noise", "0.2"],
     "--noise is not used by --task inpaint (it applies to denoise)"),
    (["--image", str(SAMPLE), "--task", "inpaint", "--mask", "{white_mask}"],
     "marks every pixel missing"),
    (["--image", str(SAMPLE), "--method", "z", "--codes", "3"], "--codes applies to multi-code"),
    (["--image", "{big_image}"], "pass --fit resize or --fit center-crop"),
    (["--image", str(SAMPLE), "--task", "inpaint"], "needs --mask"),
])
def test_bad_input_one_line_nothing_written(tmp_path, capsys, argv, expected):
  small = tmp_path / "small_mask.png"
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(small)
  white = tmp_path / "white_mask.png"
  Image.fromarray(np.full((64, 64), 255, np.uint8)).save(white)
  big = tmp_path / "big.png"
  Image.fromarray(np.zeros((80, 96, 3), np.uint8)).save(big)
  argv = [a.format(small_mask=small, big_image=big, white_mask=white) for a in argv]
  out = tmp_path / "out"
  rc = invert_images.main([*argv, "--out", str(out), "--quiet"])
  assert rc != 0
  line = _one_error_line(capsys)
  assert expected in line, line
  assert not out.exists()


def test_existing_output_is_refused_without_force(tmp_path, capsys):
  out = tmp_path / "out"
  (out / SAMPLE.stem).mkdir(parents=True)
  (out / SAMPLE.stem / "result.png").write_bytes(b"user data")
  rc = invert_images.main(["--image", str(SAMPLE), "--out", str(out), *TINY])
  assert rc != 0
  assert "already holds outputs; pass --force" in _one_error_line(capsys)
  assert (out / SAMPLE.stem / "result.png").read_bytes() == b"user data"
  assert sorted(p.name for p in out.iterdir()) == [SAMPLE.stem]


def test_paste_known_single_and_batch(tmp_path):
  """--paste-known: result.png holds the observation's known pixels and the result in the
  holes, for a single image and for a batch; raw.png keeps the generator output."""
  out = tmp_path / "paste"
  rc = invert_images.main(["--image", str(SAMPLE), str(SAMPLE2), "--batch-size", "2", "--task",
                           "inpaint", "--mask", str(MASK), "--paste-known", "--out", str(out),
                           *TINY])
  assert rc == 0
  known = _png(MASK) < 128
  for f in (SAMPLE, SAMPLE2):
    d = out / f.stem
    result, raw = _png(d / "result.png").astype(int), _png(d / "raw.png").astype(int)
    np.testing.assert_array_equal(result[known], _png(d / "degraded.png").astype(int)[known])
    np.testing.assert_array_equal(result[~known], raw[~known])
    assert "known pixels" in _metrics(d)["postprocess"]
  single = tmp_path / "single"
  assert invert_images.main(["--image", str(SAMPLE2), "--task", "inpaint", "--mask", str(MASK),
                             "--paste-known", "--out", str(single), *TINY]) == 0
  a = _png(single / SAMPLE2.stem / "result.png").astype(int)
  b = _png(out / SAMPLE2.stem / "result.png").astype(int)
  assert np.abs(a - b).max() <= 1


def test_help_shows_the_defaults_of_the_model_and_task(capsys):
  for argv, iterations in ((["--help"], 400), (["--task", "inpaint", "--help"], 300)):
    with pytest.raises(SystemExit) as e:
      invert_images.main(argv)
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"optimisation steps (default {iterations})" in text
    assert "(default adam)" in text and "(default 0.1)" in text and "(default 20)" in text
    assert "(default own)" in text          # the default prior's perceptual size


def test_rerun_recomputes_changed_inputs_and_force_recomputes(tmp_path, capsys):
  import shutil
  face = tmp_path / "in" / "face.png"
  face.parent.mkdir()
  shutil.copy(SAMPLE, face)
  out = tmp_path / "out"
  argv = ["--image", str(face), "--out", str(out), "--codes", "4", "--iterations", "8",
          "--chunk", "4"]
  metrics_json = out / "face" / "metrics.json"
  assert invert_images.main(argv) == 0
  first = _metrics(out / "face")
  stamp = metrics_json.stat().st_mtime_ns
  capsys.readouterr()
  assert invert_images.main(argv) == 0                       # same input: kept as it is
  assert "1 of 1 image(s) already finished" in capsys.readouterr().err
  assert metrics_json.stat().st_mtime_ns == stamp
  shutil.copy(SAMPLE2, face)                                 # the user replaced the picture
  assert invert_images.main(argv) == 0
  assert "input changed since its result was written, recomputing: face" in \
      capsys.readouterr().err
  second = _metrics(out / "face")
  assert second["inputs_sha256"] != first["inputs_sha256"]
  assert second["metrics"]["psnr"] != first["metrics"]["psnr"]
  stamp = metrics_json.stat().st_mtime_ns
  assert invert_images.main([*argv, "--force"]) == 0         # --force always recomputes
  assert metrics_json.stat().st_mtime_ns != stamp
  assert _metrics(out / "face")["inputs_sha256"] == second["inputs_sha256"]
