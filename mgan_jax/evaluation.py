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
  docs/RESULTS.md), figures beside it; plots: draw the figures (needs matplotlib).
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
  plots: bool = True

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
# Runs (cached).
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


def invert(gen: Any, gen_params: Any, vgg: Any, settings: Any, task: tasks.Task,
           obs: Sequence[tasks.Observation], images: ImageSet, *, batch_size: int,
           cache: Path | None, key: Mapping[str, Any], snapshots: bool = False) -> Run:
  """Invert the observations with ``pipeline.Inverter`` in batches of ``batch_size`` (one
  compiled program for all batches), or read the result from ``cache`` when this exact
  configuration (``key`` + settings + task + images) was run before. The output options of the
  task (paste, back-projection) are left to the caller (``apply_post``): they do not change the
  optimisation, so the run (and its cache entry) is the same for all of them. ``snapshots``:
  also keep the image after every chunk."""
  from mgan_jax.pipeline import Inverter, Item
  task = dataclasses.replace(task, paste_known=False, back_project=False)
  payload = {"version": CACHE_VERSION, **dict(key), "settings": settings.to_json(),
             "task": task.to_json(), "images": images.fingerprint(), "snapshots": snapshots}
  path = None
  if cache is not None:
    path = Path(cache) / f"{key.get('case', 'run')}-{_key(payload)}.npz"
    if path.is_file():
      with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        return Run(f["raw"], f["losses"], meta["traces"], meta["seconds_per_image"],
                   meta["compile_seconds"], f["snapshots"] if snapshots else None,
                   meta.get("snapshot_iterations"), cached=True)
  items = [Item(name=n, path=Path(n), input=c, fit=imageio.FitReport(c.shape[:2], c.shape[:2]),
                observation=o, clean=c)
           for n, c, o in zip(images.names, images.clean, obs)]
  cls = _recording_inverter(Inverter) if snapshots else Inverter
  inv = cls(gen, gen_params, vgg, settings, task,
            batch_size=max(1, min(batch_size, len(items))))
  groups = [items[i:i + inv.batch_size] for i in range(0, len(items), inv.batch_size)]
  compile_s = inv.compile(groups[0])
  raw, losses, traces, seconds = [], [], [], 0.0
  for g in groups:
    t0 = time.perf_counter()
    res = inv.run(g)
    seconds += time.perf_counter() - t0
    raw += [r.raw for r in res]
    losses += [r.losses for r in res]
    traces += [r.trace for r in res]
  run = Run(np.stack(raw).astype(np.float32), np.stack(losses).astype(np.float32), traces,
            seconds / len(items), compile_s)
  arrays = {}
  if snapshots:
    its = sorted({d for _, d in inv.snapshots})
    run.snapshots = np.stack([np.stack([inv.snapshots[(it.name, d)] for d in its])
                              for it in items])
    run.snapshot_iterations = its
    arrays["snapshots"] = run.snapshots
  if path is not None:
    meta = {"payload": payload, "traces": traces, "seconds_per_image": run.seconds_per_image,
            "compile_seconds": compile_s, "snapshot_iterations": run.snapshot_iterations}
    with fileio.publish(path, replace=True) as tmp:
      with open(tmp, "wb") as fh:
        np.savez(fh, raw=run.raw, losses=run.losses, meta=np.asarray(json.dumps(
            imageio._finite(meta), default=imageio._json_default)), **arrays)
  return run


# ----------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------
def measure(outputs: np.ndarray, clean: np.ndarray, *, lpips_nets: Sequence[str] = ("alex",),
            auc: bool = False) -> dict[str, list[float]]:
  """Per-image metrics of outputs (n, R, R, 3) against clean (n, R, R, 3) (floats in [-1, 1] or
  uint8), on the 8-bit images: {'psnr', 'ssim', 'lpips_<net>'..., 'auc'?} -> lists of n."""
  from mgan_jax import assets
  out8, clean8 = imageio.to_uint8(np.asarray(outputs)), imageio.to_uint8(np.asarray(clean))
  res: dict[str, list[float]] = {"psnr": [], "ssim": []}
  for a, b in zip(out8, clean8):
    q = metrics.quality(a, b)
    res["psnr"].append(q["psnr"])
    res["ssim"].append(q["ssim"])
  for net in lpips_nets:
    d = metrics.lpips_batch(out8, clean8, params=assets.lpips_params(net), net=net,
                            batch_size=min(16, len(out8)))
    res[f"lpips_{net}"] = [float(v) for v in d]
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


