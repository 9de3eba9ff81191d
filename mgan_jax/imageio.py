"""Image files in and out for the user CLI: reading any PIL image, explicit fitting, input lists,
and atomic output directories.

Reading (``read_image``): any file PIL can open (PNG, JPEG, WebP, TIFF, BMP, GIF first frame,
16-bit and float grayscale, palette, CMYK, alpha) -> float32 (H, W, 3) in [-1, 1] (official
``to_tensor(x) * 2 - 1``, RGB). The conversion rules (``FitReport.notes`` says which applied):

* gray (8-bit, 16-bit, 32-bit integer, float) is repeated to 3 channels; 16-bit is scaled by
  65535, float images in [0, 1] are used as they are;
* palette and CMYK images are converted to RGB;
* an image with transparency (RGBA, LA, a palette with a transparent colour) is composited
  over **white** (``ALPHA_BACKGROUND``); fully opaque alpha is simply dropped (the official code
  drops it always);
* the EXIF orientation is applied (a photo is used the way it is shown);
* images of more than ``MAX_PIXELS`` pixels are refused before decoding (one line naming the
  file), and so are files PIL itself flags as decompression bombs.

The model resolution is never reached silently: ``fit`` says what to do when the size differs
(``FITS``):

* ``'error'`` (default): a ``UserError`` naming the file, both sizes and the flag to use;
* ``'resize'``: resize to the expected size (PIL Lanczos; the aspect ratio changes if the file
  is not square -- reported);
* ``'center-crop'``: crop the largest central square, then resize it (Lanczos) if needed.

Every read returns a ``FitReport`` (original size, what was done) that the CLI writes into the
metrics. Masks (``read_mask``) are gray in [0, 1] (1 = white = missing), (H, W, 1), fitted with
the same geometry but nearest resampling.

Inputs (``list_inputs``): files, directories (their image files, sorted, not recursive), glob
patterns (``'photos/*.jpg'``, ``'**'`` recursive) and ``LIST.txt`` files (one path per line,
relative to the list file; blank lines and ``#`` comments skipped).

Outputs: ``to_uint8`` (clip to [-1, 1], round to 8 bit), ``write_png`` / ``write_json`` (plain
writers into a private staging directory that ``mgan_jax.fileio.publish`` renames into place)
and ``grid``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax.errors import UserError

FITS = ("error", "resize", "center-crop")
LIST_SUFFIXES = (".txt", ".lst")
#: Largest image accepted (pixels): 64 megapixels, checked from the header before decoding.
MAX_PIXELS = 64 * 1024 * 1024
#: What transparent pixels are composited over (RGB, 0-255).
ALPHA_BACKGROUND = (255, 255, 255)
#: In directories and glob patterns, files whose name starts with one of these are masks, not
#: inputs, and are skipped (with a notice): keep a mask next to its images without it being
#: inverted as one.
MASK_PREFIXES = ("mask",)


@dataclasses.dataclass(frozen=True)
class FitReport:
  """How a file was brought to the expected size.

  original: (width, height) of the file; size: the (width, height) returned; op: ``'none'``,
  ``'resize'`` or ``'center-crop'``; crop: the (left, top, right, bottom) box for center-crop;
  note: a human-readable sentence (empty when nothing was done); conversions: the decoding
  rules that applied (e.g. ``'transparency composited over white'``).
  """
  original: tuple[int, int]
  size: tuple[int, int]
  op: str = "none"
  crop: tuple[int, int, int, int] | None = None
  note: str = ""
  conversions: tuple[str, ...] = ()

  def to_json(self) -> dict:
    return {"original_size": list(self.original), "size": list(self.size), "op": self.op,
            "crop_box": list(self.crop) if self.crop else None, "note": self.note,
            "conversions": list(self.conversions)}


def _image_module():
  from PIL import Image, ImageOps  # imported lazily (PIL plugins are slowish to register)
  return Image, ImageOps


def open_image(path: str | os.PathLike):
  """Open and fully decode ``path`` with PIL (first frame, EXIF orientation applied).
  Raises UserError naming the file when PIL cannot read it."""
  Image, ImageOps = _image_module()
  path = Path(path)
  if not path.is_file():
    raise UserError(f"{path}: no such image file")
  try:
    with warnings.catch_warnings():      # our own cap (MAX_PIXELS) is lower than PIL's warning
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      im = Image.open(path)
    with im:
      w, h = im.size
      if w * h > MAX_PIXELS:
        raise UserError(f"{path}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels); at most "
                        f"{MAX_PIXELS / 1e6:.0f} megapixels are read (downscale it first)")
      if w < 1 or h < 1:
        raise UserError(f"{path}: image has no pixels ({w}x{h})")
      im.seek(0)
      im.load()
      im = ImageOps.exif_transpose(im)
      return im.copy()
  except UserError:
    raise
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{path}: cannot read as an image ({reason})") from None


def _to_rgb_array(im) -> tuple[np.ndarray, tuple[str, ...]]:
  """PIL image of any mode -> (float32 (H, W, 3) in [0, 1], the conversions applied)."""
  Image, _ = _image_module()
  notes = []
  if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    a = np.asarray(im, dtype=np.float64)
    if not np.all(np.isfinite(a)):
      raise ValueError("the image holds NaN or infinite values")
    top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    if im.mode == "F" and a.max(initial=0) <= 1.0:
      top = 1.0
    notes.append(f"{im.mode} gray scaled by 1/{top:g}, repeated to RGB")
    a = np.clip(a / top, 0.0, 1.0)[..., None].repeat(3, axis=-1)
    return a.astype(np.float32), tuple(notes)
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    notes.append("palette converted to RGB")
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if alpha.min() < 255:
      bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
      im = Image.alpha_composite(bg, rgba)
      notes.append("transparency composited over white")
    else:
      im = rgba
  if im.mode in ("L", "1", "LA"):
    notes.append("gray repeated to RGB")
  elif im.mode not in ("RGB", "RGBA"):
    notes.append(f"{im.mode} converted to RGB")
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.float32) / 255.0, tuple(notes)


def _fit_geometry(path: Path, original: tuple[int, int], expected: tuple[int, int], fit: str,
                  what: str, flag: str) -> FitReport:
  w, h = original
  ew, eh = expected
  if (w, h) == (ew, eh):
    return FitReport(original, expected)
  if fit not in FITS:
    raise UserError(f"unknown --fit {fit!r} (choose {', '.join(FITS)})")
  if fit == "error":
    raise UserError(f"{path}: {what} is {w}x{h} but {ew}x{eh} is needed; pass {flag} resize or "
                    f"{flag} center-crop to fit it, or give a {ew}x{eh} {what}")
  if fit == "resize":
    note = f"resized {w}x{h} -> {ew}x{eh}"
    if w * eh != h * ew:
      note += " (aspect ratio changed)"
    return FitReport(original, expected, "resize", None, note)
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  box = (left, top, left + side, top + side)
  note = f"center-cropped {w}x{h} to {side}x{side} at ({left}, {top})"
  if (side, side) != (ew, eh):
    note += f", resized -> {ew}x{eh}"
  return FitReport(original, expected, "center-crop", box, note)


def _apply_fit(im, report: FitReport, resample):
  if report.op == "none":
    return im
  if report.crop is not None:
    im = im.crop(report.crop)
  if im.size != report.size:
    im = im.resize(report.size, resample=resample)
  return im


def read_image(path: str | os.PathLike, *, size: int | tuple[int, int], fit: str = "error",
               flag: str = "--fit") -> tuple[np.ndarray, FitReport]:
  """Read ``path`` as float32 (H, W, 3) in [-1, 1] at ``size`` (side or (width, height)).

  ``fit`` (``FITS``) decides what happens when the file has another size; ``flag`` is the CLI
  flag named in the error. Returns (image, FitReport).
  """
  Image, _ = _image_module()
  path = Path(path)
  expected = (size, size) if isinstance(size, int) else tuple(size)
  im = open_image(path)
  report = _fit_geometry(path, im.size, expected, fit, "image", flag)
  try:
    rgb, notes = _to_rgb_array(im)
  except ValueError as e:
    raise UserError(f"{path}: {e}") from None
  report = dataclasses.replace(report, conversions=notes)
  if report.op != "none":   # resample in 8-bit-free float: PIL 'F' per channel
    chans = [Image.fromarray(np.ascontiguousarray(rgb[..., c], np.float32)) for c in range(3)]
    chans = [_apply_fit(c, report, Image.Resampling.LANCZOS) for c in chans]
    rgb = np.clip(np.stack([np.asarray(c) for c in chans], axis=-1), 0.0, 1.0)
  out = (rgb.astype(np.float32) * 2.0 - 1.0)
  assert out.shape == (expected[1], expected[0], 3), out.shape
  return out, report


def read_mask(path: str | os.PathLike, *, size: int | tuple[int, int], fit: str = "error",
              flag: str = "--fit") -> tuple[np.ndarray, FitReport]:
  """Read a mask as float32 (H, W, 1) in [0, 1], **1 (white) = missing / corrupted** (official
  ``to_tensor(mask)``; color masks are converted to gray, transparency over white). Fitted
  like ``read_image`` but with nearest resampling (a binary mask stays binary)."""
  Image, _ = _image_module()
  path = Path(path)
  expected = (size, size) if isinstance(size, int) else tuple(size)
  im = open_image(path)
  report = _fit_geometry(path, im.size, expected, fit, "mask", flag)
  try:
    gray = _to_rgb_array(im)[0][..., :1]
  except ValueError as e:
    raise UserError(f"{path}: {e}") from None
  if report.op != "none":
    g = Image.fromarray(np.ascontiguousarray(gray[..., 0], np.float32))
    gray = np.asarray(_apply_fit(g, report, Image.Resampling.NEAREST))[..., None]
  return np.clip(gray, 0.0, 1.0).astype(np.float32), report


# ----------------------------------------------------------------------------------------------
# Input lists.
# ----------------------------------------------------------------------------------------------
def image_extensions() -> frozenset[str]:
  """Lower-case file suffixes PIL can open (``.png``, ``.jpg``, ...)."""
  Image, _ = _image_module()
  Image.init()
  return frozenset(ext.lower() for ext in Image.registered_extensions())


def _is_glob(spec: str) -> bool:
  return any(c in spec for c in "*?[")


def is_mask_name(path: Path) -> bool:
  """A file a directory or glob expansion skips as a mask (``MASK_PREFIXES``)."""
  return Path(path).name.lower().startswith(MASK_PREFIXES)


def list_inputs(specs: Sequence[str | os.PathLike], *, flag: str = "--image",
                exclude: Sequence[str | os.PathLike] = (),
                skipped: list | None = None) -> list[Path]:
  """Expand ``specs`` (files, directories, globs, LIST.txt files) into image paths, in order.

  Directories give their image files (by suffix, sorted by name, not recursive); globs their
  sorted matches; a ``.txt`` / ``.lst`` file one path per line (relative paths are relative to
  the list file). In directories and globs, files named like masks (``MASK_PREFIXES``) and the
  files in ``exclude`` (the run's own --mask) are skipped and appended to ``skipped``; a file
  named explicitly is always used. Raises UserError naming the spec when it matches nothing.
  """
  exts = image_extensions()
  out: list[Path] = []
  excluded = {Path(e).resolve() for e in exclude}

  def keep(files: list[Path]) -> list[Path]:
    kept = []
    for f in files:
      if is_mask_name(f) or f.resolve() in excluded:
        if skipped is not None:
          skipped.append(f)
      else:
        kept.append(f)
    return kept

  for raw in specs:
    spec = os.fspath(raw)
    p = Path(spec).expanduser()
    if p.is_dir():
      files = keep(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts))
      if not files:
        raise UserError(f"{flag} {spec}: directory holds no image files "
                        f"({', '.join(sorted(e for e in exts if e in ('.png', '.jpg', '.jpeg')))}"
                        ", ...)")
      out.extend(files)
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
      out.extend(_read_list(p, flag))
    elif p.is_file():
      out.append(p)
    elif _is_glob(spec):
      matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
      files = keep([m for m in matches if m.is_file()])
      if not files:
        raise UserError(f"{flag} {spec}: the pattern matches no file")
      out.extend(files)
    else:
      raise UserError(f"{flag} {spec}: no such file or directory")
  if not out:
    raise UserError(f"{flag}: no input images given")
  return out


def _read_list(path: Path, flag: str) -> list[Path]:
  try:
    lines = path.read_text().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{flag} {path}: cannot read the list file ({e})") from None
  out = []
  for n, line in enumerate(lines, 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    q = Path(line).expanduser()
    if not q.is_absolute():
      q = path.parent / q
    if not q.is_file():
      raise UserError(f"{path}:{n}: {line}: no such file")
    out.append(q)
  if not out:
    raise UserError(f"{flag} {path}: the list file names no images")
  return out


def output_names(paths: Sequence[Path]) -> list[str]:
  """One output directory name per input: the file stem, made unique when two inputs share a
  stem by appending a short hash of the absolute path (``face-3f2a9c1d``); stable across runs
  and independent of the input order."""
  import hashlib
  stems = [p.stem or "image" for p in paths]
  counts: dict[str, int] = {}
  for s in stems:
    counts[s] = counts.get(s, 0) + 1
  names = []
  for p, s in zip(paths, stems):
    if counts[s] > 1:
      digest = hashlib.sha256(os.fspath(Path(p).absolute()).encode()).hexdigest()[:8]
      s = f"{s}-{digest}"
    names.append(s)
  if len(set(names)) != len(names):   # the same file given twice
    dup = next(n for n in names if names.count(n) > 1)
    given = [os.fspath(p) for p, n in zip(paths, names) if n == dup]
    raise UserError(f"the input {given[0]} is given more than once"
                    + (f" (also as {given[1]})" if given[1] != given[0] else ""))
  return names


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------
def to_uint8(image: np.ndarray) -> np.ndarray:
  """[-1, 1] float (H, W, C) -> uint8 (clipped, rounded)."""
  x = (np.clip(np.nan_to_num(np.asarray(image, np.float32)), -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 [-1, 1]."""
  return np.asarray(image, np.float32) / 127.5 - 1.0


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Write a [-1, 1] float (H, W, 3) or (H, W, 1) image, or a uint8 array, as PNG."""
  Image, _ = _image_module()
  a = image if np.asarray(image).dtype == np.uint8 else to_uint8(image)
  a = np.asarray(a)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  Image.fromarray(a).save(path, format="PNG")


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Strict JSON (non-finite floats, e.g. the PSNR of identical images, become null)."""
  with open(path, "w") as f:
    json.dump(_finite(obj), f, indent=2, sort_keys=False, default=_json_default,
              allow_nan=False)
    f.write("\n")


def _finite(obj: Any) -> Any:
  if isinstance(obj, float) or isinstance(obj, np.floating):
    return float(obj) if np.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, Path):
    return os.fspath(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def labeled_grid(rows: Sequence[Sequence[tuple[np.ndarray, str]]], *,
                 header: Sequence[str] = (), size: int | None = None, scale: int = 1,
                 pad: int = 4) -> np.ndarray:
  """A uint8 sheet of image tiles with a column header and a caption under every tile.

  rows: per row, (image, caption) tiles; images are [-1, 1] floats or uint8 (H_i, W_i, 3), each
  nearest-resized to ``size`` (default: the largest height) times ``scale``. ``header``: one
  label per column. Text is drawn with PIL's built-in font (no font files needed).
  """
  Image, _ = _image_module()
  from PIL import ImageDraw
  tiles = [[(to_uint8(x) if np.asarray(x).dtype != np.uint8 else np.asarray(x), c) for x, c in r]
           for r in rows]
  side = (size or max(t.shape[0] for r in tiles for t, _ in r)) * scale
  ncols = max(len(r) for r in tiles)
  head = 14 if header else 0
  foot = 13 if any(c for r in tiles for _, c in r) else 0
  width = pad + ncols * (side + pad)
  canvas = Image.new("RGB", (width, head + pad + len(tiles) * (side + foot + pad)),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for j, label in enumerate(header):
    draw.text((pad + j * (side + pad) + 1, 2), str(label), fill=(0, 0, 0))
  for i, r in enumerate(tiles):
    y = head + pad + i * (side + foot + pad)
    for j, (t, caption) in enumerate(r):
      x = pad + j * (side + pad)
      im = Image.fromarray(t)
      if im.size != (side, side):
        im = im.resize((side, side), Image.Resampling.NEAREST)
      canvas.paste(im, (x, y))
      if caption:
        draw.text((x + 1, y + side + 1), caption, fill=(0, 0, 0))
  return np.asarray(canvas)


__all__ = ["FITS", "MAX_PIXELS", "ALPHA_BACKGROUND", "MASK_PREFIXES", "FitReport", "open_image",
           "read_image", "read_mask", "image_extensions", "is_mask_name", "list_inputs",
           "output_names", "to_uint8", "from_uint8", "write_png", "write_json", "labeled_grid"]
