"""``python -m mgan_jax.evaluate --quick`` end to end on the default prior: the tables, CSV and
JSON agree with each other, a baseline's number equals recomputing it directly, a rerun reads
every inversion from the run cache, and bad configurations are one error line."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest

from mgan_jax import (assets, baselines, evaluate, evaluation, evaluation_report, imageio,
                      metrics, tasks)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("quick")
  (out / "README.md").write_text(f"# title\n\n{evaluation_report.README_BEGIN}\nold text\n"
                                 f"{evaluation_report.README_END}\n\n## after\n")
  argv = ["--quick", "--out", str(out / "res"), "--cache", str(out / "cache"),
          "--report", str(out / "REPORT.md"), "--readme", str(out / "README.md"), "--quiet"]
  assert evaluate.main(argv) == 0
  return out, argv


def _cache_without_sweep_runs(src, dst):
  """A copy of the quick run cache without its two sweep-only runs (layer 2, codes 2)."""
  dst.mkdir()
  for p in src.iterdir():
    if p.name.startswith("sr4-"):
      with np.load(p) as f:
        settings = json.loads(str(f["meta"]))["payload"]["settings"]
      if settings["layer"] == 2 or settings["codes"] == 2:
        continue
    shutil.copy2(p, dst / p.name)
  return dst


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
  # the report: the exact command at the top, figures linked relative to it, findings and
  # the defaults the numbers support computed from the tables
  report = (out / "REPORT.md").read_text()
  assert data["command"] in report.split("## Findings")[0]
  assert "](res/summary.png)" in report and "Partial results" not in report
  mc = rows[("sr4", "multi-code", "back-project")]
  raw = rows[("sr4", "multi-code", "raw")]
  d = np.mean(mc["per_image"]["psnr"]) - np.mean(raw["per_image"]["psnr"])
  assert f"back-project against the raw output {d:+.2f} dB PSNR" in report
  assert "## Defaults the numbers support" in report
  # the README's generated section: between the markers, the rest of the file kept
  readme = (out / "README.md").read_text()
  assert readme.startswith("# title\n") and readme.endswith("\n## after\n")
  assert "old text" not in readme and "(res/summary.png)" in readme
  assert "**Where the default prior beats the classical baselines** (PSNR)" in readme
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
  assert [n for n, _ in before if n.startswith("samples-")] == [
      "samples-dcgan-faces64-100000-2.npz"]
  assert len(before) == 7          # the image set + 2 cases x 2 methods + layer 2 + codes 2
  assert evaluate.main([a for a in argv if a != "--quiet"]) == 0
  err = capsys.readouterr().err
  assert err.count(": cached") == 8 and "s/image)" not in err
  after = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "cache").iterdir())
  assert after == before


def test_time_budget_skips_the_sweeps_and_says_so(quick, tmp_path):
  out, argv = quick
  res = tmp_path / "budget"
  cache = _cache_without_sweep_runs(out / "cache", tmp_path / "cache")
  assert evaluate.main(["--quick", "--out", str(res), "--cache", str(cache),
                        "--time-budget", "0.001", "--compile-workers", "0",
                        "--no-compile-cache", "--no-plots", "--quiet"]) == 0
  data = json.loads((res / "results.json").read_text())
  assert {k: [r["value"] for r in v["sr4"]] for k, v in data["sweeps"].items()} == {
      "layer": [1]} and data["rows"] and not data["partial"]
  # the sweeps' first values are the table's runs (cached), the rest are skipped
  assert [s.split(":")[0] for s in data["skipped"][-2:]] == ["sweep layer on sr4",
                                                             "sweep codes on sr4"]
  assert "- skipped: sweep layer on sr4: 2 not run, the time budget" in (
      res / "results.md").read_text()
  assert data["environment"]["compile_workers"] == 0


@pytest.mark.parametrize("argv, expected", [
    (["--cases", "deblur"], "cases: unknown case 'deblur'"),
    (["--sweep", "depth=1,2"], "sweeps: unknown key 'depth'"),
    (["--set", "codes=many"], "overrides: codes = 'many' is not a valid value"),
    (["--sample-seed", "9000", "--samples", "3"], "include 9001, a seed of the samples"),
    (["--config", "{bad}"], "unknown key 'sampels'"),
    (["--sweep", "layer"], "--sweep: expected KEY=VALUE"),
    (["--readme", "{bad}"], "bad.json: expected one '<!-- evaluate:results:begin"),
    (["--compile-workers", "-1"], "--compile-workers: must be >= 0"),
    (["--time-budget", "soon"], "--time-budget: expected a number"),
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


def _synthetic_report() -> evaluation.Report:
  R = evaluation.Row
  rows = [
      R("sr4", "multi-code", "raw", "gan", {"psnr": [29, 30], "lpips_alex": [0.2, 0.2]}, 1.0,
        default=False),
      R("sr4", "multi-code", "back-project", "gan", {"psnr": [30, 32], "lpips_alex": [0.1, 0.1]},
        1.0),
      R("sr4", "z", "back-project", "gan", {"psnr": [25, 26], "lpips_alex": [0.3, 0.3]}, 1.0),
      R("sr4", "bicubic", "raw", "baseline", {"psnr": [28, 29], "lpips_alex": [0.2, 0.2]}, 0.0),
      R("inpaint-centre", "multi-code", "raw", "gan", {"psnr": [20, 21],
                                                       "lpips_alex": [0.3, 0.3]}, 1.0),
      R("inpaint-centre", "z", "raw", "gan", {"psnr": [18, 18], "lpips_alex": [0.4, 0.4]}, 1.0),
      R("inpaint-centre", "harmonic", "raw", "baseline", {"psnr": [24, 25],
                                                          "lpips_alex": [0.25, 0.2]}, 0.0),
  ]
  point = lambda v, p: {"value": v, "summary": {"psnr": {"mean": p}, "lpips_alex": {"mean": 0.1}},
                        "seconds_per_image": 1.0}
  return evaluation.Report(
      config={"cases": ["sr4", "inpaint-centre"], "lpips": ["alex"], "sweep_samples": 8},
      model={"label": "m", "family": "dcgan", "resolution": 64, "name": "m"},
      images={"n": 2, "names": ["a", "b"], "sources": [{"kind": "prior sample", "seed": 1},
                                                       {"kind": "prior sample", "seed": 2}]},
      sweep_images=None, rows=rows,
      sweeps={"codes": {"sr4": [point(1, 25.0), point(5, 27.9), point(20, 28.0)]}},
      curves={}, examples={}, environment={"device": "cpu (cpu)"}, skipped=[], seconds=1.0,
      command="python -m mgan_jax.evaluate", sweep_starts={"codes": {"sr4": 20}})


def test_findings_and_readme_section_follow_the_numbers():
  """Wins and losses against the baselines and single codes, the output options and the sweep
  choices are computed from the rows (no GAN-favouring wording)."""
  rep = _synthetic_report()
  c = evaluation_report.comparisons(rep)
  assert c["psnr_better"] == ["super-resolution x4 (+2.50 dB vs bicubic, better on 2/2 images)"]
  assert c["psnr_worse"] == ["inpainting, centre box (25 %) (-4.00 dB vs harmonic, better on 0/2 "
                             "images)"]
  assert c["lpips_better"][0].startswith("super-resolution x4 (-0.100 vs bicubic")
  assert c["lpips_worse"][0].startswith("inpainting, centre box (25 %) (+0.075 vs harmonic")
  assert c["single_better"] == ["super-resolution x4 (+5.50 dB vs z)",
                                "inpainting, centre box (25 %) (+2.50 dB vs z)"]
  (opt,) = evaluation_report.output_options(rep)
  assert (opt["option"], opt["support"], opt["default"]) == ("back-project", "on", True)
  assert opt["d_psnr"] == pytest.approx(1.5) and opt["d_lpips"] == pytest.approx(-0.1)
  (choice,) = evaluation_report.sweep_choices(rep)
  assert (choice["best_psnr"], choice["start"], choice["enough"]) == (20, 20, 5)
  text = "\n".join(evaluation_report.findings(rep))
  assert ("Sweep codes, super-resolution x4: best PSNR at codes = 20 (where the sweep started)"
          in text)
  assert "from 5 on within 0.2 dB of the best" in text
  section = evaluation_report.readme_section(rep, figure="docs/s.png", report_link="R.md")
  beats, does_not = [ln for ln in section.splitlines() if ln.startswith("* **Where")]
  assert "super-resolution x4 (+2.50 dB" in beats and "inpainting" not in beats
  assert "inpainting, centre box (25 %) (-4.00 dB vs harmonic" in does_not
  assert "per task](docs/s.png)" in section
  md = evaluation_report.markdown(dataclasses.replace(rep, partial=True,
                                                      timing={"table": 3.0}))
  assert "**Partial results**" in md and "(after table)" in md


def test_sweep_table_aligns_values_when_a_case_was_cut_short():
  point = lambda v, p: {"value": v, "summary": {"psnr": {"mean": p}}, "seconds_per_image": 0.5}
  table = evaluation_report.sweep_table(
      "layer", {"sr4": [point(1, 20.0), point(2, 21.0), point(3, 22.0)],
                "colorize": [point(1, 25.0)]}, lpips=None)
  head, _, sr4, colorize = table.splitlines()
  assert head == "| case | layer = 1 | layer = 2 | layer = 3 |"
  assert sr4.endswith("| 22.00 dB / 0.50 s |")
  assert colorize == "| colorization | 25.00 dB / 0.50 s | – | – |"


def test_a_sweep_stops_between_runs_when_told(quick, tmp_path):
  out, argv = quick
  args = evaluate.build_parser().parse_args(argv)
  first = evaluation.Evaluator(evaluate.resolve_config(args))
  images = evaluation.prior_samples(first.gen, first.params, 2, seed=100000)
  cache = _cache_without_sweep_runs(out / "cache", tmp_path / "cache")
  cfg = dataclasses.replace(evaluate.resolve_config(args), cache=str(cache))
  ev = evaluation.Evaluator(cfg)
  rows, left = ev.sweep_case("layer", [1, 2], images, "sr4", stop=lambda: True)
  assert [r["value"] for r in rows] == [1] and left == [2]      # layer 1 read from the cache
  full = evaluation.Evaluator(evaluate.resolve_config(args))     # cached runs are always read
  rows, left = full.sweep_case("layer", [1, 2], images, "sr4", stop=lambda: True)
  assert [r["value"] for r in rows] == [1, 2] and left == []
  assert ev.sweep_start("layer", "sr4") == 1 and ev.sweep_start("codes", "sr4") == 4


def test_the_report_says_where_cached_inversions_ran():
  env = {"device": "cpu (cpu)", "run_devices": {"gpu (NVIDIA H200)": 5, "cpu (cpu)": 1}}
  line, = evaluation_report._run_devices(env)
  assert line.startswith("- inversions read from the run cache were run on gpu (NVIDIA H200) "
                         "(5 runs) (1 runs on this machine)")
  assert evaluation_report._run_devices({"device": "cpu (cpu)",
                                         "run_devices": {"cpu (cpu)": 3}}) == []