class Evaluator:
  """Loads the model once and runs cases, methods and sweeps (see the module docstring)."""

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

  def run_case(self, case: Case, images: ImageSet, *, method: str,
               overrides: Mapping[str, Any] | None = None, snapshots: bool = False
               ) -> tuple[Run, Any, tasks.Task, list]:
    """Invert one case's observations with ``method``: (run, settings, task, observations)."""
    over = dict(self.cfg.overrides)
    over.update(overrides or {})
    settings, task, _ = run_settings(self.gen, self.model_name, case, method=method,
                                     overrides=over, seed=self.cfg.seed)
    obs = observations(case, task, images, seed=self.cfg.seed)
    key = {"case": case.name, "model": self.label, "mask": case.mask, "method": method}
    t0 = time.perf_counter()
    run = invert(self.gen, self.params, self.vgg(settings), settings, task, obs, images,
                 batch_size=self.cfg.batch_size, cache=self.cache, key=key,
                 snapshots=snapshots)
    what = (f"{case.name} {method}" + (f" N={settings.codes} layer {settings.layer}"
                                       if settings.layer else "")
            + f" {settings.iterations} it" + "".join(f" {k}={v}" for k, v in
                                                     (overrides or {}).items()))
    if run.cached:
      self.log(f"  {what}: cached")
    else:
      self.log(f"  {what}: {len(images)} image(s) in {time.perf_counter() - t0:.1f} s "
               f"(compile {run.compile_seconds:.1f} s, {run.seconds_per_image:.2f} s/image)")
    return run, settings, task, obs

  def table(self, images: ImageSet) -> tuple[list[Row], dict, dict]:
    """The main table: (rows, mean traces per case, example outputs per case)."""
    cfg = self.cfg
    methods, _ = self.methods()
    rows: list[Row] = []
    curves: dict = {}
    examples: dict = {}
    for ci, name in enumerate(cfg.cases):
      case = CASES[name]
      self.log(f"[{ci + 1}/{len(cfg.cases)}] {case.title}")
      auc = case.task == "colorize"
      ex_index = ci % len(images)
      ex: dict = {"image": images.names[ex_index], "clean": images.clean[ex_index]}
      task = None
      obs = None
      for m in methods:
        run, settings, task, obs = self.run_case(case, images, method=m)
        for post in posts_of(task):
          outs = np.stack([apply_post(post, task, r, o) for r, o in zip(run.raw, obs)])
          rows.append(Row(case.name, m, post, "gan",
                          measure(outs, images.clean, lpips_nets=cfg.lpips, auc=auc),
                          run.seconds_per_image, default=post == default_post(task),
                          settings=settings.to_json(), compile_seconds=run.compile_seconds))
          if post == default_post(task):
            ex[m] = outs[ex_index]
        if m == "multi-code":
          curves[case.name] = _mean_trace(run.traces)
      ex["observation"] = tasks.upsample_for_display(obs[ex_index].image, images.clean.shape[1])
      if cfg.baselines:
        rows += self._baselines(case, task, obs, images, auc, ex, ex_index)
      if case.task == "denoise":
        noisy = np.stack([o.image for o in obs])
        rows.append(Row(case.name, "noisy input", "raw", "observation",
                        measure(noisy, images.clean, lpips_nets=cfg.lpips), 0.0))
      examples[case.name] = ex
    return rows, curves, examples

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

  def sweep(self, key: str, values: Sequence[Any], images: ImageSet, *,
            cases: Sequence[str]) -> dict:
    """One sweep: {case: [{'value', 'summary': {metric: {...}}, 'seconds_per_image'}, ...]}
    of the multi-code method at the case's default output."""
    out: dict = {}
    for name in cases:
      case = CASES[name]
      rows = []
      pin = dict(self.cfg.sweep_overrides.get(name, {}))
      if key == "iterations":
        top = max(values)
        step = math.gcd(*[int(v) for v in values]) or 1
        run, settings, task, obs = self.run_case(
            case, images, method="multi-code",
            overrides={**pin, "iterations": top, "chunk": step}, snapshots=True)
        post = default_post(task)
        for v in values:
          if v == 0:
            continue
          j = run.snapshot_iterations.index(v)
          outs = np.stack([apply_post(post, task, r, o)
                           for r, o in zip(run.snapshots[:, j], obs)])
          per = measure(outs, images.clean, lpips_nets=self.cfg.lpips)
          rows.append({"value": v, "summary": {k: summarize(x) for k, x in per.items()},
                       "seconds_per_image": run.seconds_per_image * v / max(top, 1)})
      else:
        for v in values:
          run, settings, task, obs = self.run_case(case, images, method="multi-code",
                                                   overrides={**pin, key: v})
          post = default_post(task)
          outs = np.stack([apply_post(post, task, r, o) for r, o in zip(run.raw, obs)])
          per = measure(outs, images.clean, lpips_nets=self.cfg.lpips)
          rows.append({"value": v, "summary": {k: summarize(x) for k, x in per.items()},
                       "seconds_per_image": run.seconds_per_image,
                       "settings": settings.to_json()})
      out[name] = rows
    return out


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
          "device_count": jax.device_count()}


