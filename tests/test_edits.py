"""Edits of inverted latents against the official code: the multi-code InterFaceGAN edit of
mGANprior's ``face_semantic_editing.py`` (fixtures/interfacegan_edit_ref.npz) and SeFa's z / w+
edits (fixtures/sefa_ref.npz); invariants of moving, interpolating and style mixing."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mgan_jax import directions, edits
from mgan_jax.generators.stylegan import StyleGAN
from mgan_jax.generators.stylegan2 import StyleGAN2
from edit_helpers import FIXTURES, fixture_model, load_ref, nhwc, render_one


def test_multi_code_edit_matches_official():
  ref = load_ref("interfacegan_edit_ref.npz")
  gen, params = fixture_model("pggan64")
  v = directions.load_boundary(FIXTURES / "boundary_unit.npy", dim=gen.latent_dim)
  lat = {"z": ref["z"], "alpha": ref["alpha"]}
  frames = edits.move(gen, lat, v, ref["steps"], method="multi_z")
  assert frames["z"].shape == (5, 20, 512) and frames["z"].dtype == np.float32
  assert np.max(np.abs(frames["z"] - ref["wp_list"])) <= 1e-5
  np.testing.assert_array_equal(frames["alpha"], np.broadcast_to(ref["alpha"], (5, 20, 64)))
  images = edits.render_frames(gen, params, frames, method="multi_z",
                               layer=int(ref["composing_layer"]))
  assert np.max(np.abs(images - nhwc(ref["images"]))) <= 1e-4
  # step 0 is the unedited latents, bit for bit (codes and image)
  assert ref["steps"][2] == 0
  np.testing.assert_array_equal(frames["z"][2], ref["z"])
  np.testing.assert_array_equal(images[2], render_one(gen, params, lat, method="multi_z",
                                                      layer=4))


def test_sefa_edits_match_official():
  ref = load_ref("sefa_ref.npz")
  d = ref["distances"]
  # PGGAN: z after pixel norm + d v; ours keeps z's scale (r(z) d v), the same after the norm
  gen, params = fixture_model("pggan64")
  t = "pggan64_Lall"
  z = ref[f"{t}_edit_z"]
  frames = edits.move(gen, {"z": z}, ref[f"{t}_edit_vector"], d, method="z")
  r = np.sqrt(np.mean(z.astype(np.float64) ** 2) + 1e-8)
  assert np.max(np.abs(frames["z"][:, 0] / r - ref[f"{t}_edit_codes"])) <= 1e-5
  images = edits.render_frames(gen, params, frames, method="z")
  assert np.max(np.abs(images - nhwc(ref[f"{t}_edit_images"]))) <= 1e-4
  np.testing.assert_array_equal(frames["z"][1], z)
  # StyleGAN / StyleGAN2: w+ rows of the factorised layers move
  for model in ("stylegan128", "stylegan2_64"):
    gen, params = fixture_model(model)
    for sel in ("Lall", "L01"):
      t = f"{model}_{sel}"
      frames = edits.move(gen, {"wp": ref[f"{t}_edit_code0"][None]}, ref[f"{t}_edit_vector"],
                          d, method="wp", layers=tuple(ref[f"{t}_layers"]))
      assert np.max(np.abs(frames["wp"][:, 0] - ref[f"{t}_edit_codes"])) <= 1e-5, t
  gen, params = fixture_model("stylegan2_64")
  t = "stylegan2_64_L01"
  frames = edits.move(gen, {"wp": ref[f"{t}_edit_code0"][None]}, ref[f"{t}_edit_vector"], d,
                      method="wp", layers="0-1")
  images = edits.render_frames(gen, params, frames, method="wp")
  assert np.max(np.abs(images - nhwc(ref[f"{t}_edit_images"]))) <= 1e-4
  np.testing.assert_array_equal(frames["wp"][:, 0, 2:], np.broadcast_to(
      ref[f"{t}_edit_code0"][2:], (3, 8, 64)))                       # other rows untouched


def test_image_change_grows_with_the_step():
  ref = load_ref("interfacegan_edit_ref.npz")
  gen, params = fixture_model("pggan64")
  v = load_ref("sefa_ref.npz")["pggan64_Lall_edit_vector"]
  lat = {"z": ref["z"], "alpha": ref["alpha"]}
  steps = np.array([0.0, 1.0, 2.0, 4.0, -4.0])        # the shapes of the official test above
  images = edits.render_frames(gen, params, edits.move(gen, lat, v, steps, method="multi_z"),
                               method="multi_z", layer=4)
  dist = np.abs(images - images[0]).mean(axis=(1, 2, 3))
  assert dist[0] == 0 and dist[1] < dist[2] < dist[3], dist
  assert dist[3] > 0.02 and dist[4] > 0.02


def test_frames_do_not_depend_on_their_batch():
  gen, params = fixture_model("stylegan2_64")
  ref = load_ref("sefa_ref.npz")
  lat = {"wp": ref["stylegan2_64_L01_edit_code0"][None]}
  frames = edits.move(gen, lat, ref["stylegan2_64_L01_edit_vector"], np.array([-2.0, 0.0, 2.0]),
                      method="wp", layers="0-3")    # 3 frames: the program of the test above
  together = edits.render_frames(gen, params, frames, method="wp")
  # bit-identical on the CPU; GPU convolution libraries choose their algorithm by batch size
  exact = jax.default_backend() == "cpu"
  for k in range(3):
    alone = render_one(gen, params, {"wp": frames["wp"][k]}, method="wp")
    np.testing.assert_allclose(together[k], alone, rtol=0, atol=0 if exact else 1e-5)
  np.testing.assert_array_equal(frames["wp"][1], lat["wp"])


def test_move_checks_its_inputs():
  gen, _ = fixture_model("pggan64")
  lat = {"z": np.zeros((3, 512), np.float32), "alpha": np.ones((3, 64), np.float32)}
  with pytest.raises(ValueError, match="direction has 100 dimensions"):
    edits.move(gen, lat, np.ones(100), [0.0], method="multi_z")
  with pytest.raises(ValueError, match="does not fit"):
    edits.move(gen, {"z": np.zeros((2, 512))}, np.ones(512), [0.0], method="z")
  with pytest.raises(ValueError, match="layers apply to w\\+"):
    edits.move(gen, lat, np.ones(512), [0.0], method="multi_z", layers="0-1")
  # DCGAN-like families without a pixel norm move z as is; PGGAN's single z keeps its scale
  z = np.full((1, 512), 2.0, np.float32)
  out = edits.move(gen, {"z": z}, np.ones(512) / np.sqrt(512), [1.0], method="z")
  np.testing.assert_allclose(out["z"][0], z + 2.0 / np.sqrt(512), rtol=1e-6)
  out = edits.move(gen, {"z": z}, np.ones(512) / np.sqrt(512), [1.0], method="z",
                   rescale_z=False)
  np.testing.assert_allclose(out["z"][0], z + 1.0 / np.sqrt(512), rtol=1e-6)


def test_interpolate_two_inversions():
  rng = np.random.default_rng(0)
  a = {"z": rng.normal(size=(4, 8)).astype(np.float32),
       "alpha": rng.normal(size=(4, 3)).astype(np.float32)}
  b = {"z": rng.normal(size=(6, 8)).astype(np.float32),
       "alpha": rng.normal(size=(6, 3)).astype(np.float32)}
  f = edits.interpolate(a, b, 5, method="multi_z")
  assert f["z"].shape == (5, 4, 8) and f["alpha"].shape == (5, 4, 3)
  np.testing.assert_array_equal(f["z"][0], a["z"])
  np.testing.assert_array_equal(f["alpha"][-1], b["alpha"][:4])      # B's first N codes
  np.testing.assert_allclose(f["z"][2], (a["z"] + b["z"][:4]) / 2, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="do not match"):
    edits.interpolate(b, a, 3, method="multi_z")                       # B has fewer codes
  with pytest.raises(ValueError, match="different keys"):
    edits.interpolate(a, {"wp": a["z"]}, 3, method="multi_z")


def test_style_mixing_levels_follow_the_stylegan_paper():
  assert [edits.level_layers(StyleGAN(resolution=1024), lv) for lv in edits.LEVELS] == [
      (0, 1, 2, 3), (4, 5, 6, 7), tuple(range(8, 18))]                # official LEVEL table
  assert [edits.level_layers(StyleGAN2(resolution=1024), lv) for lv in edits.LEVELS] == [
      (0, 1, 2), (3, 4, 5, 6), tuple(range(7, 18))]
  gen, params = fixture_model("stylegan2_64")
  ref = load_ref("stylegan2_64_ref.npz")
  a = {"wp": ref["wp_free"][:1]}
  b = {"z": ref["z"][:1]}                                              # z: mapped + truncated
  frames, method = edits.mix_levels(gen, params, a, b, method_a="wp", method_b="z")
  assert method == "wp" and frames["wp"].shape == (5, 1, 10, 64)
  np.testing.assert_array_equal(frames["wp"][0], a["wp"])
  np.testing.assert_allclose(frames["wp"][4, 0], ref["wp_trunc"][0], atol=1e-6)
  np.testing.assert_array_equal(frames["wp"][1, 0, 3:], a["wp"][0, 3:])    # coarse: rows 0-2
  np.testing.assert_allclose(frames["wp"][1, 0, :3], ref["wp_trunc"][0, :3], atol=1e-6)
  np.testing.assert_array_equal(frames["wp"][3, 0, :7], a["wp"][0, :7])    # fine: rows 7-9
  images = edits.render_frames(gen, params, frames, method=method)
  assert np.max(np.abs(images[4] - nhwc(ref["images"])[0])) <= 1e-4   # all rows: B's image
  change = [np.abs(images[i] - images[0]).mean() for i in range(5)]
  assert change[0] == 0 and min(change[1:]) > 0
  with pytest.raises(ValueError, match="StyleGAN or StyleGAN2"):
    edits.level_layers(fixture_model("pggan64")[0], "coarse")
