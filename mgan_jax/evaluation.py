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

Every configuration's raw results are kept in ``cache`` (one ``.npz`` per configuration, keyed
by a hash of everything that determines it), so a rerun after an interruption, or with other
metrics or reports, only computes what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mgan_jax import baselines, cli, defaults as defaults_lib, fileio, imageio, metrics, tasks
from mgan_jax.errors import UserError

#: seeds of the prior samples in examples/ (scripts/make_examples.py): never evaluated on
EXAMPLE_SEEDS = (9001, 9002, 9003, 9004)
#: version of the cached run files (bump when their content changes)
CACHE_VERSION = 1
MASK_KINDS = ("centre", "random80", "strokes", "half")
POSTS = ("raw", "luma", "paste", "back-project")
#: settings keys that ``overrides`` and ``sweeps`` may set, and their types
SETTING_KEYS: dict[str, Callable[[Any], Any]] = {
    "iterations": int, "codes": int, "layer": int, "lr": float, "optimizer": str,
    "perceptual_weight": float, "perceptual_size": int, "perceptual_layer": str,
    "mse_weight": float, "l1_weight": float, "alpha_init": str, "chunk": int,
}
SWEEP_KEYS = tuple(k for k in SETTING_KEYS if k not in ("chunk", "optimizer", "alpha_init"))
LPIPS_NETS = ("alex", "vgg")
#: image pairs per LPIPS call (measure pads to a multiple)
LPIPS_BATCH = 16
#: jobs compiled ahead of the running one, per compile thread
AHEAD_PER_WORKER = 2
GAN_METHODS = ("multi-code", "z", "w", "w+")


# ----------------------------------------------------------------------------------------------
# Cases and masks.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
  """One evaluated task: ``task`` (``tasks.TASKS``), super-resolution ``factor``, inpainting
  ``mask`` kind (``MASK_KINDS``), denoising ``noise`` sigma; ``title`` for tables."""
  name: str
  task: str
  title: str
  factor: int | None = None
  mask: str | None = None
  noise: float | None = None


CASES: dict[str, Case] = {c.name: c for c in (
    Case("reconstruct", "reconstruct", "reconstruction"),
    Case("colorize", "colorize", "colorization"),
    Case("sr4", "super-resolve", "super-resolution x4", factor=4),
    Case("sr8", "super-resolve", "super-resolution x8", factor=8),
    Case("inpaint-centre", "inpaint", "inpainting, centre box (25 %)", mask="centre"),
    Case("inpaint-random80", "inpaint", "inpainting, random 80 % of the pixels",
         mask="random80"),
    Case("inpaint-strokes", "inpaint", "inpainting, strokes", mask="strokes"),
    Case("inpaint-half", "inpaint", "inpainting, left half", mask="half"),
    Case("denoise", "denoise", "denoising, sigma 0.1", noise=0.1),
)}


