"""User mode of ``python -m mgan_jax.invert``: image files in, restored images, latents and
metrics out.

Examples (the default prior is ``dcgan-faces64``, fetched and converted on first use)::

    python -m mgan_jax.invert --image examples/dcgan_sample_9001.png --out out/recon
    python -m mgan_jax.invert --task colorize --image 'examples/dcgan_sample_*.png' \\
        --out out/color --batch-size 4
    python -m mgan_jax.invert --task inpaint --mask examples/mask_center.png \\
        --image examples/astronaut_face64.png --out out/inpaint
    python -m mgan_jax.invert --task super-resolve,colorize --factor 4 --image face.jpg \\
        --fit center-crop --out out/srcolor
    python -m mgan_jax.invert --task colorize --observed --image old_gray_photo.png --out out/x

Per image ``OUT/<name>/``: ``result.png``, ``degraded.png`` (the observation), ``grid.png``,
``latents.npz`` (reusable with ``--init``), ``metrics.json`` (``mgan_jax.outputs``). Defaults
that depend on the prior live in ``mgan_jax.defaults``; ``--help`` shows the ones of the model
and task given on the same command line. The task semantics are ``mgan_jax.tasks``; the batch
loop ``mgan_jax.resumable``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mgan_jax import cli, defaults as defaults_lib, imageio, tasks
from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.invert"
#: Exit status when some images failed numerically (the others were written).
EXIT_FAILED_IMAGES = 3


def add_arguments(parser: argparse.ArgumentParser, *, shown: Mapping[str, Any] | None = None
                  ) -> argparse.ArgumentParser:
  """The user-mode flags. ``shown``: the resolved defaults of the model and task (help text)."""
  g = parser.add_argument_group("inputs")
  g.add_argument("--image", nargs="+", metavar="SPEC", required=True,
                 help="input images: files, directories, glob patterns ('faces/*.jpg') or "
                      "LIST.txt files (one path per line); any PIL-readable format "
                      "(transparency is composited over white); directories and patterns skip "
                      "files named mask*")
  g.add_argument("--mask", metavar="FILE",
                 help="mask for inpaint (and for denoise with --observed): white = missing / "
                      "corrupted pixels, binarized at 50%% gray; the observation's size")
  g.add_argument("--clean", nargs="+", metavar="SPEC",
                 help="with --observed: clean reference images for PSNR/SSIM, one per input, "
                      "same order")
  g.add_argument("--fit", choices=imageio.FITS, default="error",
                 help="what to do when an image (or mask) is not the size needed: error "
                      "(default), resize, or center-crop then resize; reported in metrics.json")
  t = parser.add_argument_group("task")
  t.add_argument("--task", default="reconstruct", metavar="TASKS",
                 help=f"one of {', '.join(tasks.TASKS)}, or several joined with commas "
                      "(e.g. super-resolve,colorize) (default reconstruct)")
  t.add_argument("--observed", action="store_true",
                 help="the input is the degraded observation itself (a gray photo, a low-res "
                      "image at resolution/factor, an image with holes); by default the input "
                      "is the clean target and the degradation is synthesised from it")
  factor = f" (default {shown['factor']})" if shown else " (default: per model)"
  t.add_argument("--factor", type=cli.int_arg(2), default=None, metavar="K",
                 help=f"super-resolution factor{factor}")
  t.add_argument("--resample", default=None, metavar="METHOD",
                 help="super-resolution downsampling: bilinear (official, no antialias), "
                      "bicubic, area or nearest (default bilinear)")
  t.add_argument("--noise", type=cli.float_arg(0.0), default=None, metavar="SIGMA",
                 help="denoise: Gaussian noise sigma on the [0, 1] pixel scale (default 0.1)")
  t.add_argument("--noise-fraction", type=cli.float_arg(0.0, strict=True, maximum=1.0),
                 default=None, metavar="F",
                 help="denoise: share of noisy pixels; < 1 = known positions, left out of the "
                      "loss (the maintainers' protocol) (default 1: every pixel)")
  on = lambda key: (" (default: on for this model)" if shown.get(key) else
                    " (default: off for this model)") if shown else " (default: per model)"
  t.add_argument("--paste-known", action=argparse.BooleanOptionalAction, default=None,
                 help="inpaint: keep the known pixels of the observation in result.png; "
                      "--no-paste-known writes the raw generator output (official)"
                      + on("paste_known"))
  t.add_argument("--back-project", action=argparse.BooleanOptionalAction, default=None,
                 help="super-resolve: add the smooth correction that makes the result "
                      "downsample exactly to the observation (tasks.back_project); "
                      "--no-back-project writes the raw generator output (official)"
                      + on("back_project"))
  cli.add_model_arguments(parser, default_help=f"default {defaults_lib.DEFAULT_MODEL}")
  cli.add_inversion_arguments(
      parser, defaults=dict(shown or {}, dir_init=True),
      title="inversion (defaults depend on the model and the task, mgan_jax.defaults; shown for "
            "the --model and --task on this command line; the values used are printed at the "
            "start of a run and saved in metrics.json)")
  r = parser.add_argument_group("run")
  r.add_argument("--out", default="out/invert", metavar="DIR",
                 help="output directory (OUT/<image name>/...) (default out/invert)")
  r.add_argument("--batch-size", type=cli.int_arg(1), default=1, metavar="B",
                 help="images inverted together in one compiled program (default 1)")
  r.add_argument("--exact-batches", action="store_true",
                 help="compute every image of a batch on its own inside the program, so that "
                      "its result is bit-identical to its single-image run whatever the batch "
                      "size and device count (same machine); up to half the throughput on a "
                      "CPU. Default: vmapped batches, equal up to float rounding (docs/batch.md)")
  r.add_argument("--force", action="store_true",
                 help="recompute the named images and replace their outputs")
  r.add_argument("--quiet", action="store_true", help="no progress output")
  cli.add_compile_cache_argument(r)
  r.add_argument("--checkpoint-every", type=cli.int_arg(0), default=0, metavar="K",
                 help="checkpoint the batch in flight every K iterations (OUT/.mgan_jax_run/): "
                      "rerunning the same command after a kill resumes it; finished images "
                      "are always skipped on a rerun (default 0: no in-flight checkpoints)")
  d = parser.add_argument_group("several processes (hosts of a TPU pod, one process per GPU; "
                                "docs/batch.md)")
  d.add_argument("--coordinator", default=None, metavar="HOST:PORT|auto",
                 help="join a multi-process run (jax.distributed); 'auto' on a TPU pod or "
                      "under SLURM; each process inverts its share of the inputs into --out")
  d.add_argument("--num-processes", type=cli.int_arg(1), default=None, metavar="N")
  d.add_argument("--process-id", type=cli.int_arg(0), default=None, metavar="I")
  return parser


def build_parser(*, shown: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
  examples = __doc__.split("Examples")[1].split("Per image")[0].split("::", 1)[1]
  p = cli.Parser(prog=PROG, description=(
      "Restore images with a multi-code GAN prior (mGANprior): reconstruct, colorize, "
      "super-resolve, inpaint, denoise."),
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="examples:" + examples.rstrip() + "\n\nreproducibility mode (the official "
      "optimisation of a target array from given initial latents): " + PROG +
      " --target T.npy --help")
  return add_arguments(p, shown=shown)


def _help_defaults(argv: Sequence[str]) -> dict | None:
  """The defaults --help shows: those of the --model / --checkpoint and --task on the command
  line (read without loading any weights); None when they cannot be told."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--model")
  pre.add_argument("--checkpoint")
  pre.add_argument("--task", default="reconstruct")
  pre.add_argument("--recipe")
  known, _ = pre.parse_known_args(argv)
  try:
    from mgan_jax import assets, checkpoint
    name, directory = cli.model_source(known)
    if directory is not None:
      meta = checkpoint.read_model_json(directory)
      family, model = meta.get("family"), (meta.get("source") or {}).get("asset")
    else:
      model = name or defaults_lib.DEFAULT_MODEL
      family = assets.MODELS[model].family
    return defaults_lib.defaults_for(family, model, tasks.parse_task(known.task).tasks,
                                     recipe=known.recipe)
  except (UserError, KeyError, OSError):
    return None


