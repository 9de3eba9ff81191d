#!/usr/bin/env python3
"""The README Quickstart demo: mGANprior restorations of the example faces with the default prior.

    python scripts/demo.py                 # about two minutes on a 2-core CPU after setup
    python scripts/demo.py --out DIR --iterations 100

Runs ``python -m mgan_jax.invert`` (in this process, through ``mgan_jax.invert_images.main``) on
``examples/`` with the default ``dcgan-faces64`` prior, one batch per task:

* inpaint the central 32x32 hole (``examples/mask_center.png``),
* colorize (the gray observation is synthesised from the color input),
* super-resolve x4 (16x16 -> 64x64),

on three in-domain faces (prior samples) and one photo (out of domain), then writes one overview
image, ``OUT/overview.png`` (one row per image: input | degraded, result for each task, with the
PSNR against the clean input under each), and prints its path and the PSNR / SSIM of every
result. The per-image outputs are
in ``OUT/<task>/<image>/`` (see ``mgan_jax.outputs``). ``OUT`` (default ``out/demo``) belongs to the
demo: its task directories are replaced on every run.

The prior's weights are research-only (trained on DigiFace-1M; see examples/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXAMPLES = ROOT / "examples"
IMAGES = ["dcgan_sample_9001.png", "dcgan_sample_9002.png", "dcgan_sample_9003.png",
          "astronaut_face64.png"]
TASKS = [
    ("inpaint", ["--task", "inpaint", "--mask", str(EXAMPLES / "mask_center.png")]),
    ("colorize", ["--task", "colorize"]),
    ("super-resolve", ["--task", "super-resolve", "--factor", "4"]),
]


def overview(images: list[str], task_names: list[str], out_dir: Path, out: Path, *,
             scale: int = 2) -> Path:
  """One row per image: input | (degraded, result) per task, tiles nearest-upscaled by
  ``scale``, a header naming the columns and the PSNR under every result; write ``out``."""
  import numpy as np
  from PIL import Image, ImageDraw

  from mgan_jax import imageio
  side, pad, head, foot = 64 * scale, 4, 16, 14
  cols = ["input"] + [f"{t}: {w}" for t in task_names for w in ("degraded", "result")]
  width = pad + len(cols) * (side + pad)
  canvas = Image.new("RGB", (width, head + len(images) * (side + foot + pad)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for j, c in enumerate(cols):
    draw.text((pad + j * (side + pad) + 2, 2), c, fill=(0, 0, 0))
  for i, f in enumerate(images):
    stem = Path(f).stem
    y = head + i * (side + foot + pad)
    tiles = [(Image.open(f).convert("RGB"), "")]
    for t in task_names:
      d = out_dir / t / stem
      m = json.loads((d / "metrics.json").read_text())["metrics"]
      tiles.append((Image.open(d / "degraded.png").convert("RGB"),
                    f"{m['degraded_psnr']:.1f} dB"))
      tiles.append((Image.open(d / "result.png").convert("RGB"), f"{m['psnr']:.1f} dB"))
    for j, (im, label) in enumerate(tiles):
      x = pad + j * (side + pad)
      canvas.paste(im.resize((side, side), Image.Resampling.NEAREST), (x, y))
      draw.text((x + 2, y + side + 1), label or stem[:20], fill=(0, 0, 0))
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  imageio.write_png(tmp, np.asarray(canvas))
  os.replace(tmp, out)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
  parser.add_argument("--iterations", type=int, default=None,
                      help="iterations per task (default: the model's default)")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mgan_jax import invert_images

  out = Path(args.out)
  images = [str(EXAMPLES / f) for f in IMAGES]
  t0 = time.perf_counter()
  summary = []
  for task, flags in TASKS:
    cmd = ["--image", *images, *flags, "--out", str(out / task), "--force",
           "--batch-size", str(len(images))]
    if args.iterations is not None:
      cmd += ["--iterations", str(args.iterations)]
    if args.quiet:
      cmd.append("--quiet")
    print(f"\n== {task}: python -m mgan_jax.invert {' '.join(cmd)}", file=sys.stderr,
          flush=True)
    rc = invert_images.main(cmd)
    if rc:
      return rc
    for f in IMAGES:
      d = out / task / Path(f).stem
      m = json.loads((d / "metrics.json").read_text())["metrics"]
      summary.append(f"  {task:14s} {Path(f).stem:20s} PSNR {m['psnr']:5.2f} dB  SSIM "
                     f"{m['ssim']:.3f}   (degraded: {m['degraded_psnr']:5.2f} dB)")
  path = overview(images, [t for t, _ in TASKS], out, out / "overview.png")
  print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
  print("\n".join(summary))
  print(f"overview: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
