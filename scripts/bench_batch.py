#!/usr/bin/env python3
"""Benchmark (not a test): images per second of batched inversion for several batch sizes.

Each batch size B runs ``engine.run_batch``: one compiled ``lax.scan`` chunk of
``--iterations`` steps of ``vmap`` over B images (per-image latents, Adam state and loss),
sharded over the process's devices. The program is compiled by a warm-up call first; the
reported time is the best of ``--repeats`` timed calls (host transfers included, compilation
excluded; the batch sizes are timed in interleaved rounds so that load changes on a shared
machine hit them alike). images/s = B / time of one batch; ``scaling`` = images/s relative to
B = 1.

Default setting: the CLI's defaults for the shipped DCGAN face prior (``dcgan-faces64``: 64x64,
Z = 100; random weights of the same shapes, timing does not depend on the values), multi_z with
``--codes 20`` codes composed at ``--layer 1`` (512 x 4 x 4 features), pixel MSE loss, Adam.
``--perceptual-size S`` adds the VGG16 relu3_3 term on S x S inputs (random VGG weights of the
real shapes; the official setting is 256, very slow on a CPU). ``--devices D`` forces D host
CPU devices (XLA flag, CPU only) so the batch is also sharded.

Usage::

    python scripts/bench_batch.py [--batch-sizes 1,2,4,8,16] [--iterations 20] [--repeats 3]
        [--codes 20] [--layer 2] [--perceptual-size 0] [--devices 1] [--json]

Prints a markdown table (and one JSON line per batch size with ``--json``). On a shared machine
the numbers are noisy: rerun and compare the best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-sizes", default="1,2,4,8,16")
  p.add_argument("--iterations", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--codes", type=int, default=20)
  p.add_argument("--layer", type=int, default=1)
  p.add_argument("--perceptual-size", type=int, default=0)
  p.add_argument("--devices", type=int, default=0, help="force D host CPU devices (0: as is)")
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)

  if a.devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={a.devices}")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np

  from mgan_jax import engine, latents as lat_lib, objective, optimize, perceptual, sharding
  from mgan_jax.generators.dcgan import DCGAN

  gen = DCGAN()
  params = gen.init_params(jax.random.key(0))
  if a.perceptual_size:
    cfg = objective.LossConfig(perceptual_size=a.perceptual_size)
    vgg = perceptual.random_params(jax.random.key(1))
  else:
    cfg = objective.LossConfig(perceptual_weight=0.0)
    vgg = None
  loss_fn = objective.Objective(gen, method="multi_z", layer=a.layer, config=cfg)
  opt = optimize.OptimizerConfig(name="adam", lr=0.1)
  mesh = sharding.local_mesh()
  sizes = [int(s) for s in a.batch_sizes.split(",")]
  r = gen.resolution

  def problem(b):
    imgs = jax.random.uniform(jax.random.key(2), (b, 1, r, r, 3), minval=-1, maxval=1)
    tgts = [objective.make_target(imgs[i], vgg, config=cfg) for i in range(b)]
    lats = [lat_lib.init_latents(jax.random.key(100 + i), gen, params, method="multi_z",
                                 codes=a.codes, layer=a.layer) for i in range(b)]
    stack = lambda ts: jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *ts)
    return stack(lats), (stack(tgts), params, vgg)

  runs, first, pads = {}, {}, {}
  for b in sizes:   # compile every batch size first (the warm-up call)
    lat, args = problem(b)
    runs[b] = (lambda lat=lat, args=args: engine.run_batch(
        loss_fn, lat, args, arg_axes=(0, None, None), optimizer=opt,
        iterations=a.iterations, chunk=a.iterations, mesh=mesh))
    t = time.perf_counter()
    res = runs[b]()
    first[b] = time.perf_counter() - t
    pads[b] = res.padding
    assert np.all(np.isfinite(res.losses))
  times = {b: [] for b in sizes}
  for _ in range(a.repeats):   # interleaved rounds: load changes hit every batch size alike
    for b in sizes:
      t = time.perf_counter()
      runs[b]()
      times[b].append(time.perf_counter() - t)
  rows = []
  for b in sizes:
    best = min(times[b])
    rows.append({"batch": b, "seconds": best, "median_s": float(np.median(times[b])),
                 "compile_and_first_s": first[b], "images_per_s": b / best,
                 "ms_per_image_iter": 1e3 * best / b / a.iterations, "padding": pads[b]})
  base = rows[0]["images_per_s"] if sizes[0] == 1 else None
  for row in rows:
    row["scaling"] = row["images_per_s"] / base if base else None

  info = {"machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {jax.devices()[0].platform}"
                     f" x {len(jax.devices())} device(s)",
          "jax": jax.__version__, "model": f"DCGAN {r}x{r} random weights",
          "method": f"multi_z, {a.codes} codes, layer {a.layer}",
          "loss": ("MSE" if not a.perceptual_size else
                   f"MSE + 1e-3 VGG16 relu3_3 L1 at {a.perceptual_size}"),
          "optimizer": "adam", "iterations": a.iterations, "repeats": a.repeats}
  print("; ".join(f"{k}: {v}" for k, v in info.items()))
  print()
  print("| batch | s / batch (best) | median | images/s | ms / image / iteration | "
        "scaling vs batch 1 |")
  print("|---:|---:|---:|---:|---:|---:|")
  for row in rows:
    sc = f"{row['scaling']:.2f}x" if row["scaling"] else "-"
    print(f"| {row['batch']} | {row['seconds']:.3f} | {row['median_s']:.3f} | "
          f"{row['images_per_s']:.2f} | {row['ms_per_image_iter']:.2f} | {sc} |")
  if a.json:
    for row in rows:
      print(json.dumps({**info, **row}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
