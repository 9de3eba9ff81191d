"""``python -m mgan_jax.evaluate --quick`` end to end on the default prior: the tables, CSV and
JSON agree with each other, a baseline's number equals recomputing it directly, a rerun reads
every inversion from the run cache, and bad configurations are one error line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mgan_jax import assets, baselines, evaluate, evaluation, imageio, metrics, tasks


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("quick")
  argv = ["--quick", "--out", str(out / "res"), "--cache", str(out / "cache"),
          "--report", str(out / "REPORT.md"), "--quiet"]
  assert evaluate.main(argv) == 0
  return out, argv


def test_quick_tables_csv_json_agree(quick):
  out, _ = quick
  res = out / "res"
  for name in ("results.md", "results.csv", "results.json", "sweeps.csv", "summary.png",
               "examples.png", "curves.png", "sweep_layer.png", "sweep_codes.png"):
    assert (res / name).is_file(), name
  data = json.loads((res / "results.json").read_text())
  assert data["command"].startswith("python -m mgan_jax.evaluate --quick")
  assert data["images"]["n"] == 2 and data["config"]["overrides"] == {"iterations": 4,
                                                                      "codes": 4}
  rows = {(r["case"], r["method"], r["post"]): r for r in data["rows"]}
  # every case has multi-code, z and its baselines; the outputs each task can write
  assert {("sr4", "multi-code", "back-project"), ("sr4", "bicubic", "raw"),
          ("sr4", "bicubic", "back-project"), ("inpaint-centre", "multi-code", "paste"),
          ("inpaint-centre", "harmonic", "raw"), ("sr4", "z", "raw")} <= set(rows)
  with open(res / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(rows)
  md = (res / "results.md").read_text()
  for line in table:
    r = rows[(line["case"], line["method"], line["post"])]
    per = r["per_image"]
    assert len(per["psnr"]) == int(line["n"]) == 2
    for m in ("psnr", "ssim", "lpips_alex"):
      assert float(line[f"{m}_mean"]) == pytest.approx(np.mean(per[m]), rel=1e-5)
      assert r["summary"][m]["mean"] == pytest.approx(np.mean(per[m]), rel=1e-9)
    assert f"{np.mean(per['psnr']):.2f} ± {np.std(per['psnr']):.2f}" in md
  # the report: the exact command at the top, figures linked relative to it
  report = (out / "REPORT.md").read_text()
  assert data["command"] in report.split("## Findings")[0]
  assert "](res/summary.png)" in report
  # the sweeps: one row per value and case
  sw = data["sweeps"]
  assert [r["value"] for r in sw["layer"]["sr4"]] == [1, 2]
  assert [r["value"] for r in sw["codes"]["sr4"]] == [2, 4]
  # the codes = 4 sweep point is the table's default output (same settings, same images)
  default = next(r for r in data["rows"] if r["case"] == "sr4" and r["method"] == "multi-code"
                 and r["default_output"])
  assert sw["codes"]["sr4"][1]["summary"]["psnr"]["mean"] == pytest.approx(
      np.mean(default["per_image"]["psnr"]), abs=1e-9)


def test_quick_baseline_numbers_recomputed_directly(quick):
  out, _ = quick
  data = json.loads((out / "res" / "results.json").read_text())
  rows = {(r["case"], r["method"], r["post"]): r for r in data["rows"]}
  gen, params, _, _ = assets.load_generator()
  images = evaluation.prior_samples(gen, params, 2, seed=100000)
  assert images.names == data["images"]["names"]
  # super-resolution x4: PIL bicubic on the synthesised 16x16 observation
  task = tasks.parse_task("super-resolve", factor=4)
  lp = assets.lpips_params("alex")
  for i, clean in enumerate(images.clean):
    obs = tasks.degrade(task, clean)
    up = baselines.apply("super-resolve", "bicubic", obs.image, factor=4)
    r = rows[("sr4", "bicubic", "raw")]["per_image"]
    up8, clean8 = imageio.to_uint8(up), imageio.to_uint8(clean)    # measured on 8-bit images
    assert r["psnr"][i] == pytest.approx(metrics.psnr(up8, clean8), abs=1e-4)
    assert r["lpips_alex"][i] == pytest.approx(metrics.lpips(up8, clean8, params=lp, net="alex"),
                                               abs=1e-5)
    # inpainting: the harmonic fill of the centre box
    mask = evaluation.make_mask("centre", 64)
    t2 = tasks.parse_task("inpaint")
    o2 = tasks.degrade(t2, clean, mask=mask)
    fill = baselines.apply("inpaint", "harmonic", o2.image, mask=mask)
    r2 = rows[("inpaint-centre", "harmonic", "raw")]["per_image"]
    assert r2["psnr"][i] == pytest.approx(
        metrics.psnr(imageio.to_uint8(fill), imageio.to_uint8(clean)), abs=1e-4)


def test_quick_rerun_reads_the_cache(quick, capsys):
  out, argv = quick
  before = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "cache").iterdir())
  assert len(before) == 6          # 2 cases x 2 methods + layer 2 + codes 2
  assert evaluate.main([a for a in argv if a != "--quiet"]) == 0
  err = capsys.readouterr().err
  assert err.count(": cached") == 8 and "s/image)" not in err
  after = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "cache").iterdir())
  assert after == before


@pytest.mark.parametrize("argv, expected", [
    (["--cases", "deblur"], "cases: unknown case 'deblur'"),
    (["--sweep", "depth=1,2"], "sweeps: unknown key 'depth'"),
    (["--set", "codes=many"], "overrides: codes = 'many' is not a valid value"),
    (["--sample-seed", "9000", "--samples", "3"], "include 9001, a seed of the samples"),
    (["--config", "{bad}"], "unknown key 'sampels'"),
    (["--sweep", "layer"], "--sweep: expected KEY=VALUE"),
])
def test_bad_configuration_is_one_error_line(tmp_path, capsys, argv, expected):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"sampels": 3}))
  argv = [a.format(bad=bad) for a in argv]
  assert evaluate.main([*argv, "--out", str(tmp_path / "o"), "--no-plots", "--quiet"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
  assert not (tmp_path / "o").exists()


def test_sweep_samples_take_the_first_sweep_images():
  cfg = evaluation.Config(sweeps={"layer": {"values": [1, 2], "samples": 3},
                                  "codes": [2, 4]}).check()
  assert cfg.sweeps["layer"] == {"values": [1, 2], "cases": cfg.sweep_cases, "samples": 3}
  assert cfg.sweeps["codes"]["samples"] is None
  with pytest.raises(evaluation.UserError, match=r"sweeps.layer.samples: expected an integer"):
    evaluation.Config(sweeps={"layer": {"values": [1], "samples": 0}}).check()