# ----------------------------------------------------------------------------------------------
# Items.
# ----------------------------------------------------------------------------------------------
def _init_source(spec: str | None) -> tuple[Path | None, dict | None]:
  """--init: (directory, None) or (None, {'latents', 'meta', 'path'}) or (None, None)."""
  from mgan_jax import latents_io
  if spec is None:
    return None, None
  p = Path(spec)
  if p.is_dir():
    return p, None
  lat, meta = latents_io.load(p)
  return None, {"latents": lat, "meta": meta, "path": p}


def input_paths(args: argparse.Namespace, *, log=None) -> list[Path]:
  """The input images of ``--image`` (``imageio.list_inputs``; the --mask file and files named
  mask* are skipped in directories and patterns, with a notice)."""
  skipped: list = []
  paths = imageio.list_inputs(args.image, exclude=[args.mask] if args.mask else [],
                              skipped=skipped)
  if skipped and log is not None:
    shown = ", ".join(p.name for p in skipped[:4]) + (" ..." if len(skipped) > 4 else "")
    log(f"  skipped {len(skipped)} mask file(s) among the inputs: {shown}")
  return paths


def _digest(*parts: Any) -> str:
  """sha256 over files (paths, read as bytes) and arrays: what a result depends on."""
  import hashlib
  import numpy as np
  h = hashlib.sha256()
  for p in parts:
    if p is None:
      h.update(b"-")
    elif isinstance(p, (str, os.PathLike)):
      h.update(Path(p).read_bytes())
    else:
      for k in sorted(p) if isinstance(p, Mapping) else range(len(p)):
        v = p[k]
        for a in (v if isinstance(v, list) else [v]):
          h.update(str(k).encode() + np.ascontiguousarray(a, np.float32).tobytes())
    h.update(b"|")
  return h.hexdigest()


