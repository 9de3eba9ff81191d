"""``python -m mgan_jax.evaluate``: which settings work for a prior and a task, and how
mGANprior compares with single codes and with the classical answers, measured on held-out
images.

Examples::

    python -m mgan_jax.evaluate --quick                        # a smoke test, about a minute
    python -m mgan_jax.evaluate --samples 32 --out out/eval    # the full table, default prior
    python -m mgan_jax.evaluate --image 'faces/*.jpg' --samples 0 --cases sr4,inpaint-centre
    python -m mgan_jax.evaluate --no-table --sweep layer=1,2,3,4 --sweep codes=1,5,10,20,40
    python -m mgan_jax.evaluate --config docs/results_config.toml   # docs/RESULTS.md

Settings come from the built-in defaults (``evaluation.Config``), then ``--config FILE``
(JSON, or TOML on Python 3.11+; the keys are ``Config``'s fields), then ``--quick``, then the
flags. Outputs (``mgan_jax.evaluation_report``): OUT/results.md, results.csv, results.json,
sweeps.csv, figures; ``--report PATH`` also writes the markdown report there, ``--readme PATH``
the generated results section of a README. The tables and the report are also written after
the table and after each sweep, so an interrupted evaluation leaves what it measured. Every
inversion configuration is cached in OUT/runs (or ``--cache``): rerunning after an
interruption only computes what is missing; compiled programs are kept in the persistent
compilation cache as by the other commands (``--no-compile-cache``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any, Sequence

from mgan_jax import cli, evaluation, imageio
from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.evaluate"

#: ``--quick``: two images, two cases (their outputs: raw, back-projected, pasted), 4 iterations,
#: 4 codes, two-point sweeps of layer and codes on the table's images (6 compiled programs).
QUICK: dict[str, Any] = {
    "samples": 2, "cases": ["sr4", "inpaint-centre"],
    "methods": ["multi-code", "z"], "lpips": ["alex"], "batch_size": 2,
    "overrides": {"iterations": 4, "codes": 4}, "sweeps": {"layer": [1, 2], "codes": [2, 4]},
    "sweep_cases": ["sr4"], "sweep_samples": 0, "out": "out/evaluate-quick",
}


def _list(text: str) -> list[str]:
  return [s.strip() for s in text.split(",") if s.strip()]


def _key_values(text: str) -> tuple[str, list[str]]:
  key, sep, vals = text.partition("=")
  if not sep or not key.strip() or not _list(vals):
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,VALUE...], got {text!r}")
  return key.strip(), _list(vals)


def build_parser() -> argparse.ArgumentParser:
  examples = __doc__.split("Examples::")[1].split("Settings come")[0]
  p = cli.Parser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="examples:" + examples.rstrip())
  p.add_argument("--config", metavar="FILE", help="a JSON or TOML file of settings (keys: the "
                 "long flag names with underscores; overrides/sweeps as tables)")
  p.add_argument("--quick", action="store_true",
                 help="a smoke test: 2 samples, 2 cases, 4 iterations, 4 codes, small sweeps")
  cli.add_model_arguments(p, default_help="default dcgan-faces64")
  g = p.add_argument_group("images")
  g.add_argument("--samples", type=cli.int_arg(0), metavar="N",
                 help="held-out samples of the prior (default 32)")
  g.add_argument("--sample-seed", type=int, metavar="S",
                 help="their first seed (default 100000; the seeds of examples/ are refused)")
  g.add_argument("--image", nargs="+", metavar="SPEC",
                 help="also evaluate these photos (files, directories, globs, lists)")
  g.add_argument("--fit", choices=imageio.FITS,
                 help="photos not of the model's size: error, resize or center-crop (default)")
  t = p.add_argument_group("what to measure")
  t.add_argument("--cases", type=_list, metavar="LIST",
                 help=f"comma-separated from {', '.join(evaluation.CASES)} (default all)")
  t.add_argument("--methods", type=_list, metavar="LIST",
                 help="multi-code, z, w, w+ (default all the generator has)")
  t.add_argument("--no-baselines", dest="baselines", action="store_false", default=None,
                 help="skip the classical baselines")
  t.add_argument("--lpips", type=_list, metavar="NETS", help="alex, vgg (default both)")
  t.add_argument("--set", action="append", type=_key_values, default=[], metavar="KEY=VALUE",
                 help="a setting for every run, e.g. --set iterations=200 --set "
                      f"perceptual_weight=1e-3 (keys: {', '.join(evaluation.SETTING_KEYS)})")
  t.add_argument("--no-table", dest="table", action="store_false", default=None,
                 help="only the sweeps")
  s = p.add_argument_group("sweeps (multi-code, one setting at a time)")
  s.add_argument("--sweep", action="append", type=_key_values, default=[],
                 metavar="KEY=V1,V2,...",
                 help=f"e.g. layer=1,2,3,4 or codes=1,5,10,20 (keys: "
                      f"{', '.join(evaluation.SWEEP_KEYS)}); repeatable")
  s.add_argument("--sweep-cases", type=_list, metavar="LIST",
                 help="cases of the sweeps (default reconstruct,colorize,sr4,inpaint-centre)")
  s.add_argument("--sweep-samples", type=cli.int_arg(0), metavar="N",
                 help="held-out samples for the sweeps, a set apart from the table's "
                      "(default 8; 0 = the table's images)")
  s.add_argument("--sweep-seed", type=int, metavar="S", help="their first seed (default 200000)")
  r = p.add_argument_group("run")
  r.add_argument("--batch-size", type=cli.int_arg(1), metavar="B",
                 help="images per compiled program (default 32)")
  r.add_argument("--seed", type=int, metavar="S", help="initial latents and noise (default 0)")
  r.add_argument("--out", metavar="DIR", help="output directory (default out/evaluate)")
  r.add_argument("--cache", metavar="DIR", help="run cache (default OUT/runs)")
  r.add_argument("--report", metavar="PATH", help="also write the markdown report here "
                 "(e.g. docs/RESULTS.md; figure links relative to it)")
  r.add_argument("--readme", metavar="PATH", help="also rewrite the generated results section "
                 "of this markdown file (e.g. README.md; between its results markers)")
  r.add_argument("--no-plots", dest="plots", action="store_false", default=None,
                 help="no figures (they need matplotlib: pip install 'mgan_jax[plots]')")
  r.add_argument("--compile-workers", type=cli.int_arg(0), metavar="N",
                 help="threads compiling the next runs' programs while one runs (default: one "
                      "per core but one, at most 8; 0 = none)")
  r.add_argument("--time-budget", type=cli.float_arg(0.0), metavar="SECONDS",
                 help="start no further sweep case after this many seconds (default 0: no "
                      "limit; the table always runs)")
  cli.add_compile_cache_argument(r)
  r.add_argument("--quiet", action="store_true", help="no progress lines")
  return p


def resolve_config(args: argparse.Namespace) -> evaluation.Config:
  """Defaults, then --config, then --quick, then the flags."""
  data: dict[str, Any] = {}
  if args.config:
    data.update(evaluation.load_config(args.config))
  if args.quick:
    data.update(QUICK)
  flags = {"samples": args.samples, "sample_seed": args.sample_seed, "images": args.image,
           "fit": args.fit, "cases": args.cases, "methods": args.methods,
           "baselines": args.baselines, "lpips": args.lpips, "table": args.table,
           "sweep_cases": args.sweep_cases, "sweep_samples": args.sweep_samples,
           "sweep_seed": args.sweep_seed, "batch_size": args.batch_size, "seed": args.seed,
           "out": args.out, "cache": args.cache, "report": args.report, "readme": args.readme,
           "plots": args.plots, "compile_workers": args.compile_workers,
           "time_budget": args.time_budget}
  model, directory = cli.model_source(args)
  if model or directory:
    flags["model"] = model or directory
  data.update({k: v for k, v in flags.items() if v is not None})
  if args.set:
    data["overrides"] = {**dict(data.get("overrides", {})), **{k: v[-1] for k, v in args.set}}
  if args.sweep:
    data["sweeps"] = {**dict(data.get("sweeps", {})), **{k: v for k, v in args.sweep}}
  try:
    cfg = evaluation.Config(**data)
  except TypeError as e:
    raise UserError(f"config: {e}") from None
  return cfg.check()


def _main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  cfg = resolve_config(args)
  if cfg.plots:
    from mgan_jax.evaluation_report import require_matplotlib
    require_matplotlib()   # fail before hours of work, not after
  log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
  from mgan_jax import evaluation_report
  if cfg.readme:
    evaluation_report.check_readme(cfg.readme)   # markers present, before any work
  try:
    cli.enable_compile_cache(args)
  except UserError as e:      # an unwritable cache costs compile time, not the evaluation
    log(f"note: no persistent compilation cache ({e})")
  command = " ".join([PROG, *map(shlex.quote, argv)])
  t0 = time.perf_counter()
  # after the table and each sweep: the tables and the report so far (no figures, no README),
  # so that an interrupted evaluation leaves what it measured
  partial = lambda r: evaluation_report.write_outputs(r, out=cfg.out, report_path=cfg.report,
                                                      plots=False)
  report = evaluation.evaluate(cfg, log=log, command=command, on_stage=partial)
  written = evaluation_report.write_outputs(report, out=cfg.out, report_path=cfg.report,
                                            plots=cfg.plots, readme=cfg.readme)
  log(f"done in {time.perf_counter() - t0:.1f} s: " + ", ".join(str(p) for p in written))
  return 0


main = cli_entry(_main, interrupted="interrupted; rerun the same command: finished "
                                    "configurations are read from the run cache")

if __name__ == "__main__":
  sys.exit(main())
