"""``python -m mgan_jax.manipulate``: semantic editing of inverted images (the fourth application
of mGANprior), interpolation between two inversions, and style mixing.

Examples::

    # invert first (the invert defaults of the model), then move along the top SeFa directions
    python -m mgan_jax.manipulate --image examples/astronaut_face64.png \\
        --direction sefa:0-4 --range -3 3 --steps 7 --out out/edit
    # edit earlier inversions (latents.npz written by python -m mgan_jax.invert --image ...)
    python -m mgan_jax.manipulate --latents out/recon/*/latents.npz --direction sefa:1 \\
        --out out/edit
    # an InterFaceGAN / mGANprior boundary file ((1, D) .npy), on a PGGAN inversion
    python -m mgan_jax.manipulate --latents out/pg/face/latents.npz \\
        --direction pggan_celebahq_age_boundary.npy --range -4.2 4.2 --steps 9 --out out/age
    python -m mgan_jax.manipulate --interpolate out/recon/a/latents.npz \\
        out/recon/b/latents.npz --steps 8 --out out/interp
    python -m mgan_jax.manipulate --latents out/sg/a/latents.npz \\
        --mix out/sg/b/latents.npz --out out/mix                  # StyleGAN / StyleGAN2

Outputs, one directory per input, written completely or not at all (never replacing existing
outputs without ``--force``):

* ``--direction``: ``OUT/<name>/<direction>/`` per direction (``sefa0``, ``sefa1``, ... or the
  boundary file's stem): ``frame_00.png`` ..., ``strip.png`` (the frames side by side),
  ``edit.gif`` (animated, forth and back), ``frames.npz`` (the frames' latents, leading frame
  axis, and ``steps``), ``settings.json``; with several directions also ``OUT/<name>/grid.png``
  (one row per direction);
* ``--interpolate A B``: ``OUT/<a>-to-<b>/`` with the same files;
* ``--mix B``: ``OUT/<name>-mix-<b>/``: A, A with B's coarse / middle / fine styles, B.

``<name>`` is the directory holding ``latents.npz`` (the image name of the inversion). The
model is the one recorded in the latents file unless ``--model`` / ``--checkpoint`` is given
(then it must be the same model). The edit semantics are in ``mgan_jax.edits``, the directions
in ``mgan_jax.directions``; docs/manipulate.md has the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mgan_jax import cli, fileio, imageio
from mgan_jax import directions as directions_lib
from mgan_jax.defaults import DEFAULT_MODEL
from mgan_jax.errors import UserError, cli_entry

# The JAX-side modules (edits, latents, the inversion CLI) are imported where they are used, so
# that a bad command line is reported without loading JAX.

PROG = "python -m mgan_jax.manipulate"
INVERSION_DIR = "inversion"
DEFAULT_RANGE = (-3.0, 3.0)
DEFAULT_STEPS = 7


def build_parser() -> argparse.ArgumentParser:
  p = cli.Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
              description="Edit inverted images along semantic directions (SeFa or "
                          "InterFaceGAN boundaries), interpolate two inversions, mix styles.",
              epilog="examples " + __doc__.split("Examples")[1].split("Outputs,")[0]
              .strip().replace("::", ":"))
  i = p.add_argument_group("inputs (one of)")
  i.add_argument("--latents", nargs="+", metavar="FILE|DIR",
                 help="latents.npz of earlier inversions (python -m mgan_jax.invert --image "
                      "...), directories holding one, or an inversion's --out directory "
                      "(every <name>/latents.npz in it)")
  i.add_argument("--image", nargs="+", metavar="SPEC",
                 help="images to invert first (python -m mgan_jax.invert defaults of the model, "
                      "into OUT/inversion/), then edit")
  i.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                 help="two latents files: frames from A to B (official interpolate_two_latent)")
  e = p.add_argument_group("edit")
  e.add_argument("--direction", nargs="+", metavar="FILE|sefa:K",
                 help="boundary .npy files ((1, D), InterFaceGAN / mGANprior format) and/or SeFa "
                      "directions of the model: sefa:0 (largest eigenvalue), sefa:0-4, sefa:1,3")
  e.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"), default=None,
                 help="steps along the direction, from START to STOP (default -3 3)")
  e.add_argument("--steps", type=int, default=None, metavar="F",
                 help=f"number of frames (default {DEFAULT_STEPS})")
  e.add_argument("--layers", default=None, metavar="all|A-B|A,B",
                 help="w+ rows an edit moves (StyleGAN/StyleGAN2 w+ latents); default: the "
                      "SeFa layers for sefa:K, all rows for a boundary file")
  e.add_argument("--sefa-layers", default="all", metavar="all|A-B|A,B",
                 help="StyleGAN/StyleGAN2: the layers whose style weights SeFa factorises "
                      "(default all; PGGAN and DCGAN use their first layer)")
  e.add_argument("--mix", metavar="B",
                 help="style mixing (StyleGAN/StyleGAN2): each input with the coarse (4-8 px), "
                      "middle (16-32 px) and fine (64+ px) styles of this latents file")
  m = p.add_argument_group("model")
  mx = m.add_mutually_exclusive_group()
  mx.add_argument("--model", metavar="NAME",
                  help="named prior (default: the model recorded in the latents; "
                       f"{DEFAULT_MODEL} for --image)")
  mx.add_argument("--checkpoint", metavar="DIR", help="converted model directory")
  v = p.add_argument_group("inversion (with --image)")
  v.add_argument("--invert-args", default="", metavar="'ARGS'",
                 help="extra flags for python -m mgan_jax.invert, one quoted string (e.g. "
                      "'--iterations 100 --codes 10')")
  o = p.add_argument_group("output")
  o.add_argument("--out", default="out/manipulate", metavar="DIR",
                 help="output directory (default out/manipulate)")
  o.add_argument("--scale", type=int, default=1, metavar="K",
                 help="nearest-neighbour enlargement of strip.png, grid.png and edit.gif "
                      "(frames stay at the model resolution; default 1)")
  o.add_argument("--gif-ms", type=int, default=120, metavar="MS",
                 help="GIF frame duration in milliseconds (default 120)")
  o.add_argument("--force", action="store_true", help="replace existing outputs")
  o.add_argument("--quiet", action="store_true", help="no progress messages")
  cli.add_compile_cache_argument(o)
  return p


# ----------------------------------------------------------------------------------------------
# Glue to the inversion pipeline (one function each, so they can be re-pointed).
# ----------------------------------------------------------------------------------------------
def read_latents(path: Path) -> tuple[dict, dict]:
  """(latents, meta) of a latents file written by the inversion."""
  from mgan_jax import latents_io
  lat, meta = latents_io.load(path, flag="--latents")
  if not meta:
    raise UserError(f"--latents {path}: not a latents.npz written by python -m mgan_jax.invert "
                    "(it records no method or model)")
  return lat, meta


def invert_images(images: Sequence[str], out: Path, *, model: str | None,
                  checkpoint: str | None, extra: Sequence[str], force: bool,
                  quiet: bool) -> list[Path]:
  """Invert ``images`` with the user CLI of ``python -m mgan_jax.invert`` into ``out``; returns
  the latents files, in input order."""
  from mgan_jax import invert_images as invert_cli
  argv = ["--image", *images, "--out", os.fspath(out)]
  argv += ["--model", model] if model else []
  argv += ["--checkpoint", checkpoint] if checkpoint else []
  argv += list(extra) + (["--force"] if force else []) + (["--quiet"] if quiet else [])
  args = invert_cli.build_parser().parse_args(argv)
  args.argv = argv
  invert_cli.run(args)
  names = imageio.output_names(invert_cli.input_paths(args))
  return [out / n / "latents.npz" for n in names]


# ----------------------------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------------------------
def load_model(*, model: str | None = None, checkpoint: str | None = None
               ) -> tuple[Any, Any, str]:
  """(spec, params, label) of a named model (fetched on first use) or a model directory."""
  from mgan_jax import assets
  spec, params, label, _ = assets.load_generator(model, directory=checkpoint)
  return spec, params, label


def _known_model(name: str) -> bool:
  from mgan_jax import assets
  return name in assets.MODELS


@dataclasses.dataclass
class Source:
  """One input latents file: path, output name, latents, meta."""
  path: Path
  name: str
  latents: dict
  meta: dict

  @property
  def method(self) -> str:
    return self.meta["method"]

  @property
  def layer(self) -> int | None:
    return self.meta.get("layer")


def _publish(final: Path, *, force: bool):
  """``fileio.publish`` of one output directory; an occupied one is a UserError without
  ``--force``."""
  if fileio.is_occupied(final) and not force:
    raise UserError(f"{final} already holds outputs; pass --force to replace them or choose "
                    "another --out")
  return fileio.publish(final, kind="dir", replace=force)


def choose_model(args: argparse.Namespace, sources: Sequence[Source], *,
                 log) -> tuple[Any, Any, str]:
  """The model to edit with: ``--model`` / ``--checkpoint`` when given (checked against what
  each latents file records), else the model the latents record (all the same)."""
  if args.model is None and args.checkpoint is None:
    recorded = sorted({str(s.meta.get("model")) for s in sources})
    if len(recorded) > 1:
      a, b = (next(s for s in sources if str(s.meta.get("model")) == r) for r in recorded[:2])
      raise UserError(f"{a.path} and {b.path} were inverted with different models "
                      f"({recorded[0]!r}, {recorded[1]!r}); edit them in separate calls")
    rec = recorded[0]
    if rec == "None":
      raise UserError(f"{sources[0].path}: records no model; pass --model or --checkpoint")
    if _known_model(rec):
      gen, params, label = load_model(model=rec)
    elif Path(rec).is_dir():
      gen, params, label = load_model(checkpoint=rec)
    else:
      raise UserError(f"{sources[0].path}: inverted with the model {rec!r}, which is neither a "
                      "known model name nor an existing directory here; pass --model NAME or "
                      "--checkpoint DIR")
  else:
    gen, params, label = load_model(model=args.model, checkpoint=args.checkpoint)
  for s in sources:
    check_model(s, gen, label, explicit_dir=args.checkpoint is not None, log=log)
  return gen, params, label


def check_model(src: Source, gen: Any, label: str, *, explicit_dir: bool, log) -> None:
  """One line when ``src`` was inverted with another model: an error, except for a model
  directory at another path with the same family and resolution (a note)."""
  from mgan_jax import latents as latents_lib
  rec = src.meta.get("model")
  fam, res = src.meta.get("family"), src.meta.get("resolution")
  same_shape = (fam in (None, gen.family)) and (res in (None, gen.resolution))
  what = f"{gen.family} {gen.resolution}x{gen.resolution}"
  if not same_shape:
    raise UserError(f"{src.path}: inverted with {rec!r} ({fam} {res}x{res}), but the model "
                    f"given is {label!r} ({what}); pass the model it was inverted with")
  if rec is not None and rec != label:
    same_dir = explicit_dir and not _known_model(str(rec)) and \
        Path(str(rec)).absolute() == Path(label).absolute()
    if not same_dir:
      if explicit_dir and not _known_model(str(rec)):
        log(f"note: {src.path} was inverted with the model directory {rec!r}; using {label!r} "
            f"({what}, the same family and resolution)")
      else:
        raise UserError(f"{src.path}: inverted with the model {rec!r}, but {label!r} is given; "
                        "pass the model it was inverted with")
  try:
    want = latents_lib.latent_shapes(gen, method=src.method, codes=int(src.meta.get("codes", 1)),
                                     layer=src.layer)
  except (ValueError, TypeError) as e:
    raise UserError(f"{src.path}: its method {src.method!r} / layer {src.layer} do not fit "
                    f"{label!r} ({e})") from None
  got = {k: tuple(np.shape(v)) for k, v in src.latents.items()}
  if got != {k: tuple(v) for k, v in want.items()}:
    raise UserError(f"{src.path}: latents {got} do not fit method {src.method!r} of {label!r} "
                    f"(expected {dict(want)})")


# ----------------------------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------------------------
def latents_files(specs: Sequence[str], *, flag: str = "--latents") -> list[Path]:
  """Files, directories holding latents.npz, inversion output directories (every
  <name>/latents.npz), or glob patterns -> latents files in order."""
  import glob
  out: list[Path] = []
  for spec in specs:
    p = Path(spec)
    if p.is_file():
      out.append(p)
    elif p.is_dir():
      if (p / "latents.npz").is_file():
        out.append(p / "latents.npz")
      else:
        found = sorted(p.glob("*/latents.npz"))
        if not found:
          raise UserError(f"{flag} {spec}: directory holds no latents.npz (nor <name>/latents.npz)")
        out.extend(found)
    elif any(c in spec for c in "*?["):
      found = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
      if not found:
        raise UserError(f"{flag} {spec}: the pattern matches no file")
      out.extend(found)
    else:
      raise UserError(f"{flag} {spec}: no such file or directory")
  return out


def read_sources(paths: Sequence[Path]) -> list[Source]:
  """Read every latents file (UserError naming the first bad one); output names from the
  directories that hold them (the inversion's image names), made unique."""
  from mgan_jax import latents as latents_lib
  stand_ins = [p.parent if p.name == "latents.npz" and p.parent.name else p for p in paths]
  names = imageio.output_names(stand_ins)
  out = []
  for p, n in zip(paths, names):
    lat, meta = read_latents(p)
    method = meta.get("method")
    if method not in latents_lib.METHODS:
      raise UserError(f"{p}: records no latent method (got {method!r})")
    out.append(Source(p, n, lat, meta))
  return out


@dataclasses.dataclass
class Direction:
  """A resolved direction: label (output subdirectory), vector, source description, default w+
  rows (SeFa's layers) and the SeFa facts."""
  label: str
  vector: np.ndarray
  info: dict
  layers: tuple[int, ...] | None = None
  space: str | None = None


_SEFA = re.compile(r"^sefa:(.+)$")


def resolve_directions(specs: Sequence[str], gen: Any, params: Any, *, sefa_layers: str,
                       dim: int, cache: Path | None) -> list[Direction]:
  """``--direction`` values -> Directions (SeFa computed once, cached under ``cache``)."""
  out: list[Direction] = []
  fac = None
  for spec in specs:
    m = _SEFA.match(spec)
    if m is None:
      vec = directions_lib.load_boundary(spec, dim=dim)
      norm = float(np.linalg.norm(vec.astype(np.float64)))
      info = {"source": "boundary", "file": os.fspath(spec), "norm": norm}
      if abs(norm - 1.0) > 1e-3:
        info["note"] = "not unit norm: the steps are in units of this vector's length"
      out.append(Direction(_label(Path(spec).stem), vec, info))
      continue
    try:
      space = directions_lib.sefa_space(gen)
      count = gen.latent_dim if space == "z" else int(gen.synthesis_input_shape()[-1])
      idx = directions_lib.parse_layers(m.group(1), count, flag=f"--direction {spec}:",
                                        noun="directions")
    except ValueError as e:
      raise UserError(str(e)) from None
    if fac is None:
      try:
        fac = directions_lib.cached_sefa(gen, params, sefa_layers, cache=cache)
      except ValueError as e:
        raise UserError(f"--sefa-layers {sefa_layers}: {e}") from None
    for k in idx:
      out.append(Direction(f"sefa{k}", fac.direction(k), {
          "source": "sefa", "index": k, "eigenvalue": float(fac.eigenvalues[k]),
          "eigenvalue_share": float(fac.eigenvalues[k] / np.sum(fac.eigenvalues)),
          "sefa_layers": list(fac.layers), "space": fac.space, "key": fac.key},
          layers=fac.layers if fac.space == "w" else None, space=fac.space))
  seen: dict[str, int] = {}
  for d in out:
    if d.label in seen:
      seen[d.label] += 1
      d.label = f"{d.label}-{seen[d.label]}"
    else:
      seen[d.label] = 1
  return out


def _check_sefa_space(gen: Any, sources: Sequence[Source]) -> None:
  """SeFa directions move z (PGGAN, DCGAN) or w / w+ (StyleGAN, StyleGAN2): every input must
  hold codes of that space (checked before the factorisation runs)."""
  from mgan_jax import edits
  try:
    space = directions_lib.sefa_space(gen)
  except ValueError as e:
    raise UserError(f"--direction sefa: {e}") from None
  for s in sources:
    key = edits.edit_key(s.method)
    if (space == "z") != (key == "z"):
      raise UserError(f"--direction sefa: SeFa directions of this {gen.family} generator move "
                      f"{space} codes, but {s.path} holds {key} codes (method {s.method}); "
                      "invert with a method in that space")


def _label(stem: str) -> str:
  s = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "direction"
  return s


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------
def _enlarge(a: np.ndarray, k: int) -> np.ndarray:
  return a if k == 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def write_gif(path: Path, frames8: Sequence[np.ndarray], *, ms: int) -> None:
  """Animated GIF, forth and back, looping."""
  from PIL import Image
  seq = list(frames8) + list(frames8[-2:0:-1])
  ims = [Image.fromarray(f) for f in seq]
  ims[0].save(path, format="GIF", save_all=True, append_images=ims[1:], duration=ms, loop=0,
              disposal=1)


def write_frames(d: Path, images: np.ndarray, frames: dict, steps: np.ndarray, settings: dict,
                 *, scale: int, gif_ms: int) -> np.ndarray:
  """frame_XX.png, strip.png, edit.gif, frames.npz, settings.json into ``d`` (created);
  returns the strip (uint8)."""
  d.mkdir(parents=True, exist_ok=True)
  frames8 = [imageio.to_uint8(x) for x in images]
  width = max(2, len(str(len(frames8) - 1)))
  names = [f"frame_{i:0{width}d}.png" for i in range(len(frames8))]
  for n, f in zip(names, frames8):
    imageio.write_png(d / n, f)
  strip = imageio.labeled_grid([[(f, "") for f in frames8]], pad=2)
  imageio.write_png(d / "strip.png", _enlarge(strip, scale))
  write_gif(d / "edit.gif", [_enlarge(f, scale) for f in frames8], ms=gif_ms)
  with open(d / "frames.npz", "wb") as f:
    np.savez(f, **frames, steps=np.asarray(steps, np.float64))
  imageio.write_json(d / "settings.json", {**settings, "frames": names,
                                           "files": ["strip.png", "edit.gif", "frames.npz"]})
  return strip


def _stack_rows(strips: Sequence[np.ndarray]) -> np.ndarray:
  w = max(s.shape[1] for s in strips)
  rows = [np.pad(s, ((0, 0), (0, w - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
  return np.concatenate(rows, axis=0)


def _check_free(out: Path, names: Sequence[str], *, force: bool) -> None:
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  if force:
    return
  taken = [n for n in names if fileio.is_occupied(out / n)]
  if taken:
    more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
    raise UserError(f"{out / taken[0]} already holds outputs{more}; pass --force to replace "
                    "them or choose another --out")


# ----------------------------------------------------------------------------------------------
# The three modes.
# ----------------------------------------------------------------------------------------------
def _base_settings(src: Source, gen: Any, label: str) -> dict:
  return {"latents": os.fspath(src.path), "model": label, "family": gen.family,
          "resolution": gen.resolution, "method": src.method, "codes": src.meta.get("codes"),
          "layer": src.layer}


def _edit_one(src: Source, dirs: Sequence[Direction], gen: Any, params: Any, label: str,
              args: argparse.Namespace, out: Path, steps: np.ndarray, command: str) -> Path:
  from mgan_jax import edits
  method = src.method
  key = edits.edit_key(method)
  rendered = []
  for d in dirs:
    if d.space is not None and (d.space == "z") != (key == "z"):
      have = "z codes" if key == "z" else f"{key} codes"
      raise UserError(f"--direction sefa:{d.info['index']}: SeFa directions of this {gen.family} "
                      f"generator move {d.space} codes, but {src.path} holds {have} (method "
                      f"{method}); invert with a method in that space")
    if args.layers is not None and key != "wp":
      raise UserError(f"--layers applies to w+ latents; {src.path} holds {key} codes "
                      f"(method {method})")
    rows = args.layers if args.layers is not None else (d.layers if key == "wp" else None)
    try:
      if key == "wp":
        rows = directions_lib.parse_layers(rows, gen.num_layers, flag="--layers")
      frames = edits.move(gen, src.latents, d.vector, steps, method=method, layers=rows)
    except ValueError as e:
      raise UserError(f"{src.path}: {e}") from None
    rendered.append((d, rows, frames))
  zero = [i for i, s in enumerate(steps) if s == 0]
  final = out / src.name
  with _publish(final, force=args.force) as tmp:
    strips = []
    for d, rows, frames in rendered:   # one compiled program for every direction (F frames)
      images = edits.render_frames(gen, params, frames, method=method, layer=src.layer)
      settings = {"mode": "direction", **_base_settings(src, gen, label), "direction": {
          "label": d.label, **d.info}, "edit_space": key,
          "layers": list(rows) if rows is not None else None,
          "steps": [float(s) for s in steps], "step0_frame": zero[0] if zero else None,
          "command": command}
      strips.append(write_frames(tmp / d.label, images, frames, steps, settings,
                                 scale=args.scale, gif_ms=args.gif_ms))
    if len(dirs) > 1:
      imageio.write_png(tmp / "grid.png", _enlarge(_stack_rows(strips), args.scale))
  return final


def _interpolate(a: Source, b: Source, gen: Any, params: Any, label: str,
                 args: argparse.Namespace, out: Path, command: str) -> Path:
  from mgan_jax import edits
  if a.method != b.method or a.layer != b.layer:
    raise UserError(f"--interpolate: {a.path} (method {a.method}, layer {a.layer}) and {b.path} "
                    f"(method {b.method}, layer {b.layer}) are not of the same kind")
  num = args.steps or DEFAULT_STEPS
  try:
    frames = edits.interpolate(a.latents, b.latents, num, method=a.method)
  except ValueError as e:
    raise UserError(f"--interpolate {a.path} {b.path}: {e}") from None
  images = edits.render_frames(gen, params, frames, method=a.method, layer=a.layer)
  t = edits.line_steps(0.0, 1.0, num)
  final = out / f"{a.name}-to-{b.name}"
  settings = {"mode": "interpolate", **_base_settings(a, gen, label),
              "latents_b": os.fspath(b.path), "codes_b": b.meta.get("codes"),
              "steps": [float(s) for s in t], "command": command}
  with _publish(final, force=args.force) as tmp:
    write_frames(tmp, images, frames, t, settings, scale=args.scale, gif_ms=args.gif_ms)
  return final


def _mix(src: Source, b: Source, gen: Any, params: Any, label: str, args: argparse.Namespace,
         out: Path, command: str) -> Path:
  from mgan_jax import edits
  try:
    frames, method = edits.mix_levels(gen, params, src.latents, b.latents, method_a=src.method,
                                      method_b=b.method)
  except ValueError as e:
    raise UserError(f"--mix {b.path}: {e}") from None
  images = edits.render_frames(gen, params, frames, method=method, layer=src.layer)
  levels = list(edits.LEVELS)
  final = out / f"{src.name}-mix-{b.name}"
  settings = {"mode": "mix", **_base_settings(src, gen, label), "mix_with": os.fspath(b.path),
              "rendered_method": method, "columns": ["A"] + levels + ["all (B's styles)"],
              "rows": {lv: list(edits.level_layers(gen, lv)) for lv in levels},
              "command": command}
  with _publish(final, force=args.force) as tmp:
    write_frames(tmp, images, frames, np.arange(len(images), dtype=np.float64), settings,
                 scale=args.scale, gif_ms=args.gif_ms)
  return final


# ----------------------------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------------------------
def _check_args(args: argparse.Namespace) -> str:
  modes = [m for m, v in (("--direction", args.direction), ("--interpolate", args.interpolate),
                          ("--mix", args.mix)) if v]
  if len(modes) != 1:
    raise UserError("give one of --direction, --interpolate or --mix" if not modes else
                    f"{' and '.join(modes)} cannot be combined; give one")
  mode = modes[0]
  inputs = [f for f, v in (("--latents", args.latents), ("--image", args.image)) if v]
  if mode == "--interpolate":
    if inputs:
      raise UserError(f"--interpolate takes its two latents files; drop {inputs[0]}")
  elif len(inputs) != 1:
    raise UserError("give the inputs with --latents or --image" if not inputs else
                    "--latents and --image cannot be combined")
  if mode != "--direction":
    for flag, v in (("--range", args.range), ("--layers", args.layers)):
      if v is not None:
        raise UserError(f"{flag} applies to --direction edits")
    if args.sefa_layers != "all":
      raise UserError("--sefa-layers applies to --direction sefa:K edits")
  if mode == "--mix" and args.steps is not None:
    raise UserError("--steps does not apply to --mix (its frames are A, coarse, middle, fine, B)")
  if args.steps is not None and args.steps < 1:
    raise UserError(f"--steps must be >= 1, got {args.steps}")
  if args.scale < 1 or args.scale > 16:
    raise UserError(f"--scale must be in 1..16, got {args.scale}")
  if args.gif_ms < 10:
    raise UserError(f"--gif-ms must be >= 10, got {args.gif_ms}")
  if args.invert_args and not args.image:
    raise UserError("--invert-args applies to --image")
  return mode


def run(args: argparse.Namespace) -> list[Path]:
  """Run the CLI for parsed ``args``; returns the output directories."""
  t0 = time.perf_counter()
  log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr,
                                                                  flush=True))
  mode = _check_args(args)
  cli.enable_compile_cache(args)
  out = Path(args.out)
  command = " ".join([PROG, *map(shlex.quote, getattr(args, "argv", None) or sys.argv[1:])])
  if mode == "--interpolate":
    a, b = read_sources(latents_files(args.interpolate, flag="--interpolate"))
    gen, params, label = choose_model(args, [a, b], log=log)
    _check_free(out, [f"{a.name}-to-{b.name}"], force=args.force)
    path = _interpolate(a, b, gen, params, label, args, out, command)
    log(f"{PROG}: {path}")
    return [path]

  mix_src = None
  if mode == "--mix":   # read before any inversion runs
    (mix_src,) = read_sources(latents_files([args.mix], flag="--mix"))
  if args.image:
    try:
      extra = shlex.split(args.invert_args)
    except ValueError as e:
      raise UserError(f"--invert-args: {e}") from None
    names = imageio.output_names(imageio.list_inputs(args.image))
    if INVERSION_DIR in names:
      raise UserError(f"an input named {INVERSION_DIR!r} would collide with OUT/{INVERSION_DIR}/ "
                      "(the inversions); rename it")
    _check_free(out, _planned(names, args, mix_name=mix_src.name if mix_src else None),
                force=args.force)
    if mode == "--direction":   # check the direction files before the inversion runs
      for spec in args.direction:
        if not _SEFA.match(spec):
          directions_lib.load_boundary(spec)
    log(f"{PROG}: inverting {len(names)} image(s) into {out / INVERSION_DIR}")
    files = invert_images(args.image, out / INVERSION_DIR, model=args.model,
                          checkpoint=args.checkpoint, extra=extra, force=args.force,
                          quiet=args.quiet)
  else:
    files = latents_files(args.latents)
  sources = read_sources(files)
  gen, params, label = choose_model(args, sources, log=log)
  if mix_src is not None:
    check_model(mix_src, gen, label, explicit_dir=args.checkpoint is not None, log=log)
  _check_free(out, _planned([s.name for s in sources], args,
                            mix_name=mix_src.name if mix_src else None), force=args.force)
  from mgan_jax import edits
  written = []
  if mode == "--direction":
    dims = {edits.edit_dim(gen, s.method) for s in sources}
    if len(dims) != 1:
      raise UserError("the latents files edit latent spaces of different sizes "
                      f"({sorted(dims)}); edit them in separate calls")
    if any(_SEFA.match(spec) for spec in args.direction):
      _check_sefa_space(gen, sources)
    if args.layers is not None:   # every input checked before the first is written
      for s in sources:
        if edits.edit_key(s.method) != "wp":
          raise UserError(f"--layers applies to w+ latents; {s.path} holds "
                          f"{edits.edit_key(s.method)} codes (method {s.method})")
      try:
        directions_lib.parse_layers(args.layers, gen.num_layers, flag="--layers")
      except ValueError as e:
        raise UserError(str(e)) from None
    dirs = resolve_directions(args.direction, gen, params, sefa_layers=args.sefa_layers,
                              dim=dims.pop(), cache=_sefa_cache())
    lo, hi = args.range if args.range is not None else DEFAULT_RANGE
    steps = edits.line_steps(lo, hi, args.steps or DEFAULT_STEPS)
    for s in sources:
      path = _edit_one(s, dirs, gen, params, label, args, out, steps, command)
      log(f"  {path}: {', '.join(d.label for d in dirs)}")
      written.append(path)
  else:
    for s in sources:
      path = _mix(s, mix_src, gen, params, label, args, out, command)
      log(f"  {path}")
      written.append(path)
  log(f"done: {len(written)} input(s) in {time.perf_counter() - t0:.1f} s")
  return written


def _planned(names: Sequence[str], args: argparse.Namespace, *, mix_name: str | None
             ) -> list[str]:
  if args.mix:
    return [f"{n}-mix-{mix_name}" for n in names]
  return list(names)


def _sefa_cache() -> Path:
  from mgan_jax import assets
  return assets.cache_dir() / "sefa"


def main_impl(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  args.argv = argv
  run(args)
  return 0


main = cli_entry(main_impl, interrupted="interrupted; finished outputs are kept, nothing "
                                       "half-written was left")


if __name__ == "__main__":
  sys.exit(main())