def prepare_items(args: argparse.Namespace, gen: Any, task: tasks.Task, settings: Any, *,
                  init_dir: Path | None = None, init_file: Mapping | None = None,
                  share: Sequence[int] | None = None, log=None) -> list:
  """Read and check every input (images, mask, clean targets, init latents) before any work;
  synthesise the observations. UserError (one line) on the first problem. ``share``: indices
  of the inputs to prepare (this process's share of a multi-process run; default all)."""
  from mgan_jax import latents_io
  from mgan_jax.pipeline import Item
  res = gen.resolution
  obs_side = task.observation_size(res)
  paths = input_paths(args)
  names = imageio.output_names(paths)
  clean_paths = None
  if args.clean:
    if not task.observed:
      raise UserError("--clean is for --observed inputs (otherwise the input is the clean "
                      "target)")
    clean_paths = imageio.list_inputs(args.clean, flag="--clean")
    if len(clean_paths) != len(paths):
      raise UserError(f"--clean gives {len(clean_paths)} images for {len(paths)} inputs")
  mask = None
  if args.mask is not None:
    if not task.accepts_mask:
      raise UserError(f"--mask is not used by --task {task.label}"
                      + (" (denoise takes a mask only with --observed)"
                         if task.has("denoise") else ""))
    mask, _ = imageio.read_mask(args.mask, size=obs_side, fit=args.fit)
    mask, note = tasks.check_mask(mask, what=f"--mask {args.mask}")
    if note and log is not None:
      log(f"  --mask {args.mask}: {note}")
  elif task.needs_mask:
    raise UserError(f"--task {task.label} needs --mask (white = missing pixels, "
                    f"{obs_side}x{obs_side})")
  items = []
  wanted = None if share is None else set(share)
  check = lambda lat, what: latents_io.check(lat, gen, method=settings.method,
                                             codes=settings.codes, layer=settings.layer,
                                             what=what)
  for i, (path, name) in enumerate(zip(paths, names)):
    if wanted is not None and i not in wanted:
      continue
    side = obs_side if task.observed else res
    image, fit = imageio.read_image(path, size=side, fit=args.fit)
    info: dict[str, Any] = {}
    if task.observed:
      obs = tasks.observe(task, image, mask=mask)
      clean = None
      if clean_paths is not None:
        clean, cfit = imageio.read_image(clean_paths[i], size=res, fit=args.fit)
        info["clean_image"] = os.fspath(clean_paths[i])
        info["clean_fit"] = cfit.to_json()
    else:
      obs = tasks.degrade(task, image, mask=mask, seed=settings.seed)
      clean = image
    if args.mask is not None:
      info["mask"] = os.fspath(args.mask)
    init = None
    if init_file is not None:
      init = check(init_file["latents"], f"--init {init_file['path']}")
      info["init"] = os.fspath(init_file["path"])
    elif init_dir is not None:
      f = init_dir / name / "latents.npz"
      if not f.is_file():
        raise UserError(f"--init {init_dir}: no {name}/latents.npz for {path}")
      lat, _ = latents_io.load(f)
      init = check(lat, f"--init {f}")
      info["init"] = os.fspath(f)
    for note in fit.conversions:
      if "transparency" in note and log is not None:
        log(f"  {path}: {note}")
    digest = _digest(path, args.mask, clean_paths[i] if clean_paths else None, init)
    items.append(Item(name=name, path=Path(path), input=image, fit=fit, observation=obs,
                      clean=clean, init=init, info=info, digest=digest))
  return items