def evaluate(config: Config, *, log: Callable[[str], Any] = lambda s: None,
             command: str = "") -> Report:
  """Run the table and the sweeps of ``config``; returns the ``Report``."""
  t0 = time.perf_counter()
  ev = Evaluator(config, log=log)
  cfg = ev.cfg
  res = ev.gen.resolution
  images = ImageSet([], np.zeros((0, res, res, 3), np.float32), [])
  if cfg.table:
    if cfg.samples:
      images = prior_samples(ev.gen, ev.params, cfg.samples, seed=cfg.sample_seed)
    images = images + photo_set(cfg.images, res, fit=cfg.fit)
  sweep_images = None
  if cfg.sweeps:
    if cfg.sweep_samples:
      sweep_images = prior_samples(ev.gen, ev.params, cfg.sweep_samples, seed=cfg.sweep_seed)
    elif len(images):
      sweep_images = images
    else:
      raise UserError("sweeps: sweep_samples is 0 and the table has no images")
  _, skipped = ev.methods()
  for s in skipped:
    log(f"skipped: {s}")
  rows, curves, examples = [], {}, {}
  if cfg.table:
    log(f"table: {len(images)} image(s), cases {', '.join(cfg.cases)}")
    rows, curves, examples = ev.table(images)
  sweeps = {}
  for key, spec in cfg.sweeps.items():
    imgs = sweep_images.subset(spec["samples"]) if spec.get("samples") else sweep_images
    log(f"sweep {key} = {spec['values']} on {len(imgs)} image(s), cases "
        f"{', '.join(spec['cases'])}")
    sweeps[key] = ev.sweep(key, spec["values"], imgs, cases=spec["cases"])
  describe = lambda s: None if s is None else {"n": len(s), "names": s.names,
                                               "sources": s.sources}
  return Report(config=cfg.to_json(), model={"label": ev.label, "family": ev.gen.family,
                                             "resolution": res, "name": ev.model_name},
                images=describe(images), sweep_images=describe(sweep_images), rows=rows,
                sweeps=sweeps, curves=curves, examples=examples, environment=environment(),
                skipped=skipped, seconds=time.perf_counter() - t0, command=command)


__all__ = ["Case", "CASES", "MASK_KINDS", "POSTS", "SETTING_KEYS", "SWEEP_KEYS", "LPIPS_NETS",
           "GAN_METHODS", "EXAMPLE_SEEDS", "METRIC_KEYS", "make_mask", "case_task", "posts_of",
           "default_post", "apply_post", "ImageSet", "check_seeds", "prior_samples",
           "photo_set", "observations", "Config", "load_config", "run_settings", "Run",
           "invert", "measure", "summarize", "Row", "Report", "Evaluator", "evaluate",
           "environment"]
