#!/usr/bin/env python3
"""Regenerate ``examples/``: 64x64 inputs to try mGANprior on the embedded face prior.

    python scripts/make_examples.py                       # everything
    python scripts/make_examples.py --only masks samples  # a subset

Parts (see ``examples/README.md`` for provenance and licences):

* ``samples``: held-out samples of the default prior (the ``dcgan-faces64`` asset, seeds
  ``SAMPLE_SEEDS``; research-only weights), plus their latents ``dcgan_samples_z.npy``
  (float32 (4, 100)). Needs mgan_jax (fetches the asset on first use).
* ``photos``: public-domain / CC0 photos bundled with scikit-image, cropped to the face and
  resized to 64x64 (PIL Lanczos). Needs ``scikit-image``, which is *not* a project dependency:
  use a scratch venv (``python -m venv sk-venv && sk-venv/bin/pip install scikit-image``).
* ``masks``: 64x64 8-bit masks, white (255) = hole, the official mGANprior convention.
  Deterministic (seeded numpy + PIL drawing).

Only numpy and Pillow are imported at module level, so each part runs where its own
dependency is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # mgan_jax and convert, also when the project is not installed
SIZE = 64
SAMPLE_SEEDS = (9001, 9002, 9003, 9004)   # not used by any test or fixture
# name -> (skimage.data function, crop box (left, top, right, bottom) in the original)
PHOTOS = {
    "astronaut_face64.png": ("astronaut", (158, 42, 292, 176)),
    "camera_face64.png": ("camera", (150, 60, 270, 180)),
    "cat_face64.png": ("chelsea", (60, 0, 360, 300)),
}


def samples(out: Path) -> None:
  import jax.numpy as jnp

  from mgan_jax import assets
  from mgan_jax.checkpoint import load_model
  spec, params = load_model(assets.model_dir("dcgan-faces64"))
  z = np.stack([np.random.default_rng(s).standard_normal(spec.latent_dim) for s in SAMPLE_SEEDS])
  z = z.astype(np.float32)
  images = np.asarray(spec.synthesize(params, jnp.asarray(z)))
  np.save(out / "dcgan_samples_z.npy", z)
  for seed, image in zip(SAMPLE_SEEDS, images):
    pixels = np.round(np.clip(image * 0.5 + 0.5, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(out / f"dcgan_sample_{seed}.png", optimize=True)


def photos(out: Path) -> None:
  try:
    from skimage import data
  except ImportError:
    raise SystemExit("error: the photos part needs scikit-image (pip install scikit-image in a "
                     "scratch venv, not the project's)") from None
  for name, (func, box) in PHOTOS.items():
    image = Image.fromarray(getattr(data, func)()).crop(box)
    image.resize((SIZE, SIZE), Image.LANCZOS).save(out / name, optimize=True)


def _save_mask(hole: np.ndarray, path: Path) -> None:
  Image.fromarray(np.where(hole, 255, 0).astype(np.uint8), mode="L").save(path, optimize=True)


def masks(out: Path) -> None:
  hole = np.zeros((SIZE, SIZE), bool)
  hole[SIZE // 4:3 * SIZE // 4, SIZE // 4:3 * SIZE // 4] = True
  _save_mask(hole, out / "mask_center.png")

  hole = np.zeros((SIZE, SIZE), bool)
  hole[:, :SIZE // 2] = True
  _save_mask(hole, out / "mask_left_half.png")

  _save_mask(np.random.default_rng(7).random((SIZE, SIZE)) < 0.8, out / "mask_random80.png")

  rng = np.random.default_rng(8)
  canvas = Image.new("L", (SIZE, SIZE), 0)
  draw = ImageDraw.Draw(canvas)
  for _ in range(10):
    points = [tuple(rng.integers(4, SIZE - 4, 2).tolist())]
    for _ in range(int(rng.integers(2, 5))):
      step = rng.integers(-20, 21, 2)
      points.append(tuple(np.clip(np.add(points[-1], step), 0, SIZE - 1).tolist()))
    draw.line(points, fill=255, width=int(rng.integers(4, 7)), joint="curve")
  _save_mask(np.asarray(canvas) > 127, out / "mask_strokes.png")


PARTS = {"samples": samples, "photos": photos, "masks": masks}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
  parser.add_argument("--out", type=Path, default=ROOT / "examples")
  parser.add_argument("--only", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  for part in args.only:
    PARTS[part](args.out)
    print(f"wrote {part} to {args.out}")


if __name__ == "__main__":
  main()
