"""The files of ``python -m mgan_jax.evaluate``: tables (markdown, CSV, JSON), figures and the
markdown report, from an ``evaluation.Report``.

``write_outputs(report, out=..., report_path=..., plots=True)`` writes into ``out``:

* ``results.md`` -- the summary table (the default multi-code output against single codes and
  the best classical baseline of each case, with per-image wins), one table per case (every
  method and output: mean and standard deviation over the images), the sweeps;
* ``results.csv`` -- one line per (case, method, output): means, standard deviations, n,
  seconds per image; ``sweeps.csv`` -- one line per (sweep, case, value);
* ``results.json`` -- everything: configuration, command, machine, per-image values;
* figures (with ``plots``; matplotlib, the ``plots`` extra): ``summary.png`` (PSNR and LPIPS per
  case and method), ``examples.png`` (one image per case: clean, observation, outputs),
  ``curves.png`` (mean PSNR and loss against the iteration, per case), ``sweep_<key>.png``
  (quality and time against each swept value, per case).

``report_path`` (e.g. docs/RESULTS.md) also gets the markdown report: the exact command and
configuration at the top, findings computed from the numbers, the tables, the figures (linked
relative to the report).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax import fileio, imageio
from mgan_jax.errors import UserError
from mgan_jax.evaluation import Report, Row
from mgan_jax.evaluation_cases import CASES
from mgan_jax.evaluation_runs import summarize

#: metric -> (column title, higher is better, format)
METRICS: dict[str, tuple[str, bool, str]] = {
    "psnr": ("PSNR (dB)", True, "{:.2f}"),
    "ssim": ("SSIM", True, "{:.3f}"),
    "lpips_alex": ("LPIPS alex", False, "{:.3f}"),
    "lpips_vgg": ("LPIPS vgg", False, "{:.3f}"),
    "auc": ("AuC", True, "{:.3f}"),
}


def require_matplotlib():
  """matplotlib.pyplot with the Agg backend, or one UserError line naming the extra."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise UserError("the figures need matplotlib, which is not installed: pip install "
                    "'mgan_jax[plots]' (or pass --no-plots)") from None
  return plt


# ----------------------------------------------------------------------------------------------
# Tables.
# ----------------------------------------------------------------------------------------------
def _rows(report: Report) -> list[Row]:
  return [r if isinstance(r, Row) else Row(**r) for r in report.rows]


def _fmt(metric: str, values: Sequence[float] | None, *, std: bool = True) -> str:
  if not values:
    return ""
  s = summarize(values)
  f = METRICS[metric][2]
  return f.format(s["mean"]) + (" ± " + f.format(s["std"]) if std and s["n"] > 1 else "")


def _metrics_present(rows: Sequence[Row]) -> list[str]:
  return [m for m in METRICS if any(r.per_image.get(m) for r in rows)]


def _seconds(s: float | None) -> str:
  if s is None:
    return ""
  return f"{s:.3f}" if s < 0.1 else f"{s:.2f}"


