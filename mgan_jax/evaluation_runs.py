"""The evaluation's runs: a ``Job`` (a case, a method, settings, an image set) resolved to a
``Prepared`` configuration, built into a compiled ``pipeline.Inverter`` (``build_inverter``,
safe in a compile thread) and executed (``execute``) into a ``Run``; the run cache; and the
per-image metrics of the outputs (``measure``, ``summarize``). The overview is
``mgan_jax.evaluation``'s docstring.

Every configuration's raw results are kept in the cache (one ``.npz`` per configuration, keyed
by a hash of everything that determines it: ``save_run`` / ``load_run``), so a rerun after an
interruption, or with other metrics or reports, only computes what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax import fileio, imageio, metrics, tasks
from mgan_jax.evaluation_cases import ImageSet

#: version of the cached run files (bump when their content changes)
CACHE_VERSION = 1
#: image pairs per LPIPS call (measure pads to a multiple)
LPIPS_BATCH = 16


# ----------------------------------------------------------------------------------------------
# Runs (cached, compiled ahead).
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """One inversion configuration on an image set: raw outputs (n, R, R, 3), loss traces
  (n, T), per-image chunk traces (PSNR of the raw output; colorize: luma merged), seconds per
  image (compilation excluded), compile seconds; with ``snapshots``: the raw output after every
  chunk, (n, chunks, R, R, 3), and the iterations they were taken at."""
  raw: np.ndarray
  losses: np.ndarray
  traces: list
  seconds_per_image: float
  compile_seconds: float
  snapshots: np.ndarray | None = None
  snapshot_iterations: list | None = None
  cached: bool = False
  device: str | None = None             # where the inversion ran (``environment()['device']``)


@dataclasses.dataclass
class Job:
  """One inversion configuration to run: a case (``CASES``), a method (``GAN_METHODS``),
  settings on top of the configuration's ``overrides``, an image set; ``snapshots``: also keep
  the image after these iterations (chunk ends; the iterations sweep)."""
  case: str
  method: str
  overrides: dict
  images: ImageSet
  snapshots: tuple[int, ...] = ()


@dataclasses.dataclass
class Prepared:
  """A job resolved: its settings, task (with the model's default output options), the
  observations, the cache payload and file (None without a cache)."""
  job: Job
  settings: Any
  task: tasks.Task
  obs: list
  payload: dict
  path: Path | None

  @property
  def key(self) -> str:
    return cache_key(self.payload)

  @property
  def cached(self) -> bool:
    """Is the run's result in the cache already?"""
    return self.path is not None and self.path.is_file()

  def describe(self) -> str:
    s = self.settings
    return (f"{self.job.case} {self.job.method}"
            + (f" N={s.codes} layer {s.layer}" if s.layer else "") + f" {s.iterations} it"
            + (f" perceptual {s.loss.perceptual_weight:g}" if s.loss.perceptual_weight else "")
            + "".join(f" {k}={v}" for k, v in self.job.overrides.items()
                      if k not in ("chunk", "codes", "layer", "iterations", "perceptual_weight")))


def _recording_inverter(base: type) -> type:
  """An ``Inverter`` that also keeps each item's image after every chunk (from the engine's
  per-chunk render, which the trace rows are computed from: no extra work)."""

  class Recording(base):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      self.snapshots: dict = {}

    def _trace_row(self, item, target, raw, done, loss):
      self.snapshots[(item.name, done)] = np.asarray(raw, np.float32)
      return super()._trace_row(item, target, raw, done, loss)

  return Recording


def cache_key(payload: Mapping[str, Any]) -> str:
  """The run cache's file key of a configuration (a hash of its JSON payload)."""
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                        ).hexdigest()[:20]


def _items(images: ImageSet, obs: Sequence[tasks.Observation]) -> list:
  from mgan_jax.pipeline import Item
  return [Item(name=n, path=Path(n), input=c, fit=imageio.FitReport(c.shape[:2], c.shape[:2]),
               observation=o, clean=c)
          for n, c, o in zip(images.names, images.clean, obs)]


def build_inverter(gen: Any, gen_params: Any, vgg: Any, prep: Prepared, *, batch_size: int
                   ) -> tuple[Any, float]:
  """(``pipeline.Inverter`` for the job, with its programs compiled; the compile seconds). The
  task's output options (paste, back-projection) are left out: they do not change the
  optimisation, and every output is computed from the raw result (``apply_post``). Safe to call
  from a worker thread (the engine's program cache is thread-safe)."""
  from mgan_jax.pipeline import Inverter
  items = _items(prep.job.images, prep.obs)
  cls = _recording_inverter(Inverter) if prep.job.snapshots else Inverter
  task = dataclasses.replace(prep.task, paste_known=False, back_project=False)
  inv = cls(gen, gen_params, vgg, prep.settings, task,
            batch_size=max(1, min(batch_size, len(items))))
  return inv, inv.compile(items[:inv.batch_size])


