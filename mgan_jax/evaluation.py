"""Measure what the method is for: multi-code inversion against single codes and the classical
answers, per task, on held-out images; the paper's layer-wise and number-of-codes analyses.

``python -m mgan_jax.evaluate`` (``mgan_jax.evaluate``) is the command; this module is the
library under it::

    cfg = Config(samples=32, cases=("reconstruct", "sr4"), sweeps={"layer": (1, 2, 3, 4)})
    report = evaluate(cfg, log=print)            # runs everything, returns the results
    write_outputs(report, cfg)                   # results.md / .csv / .json, figures

**Images.** ``samples`` held-out samples of the prior: ``z = numpy.random.default_rng(seed)
.standard_normal(Z)`` for seeds ``sample_seed, sample_seed + 1, ...`` (the recipe of
``scripts/make_examples.py``, whose seeds 9001-9004 are refused here so that the examples stay
unseen), rendered and rounded to 8 bits as a PNG would hold them; and/or the user's photos
(``images``, fitted to the model's resolution by ``fit``). The sweeps run on a separate set
(``sweep_samples`` samples from ``sweep_seed``), so that settings chosen from the sweeps are
reported on images they were not chosen on.

**Cases** (``CASES``): a task of ``mgan_jax.tasks`` with its parameters -- reconstruct,
colorize, super-resolve x4 / x8, inpaint with four masks built by ``make_mask`` (centre box,
random 80 % of the pixels, strokes, the left half; fixed seeds) and denoise (sigma 0.1).

**Methods.** Every inversion runs on ``pipeline.Inverter`` (the CLI's engine: one compiled
program per configuration, all images of a batch in it) with the settings the CLI would use
(``mgan_jax.defaults`` through ``cli.resolve_settings``; ``overrides`` change them for every
run): ``multi-code`` and the single codes ``z`` / ``w`` / ``w+`` the generator has. The
baselines are ``mgan_jax.baselines`` (``BASELINES[task]``) on the same observations. Each
inversion is scored with every output its task can write (``post``): ``raw`` (the generator
output), ``luma`` (colorize: the official luma merge), ``paste`` (inpaint: known pixels pasted
back), ``back-project`` (super-resolve: ``operators.back_project``); the bicubic baseline is
back-projected too, for a fair comparison.

**Metrics** (``measure``), on the 8-bit images, per image, against the clean target: PSNR and
SSIM (``metrics.quality``), LPIPS v0.1 with the trunks of ``lpips`` ('alex' and/or 'vgg'),
colorization AuC (colorize cases), and seconds per image (inversions: the wall time of the
compiled runs divided by the images, compilation excluded and reported apart).

**Sweeps** (``sweeps``: ``{key: values}``, one key at a time from the task's defaults; keys
``SWEEP_KEYS``) of the multi-code method on ``sweep_cases``: ``layer`` (the composition layer:
the paper's layer-wise analysis), ``codes`` (the number of codes N), ``iterations`` (one run
at the largest value; PSNR read from its per-chunk trace at each value), or any settings key
(``perceptual_weight``, ``lr``, ...).

**Cost.** Every run (``Job``: a case, a method, settings, an image set) is one configuration
of the engine; its compiled programs depend on the task's operator, the method, N, the layer,
the loss and optimiser settings, the chunk length and the batch shape -- not on the number of
iterations, nor on the inpainting mask or the images. The configuration of docs/RESULTS.md
therefore fixes the chunk (25) for every run and gives the sweeps one image set, so that runs
share programs; the programs of the runs still to come compile in ``compile_workers`` threads
while a run executes (``Evaluator.compile_ahead``); ``time_budget`` bounds the sweeps.

Every configuration's raw results are kept in ``cache`` (``evaluation_runs``), so a rerun after
an interruption, or with other metrics or reports, only computes what is missing.

**Modules**, one job each: ``mgan_jax.evaluation_cases`` (what is evaluated: cases, masks,
outputs, images, observations), ``mgan_jax.evaluation_config`` (``Config``, the config file,
one run's settings), ``mgan_jax.evaluation_runs`` (jobs, the compiled runs and their cache, the
metrics); this module runs them (``Evaluator``, ``evaluate``) and re-exports their names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mgan_jax import baselines, cli, defaults as defaults_lib, fileio, tasks
from mgan_jax.errors import UserError
from mgan_jax.evaluation_cases import (
    CASES, EXAMPLE_SEEDS, GAN_METHODS, LPIPS_NETS, MASK_KINDS, POSTS, Case, ImageSet, apply_post,
    case_task, check_seeds, default_post, make_mask, observations, photo_set, posts_of,
    prior_samples)
from mgan_jax.evaluation_config import (
    SETTING_KEYS, SWEEP_KEYS, Config, load_config, run_settings)
from mgan_jax.evaluation_runs import (
    CACHE_VERSION, LPIPS_BATCH, Job, Prepared, Run, cache_key, build_inverter, environment, execute,
    load_run, measure, save_run, summarize)

#: jobs compiled ahead of the running one, per compile thread
AHEAD_PER_WORKER = 2


# ----------------------------------------------------------------------------------------------
# The evaluation.
# ----------------------------------------------------------------------------------------------
METRIC_KEYS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "auc")


@dataclasses.dataclass
class Row:
  """One (case, method, output) of the table: ``kind`` 'gan' | 'baseline' | 'observation';
  ``per_image``: metric -> n values; ``seconds_per_image``; ``default``: the output the CLI
  writes by default for this method."""
  case: str
  method: str
  post: str
  kind: str
  per_image: dict
  seconds_per_image: float
  default: bool = True
  settings: dict | None = None
  compile_seconds: float | None = None

  @property
  def label(self) -> str:
    return self.method if self.post == "raw" else f"{self.method} + {self.post}"

  def mean(self, metric: str) -> float | None:
    v = self.per_image.get(metric)
    return summarize(v)["mean"] if v else None

  def to_json(self) -> dict:
    return {"case": self.case, "method": self.method, "post": self.post, "kind": self.kind,
            "default_output": self.default, "label": self.label,
            "summary": {k: summarize(v) for k, v in self.per_image.items()},
            "seconds_per_image": self.seconds_per_image,
            "compile_seconds": self.compile_seconds, "settings": self.settings,
            "per_image": self.per_image}


@dataclasses.dataclass
class Report:
  """Everything ``evaluate`` measured (``write_outputs`` turns it into files)."""
  config: dict
  model: dict
  images: dict
  sweep_images: dict | None
  rows: list
  sweeps: dict
  curves: dict
  examples: dict
  environment: dict
  skipped: list
  seconds: float
  command: str = ""
  timing: dict = dataclasses.field(default_factory=dict)
  sweep_starts: dict = dataclasses.field(default_factory=dict)
  partial: bool = False


class Evaluator:
  """Loads the model once and runs cases, methods and sweeps (see the module docstring).

  Jobs run in the order they are asked for; ``compile_ahead(jobs)`` first hands the programs of
  the jobs that are not cached to ``compile_workers`` threads, which compile them while the
  earlier jobs run (the accelerator runs one job, the host's cores compile the next ones)."""

  def __init__(self, config: Config, *, log: Callable[[str], Any] = lambda s: None):
    from mgan_jax import assets
    self.cfg = config.check()
    self.log = log
    try:
      self.gen, self.params, self.label, self.model_name = assets.load_generator(
          None if config.model and _is_dir(config.model) else config.model,
          directory=config.model if config.model and _is_dir(config.model) else None)
    except UserError as e:
      raise UserError(f"model: {e}") from None
    self.cache = Path(config.cache) if config.cache else Path(config.out) / "runs"
    self._vgg = None
    self._obs: dict = {}
    self._prepared: dict = {}
    self._ahead: dict = {}
    self._queue: list = []
    self._pool = None
    self.compile_seconds = 0.0
    self.run_devices: dict[str, int] = {}  # device -> inversions run (or cached) on it

  def is_cached(self, job: Job) -> bool:
    return self.prepare(job).cached

  def vgg(self, settings: Any) -> Any:
    from mgan_jax import assets
    if not settings.loss.uses_vgg:
      return None
    if self._vgg is None:
      self._vgg = assets.vgg_params()
    return self._vgg

  def methods(self) -> tuple[list[str], list[str]]:
    """(methods this generator has, skipped ones with the reason)."""
    ok, skipped = [], []
    for m in self.cfg.methods:
      try:
        cli.engine_method(m, self.gen)
        ok.append(m)
      except UserError as e:
        skipped.append(f"method {m}: {e}")
    return ok, skipped

  # ----- jobs ---------------------------------------------------------------------------------
  def table_jobs(self, images: ImageSet, case: str) -> list[Job]:
    return [Job(case, m, {}, images) for m in self.methods()[0]]

  def sweep_jobs(self, key: str, values: Sequence[Any], images: ImageSet, case: str
                 ) -> list[Job]:
    """The multi-code runs of one sweep on one case, from the case's ``sweep_overrides``. The
    iterations sweep is one run at the largest value, kept after every ``gcd(values)``."""
    pin = dict(self.cfg.sweep_overrides.get(case, {}))
    if key == "iterations":
      step = math.gcd(*[int(v) for v in values]) or 1
      return [Job(case, "multi-code", {**pin, "iterations": max(values), "chunk": step},
                  images, snapshots=tuple(sorted({int(v) for v in values if v})))]
    return [Job(case, "multi-code", {**pin, key: v}, images) for v in values]

  def prepare(self, job: Job) -> Prepared:
    """Resolve a job (settings, task, observations, cache file); memoised."""
    over = {**self.cfg.overrides, **job.overrides}
    case = CASES[job.case]
    settings, task, _ = run_settings(self.gen, self.model_name, case, method=job.method,
                                     overrides=over, seed=self.cfg.seed)
    fp = job.images.fingerprint()
    run_task = dataclasses.replace(task, paste_known=False, back_project=False)
    payload = {"version": CACHE_VERSION, "case": case.name, "model": self.label,
               "mask": case.mask, "method": job.method, "settings": settings.to_json(),
               "task": run_task.to_json(), "images": fp, "snapshots": job.snapshots}
    key = cache_key(payload)
    hit = self._prepared.get(key)
    if hit is not None:
      return dataclasses.replace(hit, job=job)
    okey = (case.name, json.dumps(run_task.to_json(), sort_keys=True), fp)
    if okey not in self._obs:
      self._obs[okey] = observations(case, task, job.images, seed=self.cfg.seed)
    self.vgg(settings)                     # loaded here, never first in a compiling thread
    path = self.cache / f"{case.name}-{key}.npz" if self.cache is not None else None
    prep = Prepared(job, settings, task, self._obs[okey], payload, path)
    self._prepared[key] = prep
    return prep

  def compile_ahead(self, jobs: Sequence[Job]) -> None:
    """Queue the jobs that are not cached, in order, for the ``compile_workers`` threads
    (0: each job compiles when it runs). At most ``AHEAD_PER_WORKER`` jobs per thread are
    compiled ahead of the one running, so a run cut short by its time budget leaves little
    compilation behind."""
    workers = self.cfg.workers()
    if not workers:
      return
    from concurrent.futures import ThreadPoolExecutor
    if self._pool is None:
      self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mgan-compile")
    queued = {p.key for p in self._queue}
    for job in jobs:
      prep = self.prepare(job)
      if prep.key in queued or prep.cached:
        continue
      queued.add(prep.key)
      self._queue.append(prep)
    self._refill()

  def _refill(self) -> None:
    if self._pool is None:
      return
    while self._queue and len(self._ahead) < AHEAD_PER_WORKER * self.cfg.workers():
      prep = self._queue.pop(0)
      if prep.key in self._ahead or prep.cached:
        continue
      self._ahead[prep.key] = self._pool.submit(
          build_inverter, self.gen, self.params, self.vgg(prep.settings), prep,
          batch_size=self.cfg.batch_size)

  def close(self) -> None:
    """Cancel the compilations no job will use (a time budget ran out)."""
    self._queue.clear()
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
      self._pool = None
    self._ahead.clear()

  def run(self, job: Job) -> tuple[Run, Prepared]:
    """Run one job (or read it from the cache): (run, prepared job)."""
    prep = self.prepare(job)
    if prep.cached:
      self.log(f"  {prep.describe()}: cached")
      run = load_run(prep.path, snapshots=job.snapshots)
      self._count_device(run)
      return run, prep
    t0 = time.perf_counter()
    ahead = self._ahead.pop(prep.key, None)
    self._queue = [p for p in self._queue if p.key != prep.key]
    self._refill()
    if ahead is not None:
      inv, compile_s = ahead.result()
    else:
      inv, compile_s = build_inverter(self.gen, self.params, self.vgg(prep.settings), prep,
                                      batch_size=self.cfg.batch_size)
    waited = time.perf_counter() - t0
    self.compile_seconds += compile_s
    run = execute(inv, prep, compile_seconds=compile_s)
    self._count_device(run)
    if prep.path is not None:
      save_run(prep.path, run, prep.payload)
    n = len(job.images)
    how = (f"compiled ahead in {compile_s:.1f} s, waited {waited:.1f} s" if ahead is not None
           else f"compile {compile_s:.1f} s")
    self.log(f"  {prep.describe()}: {n} image(s) in {time.perf_counter() - t0:.1f} s "
             f"({how}, {run.seconds_per_image:.2f} s/image)")
    return run, prep

  def _count_device(self, run: Run) -> None:
    d = run.device or "unrecorded"
    self.run_devices[d] = self.run_devices.get(d, 0) + 1

  def samples(self, n: int, *, seed: int) -> ImageSet:
    """``prior_samples``, kept in the run cache (``samples-<model>-<seed>-<n>.npz``): the image
    set is then bit-identical wherever the cache is reused (another machine's float rounding
    could otherwise move an 8-bit value, and with it every run's cache key)."""
    if self.cache is None:
      return prior_samples(self.gen, self.params, n, seed=seed)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.label)
    path = self.cache / f"samples-{safe}-{seed}-{n}.npz"
    if path.is_file():
      with np.load(path, allow_pickle=False) as f:
        clean = f["clean"]
      seeds = list(range(seed, seed + n))
      if clean.shape == (n, self.gen.resolution, self.gen.resolution, 3):
        return ImageSet([f"sample-{s}" for s in seeds], clean.astype(np.float32),
                        [{"kind": "prior sample", "seed": s} for s in seeds])
    images = prior_samples(self.gen, self.params, n, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.publish(path, replace=True) as tmp:
      with open(tmp, "wb") as fh:
        np.savez(fh, clean=images.clean)
    return images

  # ----- the table ----------------------------------------------------------------------------
  def table_case(self, name: str, images: ImageSet, index: int
                 ) -> tuple[list[Row], dict | None, dict]:
    """One case of the main table: (rows, mean trace of multi-code, example outputs)."""
    cfg = self.cfg
    case = CASES[name]
    auc = case.task == "colorize"
    ex_index = index % len(images)
    ex: dict = {"image": images.names[ex_index], "clean": images.clean[ex_index]}
    rows: list[Row] = []
    curve = None
    prep = None
    for job in self.table_jobs(images, name):
      run, prep = self.run(job)
      task, obs = prep.task, prep.obs
      for post in posts_of(task):
        outs = np.stack([apply_post(post, task, r, o) for r, o in zip(run.raw, obs)])
        rows.append(Row(name, job.method, post, "gan",
                        measure(outs, images.clean, lpips_nets=cfg.lpips, auc=auc),
                        run.seconds_per_image, default=post == default_post(task),
                        settings=prep.settings.to_json(), compile_seconds=run.compile_seconds))
        if post == default_post(task):
          ex[job.method] = outs[ex_index]
      if job.method == "multi-code":
        curve = _mean_trace(run.traces)
    if prep is None:   # no GAN method: the observations of the defaults' task
      d = defaults_lib.defaults_for(self.gen.family, self.model_name,
                                    tasks.parse_task(case.task).tasks)
      task = case_task(case, self.gen, d)
      obs = observations(case, task, images, seed=cfg.seed)
    else:
      task, obs = prep.task, prep.obs
    ex["observation"] = tasks.upsample_for_display(obs[ex_index].image, images.clean.shape[1])
    if cfg.baselines:
      rows += self._baselines(case, task, obs, images, auc, ex, ex_index)
    if case.task == "denoise":
      noisy = np.stack([o.image for o in obs])
      rows.append(Row(name, "noisy input", "raw", "observation",
                      measure(noisy, images.clean, lpips_nets=cfg.lpips), 0.0))
    return rows, curve, ex

  def _baselines(self, case: Case, task: tasks.Task, obs: list, images: ImageSet, auc: bool,
                 ex: dict, ex_index: int) -> list[Row]:
    rows = []
    best = None
    for name in baselines.BASELINES.get(case.task, {}):
      outs, seconds = [], 0.0
      o = obs[0]   # warm-up (imports, compilation) outside the timing
      baselines.apply(case.task, name, o.image, mask=o.loss_mask, factor=task.factor,
                      sigma=task.noise)
      for o in obs:
        t0 = time.perf_counter()
        outs.append(baselines.apply(case.task, name, o.image, mask=o.loss_mask,
                                    factor=task.factor, sigma=task.noise))
        seconds += time.perf_counter() - t0
      outs_a = np.stack(outs)
      row = Row(case.name, name, "raw", "baseline",
                measure(outs_a, images.clean, lpips_nets=self.cfg.lpips, auc=auc),
                seconds / len(obs))
      rows.append(row)
      if best is None or row.mean("psnr") > best[0].mean("psnr"):
        best = (row, outs_a)
      if case.task == "super-resolve" and name == "bicubic":
        apply_post("back-project", task, outs_a[0], obs[0])   # warm-up
        t0 = time.perf_counter()
        bp = np.stack([apply_post("back-project", task, b, o) for b, o in zip(outs_a, obs)])
        sec = (time.perf_counter() - t0) / len(obs) + row.seconds_per_image
        rows.append(Row(case.name, name, "back-project", "baseline",
                        measure(bp, images.clean, lpips_nets=self.cfg.lpips, auc=auc), sec,
                        default=False))
    if best is not None:
      ex["baseline"] = best[1][ex_index]
      ex["baseline_name"] = best[0].method
    return rows

  # ----- sweeps -------------------------------------------------------------------------------
  def sweep_case(self, key: str, values: Sequence[Any], images: ImageSet, case: str, *,
                 stop: Callable[[], bool] = lambda: False) -> tuple[list[dict], list]:
    """One sweep on one case: ([{'value', 'summary': {metric: {...}}, 'seconds_per_image',
    'settings'?}, ...] of the multi-code method at the case's default output, the values not
    run because ``stop()`` was true before their run)."""
    out = []
    jobs = self.sweep_jobs(key, values, images, case)
    if key == "iterations":
      if stop() and not self.is_cached(jobs[0]):
        return [], list(values)
      run, prep = self.run(jobs[0])
      post = default_post(prep.task)
      top = max(values)
      for v in values:
        if v == 0:
          continue
        j = run.snapshot_iterations.index(v)
        outs = np.stack([apply_post(post, prep.task, r, o)
                         for r, o in zip(run.snapshots[:, j], prep.obs)])
        per = measure(outs, images.clean, lpips_nets=self.cfg.lpips)
        out.append({"value": v, "summary": {k: summarize(x) for k, x in per.items()},
                    "seconds_per_image": run.seconds_per_image * v / max(top, 1)})
      return out, []
    for i, (v, job) in enumerate(zip(values, jobs)):
      if stop() and not self.is_cached(job):
        return out, list(values[i:])
      run, prep = self.run(job)
      post = default_post(prep.task)
      outs = np.stack([apply_post(post, prep.task, r, o) for r, o in zip(run.raw, prep.obs)])
      per = measure(outs, images.clean, lpips_nets=self.cfg.lpips)
      out.append({"value": v, "summary": {k: summarize(x) for k, x in per.items()},
                  "seconds_per_image": run.seconds_per_image,
                  "settings": prep.settings.to_json()})
    return out, []

  def sweep_start(self, key: str, case: str) -> Any:
    """The value of ``key`` the sweeps of ``case`` start from (``sweep_overrides``, else the
    defaults with the configuration's ``overrides``)."""
    pin = dict(self.cfg.sweep_overrides.get(case, {}))
    if key in pin:
      return pin[key]
    settings, _, _ = run_settings(self.gen, self.model_name, CASES[case], method="multi-code",
                                  overrides={**self.cfg.overrides, **pin}, seed=self.cfg.seed)
    return setting_value(settings.to_json(), key)


def setting_value(settings: Mapping[str, Any], key: str) -> Any:
  """The value of a ``SETTING_KEYS`` key in ``pipeline.Settings.to_json()``."""
  loss, opt = settings.get("loss", {}), settings.get("optimizer", {})
  if key in ("lr",):
    return opt.get("lr")
  if key == "optimizer":
    return opt.get("name")
  if key == "perceptual_layer":
    return ",".join(loss.get("perceptual_layers", ()))
  if key in loss:
    return loss[key]
  return settings.get(key)


def _is_dir(model: str) -> bool:
  return os.path.isdir(model) or os.sep in model or model.startswith(".")


def _mean_trace(traces: Sequence[Sequence[Mapping[str, Any]]]) -> dict:
  """Mean over images of the per-chunk trace: {'iteration': [...], 'loss': [...], 'psnr':
  [...]}."""
  if not traces or not traces[0]:
    return {"iteration": [], "loss": [], "psnr": []}
  its = [r["iteration"] for r in traces[0]]
  loss = np.mean([[r["loss"] for r in t] for t in traces], axis=0)
  psnr = np.mean([[min(r.get("psnr") or 0.0, 100.0) for r in t] for t in traces], axis=0)
  return {"iteration": its, "loss": [float(x) for x in loss], "psnr": [float(x) for x in psnr]}


def evaluate(config: Config, *, log: Callable[[str], Any] = lambda s: None,
             command: str = "", on_stage: Callable[[Report], Any] | None = None) -> Report:
  """Run the table and the sweeps of ``config``; returns the ``Report``. ``on_stage(report)``
  after the table and after each sweep, with what is measured so far (to publish partial
  results). With a ``time_budget``, sweep runs that would start after it are skipped (and
  listed in ``Report.skipped``)."""
  t0 = time.perf_counter()
  ev = Evaluator(config, log=log)
  cfg = ev.cfg
  res = ev.gen.resolution
  images = ImageSet([], np.zeros((0, res, res, 3), np.float32), [])
  if cfg.table:
    if cfg.samples:
      images = ev.samples(cfg.samples, seed=cfg.sample_seed)
    images = images + photo_set(cfg.images, res, fit=cfg.fit)
  sweep_images = None
  if cfg.sweeps:
    if cfg.sweep_samples:
      sweep_images = ev.samples(cfg.sweep_samples, seed=cfg.sweep_seed)
    elif len(images):
      sweep_images = images
    else:
      raise UserError("sweeps: sweep_samples is 0 and the table has no images")
  sweep_sets = {k: sweep_images.subset(spec["samples"]) if spec.get("samples") else sweep_images
                for k, spec in cfg.sweeps.items()}
  _, skipped = ev.methods()
  for s in skipped:
    log(f"skipped: {s}")
  jobs = [j for c in (cfg.cases if cfg.table else []) for j in ev.table_jobs(images, c)]
  jobs += [j for k, spec in cfg.sweeps.items() for c in spec["cases"]
           for j in ev.sweep_jobs(k, spec["values"], sweep_sets[k], c)]
  ev.compile_ahead(jobs)
  rows: list[Row] = []
  curves, examples, sweeps, starts, timing = {}, {}, {}, {}, {}
  describe = lambda s: None if s is None else {"n": len(s), "names": s.names,
                                               "sources": s.sources}

  env = {**environment(), "compile_workers": cfg.workers(), "run_devices": ev.run_devices}
  spent = lambda: bool(cfg.time_budget) and time.perf_counter() - t0 > cfg.time_budget

  def report(partial: bool = True) -> Report:
    timing.update(total=time.perf_counter() - t0, compile=ev.compile_seconds)
    return Report(config=cfg.to_json(), model={"label": ev.label, "family": ev.gen.family,
                                               "resolution": res, "name": ev.model_name},
                  images=describe(images), sweep_images=describe(sweep_images), rows=list(rows),
                  sweeps={k: dict(v) for k, v in sweeps.items() if v}, curves=dict(curves),
                  examples=dict(examples), environment=env, skipped=list(skipped),
                  seconds=time.perf_counter() - t0, command=command, timing=dict(timing),
                  sweep_starts={k: dict(v) for k, v in starts.items()}, partial=partial)

  try:
    if cfg.table:
      t = time.perf_counter()
      log(f"table: {len(images)} image(s), cases {', '.join(cfg.cases)}")
      for i, name in enumerate(cfg.cases):
        log(f"[{i + 1}/{len(cfg.cases)}] {CASES[name].title}")
        r, curve, ex = ev.table_case(name, images, i)
        rows += r
        examples[name] = ex
        if curve is not None:
          curves[name] = curve
      timing["table"] = time.perf_counter() - t
      if on_stage is not None:
        on_stage(report())
    for key, spec in cfg.sweeps.items():
      t = time.perf_counter()
      imgs = sweep_sets[key]
      log(f"sweep {key} = {spec['values']} on {len(imgs)} image(s), cases "
          f"{', '.join(spec['cases'])}")
      sweeps[key], starts[key] = {}, {}
      for case in spec["cases"]:
        rows_, left = ev.sweep_case(key, spec["values"], imgs, case, stop=spent)
        if left:
          what = "not run" if not rows_ else ", ".join(map(str, left)) + " not run"
          skipped.append(f"sweep {key} on {case}: {what}, the time budget "
                         f"({cfg.time_budget:g} s) was spent")
          log(f"  {key} on {case}: {what} (time budget)")
        if rows_:
          sweeps[key][case] = rows_
          starts[key][case] = ev.sweep_start(key, case)
      timing[f"sweep {key}"] = time.perf_counter() - t
      if on_stage is not None:
        on_stage(report())
  finally:
    ev.close()
  return report(partial=False)


__all__ = ["Case", "CASES", "MASK_KINDS", "POSTS", "SETTING_KEYS", "SWEEP_KEYS", "LPIPS_NETS",
           "LPIPS_BATCH", "AHEAD_PER_WORKER", "GAN_METHODS", "EXAMPLE_SEEDS", "METRIC_KEYS",
           "make_mask", "case_task", "posts_of", "default_post", "apply_post", "ImageSet",
           "check_seeds", "prior_samples", "photo_set", "observations", "Config", "load_config",
           "run_settings", "Run", "Job", "Prepared", "build_inverter", "execute", "load_run",
           "save_run", "measure", "summarize", "Row", "Report", "Evaluator", "setting_value",
           "evaluate", "environment"]
