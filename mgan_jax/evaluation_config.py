"""The evaluation's configuration: ``Config`` (every key of the JSON / TOML config file, validated
by ``Config.check``), ``load_config``, the settings keys that overrides and sweeps may set, and
``run_settings``: one run's settings, resolved as the inversion command line resolves them
(``cli``). The overview is ``mgan_jax.evaluation``'s docstring."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from mgan_jax import cli, defaults as defaults_lib, imageio, tasks
from mgan_jax.errors import UserError
from mgan_jax.evaluation_cases import CASES, GAN_METHODS, LPIPS_NETS, Case, case_task

#: settings keys that ``overrides`` and ``sweeps`` may set, and their types
SETTING_KEYS: dict[str, Callable[[Any], Any]] = {
    "iterations": int, "codes": int, "layer": int, "lr": float, "optimizer": str,
    "perceptual_weight": float, "perceptual_size": int, "perceptual_layer": str,
    "mse_weight": float, "l1_weight": float, "alpha_init": str, "chunk": int,
}
SWEEP_KEYS = tuple(k for k in SETTING_KEYS if k not in ("chunk", "optimizer", "alpha_init"))


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


__all__ = ["SETTING_KEYS", "SWEEP_KEYS", "Config", "load_config", "run_settings"]
