"""SeFa directions against the official genforce/sefa ``factorize_weight`` (fixtures/sefa_ref.npz)
and boundary files in the official mGANprior / InterFaceGAN format."""

from __future__ import annotations

import numpy as np
import pytest

from mgan_jax import directions
from mgan_jax.errors import UserError
from mgan_jax.generators.dcgan import DCGAN
from edit_helpers import FIXTURES, fixture_model, load_ref

RUNS = ("pggan64_Lall", "stylegan128_Lall", "stylegan128_L01", "stylegan2_64_Lall",
        "stylegan2_64_L01")


@pytest.mark.parametrize("run", RUNS)
def test_sefa_matches_official(run):
  ref = load_ref("sefa_ref.npz")
  model, sel = run.rsplit("_", 1)
  gen, params = fixture_model(model)
  layers = "all" if sel == "Lall" else "0-1"
  fac = directions.sefa(gen, params, layers)
  np.testing.assert_array_equal(fac.layers, ref[f"{run}_layers"])
  idx, blocks = directions.sefa_blocks(gen, params, layers)
  np.testing.assert_allclose(directions.sefa_weight(blocks), ref[f"{run}_weight"], atol=1e-6)
  lam = ref[f"{run}_eigenvalues"]
  assert fac.eigenvalues.shape == lam.shape and fac.directions.shape == (lam.size, lam.size)
  assert np.max(np.abs(fac.eigenvalues - lam) / np.abs(lam[0])) <= 1e-5
  assert np.all(np.diff(fac.eigenvalues) <= 0)
  assert np.max(np.abs(fac.directions[:5] - ref[f"{run}_directions"])) <= 5e-5
  # the official boundary 0 (sign as the official eig returned it) is our direction 0 up to sign
  np.testing.assert_allclose(ref[f"{run}_signs"][0] * fac.direction(0),
                             ref[f"{run}_edit_vector"], atol=5e-5)
  assert fac.space == ("z" if model == "pggan64" else "w")


def test_directions_are_orthonormal_and_sign_rule_holds():
  gen, params = fixture_model("stylegan2_64")
  fac = directions.sefa(gen, params)
  d = fac.directions.astype(np.float64)
  np.testing.assert_allclose(d @ d.T, np.eye(d.shape[0]), atol=1e-5)
  top = d[np.arange(len(d)), np.argmax(np.abs(d), axis=1)]
  assert np.all(top > 0)
  # trace(W W^T) = number of (unit) columns: 9 conv styles + the final ToRGB's, 32 each
  assert abs(float(np.sum(fac.eigenvalues.astype(np.float64))) - 320) < 1e-3


def _dcgan_effective_first_layer(gen, params) -> np.ndarray:
  """PyTorch layout of block 0 times its eval-mode BatchNorm scale: (Z, C0, 4, 4)."""
  k = np.asarray(params["block0"]["kernel"])                         # (4, 4, Z, C0), flipped
  torch_w = k[::-1, ::-1].transpose(2, 3, 0, 1)                       # ConvTranspose (in, out, kh, kw)
  p = params["block0"]
  inv = np.asarray(p["scale"]) / np.sqrt(np.asarray(p["var"]) + gen.bn_eps)
  return torch_w * inv[None, :, None, None]


def test_runtime_scales_and_layout_cancel():
  """DCGAN: the directions of the stored (flipped, HWIO) kernel equal those of the official
  (in, out, kh, kw) weight times the eval-mode BatchNorm scale; PGGAN: the column-normalised
  weight of the stored dense weight is that of the effective (equalized-LR scaled) one."""
  rng = np.random.default_rng(0)
  gen = DCGAN(z_dim=16, channels=(32, 16))
  params = {"block0": {"kernel": rng.normal(0, 0.02, (4, 4, 16, 32)).astype(np.float32),
                       "scale": np.linspace(-2.0, 3.0, 32).astype(np.float32),   # uneven
                       "bias": np.zeros(32, np.float32),
                       "mean": rng.normal(0, 0.01, 32).astype(np.float32),
                       "var": rng.uniform(0.005, 0.015, 32).astype(np.float32)}}
  fac = directions.sefa(gen, params)
  eff = _dcgan_effective_first_layer(gen, params).reshape(16, -1)
  values, rows = directions.factorize(directions.sefa_weight([eff]))
  np.testing.assert_allclose(fac.eigenvalues, values, rtol=1e-5)
  np.testing.assert_allclose(fac.directions, rows, atol=1e-5)
  assert fac.space == "z" and fac.layers == (0,) and fac.eigenvalues.shape == (16,)

  pg, pp = fixture_model("pggan64")
  (_, [dense]) = directions.sefa_blocks(pg, pp)
  scaled = dense * np.float32(np.sqrt(2.0) / 4 / np.sqrt(512))
  np.testing.assert_allclose(directions.sefa_weight([scaled]), directions.sefa_weight([dense]),
                             atol=1e-7)
  with pytest.raises(ValueError, match="StyleGAN and StyleGAN2 only"):
    directions.sefa(pg, pp, "0-1")


