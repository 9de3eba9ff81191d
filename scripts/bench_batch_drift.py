#!/usr/bin/env python3
"""How far batched inversions drift from single-image runs (not a test).

A batch is one compiled program that vmaps the images; each image keeps its own latents,
optimiser state and loss, so a batch computes what the single-image runs compute -- but the
convolutions and reductions of a batch are blocked differently, so float32 rounding differs,
and an optimisation (300 Adam steps) amplifies rounding differences. This script measures the
effect on the default prior with the CLI defaults of a task:

    python scripts/bench_batch_drift.py --images 32 --batch-sizes 1,2,7,32 --task reconstruct

Images: held-out samples of the prior (z ~ N(0, 1) from ``--seed`` on, clipped and quantised
to 8 bits like a PNG). Batch size 1 is the reference; for every other batch size it prints
per image |delta PSNR| (dB, result vs the clean image), max |delta latents|, and the largest
and mean absolute difference of the 8-bit result images, as a markdown table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=32)
  p.add_argument("--batch-sizes", default="1,2,7,32")
  p.add_argument("--task", default="reconstruct")
  p.add_argument("--iterations", type=int, default=None, help="default: the model's")
  p.add_argument("--seed", type=int, default=20000)
  p.add_argument("--exact", action="store_true",
                 help="--exact-batches: images computed one after the other in the program")
  p.add_argument("--json", action="store_true", help="also print one JSON line per batch size")
  a = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np

  from mgan_jax import assets, cli, defaults, imageio, metrics, pipeline, tasks

  gen, params, _, name = assets.load_generator()
  task = tasks.parse_task(a.task)
  d = defaults.defaults_for(gen.family, name, task.tasks)
  task = tasks.parse_task(a.task, factor=d["factor"], resolution=gen.resolution)
  args = argparse.Namespace(method=None, codes=None, layer=None, iterations=a.iterations,
                            optimizer=None, lr=None, seed=0, alpha_init=None, mse_weight=None,
                            l1_weight=None, perceptual_weight=None, perceptual_layers=None,
                            perceptual_size=None, chunk=None)
  settings = cli.resolve_settings(args, gen, d)
  z = np.random.default_rng(a.seed).standard_normal((a.images, gen.latent_dim), np.float32)
  clean = imageio.from_uint8(imageio.to_uint8(np.asarray(gen.synthesize(params, z))))
  items = [pipeline.Item(name=f"s{k}", path=f"s{k}.png", input=clean[k],
                         fit=imageio.FitReport((gen.resolution,) * 2, (gen.resolution,) * 2),
                         observation=tasks.degrade(task, clean[k], seed=0), clean=clean[k])
           for k in range(a.images)]
  vgg = assets.vgg_params() if settings.loss.uses_vgg else None
  results, seconds = {}, {}
  for b in [int(x) for x in a.batch_sizes.split(",")]:
    inv = pipeline.Inverter(gen, params, vgg, settings, task, batch_size=b,
                            per_image="map" if a.exact else "vmap")
    t = time.perf_counter()
    out = []
    for j in range(0, len(items), b):
      out += inv.run(items[j:j + b])
    seconds[b] = time.perf_counter() - t
    results[b] = out
    print(f"batch {b}: {seconds[b]:.1f} s", file=sys.stderr, flush=True)

  ref = results[min(results)]
  psnr = lambda r, it: metrics.psnr(imageio.to_uint8(r.image), imageio.to_uint8(it.clean))
  ref_psnr = np.array([psnr(r, it) for r, it in zip(ref, items)])
  info = {"machine": f"{platform.machine()} {os.cpu_count()} cpu(s), "
                     f"{jax.devices()[0].platform} x {len(jax.devices())}",
          "jax": jax.__version__, "model": name, "task": task.label,
          "settings": f"{settings.method} N={settings.codes} layer {settings.layer}, "
                      f"{settings.optimizer.name} lr {settings.optimizer.lr:g}, "
                      f"{settings.iterations} iterations",
          "images": a.images, "reference": f"batch {min(results)}",
          "batches": "exact (lax.map)" if a.exact else "vmapped"}
  print("; ".join(f"{k}: {v}" for k, v in info.items()))
  print()
  print(f"mean PSNR of the reference: {ref_psnr.mean():.3f} dB")
  print()
  print("| batch | s | mean PSNR | max \\|dPSNR\\| dB | mean \\|dPSNR\\| dB | max \\|d latents\\| | "
        "max \\|d pixel\\| (8 bit) | mean \\|d pixel\\| |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  for b, res in results.items():
    p_b = np.array([psnr(r, it) for r, it in zip(res, items)])
    dl = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for r, q in zip(res, ref) for x, y in zip(jax.tree.leaves(r.latents),
                                                       jax.tree.leaves(q.latents)))
    px = np.stack([np.abs(imageio.to_uint8(r.image).astype(int) -
                          imageio.to_uint8(q.image).astype(int)) for r, q in zip(res, ref)])
    row = {"batch": b, "seconds": seconds[b], "mean_psnr": float(p_b.mean()),
           "max_dpsnr": float(np.max(np.abs(p_b - ref_psnr))),
           "mean_dpsnr": float(np.mean(np.abs(p_b - ref_psnr))), "max_dlatents": dl,
           "max_dpixel": int(px.max()), "mean_dpixel": float(px.mean())}
    print(f"| {b} | {row['seconds']:.0f} | {row['mean_psnr']:.3f} | {row['max_dpsnr']:.3f} | "
          f"{row['mean_dpsnr']:.3f} | {row['max_dlatents']:.3g} | {row['max_dpixel']} | "
          f"{row['mean_dpixel']:.3f} |")
    if a.json:
      print(json.dumps({**info, **row}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
