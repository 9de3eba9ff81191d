#!/usr/bin/env python3
"""How the denoising baselines' parameters were chosen (not a test): PSNR of each setting.

For noise sigma in ``--sigmas`` (on the [0, 1] pixel scale, as the CLI's ``--noise``), Gaussian
noise is added to centre crops of four scikit-image photos (astronaut, coffee, chelsea, rocket;
public domain / CC0, bundled with scikit-image) resized to 64 and 128 pixels, clipped to [0, 1],
and denoised with

* TV (Chambolle) with ``weight = k * sigma``, k in 0.5, 0.75, 1, 1.5, 2;
* wavelets (BayesShrink, soft, YCbCr, sigma estimated) -- no free factor;
* non-local means (fast mode, 5x5 patches, distance 6, known sigma) with ``h = k * sigma``,
  k in 0.3, 0.4, 0.5, 0.6, 0.8, 1.

Prints a markdown table of the mean PSNR (dB) over the 8 images per setting. ``mgan_jax.baselines``
uses TV k = 0.75 (best at every sigma tried) and NL-means k = 0.6 (best at sigma 0.05 and 0.1;
at 0.2 a smaller k is better).

Usage::

    python scripts/sweep_denoise_baselines.py [--sigmas 0.05,0.1,0.2] [--seed 0]

Needs the ``eval`` extra (scikit-image, PyWavelets). About 10 s of CPU time.
"""

from __future__ import annotations

import argparse

import numpy as np


def _images() -> list[np.ndarray]:
  from skimage import data, transform
  out = []
  for load in (data.astronaut, data.coffee, data.chelsea, data.rocket):
    im = load().astype(np.float64) / 255.0
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out.extend(transform.resize(im, (r, r), anti_aliasing=True) for r in (64, 128))
  return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  return float(-10.0 * np.log10(np.mean((a - b) ** 2)))


def main() -> None:
  from skimage import restoration
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sigmas", default="0.05,0.1,0.2")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  sigmas = [float(s) for s in args.sigmas.split(",")]
  images = _images()
  rng = np.random.default_rng(args.seed)
  settings = ([(f"TV k={k}", lambda n, s, k=k: restoration.denoise_tv_chambolle(
      n, weight=k * s, channel_axis=-1)) for k in (0.5, 0.75, 1.0, 1.5, 2.0)]
              + [("wavelet (estimated sigma)", lambda n, s: restoration.denoise_wavelet(
                  n, channel_axis=-1, convert2ycbcr=True, method="BayesShrink", mode="soft",
                  rescale_sigma=True))]
              + [(f"NL-means k={k}", lambda n, s, k=k: restoration.denoise_nl_means(
                  n, h=k * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True,
                  channel_axis=-1)) for k in (0.3, 0.4, 0.5, 0.6, 0.8, 1.0)])
  rows = {"noisy input": []}
  rows.update({name: [] for name, _ in settings})
  for sigma in sigmas:
    noisy = [np.clip(im + sigma * rng.standard_normal(im.shape), 0.0, 1.0) for im in images]
    rows["noisy input"].append(np.mean([_psnr(n, im) for n, im in zip(noisy, images)]))
    for name, fn in settings:
      rows[name].append(np.mean([_psnr(np.clip(fn(n, sigma), 0, 1), im)
                                 for n, im in zip(noisy, images)]))
  print("| setting | " + " | ".join(f"sigma {s}" for s in sigmas) + " |")
  print("|---|" + "---|" * len(sigmas))
  for name, vals in rows.items():
    print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")


if __name__ == "__main__":
  main()
