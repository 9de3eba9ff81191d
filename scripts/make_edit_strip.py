#!/usr/bin/env python3
"""docs/edit_strip.png: SeFa edits of an example photo with the default prior.

    python scripts/make_edit_strip.py                # about 4 minutes on a 2-core CPU
    python scripts/make_edit_strip.py --out DIR --image examples/astronaut_face64.png

Runs ``python -m mgan_jax.manipulate`` (in this process, through ``mgan_jax.manipulate.main``)
twice on the photo with the default ``dcgan-faces64`` prior: once after the default multi-code
inversion (N = 20 codes composed at layer 1), once after a single-code z inversion
(``--invert-args '--method z'``), each time along the SeFa directions ``DIRECTIONS`` with steps
-3 .. 3. Then it stacks the strips (one row per direction, the input photo and the inversion at
the left of each panel) into ``docs/edit_strip.png`` (or ``--picture``). The per-edit outputs
stay in ``OUT/multi`` and ``OUT/single`` (default ``OUT`` = ``out/edit_strip``, replaced on
every run).

The prior's weights are research-only (trained on DigiFace-1M; see examples/README.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIRECTIONS = (0, 2, 4, 6)
RANGE = (-3, 3)
STEPS = 7
PANELS = (("multi", "multi-code inversion (N=20, layer 1)", ""),
          ("single", "single-code z inversion", "--method z"))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image", default=str(ROOT / "examples" / "astronaut_face64.png"))
  p.add_argument("--out", default="out/edit_strip")
  p.add_argument("--picture", default=str(ROOT / "docs" / "edit_strip.png"))
  args = p.parse_args(argv)
  from PIL import Image, ImageDraw
  from mgan_jax import imageio, manipulate
  out = Path(args.out)
  name = Path(args.image).stem
  spec = "sefa:" + ",".join(map(str, DIRECTIONS))
  panels = []
  for sub, title, invert_args in PANELS:
    d = out / sub
    if d.exists():
      shutil.rmtree(d)
    argv = ["--image", args.image, "--direction", spec, "--range", *map(str, RANGE),
            "--steps", str(STEPS), "--out", str(d), "--quiet"]
    if invert_args:
      argv += ["--invert-args", invert_args]
    rc = manipulate.main(argv)
    if rc:
      return rc
    photo = imageio.to_uint8(imageio.read_image(args.image, size=64)[0])
    recon = np.asarray(Image.open(d / "inversion" / name / "result.png").convert("RGB"))
    rows = [np.asarray(Image.open(d / name / f"sefa{k}" / "strip.png").convert("RGB"))
            for k in DIRECTIONS]
    panels.append((title, photo, recon, rows))
  picture = _compose(panels, Image, ImageDraw)
  Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
  picture.save(args.picture)
  print(args.picture)
  return 0


def _compose(panels, Image, ImageDraw, scale: int = 2):
  """One panel per inversion: a title line, a header of steps, then per direction a label,
  the photo, the inversion and the strip; nearest-enlarged by ``scale``."""
  pad, label_w, title_h, head_h = 2, 56, 14, 12
  tile = 64 + pad
  strip_w = panels[0][3][0].shape[1]
  width = label_w + 2 * tile + strip_w
  blocks = []
  for title, photo, recon, rows in panels:
    h = title_h + head_h + len(rows) * (64 + pad) + pad
    canvas = Image.new("RGB", (width, h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill="black")
    draw.text((label_w + pad, title_h), "input", fill="black")
    draw.text((label_w + tile + pad, title_h), "inverted", fill="black")
    steps = np.linspace(RANGE[0], RANGE[1], STEPS)
    for i, s in enumerate(steps):
      draw.text((label_w + 2 * tile + pad + i * tile + 24, title_h), f"{s:+g}" if s else "0",
                fill="black")
    y = title_h + head_h
    for k, strip in zip(DIRECTIONS, rows):
      draw.text((4, y + 26), f"sefa{k}", fill="black")
      canvas.paste(Image.fromarray(photo), (label_w + pad, y + pad))
      canvas.paste(Image.fromarray(recon), (label_w + tile + pad, y + pad))
      canvas.paste(Image.fromarray(strip), (label_w + 2 * tile, y))
      y += 64 + pad
    blocks.append(np.asarray(canvas))
  stacked = np.concatenate(blocks, axis=0)
  big = np.repeat(np.repeat(stacked, scale, axis=0), scale, axis=1)
  return Image.fromarray(big)


if __name__ == "__main__":
  sys.exit(main())