# ----------------------------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
  """Run the user pipeline for parsed ``args``; returns the exit code (0). Problems with the
  user's input raise UserError (one line) before anything is written."""
  from mgan_jax import assets, outputs, resumable, runstate, sharding
  from mgan_jax.pipeline import Inverter
  from mgan_jax.progress import Progress
  t_start = time.perf_counter()
  log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr,
                                                                  flush=True))
  cli.enable_compile_cache(args)
  process_index, process_count = sharding.initialize_distributed(
      args.coordinator, args.num_processes, args.process_id)
  gen, gen_params, model_label, model_name = cli.load_model(args)
  pre = tasks.parse_task(args.task)   # names only, for the defaults
  for flag, value, needs in (("--factor", args.factor, "super-resolve"),
                             ("--resample", args.resample, "super-resolve"),
                             ("--noise", args.noise, "denoise"),
                             ("--noise-fraction", args.noise_fraction, "denoise")):
    if value is not None and not pre.has(needs):
      raise UserError(f"{flag} is not used by --task {pre.label} (it applies to {needs})")
  defaults = defaults_lib.defaults_for(gen.family, model_name, pre.tasks, recipe=args.recipe)
  _output_options(args, pre, defaults)
  task = tasks.parse_task(args.task, factor=args.factor or defaults["factor"],
                          resample=args.resample or "bilinear",
                          noise=0.1 if args.noise is None else args.noise,
                          noise_fraction=1.0 if args.noise_fraction is None
                          else args.noise_fraction, observed=args.observed,
                          paste_known=args.paste_known, back_project=args.back_project,
                          resolution=gen.resolution)
  if args.paste_known and task.tasks != ("inpaint",):
    raise UserError("--paste-known applies to --task inpaint alone")
  init_dir, init_file = _init_source(args.init)
  settings = cli.resolve_settings(args, gen, defaults,
                                  init_meta=init_file["meta"] if init_file else None,
                                  model=model_name, tasks=pre.tasks)
  recipe = args.recipe or defaults.get("recipe")
  all_paths = input_paths(args, log=log)
  all_names = imageio.output_names(all_paths)
  share = sharding.process_share(range(len(all_paths)), process_index=process_index,
                                 process_count=process_count)
  items = prepare_items(args, gen, task, settings, init_dir=init_dir, init_file=init_file,
                        share=share, log=log)
  if not runstate.has_state(args.out, process_index, process_count):   # else: open_run_state
    outputs.check_free(args.out, items, force=args.force)
  vgg = assets.vgg_params() if settings.loss.uses_vgg else None
  inverter = Inverter(gen, gen_params, vgg, settings, task,
                      batch_size=max(1, min(args.batch_size, len(items))),
                      checkpoint_every=args.checkpoint_every,
                      per_image="map" if args.exact_batches else "vmap")
  groups = resumable.batches(items, inverter.batch_size)
  log(f"{PROG}: {len(items)} image(s), task {task.label} "
      f"({'observed' if task.observed else 'synthesised'} degradation), model {model_label} "
      f"({gen.family} {gen.resolution}x{gen.resolution}), method "
      f"{cli.cli_method(settings.method)}"
      + (f" N={settings.codes} layer {settings.layer}" if settings.layer else "")
      + (f", recipe {recipe}" if recipe else "")
      + f", {settings.optimizer.name} lr {settings.optimizer.lr:g}, {settings.iterations} it, "
      f"batch {inverter.batch_size} -> {args.out}")
  for it in items:
    if it.fit.op != "none":
      log(f"  {it.path}: {it.fit.note}")
  progress = Progress(batches=len(groups), iterations=settings.iterations,
                      enabled=not args.quiet)
  run_info = {
      "model": model_label, "family": gen.family, "resolution": gen.resolution,
      **task.to_json(), "recipe": recipe, "settings": settings.to_json(),
      "batch_size": inverter.batch_size,
      "exact_batches": bool(args.exact_batches),
      "command": " ".join([PROG, *map(_quote, getattr(args, "argv", None) or sys.argv[1:])]),
  }
  latents_meta = {"method": settings.method, "codes": settings.codes, "layer": settings.layer,
                  "model": model_label, "family": gen.family, "resolution": gen.resolution}
  if process_count > 1:
    log(f"process {process_index} of {process_count}: {len(items)} of {len(all_paths)} "
        f"image(s), {inverter.mesh.size} local device(s)")
  # What determines a result: must not change within one OUT (OUT/.mgan_jax_run/manifest.json)
  resume_settings = {**{k: v for k, v in run_info.items()
                        if k not in ("command", "batch_size", "recipe")},
                     "fit": args.fit, "mask": args.mask, "init": args.init}
  state = resumable.open_run_state(args.out, items, all_names=all_names,
                                   settings=resume_settings, force=args.force,
                                   process_index=process_index, process_count=process_count)
  with state:
    written = resumable.run_items(items, inverter, out=args.out, state=state,
                                  progress=progress, run_info=run_info,
                                  latents_meta=latents_meta, lpips_params=_lpips_params(items))
  summary, failed = [], []
  for path in written:
    m = json.loads((path / "metrics.json").read_text())
    if m.get("status") == "failed":
      failed.append(path)
      summary.append(f"  {path}  FAILED: {m.get('reason')}")
      continue
    psnr = m["metrics"].get("psnr")
    summary.append(f"  {path}" + (f"  PSNR {psnr:.2f} dB  SSIM {m['metrics']['ssim']:.4f}"
                                   if psnr is not None else ""))
  log("\n".join(summary))
  log(f"done: {len(written)} image(s) in {time.perf_counter() - t_start:.1f} s "
      f"(compile {inverter.compile_seconds:.1f} s)")
  if failed:
    print(f"{PROG}: {len(failed)} of {len(written)} image(s) failed (see their metrics.json; "
          "rerun with --force and other settings to recompute them)", file=sys.stderr)
    return EXIT_FAILED_IMAGES
  return 0


