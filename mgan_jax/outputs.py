"""One image's output directory: ``OUT/<name>/`` with the result, the observation, a grid, the
latents and the metrics.

Files (``write``, into a staging directory that the caller publishes in one rename):

* ``result.png`` -- the post-processed result (``tasks.postprocess``);
* ``raw.png`` -- the generator output, only when post-processing changed it;
* ``degraded.png`` -- the observation at its own size;
* ``grid.png`` -- input | degraded | result [| clean when a separate clean target was given],
  with the column names and, with a clean target, the PSNR / SSIM of the degraded observation
  and of the result under them;
* ``latents.npz`` -- the final latents (``latents_io``; reusable with ``--init``);
* ``metrics.json`` -- ``status`` (``ok``, or ``failed`` with the ``reason``: the optimisation of
  this image produced NaN or infinite values; the other images of its batch are unaffected and
  only ``degraded.png`` and ``metrics.json`` are written for it), PSNR / SSIM against the clean
  target when there is one, the settings, a content hash of the inputs, timing, the per-chunk
  trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax import fileio, imageio, latents_io, metrics, tasks
from mgan_jax.errors import UserError
from mgan_jax.pipeline import ImageResult, Item

FILES = ("result.png", "degraded.png", "grid.png", "latents.npz", "metrics.json")


def output_dir(out: str | os.PathLike, item: Item) -> Path:
  return Path(out) / item.name


def check_free(out: str | os.PathLike, items: Sequence[Item], *, force: bool) -> None:
  """Refuse (UserError) before any work when an item's output directory already holds files,
  unless ``force``."""
  if Path(out).exists() and not Path(out).is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  if force:
    return
  taken = [it for it in items if fileio.is_occupied(output_dir(out, it))]
  if taken:
    more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
    raise UserError(f"{output_dir(out, taken[0])} already holds outputs{more}; pass --force to "
                    "replace them or choose another --out")


def image_metrics(item: Item, result: ImageResult) -> dict:
  """The ``metrics`` entry of metrics.json (measured on the 8-bit images that are written)."""
  res8 = imageio.to_uint8(result.image)
  if item.clean is not None:
    clean8 = imageio.to_uint8(item.clean)
    deg_full = tasks.upsample_for_display(item.observation.image, result.image.shape[0])
    q = metrics.quality(res8, clean8)
    base = metrics.quality(imageio.to_uint8(deg_full), clean8)
    m = {"psnr": q["psnr"], "ssim": q["ssim"], "degraded_psnr": base["psnr"],
         "degraded_ssim": base["ssim"],
         "note": "on the 8-bit result.png vs the clean target; degraded_* = the observation "
                 "(nearest-upsampled) vs the clean target"}
  else:
    m = {"note": "no clean target: nothing to compare against (use --clean)"}
  last = result.trace[-1] if result.trace else {}
  m["psnr_observed"] = last.get("psnr_observed")
  m["final_loss"] = float(result.losses[-1]) if len(result.losses) else None
  return m


def grid(item: Item, result: ImageResult, measured: Mapping[str, Any]) -> np.ndarray:
  """The labelled grid.png: input | degraded | result [| clean], PSNR / SSIM under the
  degraded observation and the result when there is a clean target (uint8)."""
  side = result.image.shape[0]
  deg_full = tasks.upsample_for_display(item.observation.image, side)
  q = lambda p, s: f"{p:.2f} dB  {s:.3f}" if p is not None and np.isfinite(p) else ""
  tiles = [(item.input, "input"), (deg_full, q(measured.get("degraded_psnr"),
                                                measured.get("degraded_ssim"))),
           (result.image, q(measured.get("psnr"), measured.get("ssim")))]
  header = ["input", "degraded", "result"]
  if item.info.get("clean_image"):
    tiles.append((item.clean, ""))
    header.append("clean")
  tiles[0] = (tiles[0][0], "")
  return imageio.labeled_grid([tiles], header=header, size=side, scale=max(1, 128 // side))


def write(stage: Path, item: Item, result: ImageResult, *, run_info: Mapping[str, Any],
          latents_meta: Mapping[str, Any]) -> None:
  """Write one image's files into the (empty, private) directory ``stage``."""
  stage = Path(stage)
  m: dict[str, Any] = {"image": os.fspath(item.path), "name": item.name,
                       "status": "failed" if result.failed else "ok"}
  if result.failed:
    m["reason"] = result.failed
  if item.digest:
    m["inputs_sha256"] = item.digest
  m.update(item.info)
  m["fit"] = item.fit.to_json()
  m["metrics"] = {} if result.failed else image_metrics(item, result)
  m["postprocess"] = result.postprocess
  m.update(run_info)
  m["time"] = {"batch_seconds": round(result.seconds, 3), **dict(run_info.get("time", {}))}
  m["trace"] = result.trace
  if result.failed:      # nothing worth keeping but the observation and the reason
    imageio.write_png(stage / "degraded.png", item.observation.image)
    imageio.write_json(stage / "metrics.json", m)
    return
  res8 = imageio.to_uint8(result.image)
  imageio.write_png(stage / "result.png", res8)
  if not np.array_equal(imageio.to_uint8(result.raw), res8):
    imageio.write_png(stage / "raw.png", result.raw)
  imageio.write_png(stage / "degraded.png", item.observation.image)
  imageio.write_png(stage / "grid.png", grid(item, result, m["metrics"]))
  latents_io.save(stage / "latents.npz", result.latents, latents_meta)
  imageio.write_json(stage / "metrics.json", m)


__all__ = ["FILES", "output_dir", "check_free", "image_metrics", "write"]