def case_table(rows: Sequence[Row]) -> str:
  """Markdown table of one case: every method and output, mean ± std, seconds per image."""
  ms = _metrics_present(rows)
  head = ["method", "output", *(METRICS[m][0] + (" ↑" if METRICS[m][1] else " ↓") for m in ms),
          "s / image"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    out = r.post + (" (default)" if r.kind == "gan" and r.default else "")
    cells = [r.method, out, *(_fmt(m, r.per_image.get(m)) for m in ms),
             _seconds(r.seconds_per_image) if r.kind != "observation" else ""]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def best_baseline(rows: Sequence[Row], metric: str = "psnr") -> Row | None:
  """The baseline of a case with the best mean ``metric`` (raw outputs and variants)."""
  cands = [r for r in rows if r.kind == "baseline" and r.per_image.get(metric)]
  if not cands:
    return None
  better = max if METRICS[metric][1] else min
  return better(cands, key=lambda r: r.mean(metric))


def default_gan(rows: Sequence[Row], method: str) -> Row | None:
  return next((r for r in rows if r.kind == "gan" and r.method == method and r.default), None)


def summary_rows(report: Report) -> list[dict]:
  """Per case: the default multi-code output, the best single code, the best baseline by PSNR
  and by LPIPS (first net), differences and per-image wins."""
  rows = _rows(report)
  lp = next((f"lpips_{n}" for n in report.config.get("lpips", []) if n), None)
  out = []
  for case in report.config["cases"]:
    cr = [r for r in rows if r.case == case]
    mc = default_gan(cr, "multi-code")
    singles = [r for r in cr if r.kind == "gan" and r.method != "multi-code" and r.default]
    single = max(singles, key=lambda r: r.mean("psnr")) if singles else None
    bb = best_baseline(cr, "psnr")
    bl = best_baseline(cr, lp) if lp else None
    d: dict[str, Any] = {"case": case, "title": CASES[case].title, "multi": mc,
                         "single": single, "baseline": bb, "baseline_lpips": bl, "lpips": lp}
    if mc is not None and bb is not None:
      a, b = np.asarray(mc.per_image["psnr"]), np.asarray(bb.per_image["psnr"])
      d["d_psnr"] = float(np.mean(np.minimum(a, 100) - np.minimum(b, 100)))
      d["wins_psnr"] = int(np.sum(a > b))
    if mc is not None and bl is not None and lp:
      a, b = np.asarray(mc.per_image[lp]), np.asarray(bl.per_image[lp])
      d["d_lpips"] = float(np.mean(a - b))
      d["wins_lpips"] = int(np.sum(a < b))
    if mc is not None and single is not None:
      d["d_psnr_single"] = float(np.mean(np.minimum(mc.per_image["psnr"], 100)
                                         - np.minimum(single.per_image["psnr"], 100)))
    d["n"] = len(mc.per_image["psnr"]) if mc is not None else 0
    out.append(d)
  return out


def summary_table(report: Report) -> str:
  srows = summary_rows(report)
  lp = srows[0]["lpips"] if srows else None
  lpt = METRICS[lp][0] if lp else "LPIPS"
  head = ["case", "multi-code (default output)", "best single code", "best baseline (PSNR)",
          "Δ PSNR vs baseline (wins)", f"best baseline ({lpt})",
          f"Δ {lpt} vs baseline (wins)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def cell(r: Row | None, *, name: bool = False) -> str:
    if r is None:
      return "–"
    parts = [f"{r.mean('psnr'):.2f} dB"]
    if lp and r.per_image.get(lp):
      parts.append(f"{r.mean(lp):.3f}")
    txt = " / ".join(parts)
    return (f"{r.label}: " if name else (f"({r.post}) " if r.kind == "gan" else "")) + txt

  for d in srows:
    n = d["n"]
    dp = (f"{d['d_psnr']:+.2f} dB ({d['wins_psnr']}/{n})" if "d_psnr" in d else "–")
    dl = (f"{d['d_lpips']:+.3f} ({d['wins_lpips']}/{n})" if "d_lpips" in d else "–")
    lines.append("| " + " | ".join([d["title"], cell(d["multi"]),
                                    cell(d["single"], name=True),
                                    cell(d["baseline"], name=True), dp,
                                    cell(d["baseline_lpips"], name=True), dl]) + " |")
  return "\n".join(lines)


def sweep_table(key: str, sweep: Mapping[str, Sequence[Mapping[str, Any]]], *,
                lpips: str | None) -> str:
  """Markdown table of one sweep: a row per case, a column per value ('–' where a value was
  not run)."""
  cases = list(sweep)
  values = []
  for c in cases:
    values += [row["value"] for row in sweep[c] if row["value"] not in values]
  head = ["case", *[f"{key} = {v:g}" if isinstance(v, float) else f"{key} = {v}"
                    for v in values]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for c in cases:
    by_value = {row["value"]: row for row in sweep[c]}
    cells = [CASES[c].title]
    for v in values:
      row = by_value.get(v)
      if row is None:
        cells.append("–")
        continue
      s = row["summary"]
      txt = f"{s['psnr']['mean']:.2f} dB"
      if lpips and lpips in s:
        txt += f" / {s[lpips]['mean']:.3f}"
      txt += f" / {_seconds(row['seconds_per_image'])} s"
      cells.append(txt)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]


def _listing(parts: Sequence[str]) -> str:
  return "; ".join(parts) if parts else "no case"


def comparisons(report: Report) -> dict[str, list[str]]:
  """Per-case comparisons of the default multi-code output, as phrases: {'single_better',
  'single_worse', 'psnr_better', 'psnr_worse', 'lpips_better', 'lpips_worse'} (PSNR against
  the best single code; PSNR / LPIPS against the best classical baseline by that metric)."""
  out: dict[str, list[str]] = {k: [] for k in ("single_better", "single_worse", "psnr_better",
                                               "psnr_worse", "lpips_better", "lpips_worse")}
  for d in summary_rows(report):
    title, n = d["title"], d["n"]
    if "d_psnr_single" in d:
      key = "single_better" if d["d_psnr_single"] > 0 else "single_worse"
      out[key].append(f"{title} ({d['d_psnr_single']:+.2f} dB vs {d['single'].method})")
    if "d_psnr" in d:
      key = "psnr_better" if d["d_psnr"] > 0 else "psnr_worse"
      out[key].append(f"{title} ({d['d_psnr']:+.2f} dB vs {d['baseline'].label}, better on "
                      f"{d['wins_psnr']}/{n} images)")
    if "d_lpips" in d:
      key = "lpips_better" if d["d_lpips"] < 0 else "lpips_worse"
      out[key].append(f"{title} ({d['d_lpips']:+.3f} vs {d['baseline_lpips'].label}, better on "
                      f"{d['wins_lpips']}/{n} images)")
  return out


def output_options(report: Report) -> list[dict]:
  """Per case and output option (paste, back-project) of the multi-code runs: the mean
  differences to the raw output and what the numbers support ('on', 'off' or 'mixed')."""
  rows = _rows(report)
  lp = _first_lpips(report)
  out = []
  for case in report.config["cases"]:
    cr = [r for r in rows if r.case == case and r.kind == "gan" and r.method == "multi-code"]
    raw = next((r for r in cr if r.post == "raw"), None)
    for r in cr:
      if raw is None or r.post not in ("paste", "back-project"):
        continue
      dp = _mean_diff(r, raw, "psnr")
      dl = _mean_diff(r, raw, lp) if lp and r.per_image.get(lp) else None
      if dp > 0 and (dl is None or dl <= 0):
        support = "on"
      elif dp < 0 and (dl is None or dl >= 0):
        support = "off"
      else:
        support = "mixed"
      out.append({"case": case, "option": r.post, "d_psnr": dp, "d_lpips": dl,
                  "lpips": lp, "support": support, "default": bool(r.default),
                  "n": len(r.per_image["psnr"])})
  return out


def _mean_diff(a: Row, b: Row, metric: str) -> float:
  x, y = np.asarray(a.per_image[metric], float), np.asarray(b.per_image[metric], float)
  if metric == "psnr":
    x, y = np.minimum(x, 100), np.minimum(y, 100)
  return float(np.mean(x - y))


def _first_lpips(report: Report) -> str | None:
  return next((f"lpips_{n}" for n in report.config.get("lpips", []) if n), None)


def sweep_choices(report: Report, *, tolerance: float = 0.2) -> list[dict]:
  """Per sweep and case: the value the sweep started from, the best value by PSNR and by
  LPIPS (first net) with their differences to the start, and the smallest value within
  ``tolerance`` dB of the best PSNR (where smaller is cheaper: codes, iterations, layer)."""
  lp = _first_lpips(report)
  out = []
  for key, sweep in report.sweeps.items():
    for case, rows in sweep.items():
      if not rows:
        continue
      start = (report.sweep_starts.get(key) or {}).get(case)
      ps = {r["value"]: r["summary"]["psnr"]["mean"] for r in rows}
      ls = {r["value"]: r["summary"][lp]["mean"] for r in rows if lp and lp in r["summary"]}
      best_p = max(ps, key=ps.get)
      d: dict[str, Any] = {"key": key, "case": case, "start": start, "best_psnr": best_p,
                           "psnr": ps, "lpips": ls, "lpips_name": lp}
      if start in ps:
        d["d_psnr"] = ps[best_p] - ps[start]
      if ls:
        best_l = min(ls, key=ls.get)
        d["best_lpips"] = best_l
        if start in ls:
          d["d_lpips"] = ls[best_l] - ls[start]
      if key in ("codes", "iterations", "layer"):
        d["enough"] = min(v for v in ps if ps[v] >= ps[best_p] - tolerance)
      out.append(d)
  return out


def findings(report: Report) -> list[str]:
  """Plain sentences computed from the numbers (wins and losses alike)."""
  out = []
  c = comparisons(report)
  n = report.images["n"] if report.images else 0
  if c["single_better"] or c["single_worse"]:
    out.append(f"Multi-code against the best single code (mean PSNR over the {n} images): "
               f"better for {_listing(c['single_better'])}; worse for "
               f"{_listing(c['single_worse'])}.")
  if c["psnr_better"] or c["psnr_worse"]:
    out.append("The default prior (multi-code, default output) against the best classical "
               f"baseline on PSNR: better for {_listing(c['psnr_better'])}; not better for "
               f"{_listing(c['psnr_worse'])}.")
  lp = _first_lpips(report)
  if c["lpips_better"] or c["lpips_worse"]:
    out.append(f"On {METRICS[lp][0]} (lower is better): better for "
               f"{_listing(c['lpips_better'])}; not better for {_listing(c['lpips_worse'])}.")
  for o in output_options(report):
    extra = (f", {METRICS[o['lpips']][0]} {o['d_lpips']:+.3f}" if o["d_lpips"] is not None
             else "")
    verdict = {"on": "better on both: the numbers support it",
               "off": "worse on both: the numbers support the raw output",
               "mixed": "PSNR and LPIPS disagree"}[o["support"]]
    out.append(f"{_cap(CASES[o['case']].title)}: {o['option']} against the raw output "
               f"{o['d_psnr']:+.2f} dB PSNR{extra}; {verdict} (the default is "
               f"{'on' if o['default'] else 'off'}).")
  for d in sweep_choices(report):
    title = CASES[d["case"]].title
    txt = f"Sweep {d['key']}, {title}: best PSNR at {d['key']} = {d['best_psnr']}"
    if d["best_psnr"] == d["start"]:
      txt += " (where the sweep started)"
    elif "d_psnr" in d:
      txt += f" ({d['d_psnr']:+.2f} dB over {d['start']}, where the sweep started)"
    if "best_lpips" in d:
      txt += f", best {METRICS[d['lpips_name']][0]} at {d['best_lpips']}"
    if "enough" in d and d["enough"] != d["best_psnr"]:
      txt += f"; from {d['enough']} on within 0.2 dB of the best"
    out.append(txt + ".")
  return out


def recommendations(report: Report) -> str:
  """Markdown: the settings and output options the measurements support, against the current
  defaults (a proposal to check, computed; mgan_jax/defaults.py is edited by hand)."""
  lines = []
  choices = sweep_choices(report)
  if choices:
    lp = choices[0]["lpips_name"]
    lt = METRICS[lp][0] if lp else "LPIPS"
    held = ("the sweep images, held out from the table's" if report.config.get("sweep_samples")
            else "the table's images")
    lines += [f"Settings (on {held}):", "",
              f"| case | setting | sweep start | best PSNR at | Δ PSNR | best {lt} at | Δ {lt} | "
              "within 0.2 dB of the best from |", "|" + "---|" * 8]
    for d in choices:
      lines.append("| " + " | ".join([
          CASES[d["case"]].title, d["key"], str(d["start"]), str(d["best_psnr"]),
          f"{d['d_psnr']:+.2f} dB" if "d_psnr" in d else "–", str(d.get("best_lpips", "–")),
          f"{d['d_lpips']:+.3f}" if "d_lpips" in d else "–", str(d.get("enough", "–"))]) + " |")
    lines.append("")
  opts = output_options(report)
  if opts:
    lines += ["Output options (the table's images; the option does not change the "
              "optimisation, only which of its outputs is written):", "",
              "| case | option | Δ PSNR vs raw | Δ LPIPS vs raw | the numbers support "
              "| default |", "|---|---|---|---|---|---|"]
    for o in opts:
      lines.append(f"| {CASES[o['case']].title} | {o['option']} | {o['d_psnr']:+.2f} dB | "
                   + (f"{o['d_lpips']:+.3f}" if o["d_lpips"] is not None else "–")
                   + f" | {o['support']} | {'on' if o['default'] else 'off'} |")
    lines.append("")
  return "\n".join(lines)


def to_csv(report: Report) -> str:
  rows = _rows(report)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  ms = list(METRICS)
  w.writerow(["case", "method", "post", "kind", "default_output", "n",
              *[f"{m}_{s}" for m in ms for s in ("mean", "std")], "seconds_per_image",
              "compile_seconds"])
  for r in rows:
    vals = []
    for m in ms:
      v = r.per_image.get(m)
      s = summarize(v) if v else None
      vals += [f"{s['mean']:.6g}" if s else "", f"{s['std']:.6g}" if s else ""]
    w.writerow([r.case, r.method, r.post, r.kind, int(bool(r.default)),
                len(r.per_image.get("psnr", [])), *vals, f"{r.seconds_per_image:.6g}",
                "" if r.compile_seconds is None else f"{r.compile_seconds:.3f}"])
  return buf.getvalue()


def sweeps_csv(report: Report) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  ms = list(METRICS)
  w.writerow(["sweep", "case", "value", *[f"{m}_mean" for m in ms], "seconds_per_image"])
  for key, sweep in report.sweeps.items():
    for case, rows in sweep.items():
      for row in rows:
        s = row["summary"]
        w.writerow([key, case, row["value"],
                     *[f"{s[m]['mean']:.6g}" if m in s else "" for m in ms],
                     f"{row['seconds_per_image']:.6g}"])
  return buf.getvalue()


def to_json(report: Report) -> dict:
  return {"command": report.command, "config": report.config, "model": report.model,
          "environment": report.environment, "seconds": report.seconds,
          "images": report.images, "sweep_images": report.sweep_images,
          "skipped": report.skipped,
          "summary": [{k: (v.to_json()["summary"] | {"label": v.label} if isinstance(v, Row)
                           else v) for k, v in d.items()} for d in summary_rows(report)],
          "rows": [r.to_json() for r in _rows(report)], "sweeps": report.sweeps,
          "sweep_starts": report.sweep_starts, "sweep_choices": sweep_choices(report),
          "output_options": output_options(report), "curves": report.curves,
          "timing": report.timing, "partial": report.partial}


def _image_sets(report: Report) -> list[str]:
  out = []
  for what, s, seed in (("table", report.images, report.config.get("sample_seed")),
                        ("sweeps", report.sweep_images, report.config.get("sweep_seed"))):
    if not s or not s.get("n"):
      continue
    kinds = [src["kind"] for src in s["sources"]]
    n_samples, n_photos = kinds.count("prior sample"), kinds.count("photo")
    parts = []
    if n_samples:
      seeds = [src["seed"] for src in s["sources"] if src["kind"] == "prior sample"]
      parts.append(f"{n_samples} held-out samples of the prior (seeds {seeds[0]}–{seeds[-1]})")
    if n_photos:
      parts.append(f"{n_photos} photo(s)")
    out.append(f"{what}: " + " + ".join(parts))
  return out


def markdown(report: Report, *, figures: Mapping[str, str] | None = None,
             title: str = "Results") -> str:
  """The report: command and configuration, findings, tables, figures (``figures``: name ->
  path relative to the markdown file)."""
  figures = dict(figures or {})
  cfg = report.config
  env = report.environment
  lp = [f"lpips_{n}" for n in cfg.get("lpips", [])]
  lines = [f"# {title}", "",
           "Generated by `python -m mgan_jax.evaluate` (`mgan_jax/evaluation.py`); rerun the "
           "command below to reproduce every number and figure.", "",
           "```", report.command or "python -m mgan_jax.evaluate", "```", "",
           "<details><summary>configuration</summary>", "", "```json",
           json.dumps(cfg, indent=2), "```", "", "</details>", "",
           f"- model: `{report.model['label']}` ({report.model['family']}, "
           f"{report.model['resolution']}×{report.model['resolution']})",
           *[f"- images, {s}" for s in _image_sets(report)],
           f"- machine: {env.get('device')}, {env.get('cpu_count')} CPU(s), "
           f"{env.get('platform')}; jax {env.get('jax')} (matmul precision "
           f"{env.get('matmul_precision', 'default')}); {_timing(report)}",
           *_run_devices(env),
           "- metrics on the 8-bit outputs against the clean image: PSNR and SSIM (higher is "
           "better), LPIPS v0.1 with the "
           + " and ".join({"lpips_alex": "AlexNet", "lpips_vgg": "VGG16"}[m] for m in lp)
           + " trunk (lower is better), colorization AuC (higher is better); mean ± standard "
           "deviation over the images; seconds per image exclude compilation (the batch's "
           "wall time divided by its images).",
           "- outputs: `raw` = the generator output; `luma` = the official colorization output "
           "(luma of the input, chroma of the result); `paste` = known pixels pasted back; "
           "`back-project` = the data-consistent correction (`D(result)` equals the "
           "observation); `(default)` marks what `python -m mgan_jax.invert` writes by "
           "default.", ""]
  if report.partial:
    lines[2:2] = ["> **Partial results**: written while the evaluation was still running (after "
                  + ", ".join(k for k in report.timing if k not in ("total", "compile"))
                  + "); the finished run replaces this file.", ""]
  if report.skipped:
    lines += [f"- skipped: {s}" for s in report.skipped] + [""]
  found = findings(report)
  if found:
    lines += ["## Findings", "",
              "Computed from the tables below (means over the images; Δ = the first minus the "
              "second).", ""] + [f"- {s}" for s in found] + [""]
  if report.rows:
    lines += ["## Summary", "",
              "Per case: the default multi-code output, the best single code, and the best "
              "classical baseline by PSNR and by LPIPS; Δ = multi-code minus baseline (mean "
              "of the per-image differences), wins = images on which multi-code is better.",
              "", summary_table(report), ""]
    for name in ("summary", "examples", "curves"):
      if name in figures:
        lines += [f"![{name}]({figures[name]})", ""]
    lines += ["## Per task", ""]
    rows = _rows(report)
    for case in cfg["cases"]:
      cr = [r for r in rows if r.case == case]
      lines += [f"### {CASES[case].title}", "", case_table(cr), ""]
  if report.sweeps:
    pins = cfg.get("sweep_overrides") or {}
    lines += ["## Sweeps (multi-code, one setting at a time)", "",
              "Cells: PSNR / " + (METRICS[lp[0]][0] if lp else "") + " / seconds per image, "
              "means over the sweep images, at each case's default output. Each sweep starts "
              "from the defaults" + (", except: " + "; ".join(
                  f"{c}: " + ", ".join(f"{k} {v}" for k, v in o.items())
                  for c, o in pins.items()) if pins else "") + ".", ""]
    for key, sweep in report.sweeps.items():
      lines += [f"### {key}", ""]
      n_sw = ((cfg.get("sweeps") or {}).get(key) or {}).get("samples")
      if n_sw:
        lines += [f"On the first {n_sw} of the sweep images.", ""]
      if key == "iterations":
        lines += ["One run at the largest value; the smaller values are its images after "
                  "that many iterations (the optimiser has no schedule, so they are what a run "
                  "of that length gives); seconds scale with the iterations.", ""]
      lines += [sweep_table(key, sweep, lpips=lp[0] if lp else None), ""]
      if f"sweep_{key}" in figures:
        lines += [f"![sweep {key}]({figures[f'sweep_{key}']})", ""]
  rec = recommendations(report)
  if rec:
    lines += ["## Defaults the numbers support", "",
              "Computed from the measurements above, against the defaults they were measured "
              "with; `mgan_jax/defaults.py` holds the defaults and is changed by hand from "
              "these tables.", "", rec]
  return "\n".join(lines)


def _elsewhere(env: Mapping) -> dict:
  """{device: runs} of the inversions read from a run cache made on another device."""
  return {d: n for d, n in (env.get("run_devices") or {}).items() if d != env.get("device")}


def _run_devices(env: Mapping) -> list[str]:
  """The report line saying where the cached inversions ran, when not on this machine."""
  other = _elsewhere(env)
  if not other:
    return []
  here = sum((env.get("run_devices") or {}).get(d, 0) for d in [env.get("device")])
  return ["- inversions read from the run cache were run on "
          + ", ".join(f"{d} ({n} runs)" for d, n in other.items())
          + (f" ({here} runs on this machine)" if here else "")
          + ": their seconds per image are that device's; the baselines' seconds, the metrics "
          "and the figures are this machine's"]


def _timing(report: Report) -> str:
  t = report.timing or {}
  parts = [f"total {report.seconds / 60:.1f} min"]
  stages = [f"{k} {v:.0f} s" for k, v in t.items() if k not in ("total", "compile")]
  if stages:
    parts.append(", ".join(stages))
  if t.get("compile"):
    workers = report.environment.get("compile_workers")
    parts.append(f"compiling {t['compile']:.0f} s"
                 + (" (in the main thread)" if workers == 0 else
                    ", overlapped with the runs by the compile threads"))
  return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------------------------
def plot_summary(report: Report, path: Path) -> None:
  plt = require_matplotlib()
  srows = summary_rows(report)
  lp = srows[0]["lpips"] if srows else None
  metrics_ = ["psnr"] + ([lp] if lp else [])
  fig, axes = plt.subplots(1, len(metrics_), figsize=(5.2 * len(metrics_), 3.6), dpi=90)
  axes = np.atleast_1d(axes)
  x = np.arange(len(srows))
  series = [("multi-code", "multi"), ("single code", "single"), ("best baseline", None)]
  for ax, m in zip(axes, metrics_):
    for j, (label, key) in enumerate(series):
      if key is None:
        rs = [d["baseline"] if m == "psnr" else d["baseline_lpips"] for d in srows]
      else:
        rs = [d[key] for d in srows]
      vals = [r.mean(m) if r is not None and r.per_image.get(m) else np.nan for r in rs]
      ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([d["case"] for d in srows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(METRICS[m][0] + (" (higher is better)" if METRICS[m][1]
                                   else " (lower is better)"), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_examples(report: Report, path: Path) -> None:
  plt = require_matplotlib()
  cases = [c for c in report.config["cases"] if c in report.examples]
  methods = [m for m in ("multi-code", "z", "w", "w+") if any(m in report.examples[c]
                                                             for c in cases)]
  cols = ["clean", "observation", *methods, "baseline"]
  fig, axes = plt.subplots(len(cases), len(cols), figsize=(1.25 * len(cols), 1.3 * len(cases)),
                           dpi=100, squeeze=False)
  for i, c in enumerate(cases):
    ex = report.examples[c]
    for j, col in enumerate(cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      img = ex.get(col)
      if img is not None:
        ax.imshow(imageio.to_uint8(np.asarray(img)), interpolation="nearest")
      else:                   # e.g. no baseline for reconstruction: no empty frame
        for spine in ax.spines.values():
          spine.set_visible(False)
      if i == 0:
        ax.set_title(col if col != "baseline" else "best baseline", fontsize=7)
      if j == 0:
        ax.set_ylabel(c, fontsize=7)
      if col == "baseline" and ex.get("baseline_name"):
        ax.set_xlabel(ex["baseline_name"], fontsize=6)
  fig.tight_layout(pad=0.3)
  fig.savefig(path)
  plt.close(fig)


def plot_curves(report: Report, path: Path) -> None:
  plt = require_matplotlib()
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
  for case, cur in report.curves.items():
    if not cur["iteration"]:
      continue
    a1.plot(cur["iteration"], cur["psnr"], marker="o", ms=2, lw=1, label=case)
    loss = np.asarray(cur["loss"])
    a2.plot(cur["iteration"], loss / loss[0] if loss[0] > 0 else loss, lw=1, label=case)
  a1.set_xlabel("iteration")
  a1.set_ylabel("mean PSNR (dB) of the default output")
  a2.set_xlabel("iteration")
  a2.set_ylabel("mean loss / first chunk's loss")
  a2.set_yscale("log")
  a1.legend(fontsize=7)
  for a in (a1, a2):
    a.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_sweep(key: str, sweep: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *,
               lpips: str | None) -> None:
  plt = require_matplotlib()
  panels = [("psnr", "PSNR (dB)")] + ([(lpips, METRICS[lpips][0])] if lpips else []) + \
      [("seconds", "seconds per image")]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), dpi=90)
  for ax, (m, label) in zip(np.atleast_1d(axes), panels):
    for case, rows in sweep.items():
      xs, ys = [], []
      for row in rows:
        if m == "seconds":
          y = row["seconds_per_image"]
        elif m in row["summary"]:
          y = row["summary"][m]["mean"]
        else:
          continue
        xs.append(row["value"])
        ys.append(y)
      ax.plot(xs, ys, marker="o", ms=3, lw=1, label=case)
    ax.set_xlabel(key)
    ax.set_ylabel(label)
    vals = [row["value"] for rows in sweep.values() for row in rows]
    pos = [v for v in vals if isinstance(v, (int, float)) and v > 0]
    if key in ("codes", "perceptual_weight", "lr") and pos and max(pos) / min(pos) > 20:
      ax.set_xscale("symlog" if len(pos) < len(vals) else "log",
                    **({"linthresh": min(pos)} if len(pos) < len(vals) else {}))
    if all(isinstance(v, int) for v in vals):
      from matplotlib.ticker import MaxNLocator
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_figures(report: Report, out: Path) -> dict[str, Path]:
  """Draw the figures into ``out``; returns name -> path."""
  require_matplotlib()
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  made: dict[str, Path] = {}
  lp = next((f"lpips_{n}" for n in report.config.get("lpips", [])), None)
  jobs = []
  if report.rows:
    jobs += [("summary", lambda p: plot_summary(report, p)),
             ("examples", lambda p: plot_examples(report, p))]
  if report.curves:
    jobs.append(("curves", lambda p: plot_curves(report, p)))
  for key, sweep in report.sweeps.items():
    jobs.append((f"sweep_{key}", lambda p, k=key, s=sweep: plot_sweep(k, s, p, lpips=lp)))
  for name, draw in jobs:
    final = out / f"{name}.png"
    with fileio.publish(final, replace=True) as tmp:
      draw(tmp)
    made[name] = final
  return made


# ----------------------------------------------------------------------------------------------
# The README's generated section.
# ----------------------------------------------------------------------------------------------
README_BEGIN = "<!-- evaluate:results:begin (generated by python -m mgan_jax.evaluate --readme) -->"
README_END = "<!-- evaluate:results:end -->"


def _readme_parts(text: str, path: Any) -> tuple[str, str]:
  if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or \
      text.index(README_BEGIN) > text.index(README_END):
    raise UserError(f"--readme {path}: expected one {README_BEGIN!r} line followed by one "
                    f"{README_END!r} line")
  head, rest = text.split(README_BEGIN)
  return head, rest.split(README_END)[1]


def check_readme(path: str | os.PathLike) -> None:
  """UserError (one line naming the file) unless ``path`` has the generated section's markers
  (``README_BEGIN``, then ``README_END``)."""
  try:
    text = Path(path).read_text(encoding="utf-8")
  except OSError as e:
    raise UserError(f"--readme {path}: {e.strerror or e}") from None
  _readme_parts(text, path)


def readme_section(report: Report, *, figure: str | None, report_link: str | None) -> str:
  """The README's results paragraph: where the default prior beats the classical baselines and
  where it does not, and multi-code against single codes, computed from the numbers; the main
  figure (``figure``) and a link to the full report, relative to the README."""
  c = comparisons(report)
  lp = _first_lpips(report)
  env = report.environment
  n = report.images["n"] if report.images else 0
  where = f" ([full report]({report_link}))" if report_link else ""
  sets = _image_sets(report)
  what = sets[0].split(": ", 1)[1] if sets and sets[0].startswith("table: ") else f"{n} images"
  lines = [f"Measured by `{report.command or 'python -m mgan_jax.evaluate'}` on {what}, with "
           f"the CLI's defaults for `{report.model['label']}`, inversions on "
           f"{', '.join(_elsewhere(env)) or env.get('device')}{where}. "
           "Means over the images; against the best classical baseline of each task on that "
           "metric.", ""]
  if figure:
    lines += [f"![multi-code, single code and the best classical baseline per task]({figure})",
              ""]
  lines += [f"* **Where the default prior beats the classical baselines** (PSNR): "
            f"{_listing(c['psnr_better'])}.",
            f"* **Where it does not** (PSNR): {_listing(c['psnr_worse'])}."]
  if lp:
    lines += [f"* **{METRICS[lp][0]}** (lower is better): better for "
              f"{_listing(c['lpips_better'])}; not better for {_listing(c['lpips_worse'])}."]
  if c["single_better"] or c["single_worse"]:
    lines += [f"* **Multi-code against the best single code** (PSNR): better for "
              f"{_listing(c['single_better'])}; worse for {_listing(c['single_worse'])}."]
  return "\n".join(lines)


def update_readme(path: str | os.PathLike, section: str) -> Path:
  """Replace the generated section of ``path`` (between the markers) with ``section``."""
  p = Path(path)
  head, tail = _readme_parts(p.read_text(encoding="utf-8"), path)
  text = head + README_BEGIN + "\n" + section.strip() + "\n" + README_END + tail
  fileio.write_bytes(p, text.encode("utf-8"), replace=True)
  return p


def write_outputs(report: Report, *, out: str | os.PathLike, report_path: str | os.PathLike
                  | None = None, plots: bool = True, title: str | None = None,
                  readme: str | os.PathLike | None = None) -> list[Path]:
  """Write the tables, the JSON, the figures, (``report_path``) the markdown report and
  (``readme``) the README's generated section."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  figs = write_figures(report, out) if plots else {}
  title = title or f"Results: mGANprior on {report.model['label']}"
  written = list(figs.values())
  rel = {k: os.path.relpath(v, out) for k, v in figs.items()}
  texts = {"results.md": markdown(report, figures=rel, title=title),
           "results.csv": to_csv(report),
           "results.json": json.dumps(imageio._finite(to_json(report)), indent=1,
                                      default=imageio._json_default) + "\n"}
  if report.sweeps:
    texts["sweeps.csv"] = sweeps_csv(report)
  for name, text in texts.items():
    fileio.write_bytes(out / name, text.encode(), replace=True)
    written.append(out / name)
  if report_path is not None:
    rp = Path(report_path)
    rel = {k: os.path.relpath(v, rp.parent) for k, v in figs.items()}
    body = markdown(report, figures=rel, title=title)
    body += ("\n\nTables as CSV and every per-image value as JSON: "
             + ", ".join(f"[`{n}`]({os.path.relpath(out / n, rp.parent)})"
                         for n in texts if n != "results.md") + ".\n")
    fileio.write_bytes(rp, body.encode(), replace=True)
    written.append(rp)
  if readme is not None:
    base = Path(readme).parent
    link = Path(report_path) if report_path is not None else out / "results.md"
    fig = figs.get("summary")
    section = readme_section(report, figure=os.path.relpath(fig, base) if fig else None,
                             report_link=os.path.relpath(link, base))
    written.append(update_readme(readme, section))
  return written


__all__ = ["METRICS", "README_BEGIN", "README_END", "require_matplotlib", "case_table",
           "best_baseline", "default_gan", "summary_rows", "summary_table", "sweep_table",
           "comparisons", "output_options", "sweep_choices", "findings", "recommendations",
           "to_csv", "sweeps_csv", "to_json", "markdown", "plot_summary", "plot_examples",
           "plot_curves", "plot_sweep", "write_figures", "check_readme", "readme_section",
           "update_readme", "write_outputs"]