def test_cache_round_trip(tmp_path, monkeypatch):
  gen, params = fixture_model("stylegan2_64")
  first = directions.cached_sefa(gen, params, "0-1", cache=tmp_path)
  files = list(tmp_path.iterdir())
  assert [f.name for f in files] == [f"stylegan2-{first.key}.npz"]
  monkeypatch.setattr(directions, "sefa", lambda *a, **k: pytest.fail("cache not used"))
  again = directions.cached_sefa(gen, params, "0-1", cache=tmp_path)
  np.testing.assert_array_equal(again.directions, first.directions)
  assert again.layers == (0, 1) and again.key == first.key
  monkeypatch.undo()
  other = directions.cached_sefa(gen, params, "all", cache=tmp_path)      # other selection
  assert other.key != first.key and len(list(tmp_path.iterdir())) == 2
  changed = {**params, "synthesis": {**params["synthesis"]}}
  changed["synthesis"]["4x4"] = {**params["synthesis"]["4x4"],
                                 "Conv": {**params["synthesis"]["4x4"]["Conv"]}}
  changed["synthesis"]["4x4"]["Conv"]["mod_weight"] = \
      params["synthesis"]["4x4"]["Conv"]["mod_weight"] * 1.5            # other weights
  assert directions.sefa_key(gen, changed, "0-1") != first.key
  (tmp_path / f"stylegan2-{first.key}.npz").write_bytes(b"broken")      # damaged: recomputed
  fixed = directions.cached_sefa(gen, params, "0-1", cache=tmp_path)
  np.testing.assert_array_equal(fixed.directions, first.directions)
  assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp")]


def test_parse_layers():
  assert directions.parse_layers("all", 4) == (0, 1, 2, 3)
  assert directions.parse_layers("0-1, 3", 4) == (0, 1, 3)
  assert directions.parse_layers([2, 2, 0], 4) == (0, 2)
  for bad, msg in (("4", "out of range"), ("1-x", "integers"), ("3-1", "a <= b")):
    with pytest.raises(ValueError, match=msg):
      directions.parse_layers(bad, 4)


def test_boundary_files(tmp_path):
  official = FIXTURES / "boundary_unit.npy"
  v = directions.load_boundary(official, dim=512)
  ref = np.load(official)
  assert v.dtype == np.float32 and v.shape == (512,)
  np.testing.assert_array_equal(v, ref[0].astype(np.float32))
  flat = tmp_path / "flat.npy"
  np.save(flat, ref[0].astype(np.float32))                 # InterFaceGAN: float32; (D,) also
  np.testing.assert_array_equal(directions.load_boundary(flat, dim=512), v)

  def bad(name, arr, msg, dim=512, **kw):
    p = tmp_path / name
    if isinstance(arr, bytes):
      p.write_bytes(arr)
    elif name.endswith(".npz"):
      np.savez(p, b=arr)
    else:
      np.save(p, arr, **kw)
    with pytest.raises(UserError, match=msg) as e:
      directions.load_boundary(p, dim=dim)
    assert str(p) in str(e.value) and "\n" not in str(e.value)

  bad("two.npy", np.ones((2, 512)), r"shape \(2, 512\)")
  bad("int.npy", np.ones((1, 512), np.int64), "dtype int64")
  bad("nan.npy", np.full((1, 512), np.nan), "non-finite")
  bad("zero.npy", np.zeros((1, 512)), "zero vector")
  bad("dim.npy", np.ones((1, 100)), "100-dimensional")
  bad("obj.npy", np.array({"b": 1}, dtype=object), "pickled", allow_pickle=True)
  bad("arch.npz", np.ones((1, 512)), ".npz archive")
  bad("junk.npy", b"not numpy", "not a .npy file")
  with pytest.raises(UserError, match="no such file"):
    directions.load_boundary(tmp_path / "missing.npy")