def make_mask(kind: str, size: int) -> np.ndarray:
  """A (size, size, 1) float32 mask, 1 = missing, built by code with fixed seeds (at 64 px the
  masks of ``examples/``): 'centre' the central half-side box, 'half' the left half, 'random80'
  each pixel missing with probability 0.8 (seed 7), 'strokes' ten thick random polylines
  (seed 8; widths and steps scale with the size)."""
  if kind not in MASK_KINDS:
    raise UserError(f"unknown mask kind {kind!r} (known: {', '.join(MASK_KINDS)})")
  hole = np.zeros((size, size), bool)
  if kind == "centre":
    hole[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
  elif kind == "half":
    hole[:, :size // 2] = True
  elif kind == "random80":
    hole = np.random.default_rng(7).random((size, size)) < 0.8
  else:
    from PIL import Image, ImageDraw
    s = size / 64.0
    rng = np.random.default_rng(8)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lo, hi = int(round(4 * s)), size - int(round(4 * s))
    for _ in range(10):
      points = [tuple(rng.integers(lo, hi, 2).tolist())]
      for _ in range(int(rng.integers(2, 5))):
        step = np.round(rng.integers(-20, 21, 2) * s).astype(int)
        points.append(tuple(np.clip(np.add(points[-1], step), 0, size - 1).tolist()))
      draw.line(points, fill=255, width=max(1, int(round(int(rng.integers(4, 7)) * s))),
                joint="curve")
    hole = np.asarray(canvas) > 127
  return hole.astype(np.float32)[..., None]


def case_task(case: Case, gen: Any, defaults: Mapping[str, Any]) -> tasks.Task:
  """The ``tasks.Task`` of a case with the model's default output options."""
  names = tasks.parse_task(case.task).tasks
  return tasks.parse_task(
      case.task, factor=case.factor or defaults.get("factor", 4),
      noise=case.noise if case.noise is not None else 0.1,
      paste_known=bool(defaults.get("paste_known", False)) and names == ("inpaint",),
      back_project=bool(defaults.get("back_project", False)) and "super-resolve" in names,
      resolution=gen.resolution)


def posts_of(task: tasks.Task) -> tuple[str, ...]:
  """The outputs a task can write: ``POSTS`` that apply to it."""
  if task.tasks == ("colorize",):
    return ("luma", "raw")
  if task.tasks == ("inpaint",):
    return ("raw", "paste")
  if task.has("super-resolve") and tasks.BACK_PROJECT_TASKS.issuperset(task.tasks):
    return ("raw", "back-project")
  return ("raw",)


def default_post(task: tasks.Task) -> str:
  """The output the CLI writes by default for ``task`` (with its model defaults)."""
  if task.tasks == ("colorize",):
    return "luma"
  if task.tasks == ("inpaint",) and task.paste_known:
    return "paste"
  if task.back_project:
    return "back-project"
  return "raw"


def apply_post(post: str, task: tasks.Task, raw: np.ndarray,
               observation: tasks.Observation) -> np.ndarray:
  """One image's output ``post`` (``POSTS``) from the raw generator output (R, R, 3)."""
  if post == "raw":
    return np.asarray(raw, np.float32)
  flags = {"luma": {}, "paste": {"paste_known": True, "back_project": False},
           "back-project": {"back_project": True, "paste_known": False}}[post]
  image, _ = tasks.postprocess(dataclasses.replace(task, **flags), raw, observation)
  return image


# ----------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageSet:
  """Clean images (n, R, R, 3) float32 in [-1, 1] (8-bit values), their names and sources."""
  names: list[str]
  clean: np.ndarray
  sources: list[dict]

  def __len__(self) -> int:
    return len(self.names)

  def fingerprint(self) -> str:
    h = hashlib.sha256(imageio.to_uint8(self.clean).tobytes())
    h.update(json.dumps(self.names).encode())
    return h.hexdigest()[:16]

  def subset(self, n: int) -> "ImageSet":
    return ImageSet(self.names[:n], self.clean[:n], self.sources[:n])

  def __add__(self, other: "ImageSet") -> "ImageSet":
    if not len(other):
      return self
    if not len(self):
      return other
    return ImageSet(self.names + other.names, np.concatenate([self.clean, other.clean]),
                    self.sources + other.sources)


def check_seeds(start: int, n: int, *, what: str) -> None:
  """UserError when seeds start .. start + n - 1 include those of examples/."""
  clash = [s for s in EXAMPLE_SEEDS if start <= s < start + n]
  if clash:
    raise UserError(f"{what}: seeds {start}..{start + n - 1} include {clash[0]}, a seed of the "
                    "samples in examples/ (9001-9004); choose another start seed")


def prior_samples(gen: Any, gen_params: Any, n: int, *, seed: int, batch: int = 64) -> ImageSet:
  """``n`` samples of the prior from seeds ``seed`` ... (one seed per image, the recipe of
  scripts/make_examples.py), rounded to 8 bits."""
  import jax.numpy as jnp
  check_seeds(seed, n, what="sample seeds")
  seeds = list(range(seed, seed + n))
  z = np.stack([np.random.default_rng(s).standard_normal(gen.latent_dim) for s in seeds])
  z = z.astype(np.float32).reshape((n, gen.latent_dim))
  out = []
  for i in range(0, n, batch):
    out.append(np.asarray(gen.generate(gen_params, jnp.asarray(z[i:i + batch]), space="z")))
  images = np.concatenate(out) if out else np.zeros((0, gen.resolution, gen.resolution, 3))
  clean = imageio.from_uint8(imageio.to_uint8(images)).astype(np.float32)
  return ImageSet([f"sample-{s}" for s in seeds], clean,
                  [{"kind": "prior sample", "seed": s} for s in seeds])


def photo_set(specs: Sequence[str], resolution: int, *, fit: str) -> ImageSet:
  """The user's photos (files, directories, globs, lists), fitted to ``resolution``."""
  if not specs:
    return ImageSet([], np.zeros((0, resolution, resolution, 3), np.float32), [])
  paths = imageio.list_inputs(list(specs), flag="--image")
  names = imageio.output_names(paths)
  images, sources = [], []
  for p in paths:
    im, rep = imageio.read_image(p, size=resolution, fit=fit)
    images.append(imageio.from_uint8(imageio.to_uint8(im)))
    sources.append({"kind": "photo", "path": os.fspath(p), "fit": rep.to_json()})
  return ImageSet(list(names), np.stack(images).astype(np.float32), sources)


def observations(case: Case, task: tasks.Task, images: ImageSet, *, seed: int
                 ) -> list[tasks.Observation]:
  """The degraded observation of each image (``tasks.degrade``; the case's mask)."""
  mask = None
  if case.mask is not None:
    mask = make_mask(case.mask, task.observation_size(images.clean.shape[1]))
  return [tasks.degrade(task, c, mask=mask, seed=seed) for c in images.clean]


# ----------------------------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config:
  """What ``evaluate`` measures (every field is a key of the JSON / TOML config file).

  model: a named prior or a model directory (None = ``defaults.DEFAULT_MODEL``); samples /
  sample_seed: held-out prior samples of the table; images / fit: the user's photos (added to
  the table's set); cases: ``CASES`` names; methods: ``GAN_METHODS`` (those the generator
  lacks are skipped); baselines: also run ``mgan_jax.baselines``; lpips: LPIPS trunks;
  batch_size: images per compiled program; seed: the initial latents' and the noise's seed;
  overrides: settings for every run (``SETTING_KEYS``); table: run the main table; sweeps:
  ``{key: [values]}`` or ``{key: {values: [...], cases: [...], samples: n}}`` (n: only the
  first n sweep images, for costly sweeps); sweep_cases / sweep_samples / sweep_seed: the
  sweeps' default cases and their images (0 samples = the table's images); sweep_overrides:
  ``{case: {key: value}}``, the settings the sweeps start from where they are not the
  defaults (e.g. the defaults before a tuning, to reproduce it); out: output directory;
  cache: run cache (default OUT/runs); report: also write this markdown report (e.g.
  docs/RESULTS.md), figures beside it; readme: also rewrite the generated results section of
  this file (between ``evaluation_report.README_BEGIN`` / ``README_END``); plots: draw the
  figures (needs matplotlib); compile_workers: threads compiling the next runs' programs while
  one runs (None = one per core but one, at most 8; 0 = none); time_budget: seconds after which
  no further sweep run starts (0 = no limit; the table always runs).
  """
  model: str | None = None
  samples: int = 32
  sample_seed: int = 100000
  images: list = dataclasses.field(default_factory=list)
  fit: str = "center-crop"
  cases: list = dataclasses.field(default_factory=lambda: list(CASES))
  methods: list = dataclasses.field(default_factory=lambda: list(GAN_METHODS))
  baselines: bool = True
  lpips: list = dataclasses.field(default_factory=lambda: list(LPIPS_NETS))
  batch_size: int = 32
  seed: int = 0
  overrides: dict = dataclasses.field(default_factory=dict)
  table: bool = True
  sweeps: dict = dataclasses.field(default_factory=dict)
  sweep_cases: list = dataclasses.field(
      default_factory=lambda: ["reconstruct", "colorize", "sr4", "inpaint-centre"])
  sweep_samples: int = 8
  sweep_seed: int = 200000
  sweep_overrides: dict = dataclasses.field(default_factory=dict)
  out: str = "out/evaluate"
  cache: str | None = None
  report: str | None = None
  readme: str | None = None
  plots: bool = True
  compile_workers: int | None = None
  time_budget: float = 0.0

  def workers(self) -> int:
    """Compile threads: ``compile_workers``, or by default one per core but one, at most 8."""
    if self.compile_workers is not None:
      return self.compile_workers
    return max(1, min(8, (os.cpu_count() or 2) - 1))

  def check(self) -> "Config":
    """Validate (UserError naming the key) and normalise; returns self."""
    for key in ("cases", "sweep_cases"):
      vals = list(getattr(self, key))
      bad = [c for c in vals if c not in CASES]
      if bad:
        raise UserError(f"{key}: unknown case {bad[0]!r} (known: {', '.join(CASES)})")
      setattr(self, key, vals)
    bad = [m for m in self.methods if m not in GAN_METHODS]
    if bad:
      raise UserError(f"methods: unknown method {bad[0]!r} (known: {', '.join(GAN_METHODS)})")
    bad = [n for n in self.lpips if n not in LPIPS_NETS]
    if bad:
      raise UserError(f"lpips: unknown net {bad[0]!r} (known: {', '.join(LPIPS_NETS)})")
    if self.fit not in imageio.FITS:
      raise UserError(f"fit: must be one of {', '.join(imageio.FITS)}, got {self.fit!r}")
    for key in ("samples", "sweep_samples", "batch_size"):
      v = getattr(self, key)
      if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "batch_size" else 0):
        raise UserError(f"{key}: must be an integer >= {1 if key == 'batch_size' else 0}, "
                        f"got {v!r}")
    if self.compile_workers is not None and (not isinstance(self.compile_workers, int)
                                             or isinstance(self.compile_workers, bool)
                                             or self.compile_workers < 0):
      raise UserError(f"compile_workers: must be an integer >= 0, got {self.compile_workers!r}")
    try:
      self.time_budget = float(self.time_budget)
    except (TypeError, ValueError):
      raise UserError(f"time_budget: expected seconds, got {self.time_budget!r}") from None
    if not self.time_budget >= 0:
      raise UserError(f"time_budget: must be >= 0 seconds, got {self.time_budget!r}")
    if self.table and self.samples == 0 and not self.images:
      raise UserError("samples is 0 and no images are given: nothing to evaluate")
    self.overrides = {k: _setting(k, v, what="overrides") for k, v in
                      dict(self.overrides).items()}
    sweeps = {}
    for k, spec in dict(self.sweeps).items():
      if k not in SWEEP_KEYS:
        raise UserError(f"sweeps: unknown key {k!r} (known: {', '.join(SWEEP_KEYS)})")
      cases = list(self.sweep_cases)
      vals, samples = spec, None
      if isinstance(spec, Mapping):
        bad = sorted(set(spec) - {"values", "cases", "samples"})
        if bad or "values" not in spec:
          raise UserError(f"sweeps.{k}: expected a list of values or a table with 'values' "
                          "(and optionally 'cases', 'samples')")
        vals, cases = spec["values"], list(spec.get("cases", cases))
        samples = spec.get("samples")
        if samples is not None and (not isinstance(samples, int) or samples < 1):
          raise UserError(f"sweeps.{k}.samples: expected an integer >= 1, got {samples!r}")
        unknown = [c for c in cases if c not in CASES]
        if unknown:
          raise UserError(f"sweeps.{k}.cases: unknown case {unknown[0]!r}")
      if isinstance(vals, (str, int, float)) or not list(vals):
        raise UserError(f"sweeps.{k}: expected a non-empty list of values")
      sweeps[k] = {"values": [_setting(k, v, what=f"sweeps.{k}") for v in vals],
                   "cases": cases, "samples": samples}
    self.sweeps = sweeps
    so = {}
    for c, over in dict(self.sweep_overrides).items():
      if c not in CASES:
        raise UserError(f"sweep_overrides: unknown case {c!r} (known: {', '.join(CASES)})")
      if not isinstance(over, Mapping):
        raise UserError(f"sweep_overrides.{c}: expected a table of settings")
      so[c] = {k: _setting(k, v, what=f"sweep_overrides.{c}") for k, v in over.items()}
    self.sweep_overrides = so
    return self

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _setting(key: str, value: Any, *, what: str) -> Any:
  if key not in SETTING_KEYS:
    raise UserError(f"{what}: unknown settings key {key!r} (known: {', '.join(SETTING_KEYS)})")
  try:
    v = SETTING_KEYS[key](value)
  except (TypeError, ValueError):
    raise UserError(f"{what}: {key} = {value!r} is not a valid value") from None
  if key in ("iterations", "codes", "layer", "chunk") and (v < (0 if key == "iterations" else 1)):
    raise UserError(f"{what}: {key} must be >= {0 if key == 'iterations' else 1}, got {v}")
  return v


def load_config(path: str | os.PathLike) -> dict:
  """A config file's mapping: ``.json``, or ``.toml`` (Python 3.11+). UserError (naming the
  file) when it cannot be read or has unknown keys."""
  p = Path(path)
  try:
    text = p.read_bytes()
  except OSError as e:
    raise UserError(f"--config {p}: {e.strerror or e}") from None
  try:
    if p.suffix.lower() == ".toml":
      try:
        import tomllib
      except ImportError:
        raise UserError(f"--config {p}: TOML needs Python 3.11+; use a .json config") from None
      data = tomllib.loads(text.decode())
    else:
      data = json.loads(text)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - any parse error is the user's file
    raise UserError(f"--config {p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: "
                    f"{e}") from None
  if not isinstance(data, dict):
    raise UserError(f"--config {p}: expected a table of keys")
  known = {f.name for f in dataclasses.fields(Config)}
  bad = sorted(set(data) - known)
  if bad:
    raise UserError(f"--config {p}: unknown key {bad[0]!r} (known: {', '.join(sorted(known))})")
  return data


# ----------------------------------------------------------------------------------------------
# Settings of one run (the CLI's resolution).
# ----------------------------------------------------------------------------------------------
def _namespace() -> argparse.Namespace:
  p = argparse.ArgumentParser(add_help=False)
  cli.add_inversion_arguments(p, defaults=None, title="")
  return p.parse_args([])


def run_settings(gen: Any, model_name: str | None, case: Case, *, method: str,
                 overrides: Mapping[str, Any], seed: int) -> tuple[Any, tasks.Task, dict]:
  """(``pipeline.Settings``, ``tasks.Task``, the defaults used) of ``method`` on ``case``: what
  ``python -m mgan_jax.invert --task ... --method ...`` would run, with ``overrides``."""
  names = tasks.parse_task(case.task).tasks
  d = defaults_lib.defaults_for(gen.family, model_name, names)
  ns = _namespace()
  ns.method, ns.seed = method, seed
  single = method not in ("multi-code", "multi-z", "multi-w", "multi-w+")
  for k, v in overrides.items():
    if single and k in ("codes", "layer"):
      continue
    if k == "perceptual_layer":
      ns.perceptual_layers = tuple(s.strip() for s in str(v).split(",") if s.strip())
    else:
      setattr(ns, k, v)
  settings = cli.resolve_settings(ns, gen, d)
  return settings, case_task(case, gen, d), d


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
    return _key(self.payload)

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


def _key(payload: Mapping[str, Any]) -> str:
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
    key = _key(payload)
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


def environment() -> dict:
  """Versions and the machine (for the report)."""
  import jax
  dev = jax.devices()[0]
  return {"python": platform.python_version(), "jax": jax.__version__,
          "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "device": f"{dev.platform} ({dev.device_kind})",
          "device_count": jax.device_count(),
          "matmul_precision": jax.config.jax_default_matmul_precision or "default"}


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