# here rather than in evaluation.py, which re-exports it: ``execute`` records each run's device
def environment() -> dict:
  """Versions and the machine (for the report)."""
  import jax
  dev = jax.devices()[0]
  return {"python": platform.python_version(), "jax": jax.__version__,
          "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "device": f"{dev.platform} ({dev.device_kind})",
          "device_count": jax.device_count(),
          "matmul_precision": jax.config.jax_default_matmul_precision or "default"}


def execute(inv: Any, prep: Prepared, *, compile_seconds: float) -> Run:
  """Run the prepared job's images through ``inv`` in batches (one compiled program)."""
  items = _items(prep.job.images, prep.obs)
  groups = [items[i:i + inv.batch_size] for i in range(0, len(items), inv.batch_size)]
  raw, losses, traces, seconds = [], [], [], 0.0
  for g in groups:
    t0 = time.perf_counter()
    res = inv.run(g)
    seconds += time.perf_counter() - t0
    raw += [r.raw for r in res]
    losses += [r.losses for r in res]
    traces += [r.trace for r in res]
  run = Run(np.stack(raw).astype(np.float32), np.stack(losses).astype(np.float32), traces,
            seconds / len(items), compile_seconds, device=environment()["device"])
  if prep.job.snapshots:
    its = sorted({d for _, d in inv.snapshots if d in prep.job.snapshots})
    run.snapshots = np.stack([np.stack([inv.snapshots[(it.name, d)] for d in its])
                              for it in items])
    run.snapshot_iterations = its
  return run


def load_run(path: Path, *, snapshots: bool) -> Run:
  """A cached ``Run`` (``save_run``)."""
  with np.load(path, allow_pickle=False) as f:
    meta = json.loads(str(f["meta"]))
    return Run(f["raw"], f["losses"], meta["traces"], meta["seconds_per_image"],
               meta["compile_seconds"], f["snapshots"] if snapshots else None,
               meta.get("snapshot_iterations"), cached=True, device=meta.get("device"))


def save_run(path: Path, run: Run, payload: Mapping[str, Any]) -> None:
  """Publish a run's arrays and metadata as one ``.npz`` (atomically)."""
  meta = {"payload": dict(payload), "traces": run.traces,
          "seconds_per_image": run.seconds_per_image, "compile_seconds": run.compile_seconds,
          "snapshot_iterations": run.snapshot_iterations, "device": run.device}
  arrays = {"snapshots": run.snapshots} if run.snapshots is not None else {}
  with fileio.publish(path, replace=True) as tmp:
    with open(tmp, "wb") as fh:
      np.savez(fh, raw=run.raw, losses=run.losses, meta=np.asarray(json.dumps(
          imageio._finite(meta), default=imageio._json_default)), **arrays)


# ----------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------
def measure(outputs: np.ndarray, clean: np.ndarray, *, lpips_nets: Sequence[str] = ("alex",),
            auc: bool = False) -> dict[str, list[float]]:
  """Per-image metrics of outputs (n, R, R, 3) against clean (n, R, R, 3) (floats in [-1, 1] or
  uint8), on the 8-bit images: {'psnr', 'ssim', 'lpips_<net>'..., 'auc'?} -> lists of n. LPIPS
  runs on batches of ``LPIPS_BATCH`` (padded), so one program serves every image set."""
  from mgan_jax import assets
  out8, clean8 = imageio.to_uint8(np.asarray(outputs)), imageio.to_uint8(np.asarray(clean))
  res: dict[str, list[float]] = metrics.quality_batch(out8, clean8)
  n = len(out8)
  pad = (-n) % LPIPS_BATCH
  grow = lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
  for net in lpips_nets:
    d = metrics.lpips_batch(grow(out8), grow(clean8), params=assets.lpips_params(net), net=net,
                            batch_size=LPIPS_BATCH)
    res[f"lpips_{net}"] = [float(v) for v in d[:n]]
  if auc:
    res["auc"] = [metrics.colorization_auc(a, b) for a, b in zip(out8, clean8)]
  return res


def summarize(values: Sequence[float]) -> dict[str, float]:
  """{'mean', 'std', 'n'} of finite values (PSNR of identical images is +inf: capped at 100)."""
  v = np.asarray([min(float(x), 100.0) for x in values], np.float64)
  return {"mean": float(v.mean()) if v.size else float("nan"),
          "std": float(v.std()) if v.size else float("nan"), "n": int(v.size)}



__all__ = ["CACHE_VERSION", "LPIPS_BATCH", "Run", "Job", "Prepared", "build_inverter", "cache_key",
           "execute", "environment", "load_run", "save_run", "measure", "summarize"]
