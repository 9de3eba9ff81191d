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
  only ``degraded.png`` and ``metrics.json`` are written for it), PSNR / SSIM / LPIPS against
  the clean target when there is one, the settings, a content hash of the inputs, timing, the
  per-chunk trace;
* ``curves.png`` -- the loss per iteration and the PSNR per chunk (``write_curves``), only when
  matplotlib is installed (the ``plots`` extra); a plotting problem never fails a run.

LPIPS is version 0.1 with the AlexNet trunk (``LPIPS_NET``; the reference ``lpips`` package's
default), one jitted call per image for the result and the observation; the weights
(``assets.lpips_params``) are loaded once per process by the command line and handed down
(``lpips_params``); without them, or for images smaller than ``lpips.MIN_SIZE``, LPIPS is
``null`` with a ``lpips_note``.
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
#: written only sometimes: raw.png (post-processing changed the result), curves.png (matplotlib)
OPTIONAL_FILES = ("raw.png", "curves.png")
#: the LPIPS trunk of metrics.json (``mgan_jax.lpips.NETS``)
LPIPS_NET = "alex"


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


def lpips_to_clean(images: Sequence[np.ndarray], clean: np.ndarray, *, params: Any,
                   net: str = LPIPS_NET) -> tuple[list[float] | None, str | None]:
  """(LPIPS v0.1 of each of ``images`` (R, R, 3) against ``clean``, None) in one jitted call,
  or (None, why) when it cannot be measured (no ``params``: ``assets.lpips_params(net)``, which
  the command line loads once; images too small for the trunk)."""
  from mgan_jax import lpips as lpips_lib
  if params is None:
    return None, "not measured: no LPIPS weights were given"
  side = min(clean.shape[:2])
  if side < lpips_lib.MIN_SIZE[net]:
    return None, (f"LPIPS-{net} needs images of at least {lpips_lib.MIN_SIZE[net]} px, these "
                  f"are {side} px")
  d = metrics.lpips_batch(np.stack(list(images)), np.stack([clean] * len(images)),
                          params=params, net=net, batch_size=len(images))
  return [float(v) for v in d], None


def image_metrics(item: Item, result: ImageResult, *, lpips_params: Any = None) -> dict:
  """The ``metrics`` entry of metrics.json (measured on the 8-bit images that are written);
  ``lpips_params``: ``assets.lpips_params(LPIPS_NET)`` (None: LPIPS is null, with a note)."""
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
    lp, why = lpips_to_clean([res8, imageio.to_uint8(deg_full)], clean8, params=lpips_params)
    m.update(lpips=lp[0] if lp else None, degraded_lpips=lp[1] if lp else None,
             lpips_net=f"{LPIPS_NET} (LPIPS v0.1)")
    if why:
      m["lpips_note"] = why
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
          latents_meta: Mapping[str, Any], lpips_params: Any = None) -> None:
  """Write one image's files into the (empty, private) directory ``stage``
  (``lpips_params``: as ``image_metrics``)."""
  stage = Path(stage)
  m: dict[str, Any] = {"image": os.fspath(item.path), "name": item.name,
                       "status": "failed" if result.failed else "ok"}
  if result.failed:
    m["reason"] = result.failed
  if item.digest:
    m["inputs_sha256"] = item.digest
  m.update(item.info)
  m["fit"] = item.fit.to_json()
  m["metrics"] = ({} if result.failed
                  else image_metrics(item, result, lpips_params=lpips_params))
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
  write_curves(stage / "curves.png", result, title=item.name)


def write_curves(path: Path, result: ImageResult, *, title: str = "") -> bool:
  """Plot the loss per iteration and the PSNR per chunk (against the clean target, else D(result)
  against the observation) into ``path`` (inside a private staging directory: no temporary
  name needed). Returns False (and leaves no file) when matplotlib is missing or plotting
  fails: curves never fail a run."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
  except Exception:   # noqa: BLE001 - optional extra
    return False
  try:
    fig = Figure(figsize=(6.4, 2.4), dpi=80)
    ax1, ax2 = fig.subplots(1, 2)
    losses = np.asarray(result.losses, np.float64)
    if losses.size:
      ax1.plot(np.arange(losses.size), losses, lw=1)
      if np.all(losses > 0):
        ax1.set_yscale("log")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss")
    key = "psnr" if any("psnr" in r for r in result.trace) else "psnr_observed"
    rows = [r for r in result.trace if r.get(key) is not None and np.isfinite(r[key])]
    ax2.plot([r["iteration"] for r in rows], [r[key] for r in rows], marker="o", ms=3, lw=1)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("PSNR (dB)" if key == "psnr" else "PSNR of D(result) vs observation")
    if title:
      fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True
  except Exception:   # noqa: BLE001 - a plot is never worth a failed run
    Path(path).unlink(missing_ok=True)
    return False


__all__ = ["FILES", "OPTIONAL_FILES", "LPIPS_NET", "output_dir", "check_free", "lpips_to_clean",
           "image_metrics", "write", "write_curves"]
