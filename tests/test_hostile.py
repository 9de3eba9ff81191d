"""Hostile weight files (tests/hostile_corpus.py) end as exit 2 + one line, within a memory bound.

* ``test_hostile_corpus``: every case of the corpus, in one worker subprocess under an
  address-space limit (``resource.RLIMIT_AS``: what the worker uses after its imports plus
  ``hostile_corpus.ALLOWANCE``); a case that crashes or hangs the worker is reported as that
  case's failure and the worker is restarted after it.
* ``test_hostile_cli_subprocess``: the cases marked ``cli`` through the real
  ``python -m convert`` (caps given as flags), under the same kind of limit.
* controls: the valid files the hostile ones are built from convert; model directories report
  damage (checksum, model.json, orbax files) in one line; OUT_DIR problems are found before
  the source is read; stale temporary directories of killed runs are removed.

Routes (``Case.route``) and what they check: ``exec`` (payloads through GLOBAL, STACK_GLOBAL,
INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1, BUILD and persistent ids, in bare pickles, torch zip and
legacy files, TF pickles, stylegan2-ada-pytorch network pickles (module state, storage streams,
``module_src`` that the official loader would run), rosinality checkpoints (``argparse.Namespace``,
optimiser state), wheels and sdists), ``dtype`` (numpy dtype state), ``storage`` (storage
mutation and views, storage streams that are not one storage), ``ndarray`` (numpy.ndarray called
directly), ``structure`` (TF networks without state or containing themselves, network modules
nested too deep or malformed, deep or self-containing containers), ``bomb`` (inputs small on disk
and huge declared or inflated; storage streams over the caps, reused, or adding opcodes to the
enclosing pickle's), ``accept`` (duplicate keys, integer or non-finite weights, contradicting
byte order), ``truncation``, ``bitflip``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hostile_corpus as H
from convert import registry
from convert.__main__ import main as convert_main
from mgan_jax import checkpoint
from mgan_jax.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "hostile_corpus.py"
ROUTES = {"exec", "dtype", "storage", "ndarray", "structure", "bomb", "accept", "truncation",
          "bitflip"}


def run_corpus(root: Path, marker: Path, *, repo: Path = REPO, timeout: float = 120.0,
               only: list[str] | None = None) -> dict[str, dict]:
  """Run the corpus in worker subprocesses; {case id: result} for every case (crashes and
  hangs included: the worker is restarted after the case that killed it)."""
  all_cases = [c for c in H.cases(marker) if not only or c.id in only]
  ids = [c.id for c in all_cases]
  results: dict[str, dict] = {}
  start = 0
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
  while start < len(ids):
    cmd = [sys.executable, str(CORPUS), "--worker", str(root / f"w{start}"), "--marker",
           str(marker), "--start", "0", "--repo", str(repo), "--only", *ids[start:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(repo))
    try:
      out, err = proc.communicate(timeout=timeout)
      how = f"worker died (exit status {proc.returncode}; {err.strip()[-300:]!r})"
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
      how = f"worker hung (killed after {timeout:.0f} s)"
    started = None
    for line in out.splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if "start" in rec:
        started = rec["start"]
      elif "id" in rec:
        results[rec["id"]] = rec
        started = None
    missing = [i for i in ids[start:] if i not in results]
    if not missing:
      break
    culprit = started if started is not None else missing[0]
    results[culprit] = {"id": culprit, "ok": False, "why": how, "line": "", "seconds": None}
    start = ids.index(culprit) + 1
  return results


def _report(results: dict[str, dict]) -> str:
  return "\n".join(f"{r['id']}: {r['why']}" for r in results.values() if not r["ok"])


def test_corpus_covers_every_route(tmp_path):
  cs = H.cases(tmp_path / "pwned")
  assert {c.route for c in cs} == ROUTES
  assert len({c.id for c in cs}) == len(cs)
  ops = {c.id.split("-")[1] for c in cs if c.route == "exec"}
  assert {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD",
          "persid"} <= ops


def test_hostile_corpus(tmp_path):
  marker = tmp_path / "pwned"
  t0 = time.perf_counter()
  results = run_corpus(tmp_path, marker)
  elapsed = time.perf_counter() - t0
  assert len(results) == len(H.cases(marker))
  assert not marker.exists()
  assert all(r["ok"] for r in results.values()), "\n" + _report(results)
  assert elapsed < 60, f"corpus took {elapsed:.0f} s"


def _vm_peak_of_import() -> int:
  code = ("import convert.__main__\n"
          "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')][0])")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, timeout=60, check=True)
  return int(res.stdout.strip()) * 1024


#: ``python -m convert ARGS`` with an address-space limit set first (argv[1]); runpy runs the
#: module exactly as ``-m`` does (no preexec_fn: forking a process that runs JAX threads).
_LIMITED_CLI = ("import resource, runpy, sys; n = int(sys.argv.pop(1)); "
                "resource.setrlimit(resource.RLIMIT_AS, (n, n)); "
                "runpy.run_module('convert', run_name='__main__', alter_sys=True)")


def test_hostile_cli_subprocess(tmp_path):
  """The `cli` cases through `python -m convert` itself, caps as flags, under RLIMIT_AS."""
  marker = tmp_path / "pwned"
  limit = _vm_peak_of_import() + H.ALLOWANCE

  env = {k: v for k, v in os.environ.items() if not k.startswith("MGAN_JAX_MAX_")}
  env["OPENBLAS_NUM_THREADS"] = "1"
  flags = ["--max-file-bytes", "32M", "--max-tensor-elements", "4M", "--max-pickle-ops",
           "300000"]
  chosen = [c for c in H.cases(marker) if c.cli]
  assert len(chosen) >= 5 and {c.route for c in chosen} >= {"exec", "storage", "bomb",
                                                             "accept", "ndarray"}
  for c in chosen:
    src = tmp_path / c.id / c.filename
    src.parent.mkdir()
    src.write_bytes(c.make())
    out = tmp_path / c.id / "out"
    res = subprocess.run([sys.executable, "-c", _LIMITED_CLI, str(limit), str(src), str(out),
                          *flags], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    why = H.check_result(c, src, out, marker, res.returncode, res.stderr, None)
    assert why is None, (c.id, why)
    assert res.stdout == ""


def test_file_cap_flag_and_environment(tmp_path, capsys, monkeypatch):
  """--max-file-bytes / MGAN_JAX_MAX_FILE_BYTES refuse a file before reading it; bad values
  are one-line errors naming the flag or variable."""
  src = tmp_path / "big.pth"
  src.write_bytes(H.dcgan_pth())
  size = src.stat().st_size
  for argv, env in ((["--max-file-bytes", "1K"], None), ([], "1K")):
    if env:
      monkeypatch.setenv("MGAN_JAX_MAX_FILE_BYTES", env)
    assert convert_main([str(src), str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {src}: file of {size:,} bytes is over the cap of 1,024 bytes per "
                   "file (raise it with MGAN_JAX_MAX_FILE_BYTES or --max-file-bytes)")
  monkeypatch.setenv("MGAN_JAX_MAX_FILE_BYTES", "lots")
  assert convert_main([str(src), str(tmp_path / "o")]) == 2
  assert "environment variable MGAN_JAX_MAX_FILE_BYTES: expected a positive integer" in \
      capsys.readouterr().err
  monkeypatch.delenv("MGAN_JAX_MAX_FILE_BYTES")
  assert convert_main([str(src), str(tmp_path / "o"), "--max-tensor-elements", "0"]) == 2
  assert "--max-tensor-elements: must be positive" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


# ----- controls: the valid files behind the hostile ones convert -------------------------------

@pytest.mark.parametrize("kind", ["zip", "legacy", "big-endian"])
def test_valid_dcgan_controls_convert(tmp_path, capsys, kind):
  src = tmp_path / f"dcgan_{kind}.pth"
  src.write_bytes(H.dcgan_pth(legacy=kind == "legacy", byteorder="big" if kind == "big-endian"
                              else "little", big_data=kind == "big-endian"))
  out = tmp_path / "model"
  assert convert_main([str(src), str(out)]) == 0, capsys.readouterr().err
  assert "1 source key(s) not used: main.1.num_batches_tracked" in capsys.readouterr().out
  spec, params = checkpoint.load_model(out)
  want = H.dcgan_tensors()
  np.testing.assert_array_equal(params["block0"]["var"], want["main.1.running_var"])
  np.testing.assert_array_equal(params["output"]["kernel"],
                                want["main.3.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
  assert spec.z_dim == 4 and spec.channels == (8,)


# ----- model directories: damage is one line ------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("model")
  src = root / "dcgan.pth"
  src.write_bytes(H.dcgan_pth())
  assert convert_main([str(src), str(root / "m")]) == 0
  return root / "m"


def _copy(model_dir: Path, tmp_path: Path) -> Path:
  d = tmp_path / "copy"
  shutil.copytree(model_dir, d)
  return d


def _data_files(d: Path) -> list[Path]:
  return sorted(p for p in (d / "params").rglob("*") if p.is_file() and "/d/" in str(p))


def _expect_load_error(d: Path, *needles: str) -> str:
  with pytest.raises(UserError) as info:
    checkpoint.load_model(d)
  msg = str(info.value)
  assert "\n" not in msg
  for n in needles:
    assert n in msg, (n, msg)
  return msg


def test_model_dir_checksum_catches_a_flipped_bit(model_dir, tmp_path):
  meta = json.loads((model_dir / "model.json").read_text())
  assert len(meta["params_sha256"]) == 64
  _, params = checkpoint.load_tree(model_dir)
  assert checkpoint.params_checksum(params) == meta["params_sha256"]
  d = _copy(model_dir, tmp_path)
  # flip one bit of one weight, as a damaged copy would: rewrite params with it flipped
  flat = checkpoint.flatten(params)
  w = np.array(flat["output/kernel"])
  w.reshape(-1).view(np.uint32)[5] ^= 1 << 3
  flat["output/kernel"] = w
  shutil.rmtree(d / "params")
  import orbax.checkpoint as ocp
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(d / "params", checkpoint.unflatten(flat))
  ckpt.wait_until_finished()
  _expect_load_error(d, "do not match params_sha256", str(d / "params"))
  # a directory written before checksums existed still loads
  meta.pop("params_sha256")
  (d / "model.json").write_text(json.dumps(meta))
  spec, got = checkpoint.load_model(d)
  assert np.asarray(got["output"]["kernel"]).reshape(-1).view(np.uint32)[5] == \
      w.reshape(-1).view(np.uint32)[5]


@pytest.mark.parametrize("damage", ["not-an-object", "format-version-str", "format-version-bool",
                                    "checksum-garbage", "deep-json", "family-unknown"])
def test_model_json_damage_is_one_line(model_dir, tmp_path, damage):
  d = _copy(model_dir, tmp_path)
  meta = json.loads((d / "model.json").read_text())
  text = {"not-an-object": "[1, 2, 3]",
          "format-version-str": json.dumps({**meta, "format_version": "1"}),
          "format-version-bool": json.dumps({**meta, "format_version": True}),
          "checksum-garbage": json.dumps({**meta, "params_sha256": 12}),
          "deep-json": "[" * 100_000 + "]" * 100_000,
          "family-unknown": json.dumps({**meta, "family": "nosuchgan"})}[damage]
  (d / "model.json").write_text(text)
  needle = {"not-an-object": "a JSON list, expected an object",
            "format-version-str": "format_version is '1', expected an integer",
            "format-version-bool": "format_version is 'True', expected an integer",
            "checksum-garbage": "params_sha256 is not a sha256 hex digest",
            "deep-json": "cannot read (RecursionError",
            "family-unknown": "not a generator description"}[damage]
  _expect_load_error(d, needle, "model.json")


@pytest.mark.parametrize("damage", ["truncated-data", "garbage-metadata", "no-manifest",
                                    "empty-params", "no-metadata", "params-is-file"])
def test_orbax_damage_is_one_line(model_dir, tmp_path, damage):
  d = _copy(model_dir, tmp_path)
  p = d / "params"
  if damage == "truncated-data":
    for f in _data_files(d):
      f.write_bytes(f.read_bytes()[:7])
  elif damage == "garbage-metadata":
    (p / "_METADATA").write_text("garbage{")
  elif damage == "no-manifest":
    for f in p.rglob("manifest.ocdbt"):
      f.unlink()
  elif damage == "empty-params":
    shutil.rmtree(p)
    p.mkdir()
  elif damage == "no-metadata":
    (p / "_METADATA").unlink()
  else:
    shutil.rmtree(p)
    p.write_text("x")
  needle = {"empty-params": "params/ is empty", "no-metadata": "no _METADATA",
            "params-is-file": "missing params/"}.get(damage, "")
  msg = _expect_load_error(d, needle, str(d))
  if not needle:  # orbax notices, or the checksum does
    assert "cannot restore the parameters" in msg or "do not match params_sha256" in msg, msg


def test_check_tree_names_extra_keys_as_unexpected():
  want = {"a": {"w": np.zeros((2, 3))}, "b": np.zeros(4)}
  for got, msg in (
      ({"a": {"w": np.zeros((2, 3)), "x": np.zeros(1)}, "b": np.zeros(4)},
       "t: unexpected keys ['a/x']"),
      ({"a": {"w": np.zeros((2, 3))}, "b": np.zeros(4), "c": np.zeros(1)},
       "t: unexpected keys ['c']"),
      ({"a": {"w": {"deeper": np.zeros(1)}}, "b": np.zeros(4)},
       "t: a/w is a subtree, expected an array"),
      ({"a": {"w": np.zeros((2, 3))}, "b": np.zeros(4), "a/w": np.zeros((2, 3))},
       "t: unexpected keys ['a/w']"),
      ({"a": {"w": np.zeros((3, 3))}}, "t: missing keys ['b']; wrong shape for a/w: expected "
       "(2, 3), got (3, 3)"),
      ({"a": np.zeros(1), "b": np.zeros(4)}, "t: a is a ndarray, expected a subtree")):
    with pytest.raises(UserError) as info:
      checkpoint.check_tree(want, got, what="t")
    assert str(info.value) == msg
  checkpoint.check_tree(want, {"a": {"w": np.ones((2, 3))}, "b": np.ones(4)}, what="t")


# ----- OUT_DIR checked first; stale temporary directories ------------------------------------

def test_out_dir_problems_are_found_before_reading(tmp_path, capsys, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  missing_src = tmp_path / "never-read.pth"   # does not exist: only OUT_DIR is checked first
  assert convert_main([str(missing_src), str(blocker / "model")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "is a file, not a directory" in err and \
      str(blocker / "model") in err and len(err.splitlines()) == 1
  assert convert_main([str(missing_src), str(blocker)]) == 2
  assert capsys.readouterr().err.strip() == f"error: {blocker}: exists and is a file, not a " \
      "directory"
  # an unwritable place (a read-only file system): the probe directory cannot be made
  real_mkdtemp = checkpoint.tempfile.mkdtemp

  def read_only(*a, **k):
    if k.get("dir", "").startswith(str(tmp_path / "ro")):
      raise OSError(errno.EROFS, "Read-only file system")
    return real_mkdtemp(*a, **k)

  (tmp_path / "ro").mkdir()
  monkeypatch.setattr(checkpoint.tempfile, "mkdtemp", read_only)
  assert convert_main([str(missing_src), str(tmp_path / "ro" / "m")]) == 2
  err = capsys.readouterr().err.strip()
  assert err == f"error: {tmp_path / 'ro' / 'm'}: cannot write in {tmp_path / 'ro'} " \
                "(Read-only file system)"


def test_stale_tmp_dirs_of_killed_runs_are_removed(tmp_path, capsys):
  import socket
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  host = socket.gethostname()

  def tmpdir(name, owner=None, age=0.0):
    d = tmp_path / name
    (d / "params").mkdir(parents=True)
    if owner is not None:
      (d / ".mgan_jax_tmp_owner").write_text(json.dumps(owner))
    if age:
      t = time.time() - age
      os.utime(d, (t, t))
    return d

  stale_dead = tmpdir(".tmp-model-dead", {"pid": dead.pid, "host": host})
  stale_old = tmpdir(".tmp-model-old", None, age=checkpoint.STALE_TMP_SECONDS + 60)
  live = tmpdir(".tmp-model-live", {"pid": os.getpid(), "host": host})
  unknown = tmpdir(".tmp-model-unknown", None, age=60)
  other_host = tmpdir(".tmp-model-otherhost", {"pid": dead.pid, "host": host + "-elsewhere"})
  other_name = tmpdir(".tmp-othermodel-x", {"pid": dead.pid, "host": host})
  src = tmp_path / "dcgan.pth"
  src.write_bytes(H.dcgan_pth())
  assert convert_main([str(src), str(tmp_path / "model")]) == 0, capsys.readouterr().err
  assert not stale_dead.exists() and not stale_old.exists()
  assert live.exists() and unknown.exists() and other_host.exists() and other_name.exists()
  assert not (tmp_path / "model" / ".mgan_jax_tmp_owner").exists()
  assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "params"]


def test_save_tree_refuses_non_float_and_non_finite(tmp_path):
  with pytest.raises(UserError, match=r"params/w: parameter holds int64 values"):
    checkpoint.save_tree(tmp_path / "a", {"family": "x"}, {"w": np.arange(3)})
  with pytest.raises(UserError, match=r"params/b/w: parameter has NaN or infinite values"):
    checkpoint.save_tree(tmp_path / "b", {"family": "x"}, {"b": {"w": np.array([1.0, np.inf])}})
  assert not any(p.name.startswith(".tmp-") or p.name in "ab" for p in tmp_path.iterdir())


def test_weight_helper_names_the_key():
  assert registry.weight("k", np.array(2.0, np.float64), "w").shape == ()
  with pytest.raises(UserError, match=r"^w: k holds bool values"):
    registry.weight("k", np.array([True]), "w")
  with pytest.raises(UserError, match=r"^w: k has 1 NaN or infinite value\(s\)$"):
    registry.weight("k", np.array([1e300, 1.0]), "w")  # overflows float32