def _lpips_params(items: Sequence[Any]) -> Any:
  """The LPIPS weights of metrics.json (``outputs.LPIPS_NET``), when some image has a clean
  target to compare with and the weights can be had (else None: LPIPS is null with a note)."""
  from mgan_jax import assets, outputs
  if not any(it.clean is not None for it in items):
    return None
  try:
    return assets.lpips_params(outputs.LPIPS_NET)
  except (UserError, OSError, ValueError):
    return None


def _output_options(args: argparse.Namespace, pre: tasks.Task, defaults: Mapping) -> None:
  """--paste-known / --back-project not given: the model's default where the task has that
  output option (``defaults`` keys ``paste_known``, ``back_project``), else off."""
  if args.paste_known is None:
    args.paste_known = bool(defaults.get("paste_known")) and pre.tasks == ("inpaint",)
  if args.back_project is None:
    args.back_project = (bool(defaults.get("back_project")) and pre.has("super-resolve")
                         and tasks.BACK_PROJECT_TASKS.issuperset(pre.tasks))


def _quote(arg: str) -> str:
  import shlex
  return shlex.quote(str(arg))


def _main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  shown = _help_defaults(argv) if ("-h" in argv or "--help" in argv) else None
  args = build_parser(shown=shown).parse_args(argv)
  args.argv = argv
  return run(args)


main = cli_entry(_main, interrupted="interrupted; rerun the same command to resume (finished "
                                    "images are kept, nothing half-written was left)")


__all__ = ["add_arguments", "build_parser", "prepare_items", "run", "main"]
