"""Image files in and out for the user CLI: reading any PIL image, explicit fitting, input lists,
and atomic output directories.

Reading (``read_image``): any file PIL can open (PNG, JPEG, WebP, TIFF, BMP, GIF first frame,
16-bit and float grayscale, palette, alpha) -> float32 (H, W, 3) in [-1, 1] (official
``to_tensor(x) * 2 - 1``, RGB; alpha is dropped as the official ``.convert('RGB')`` does, gray is
repeated to 3 channels; the EXIF orientation is applied). The model resolution is never reached
silently: ``fit`` says what to do when the size differs (``FITS``):

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
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mgan_jax.errors import UserError

FITS = ("error", "resize", "center-crop")
LIST_SUFFIXES = (".txt", ".lst")


@dataclasses.dataclass(frozen=True)
class FitReport:
  """How a file was brought to the expected size.

  original: (width, height) of the file; size: the (width, height) returned; op: ``'none'``,
  ``'resize'`` or ``'center-crop'``; crop: the (left, top, right, bottom) box for center-crop;
  note: a human-readable sentence (empty when nothing was done).
  """
  original: tuple[int, int]
  size: tuple[int, int]
  op: str = "none"
  crop: tuple[int, int, int, int] | None = None
  note: str = ""

  def to_json(self) -> dict:
    return {"original_size": list(self.original), "size": list(self.size), "op": self.op,
            "crop_box": list(self.crop) if self.crop else None, "note": self.note}


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
    with Image.open(path) as im:
      im.seek(0)
      im.load()
      im = ImageOps.exif_transpose(im)
      return im.copy()
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{path}: cannot read as an image ({reason})") from None


def _to_rgb_array(im) -> np.ndarray:
  """PIL image of any mode -> float32 (H, W, 3) in [0, 1]."""
  if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    a = np.asarray(im, dtype=np.float64)
    top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    if im.mode == "F" and a.max(initial=0) <= 1.0:
      top = 1.0
    a = np.clip(a / top, 0.0, 1.0)[..., None].repeat(3, axis=-1)
    return a.astype(np.float32)
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.float32) / 255.0


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
  rgb = _to_rgb_array(im)
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
  ``to_tensor(mask)``; color masks are converted to gray, alpha dropped). Fitted like
  ``read_image`` but with nearest resampling (a binary mask stays binary)."""
  Image, _ = _image_module()
  path = Path(path)
  expected = (size, size) if isinstance(size, int) else tuple(size)
  im = open_image(path)
  report = _fit_geometry(path, im.size, expected, fit, "mask", flag)
  gray = _to_rgb_array(im)[..., :1]
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


def list_inputs(specs: Sequence[str | os.PathLike], *, flag: str = "--image") -> list[Path]:
  """Expand ``specs`` (files, directories, globs, LIST.txt files) into image paths, in order.

  Directories give their image files (by suffix, sorted by name, not recursive); globs their
  sorted matches; a ``.txt`` / ``.lst`` file one path per line (relative paths are relative to
  the list file). Raises UserError naming the spec when it matches nothing.
  """
  exts = image_extensions()
  out: list[Path] = []
  for raw in specs:
    spec = os.fspath(raw)
    p = Path(spec).expanduser()
    if p.is_dir():
      files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts)
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
      files = [m for m in matches if m.is_file()]
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
    raise UserError(f"the input {dup!r} is given more than once")
  return names


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------
def to_uint8(image: np.ndarray) -> np.ndarray:
  """[-1, 1] float (H, W, C) -> uint8 (clipped, rounded)."""
  x = (np.clip(np.asarray(image, np.float32), -1.0, 1.0) + 1.0) * 127.5
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


def grid(images: Sequence[np.ndarray], *, size: int | None = None, pad: int = 2) -> np.ndarray:
  """Side-by-side uint8 grid of [-1, 1] images (H_i, W_i, 3), each nearest-resized to
  ``size`` (default: the largest height), separated by ``pad`` white pixels."""
  Image, _ = _image_module()
  tiles = [to_uint8(x) if np.asarray(x).dtype != np.uint8 else np.asarray(x) for x in images]
  side = size or max(t.shape[0] for t in tiles)
  out = []
  for t in tiles:
    if t.shape[:2] != (side, side):
      t = np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.NEAREST))
    out.append(t)
  white = np.full((side, pad, 3), 255, np.uint8)
  row = [white]
  for t in out:
    row += [t, white]
  row = np.concatenate(row, axis=1)
  band = np.full((pad, row.shape[1], 3), 255, np.uint8)
  return np.concatenate([band, row, band], axis=0)


__all__ = ["FITS", "FitReport", "open_image", "read_image", "read_mask", "image_extensions",
           "list_inputs", "output_names", "to_uint8", "from_uint8", "write_png", "write_json",
           "grid"]
