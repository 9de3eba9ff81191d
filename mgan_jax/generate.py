"""``python -m mgan_jax.generate``: images from a converted generator (any family).

Examples::

    python -m mgan_jax.generate --model models/pggan --seed 0 --num 16 --out out.npz \\
        --png out_png/
    python -m mgan_jax.generate --model models/stylegan --latents wp.npy \\
        --latent-space wp --out out.npz

The output ``.npz`` holds ``images`` (N, H, W, 3) float32: the **raw** generator output
(nominally [-1, 1] but never clipped; PGGAN reaches about +-2.6), ``latents`` (N, ...) float32
(the latents used, in ``--latent-space``) and ``latent_space``. PNGs are clipped to [-1, 1] and
mapped to [0, 255]. Files are written atomically and never replace existing files unless
``--force``.

The flags ``--latent-space``, ``--truncation``/``--truncation-layers`` and ``--noise-mode`` are
passed through to ``spec.generate`` (see ``mgan_jax.generators.base``); they are refused for a
family that has no such notion (e.g. truncation for PGGAN).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from mgan_jax import cli, fileio, imageio
from mgan_jax.defaults import DEFAULT_MODEL
from mgan_jax.errors import UserError, cli_entry

PROG = "python -m mgan_jax.generate"


def build_parser() -> argparse.ArgumentParser:
  p = cli.Parser(prog=PROG, description=(
      "Generate images with a converted generator (model directory from `python -m convert`)."
      " Writes `images` (N, H, W, 3) float32 = the raw generator output (not clipped; nominally"
      " [-1, 1]) and `latents` to --out."), formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_arguments(p, default_help=f"default {DEFAULT_MODEL}")
  src = p.add_argument_group("latents (exactly one of --latents or --seed)")
  src.add_argument("--latents", metavar="FILE",
                   help=".npy (N, ...) or .npz with a `latents` array, in --latent-space")
  src.add_argument("--seed", type=int, metavar="S",
                   help="sample N z latents ~ N(0, 1) with numpy.random.default_rng(S)")
  src.add_argument("--num", type=int, metavar="N", help="number of images for --seed")
  p.add_argument("--out", required=True, metavar="OUT.npz", help="output .npz file")
  p.add_argument("--png", metavar="DIR",
                 help="also write DIR/000000.png ... (clipped to [-1, 1]) and DIR/grid.png")
  p.add_argument("--latent-space", metavar="SPACE", default=None,
                 help="space of --latents: z, w or wp as the family allows (default: z)")
  p.add_argument("--truncation", type=float, metavar="PSI", default=None,
                 help="truncation psi (families with a mapping network; z and w spaces only);"
                      " default: the family's own")
  p.add_argument("--truncation-layers", type=int, metavar="N", default=None,
                 help="apply --truncation to the first N synthesis layers (default: the "
                      "family's cutoff, else all layers)")
  p.add_argument("--noise-mode", choices=("const", "random"), default="const",
                 help="per-layer noise: the checkpoint's constant buffers (official default) or"
                      " fresh N(0, 1) draws from --noise-seed (ignored by noise-free families)")
  p.add_argument("--noise-seed", type=int, default=0, metavar="S",
                 help="seed of --noise-mode random (default 0)")
  p.add_argument("--batch-size", type=int, default=8, metavar="B",
                 help="images per jitted call (default 8)")
  p.add_argument("--force", action="store_true",
                 help="replace an existing --out file and existing PNGs")
  cli.add_compile_cache_argument(p)
  return p


# ----- validation helpers ------------------------------------------------------------------

def latent_shape(spec: Any, space: str) -> tuple[int, ...]:
  """Shape (without batch) of one latent of ``space`` for ``spec``.

  A family may define ``latent_shape(space)``; otherwise z is (latent_dim,), wp is the
  synthesis input shape (L, W) and w is its last axis (W,).
  """
  if hasattr(spec, "latent_shape"):
    return tuple(spec.latent_shape(space))
  if space == "z":
    return (spec.latent_dim,)
  syn = tuple(spec.synthesis_input_shape())
  return syn if space == "wp" else syn[-1:]


def _load_latents(path: str, expected: tuple[int, ...], space: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise UserError(f"--latents {path}: no such file")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise UserError(f"--latents {path}: not a numpy .npy/.npz file ({e})") from None
  if isinstance(data, np.lib.npyio.NpzFile):
    with data:
      if "latents" not in data.files:
        raise UserError(f"--latents {path}: .npz has no `latents` array "
                        f"(arrays: {', '.join(data.files) or 'none'})")
      arr = data["latents"]
  else:
    arr = data
  if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
    raise UserError(f"--latents {path}: dtype {arr.dtype} is not a real number type")
  if arr.ndim != len(expected) + 1 or tuple(arr.shape[1:]) != expected:
    want = "(N, " + ", ".join(str(d) for d in expected) + ")"
    raise UserError(f"--latents {path}: shape {tuple(arr.shape)} does not match {want} "
                    f"expected for --latent-space {space}")
  if arr.shape[0] == 0:
    raise UserError(f"--latents {path}: holds no latents (N = 0)")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise UserError(f"--latents {path}: contains NaN or infinite values")
  return arr


def _png_names(n: int) -> list[str]:
  return [f"{i:06d}.png" for i in range(n)] + ["grid.png"]


def _check_outputs(args: argparse.Namespace, n: int | None) -> None:
  """Refuse to overwrite anything without --force (checked before any work)."""
  out = args.out
  if os.path.isdir(out):
    raise UserError(f"--out {out} is a directory; give a file name such as out.npz")
  if os.path.exists(out) and not args.force:
    raise UserError(f"--out {out} already exists; pass --force to replace it")
  if args.png is not None:
    if os.path.exists(args.png) and not os.path.isdir(args.png):
      raise UserError(f"--png {args.png} exists and is not a directory")
    if n is not None and os.path.isdir(args.png) and not args.force:
      clash = [f for f in _png_names(n) if os.path.exists(os.path.join(args.png, f))]
      if clash:
        raise UserError(f"--png {args.png}: {clash[0]} already exists; pass --force to "
                        "replace existing PNGs")


# ----- writing -----------------------------------------------------------------------------

def image_grid(images_u8: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) grid, cols = ceil(sqrt(N)), black fill."""
  n, h, w, c = images_u8.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.zeros((rows * h, cols * w, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images_u8[i]
  return grid


def _write_pngs(png_dir: str, images: np.ndarray) -> None:
  from PIL import Image
  u8 = imageio.to_uint8(images)
  names = _png_names(len(u8))
  arrays = list(u8) + [image_grid(u8)]
  for name, a in zip(names, arrays):
    with fileio.publish(os.path.join(png_dir, name), replace=True) as tmp:
      Image.fromarray(a).save(tmp, "PNG")


# ----- generation --------------------------------------------------------------------------

def generate_images(spec: Any, params: Any, latents: np.ndarray, *, space: str = "z",
                    truncation: Any = None, noise_key: Any = None,
                    batch_size: int = 8) -> np.ndarray:
  """Run ``spec.generate`` jitted over ``latents`` (N, ...) in batches -> (N, R, R, 3) numpy.

  The last batch is padded (edge rows) to ``batch_size`` so one compiled program serves all.
  ``noise_key``: None for the constant noise buffers, else a jax PRNG key (folded per batch).
  """
  import jax

  n = latents.shape[0]
  b = max(1, min(batch_size, n))

  def run(p, z, key):
    return spec.generate(p, z, space=space, truncation=truncation, noise=key)

  fn = jax.jit(run)
  out = []
  for i, start in enumerate(range(0, n, b)):
    chunk = latents[start:start + b]
    m = chunk.shape[0]
    if m < b:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - m, axis=0)], axis=0)
    key = None if noise_key is None else jax.random.fold_in(noise_key, i)
    out.append(np.asarray(fn(params, chunk, key), dtype=np.float32)[:m])
  return np.concatenate(out, axis=0)


