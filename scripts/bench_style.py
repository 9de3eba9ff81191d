#!/usr/bin/env python3
"""Benchmark of one multi-code inversion iteration of a StyleGAN2 / StyleGAN generator (not a test).

Setting (defaults): StyleGAN2 config-f at 256x256 with the official channel schedule
``min(32768 // res, 512)`` (StyleGAN v1: ``min(16384 // res, 512)``) and random weights
(``init_params``), N = 10 codes of method ``multi_w`` composed at layer 4, SGD lr 1.0, through
the engine's compiled ``lax.scan`` chunk (``mgan_jax.engine.Engine``, one image, one device). Loss: MSE +
1e-3 * L1 of VGG16 relu3_3 at 256 (real ImageNet VGG weights when cached) or, with
``--vgg none``, the pixel MSE alone (isolates the generator's share).

After one compile and one warm-up chunk the same compiled chunk of ``--iterations`` steps is
timed ``--repeats`` times. Prints ONE JSON line::

    {"sec_per_iter": <median>, "sec_per_iter_runs": [...], "cpu_sec_per_iter": ...,
     "compile_s": ..., "peak_rss_mb": ..., "setting": {...}, "machine": {...}}

Usage: ``python scripts/bench_style.py [--family stylegan2|stylegan] [--resolution 256]
[--codes 10] [--layer 4] [--method multi_w] [--vgg auto|random|none|PATH] [--iterations 3]
[--repeats 3] [--conv-algorithm auto|direct|winograd]``. On a shared machine interleave runs of
the variants being compared and report medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench_invert import _rss_mb, benchmark_vgg  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--family", default="stylegan2", choices=("stylegan2", "stylegan"))
  p.add_argument("--resolution", type=int, default=256)
  p.add_argument("--codes", type=int, default=10)
  p.add_argument("--layer", type=int, default=4)
  p.add_argument("--method", default="multi_w", choices=("multi_z", "multi_w", "multi_wp"))
  p.add_argument("--iterations", type=int, default=3, help="steps per timed chunk")
  p.add_argument("--repeats", type=int, default=3, help="timed chunks (median reported)")
  p.add_argument("--vgg", default="auto",
                 help="'auto' (real weights if cached, else random), 'random', 'none' (MSE "
                      "only), or a VGG path")
  p.add_argument("--vgg-size", type=int, default=256)
  p.add_argument("--conv-algorithm", default="auto", choices=("auto", "direct", "winograd"),
                 help="mgan_jax.generators.conv.set_conv_algorithm")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from mgan_jax import engine, sharding
  from mgan_jax import latents as L
  from mgan_jax import objective as O
  from mgan_jax import optimize as OP
  from mgan_jax import perceptual as P
  from mgan_jax.generators import conv, family_class

  conv.set_conv_algorithm(args.conv_algorithm)
  key = jax.random.key(args.seed)
  gen = family_class(args.family)(resolution=args.resolution)
  gp = jax.block_until_ready(gen.init_params(jax.random.fold_in(key, 1)))
  vgg, vgg_source = None, "none (MSE only)"
  if args.vgg == "none":
    cfg = O.LossConfig(perceptual_weight=0.0)
  else:
    cfg = O.LossConfig(perceptual_size=args.vgg_size)
    vgg, vgg_source = benchmark_vgg(args.vgg, jax.random.fold_in(key, 2))
    vgg = P.needed_params(vgg, cfg.perceptual_layers)
  z = jax.random.normal(jax.random.fold_in(key, 3), (1, gen.latent_dim))
  target_img = jnp.clip(gen.generate(gp, z), -1, 1)
  target = O.make_target(target_img, vgg, config=cfg)
  obj = O.Objective(gen=gen, method=args.method, layer=args.layer, config=cfg)
  lat = L.init_latents(jax.random.fold_in(key, 4), gen, gp, method=args.method,
                       codes=args.codes, layer=args.layer)
  tx = OP.as_transformation(OP.OptimizerConfig(name="sgd", lr=1.0))
  a = (target, gp, vgg)
  jax.block_until_ready(target)
  engine.trim_heap()

  eng = engine.Engine(obj, optimizer=tx, arg_axes=(None, None, None), iterations=args.iterations,
                      chunk=args.iterations, mesh=sharding.local_mesh(jax.devices()[:1]))
  compiled, (lat, st, a) = eng.chunk_program(jax.tree.map(lambda x: x[None], lat), a)
  compile_s = eng.compile_seconds

  lat, st, _, _ = compiled(lat, st, a)               # warm-up (first-run allocations)
  jax.block_until_ready(lat)
  runs, cpu_runs, losses = [], [], None
  for _ in range(args.repeats):
    t, c = time.perf_counter(), time.process_time()
    lat, st, losses, _ = compiled(lat, st, a)
    losses = losses[0]
    jax.block_until_ready((lat, losses))
    runs.append((time.perf_counter() - t) / args.iterations)
    cpu_runs.append((time.process_time() - c) / args.iterations)
  out = {
      "sec_per_iter": round(statistics.median(runs), 4),
      "sec_per_iter_runs": [round(r, 4) for r in runs],
      "cpu_sec_per_iter": round(statistics.median(cpu_runs), 4),
      "compile_s": round(compile_s, 2),
      "peak_rss_mb": round(_rss_mb(), 1),
      "loss_last_chunk": [float(x) for x in losses],
      "setting": {"generator": f"{args.family}{args.resolution} official channels "
                               f"{list(gen.channels)}, random weights",
                  "method": args.method, "codes": args.codes, "layer": args.layer,
                  "feature_shape": list(gen.feature_shape(args.layer)),
                  "iterations": args.iterations, "repeats": args.repeats,
                  "conv_algorithm": args.conv_algorithm, "vgg": vgg_source,
                  "vgg_size": args.vgg_size if vgg is not None else None,
                  "optimizer": "sgd lr 1.0"},
      "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "loadavg_1m": round(os.getloadavg()[0], 2), "jax": jax.__version__,
                  "device": str(jax.devices()[0])},
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
