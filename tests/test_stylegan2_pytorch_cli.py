"""The command lines on a converted stylegan2-ada-pytorch network pickle: the G_ema of
tests/fixtures/ada_sg2_64.pkl cut to 16x16 (its own network pickle, so that the inversion
programs compile quickly): generate, invert with multi-code W+ codes on a batch of two images,
invert a single w+ code then edit it along its SeFa direction. (Official parity of the converted
64x64 models: tests/test_stylegan2_pytorch.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import pytorch_pickles as P
from convert.__main__ import main as convert_main
from convert.network_pickle import read_network_pickle
from mgan_jax import generate, invert_images, latents_io, manipulate
from mgan_jax.imageio import to_uint8
from parity_helpers import FIXTURES


@pytest.fixture(scope="module")
def ada(tmp_path_factory):
  """The fixture's G_ema cut to 16x16 (a smaller network pickle, so that the inversion
  programs compile quickly), converted, and two of its images (PNG): the inversion targets."""
  root = tmp_path_factory.mktemp("ada16")
  snap = read_network_pickle(FIXTURES / "ada_sg2_64.pkl")
  pkl = root / "network-snapshot-000016.pkl"
  pkl.write_bytes(P.network_pickle({"G_ema": P.cut_generator(snap["G_ema"], 16)}, protocol=4,
                                   numpy_module="numpy._core", ordered=False))
  model = root / "model"
  assert convert_main([str(pkl), str(model)]) == 0
  assert generate.main(["--checkpoint", str(model), "--seed", "3", "--num", "2", "--out",
                        str(root / "gen.npz"), "--png", str(root / "png")]) == 0
  with np.load(root / "gen.npz") as d:
    images = d["images"]
  assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all() and images.std() > 0.1
  np.testing.assert_array_equal(_png(root / "png" / "000001.png"), to_uint8(images[1:])[0])
  return model, root


def _png(p) -> np.ndarray:
  return np.asarray(Image.open(p))


def test_invert_multi_code_batch(ada, tmp_path):
  """mGANprior multi-code (codes in W+, composed after layer 4) on two images in one batch."""
  model, root = ada
  out = tmp_path / "inv"
  images = [str(root / "png" / f"00000{i}.png") for i in range(2)]
  rc = invert_images.main(["--checkpoint", str(model), "--image", *images, "--method",
                           "multi-code", "--codes", "2", "--layer", "4", "--iterations", "6",
                           "--chunk", "3", "--perceptual-weight", "0", "--batch-size", "2",
                           "--out", str(out), "--quiet"])
  assert rc == 0
  for name in ("000000", "000001"):
    lat, meta = latents_io.load(out / name / "latents.npz")
    assert meta["method"] == "multi_wp" and meta["codes"] == 2 and meta["layer"] == 4
    assert lat["wp"].shape == (2, 6, 64) and lat["alpha"].shape == (2, 32)
    m = json.loads((out / name / "metrics.json").read_text())
    assert m["settings"]["method"] == "multi_wp" and np.isfinite(m["metrics"]["psnr"])
    assert [t["iteration"] for t in m["trace"]] == [3, 6]
    assert m["trace"][1]["loss"] < m["trace"][0]["loss"]           # it optimises
    assert _png(out / name / "result.png").shape == (16, 16, 3)


def test_invert_w_plus_then_edit_with_sefa(ada, tmp_path, monkeypatch):
  """manipulate --image: a single w+ code, then its SeFa direction 0 (sefa.py picks the
  converted modulation weights: tests/test_stylegan2_pytorch.py)."""
  model, root = ada
  monkeypatch.setattr(manipulate, "_sefa_cache", lambda: tmp_path / "cache" / "sefa")
  out = tmp_path / "edit"
  target = root / "png" / "000000.png"
  assert manipulate.main(["--image", str(target), "--checkpoint", str(model), "--direction",
                          "sefa:0", "--steps", "3", "--invert-args",
                          "--method w+ --iterations 3 --perceptual-weight 0", "--out", str(out),
                          "--quiet"]) == 0
  lat, meta = latents_io.load(out / "inversion" / "000000" / "latents.npz")
  assert meta["method"] == "wp" and lat["wp"].shape == (1, 6, 64)
  d = out / "000000" / "sefa0"
  result = _png(out / "inversion" / "000000" / "result.png").astype(int)
  assert np.max(np.abs(_png(d / "frame_01.png").astype(int) - result)) <= 1     # step 0
  assert not np.array_equal(_png(d / "frame_00.png"), _png(d / "frame_02.png"))
  s = json.loads((d / "settings.json").read_text())
  assert s["direction"]["source"] == "sefa" and s["layers"] == list(range(6))
  assert len(list((tmp_path / "cache" / "sefa").glob("stylegan2-*.npz"))) == 1