@cli_entry(interrupted="interrupted; nothing was written")
def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if (args.latents is None) == (args.seed is None):
    raise UserError("give exactly one of --latents FILE or --seed S (with --num N)")
  if args.seed is not None and (args.num is None or args.num < 1):
    raise UserError("--seed needs --num N with N >= 1")
  if args.latents is not None and args.num is not None:
    raise UserError("--num is only used with --seed (--latents sets the number of images)")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.truncation_layers is not None and args.truncation is None:
    raise UserError("--truncation-layers needs --truncation PSI")
  if args.truncation_layers is not None and args.truncation_layers < 0:
    raise UserError(f"--truncation-layers must be >= 0, got {args.truncation_layers}")
  if args.truncation is not None and not math.isfinite(args.truncation):
    raise UserError(f"--truncation must be a finite number, got {args.truncation}")
  _check_outputs(args, args.num)
  cli.enable_compile_cache(args)

  spec, params, label, _ = cli.load_model(args)

  spaces = tuple(spec.latent_spaces)
  space = args.latent_space or spaces[0]
  if space not in spaces:
    raise UserError(f"--latent-space {space}: {spec.family} generators accept "
                    f"{', '.join(spaces)}")
  truncation = None
  if args.truncation is not None:
    if "w" not in spaces:
      raise UserError(f"--truncation: {spec.family} generators have no mapping network and no "
                      "truncation")
    if space == "wp":
      raise UserError("--truncation has no effect with --latent-space wp (w+ latents are used "
                      "as given)")
    layers = args.truncation_layers
    if layers is None:
      layers = getattr(spec, "truncation_layers", None)
    if layers is None:
      syn = tuple(spec.synthesis_input_shape())
      layers = syn[0] if len(syn) == 2 else spec.num_layers
    truncation = (float(args.truncation), int(layers))

  shape = latent_shape(spec, space)
  if args.latents is not None:
    latents = _load_latents(args.latents, shape, space)
    _check_outputs(args, latents.shape[0])
  else:
    if space != "z":
      raise UserError(f"--seed samples z latents; for --latent-space {space} pass --latents")
    rng = np.random.default_rng(args.seed)
    latents = rng.standard_normal((args.num,) + shape, dtype=np.float32)

  noise_key = None
  if args.noise_mode == "random":
    import jax
    noise_key = jax.random.key(args.noise_seed)

  images = generate_images(spec, params, latents, space=space, truncation=truncation,
                           noise_key=noise_key, batch_size=args.batch_size)
  if not np.all(np.isfinite(images)):
    raise UserError(f"{label}: the generator produced NaN/inf images")

  _check_outputs(args, latents.shape[0])    # nothing appeared meanwhile
  if args.png is not None:
    _write_pngs(args.png, images)
  with fileio.publish(args.out, replace=args.force) as tmp, open(tmp, "wb") as f:
    np.savez(f, images=images, latents=latents, latent_space=np.array(space))
  n, h, w, _ = images.shape
  print(f"wrote {args.out}: {n} images {h}x{w} ({spec.family}, latent space {space})"
        + (f" and {n + 1} PNGs in {args.png}" if args.png is not None else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
