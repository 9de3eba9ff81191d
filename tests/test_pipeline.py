"""The image pipeline (vmapped batches, padding, per-batch writing) and its helpers: inputs,
fitting, latent files, atomic publishing, tasks, metrics."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgan_jax import engine, fileio, imageio, invert_images, latents_io, metrics, progress, tasks
from mgan_jax.errors import UserError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FACES = [EXAMPLES / f"dcgan_sample_{s}.png" for s in (9001, 9003, 9004)]
TINY = ["--codes", "4", "--iterations", "8", "--chunk", "4", "--quiet"]   # as tests/test_invert_images.py


def test_batch_of_three_with_batch_size_two_equals_single_runs(tmp_path, monkeypatch):
  seen_at_batch_start = []
  start = progress.Progress.start_batch

  def spy(self, index, names, **kw):
    seen_at_batch_start.append(sorted(p.name for p in (tmp_path / "batch").glob("*")
                                      if not p.name.startswith(".")))
    return start(self, index, names, **kw)

  monkeypatch.setattr(progress.Progress, "start_batch", spy)
  assert invert_images.main(["--image", *map(str, FACES), "--batch-size", "2",
                   "--out", str(tmp_path / "batch"), *TINY]) == 0
  # outputs of batch 1 exist before batch 2 starts; the padded tail image is not written
  assert seen_at_batch_start == [[], [FACES[0].stem, FACES[1].stem]]
  assert sorted(p.name for p in (tmp_path / "batch").iterdir()
                if p.name != ".mgan_jax_run") == sorted(f.stem for f in FACES)  # + resume state
  for f in FACES:
    assert invert_images.main(["--image", str(f), "--out", str(tmp_path / "single"), *TINY]) == 0
    b = latents_io.load(tmp_path / "batch" / f.stem / "latents.npz")[0]
    s = latents_io.load(tmp_path / "single" / f.stem / "latents.npz")[0]
    for k in s:
      # float32 rounding differs between batch sizes and between CPUs (AVX2 / AVX-512) and Adam
      # amplifies it where a gradient is near zero (its step is ~lr * sign(g), lr 0.1): the
      # bulk agrees to rounding, a few coordinates by a fraction of a step (docs/batch.md)
      diff = np.abs(b[k] - s[k])
      assert np.mean(diff <= 2e-3 + 1e-3 * np.abs(s[k])) >= 0.99 and diff.max() < 0.02, (
          k, float(diff.max()))
    mb = json.loads((tmp_path / "batch" / f.stem / "metrics.json").read_text())
    ms = json.loads((tmp_path / "single" / f.stem / "metrics.json").read_text())
    assert mb["batch_size"] == 2 and ms["batch_size"] == 1
    assert abs(mb["metrics"]["psnr"] - ms["metrics"]["psnr"]) < 0.05
    db = np.asarray(Image.open(tmp_path / "batch" / f.stem / "result.png"), int)
    ds = np.asarray(Image.open(tmp_path / "single" / f.stem / "result.png"), int)
    assert np.abs(db - ds).max() <= 1


def test_exact_batches_are_bit_identical_to_single_runs(tmp_path):
  """--exact-batches: a batch of three with batch size two gives every image exactly (bit for
  bit) what its single-image run gives, unlike vmapped batches (equal up to rounding)."""
  common = ["--exact-batches", *TINY]
  assert invert_images.main(["--image", *map(str, FACES), "--batch-size", "2", "--out",
                             str(tmp_path / "batch"), *common]) == 0
  for f in FACES[:2]:
    assert invert_images.main(["--image", str(f), "--out", str(tmp_path / "single"),
                               *common]) == 0
    b = latents_io.load(tmp_path / "batch" / f.stem / "latents.npz")[0]
    s = latents_io.load(tmp_path / "single" / f.stem / "latents.npz")[0]
    for k in s:
      np.testing.assert_array_equal(b[k], s[k])
    assert (tmp_path / "batch" / f.stem / "result.png").read_bytes() == \
        (tmp_path / "single" / f.stem / "result.png").read_bytes()
    assert json.loads((tmp_path / "batch" / f.stem / "metrics.json").read_text())[
        "exact_batches"] is True


def test_chunk_plan_and_default_chunk():
  assert engine.chunk_plan(10, 4) == [4, 4, 2]
  assert engine.chunk_plan(0, 5) == []
  assert engine.default_chunk(300) == 30
  assert 300 % engine.default_chunk(300) == 0
  assert engine.default_chunk(7) == 1
  assert engine.default_chunk(997) == 100       # prime: no divisor near T/10


def test_latents_file_round_trip_and_checks(tmp_path):
  from mgan_jax.generators.dcgan import DCGAN
  lat = {"z": np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32),
         "alpha": np.full((3, 256), 1 / 3, np.float32)}
  latents_io.save(tmp_path / "l.npz", lat, {"method": "multi_z", "layer": 2, "codes": 3})
  got, meta = latents_io.load(tmp_path / "l.npz")
  np.testing.assert_array_equal(got["z"], lat["z"])
  assert meta["format"] == latents_io.FORMAT and meta["layer"] == 2
  latents_io.check(got, DCGAN(), method="multi_z", codes=3, layer=2, what="x")
  with pytest.raises(UserError, match="do not fit method 'multi_z'"):
    latents_io.check(got, DCGAN(), method="multi_z", codes=3, layer=1, what="x")
  np.save(tmp_path / "plain.npy", lat["z"])
  with pytest.raises(UserError, match="a single array, not a latents file"):
    latents_io.load(tmp_path / "plain.npy")
  # a plain .npz of arrays (official initial latents) is a latents file without meta; noise
  # maps come back as a list
  np.savez(tmp_path / "plain.npz", z=lat["z"], alpha=lat["alpha"], noise_1=np.ones((1, 4, 4, 1)),
           noise_0=np.zeros((1, 2, 2, 1)))
  got, meta = latents_io.load(tmp_path / "plain.npz")
  assert meta == {} and [n.shape for n in got["noise"]] == [(1, 2, 2, 1), (1, 4, 4, 1)]
  np.savez(tmp_path / "nan.npz", z=np.full((3, 100), np.nan))
  with pytest.raises(UserError, match="--init .*nan.npz: array 'z' contains NaN"):
    latents_io.load(tmp_path / "nan.npz")


def test_list_inputs_dirs_globs_lists_and_names(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir(), b.mkdir()
  for d in (a, b):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "face.png")
  (a / "notes.md").write_text("not an image")
  (tmp_path / "list.txt").write_text("# faces\na/face.png\n\nb/face.png\n")
  assert imageio.list_inputs([a]) == [a / "face.png"]
  assert imageio.list_inputs([str(tmp_path / "*" / "face.png")]) == [a / "face.png",
                                                                      b / "face.png"]
  paths = imageio.list_inputs([tmp_path / "list.txt"])
  assert paths == [tmp_path / "a" / "face.png", tmp_path / "b" / "face.png"]
  names = imageio.output_names(paths)
  assert len(set(names)) == 2 and all(n.startswith("face-") for n in names)
  assert imageio.output_names(paths) == names                          # stable
  with pytest.raises(UserError, match="given more than once"):
    imageio.output_names([paths[0], paths[0]])
  with pytest.raises(UserError, match="matches no file"):
    imageio.list_inputs([str(tmp_path / "*.jpg")])


def test_read_image_modes_and_fit(tmp_path):
  g16 = tmp_path / "g16.png"
  Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(g16)
  x, rep = imageio.read_image(g16, size=64)
  assert x.shape == (64, 64, 3) and np.allclose(x, 1.0) and rep.op == "none"
  rgba = tmp_path / "wide.png"
  Image.fromarray(np.zeros((40, 100, 4), np.uint8)).save(rgba)
  with pytest.raises(UserError, match=r"image is 100x40 but 64x64 is needed; pass --fit"):
    imageio.read_image(rgba, size=64)
  x, rep = imageio.read_image(rgba, size=64, fit="center-crop")
  assert x.shape == (64, 64, 3) and rep.crop == (30, 0, 70, 40)
  assert "center-cropped 100x40 to 40x40" in rep.note
  x, rep = imageio.read_image(rgba, size=64, fit="resize")
  assert "aspect ratio changed" in rep.note
  m, _ = imageio.read_mask(EXAMPLES / "mask_center.png", size=32, fit="resize")
  assert m.shape == (32, 32, 1) and set(np.unique(m)) <= {0.0, 1.0}


def test_publish_leaves_nothing_on_failure_and_never_overwrites(tmp_path):
  final = tmp_path / "x"
  with pytest.raises(RuntimeError):
    with fileio.publish(final, kind="dir") as d:
      (d / "half.png").write_bytes(b"...")
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []
  with fileio.publish(final, kind="dir") as d:
    (d / "a").write_text("1")
  assert final.stat().st_mode & 0o777 == 0o777 & ~fileio.umask()    # not mkdtemp's 0700
  with pytest.raises(FileExistsError):
    with fileio.publish(final, kind="dir"):
      pass
  with fileio.publish(final, kind="dir", replace=True) as d:
    (d / "b").write_text("2")
  assert sorted(p.name for p in final.iterdir()) == ["b"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
  # files: all or nothing, and a file that appeared meanwhile is not replaced
  with pytest.raises(ZeroDivisionError):
    fileio.publish_files([(tmp_path / "f1", lambda t: t.write_text("1")),
                          (tmp_path / "f2", lambda t: 1 / 0)])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
  with pytest.raises(FileExistsError):
    with fileio.publish(tmp_path / "f3") as t:
      t.write_text("new")
      (tmp_path / "f3").write_text("user data")
  assert (tmp_path / "f3").read_text() == "user data"
  # a temporary left by a killed writer is recognised and removed
  (tmp_path / ".tmp-f4-abc").write_text("half")
  assert fileio.remove_stale_temporaries(tmp_path, older_than=0) == [tmp_path / ".tmp-f4-abc"]


def test_publish_exist_ok_when_another_writer_fills_the_place_first(tmp_path, monkeypatch):
  """Two writers of the same thing (the asset cache's concurrent first use): the one that finds
  the place filled after its own check discards its copy, whatever step the other was at."""
  final = tmp_path / "model"
  real = fileio.is_occupied
  with fileio.publish(final, kind="dir", exist_ok=True) as d:
    (d / "data.txt").write_text("ours")
    final.mkdir()                                   # the other writer's, after our check ...
    (final / "data.txt").write_text("theirs")
    calls = []

    def stale_first(path):                          # ... which saw the place still free
      calls.append(path)
      return len(calls) > 1 and real(path)

    monkeypatch.setattr(fileio, "is_occupied", stale_first)
  assert (final / "data.txt").read_text() == "theirs"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  monkeypatch.setattr(fileio, "is_occupied", real)
  errors = []

  def writer(root, i):
    try:
      with fileio.publish(root / "model", kind="dir", exist_ok=True) as d:
        (d / "data.txt").write_text(str(i))
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)

  for trial in range(20):
    root = tmp_path / f"t{trial}"
    threads = [threading.Thread(target=writer, args=(root, i)) for i in range(4)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert sorted(p.name for p in root.iterdir()) == ["model"]
  assert errors == []


def test_tasks_parse_degrade_and_postprocess():
  task = tasks.parse_task("super-resolve, colorize", factor=4)
  assert task.tasks == ("colorize", "super-resolve") and task.label == "colorize+super-resolve"
  assert tasks.parse_task("sr,colourization").tasks == ("colorize", "super-resolve")
  assert tasks.parse_task("reconstruct,inpaint").tasks == ("inpaint",)
  with pytest.raises(UserError, match="--factor 3 does not divide"):
    tasks.parse_task("super-resolve", factor=3, resolution=64)
  clean = np.random.default_rng(1).uniform(-1, 1, (64, 64, 3)).astype(np.float32)
  obs = tasks.degrade(task, clean)
  assert obs.image.shape == (16, 16, 3) and obs.loss_mask is None
  np.testing.assert_allclose(obs.image[..., 0], obs.image[..., 1], atol=1e-6)
  dn = tasks.parse_task("denoise", noise=0.1, noise_fraction=0.5)
  o1, o2 = tasks.degrade(dn, clean, seed=3), tasks.degrade(dn, clean, seed=3)
  np.testing.assert_array_equal(o1.image, o2.image)                   # depends on content+seed
  assert not np.array_equal(o1.image, tasks.degrade(dn, clean, seed=4).image)
  assert 0.4 < o1.loss_mask.mean() < 0.6
  assert np.all(o1.target[o1.loss_mask[..., 0] > 0] == 0)
  col = tasks.parse_task("colorize")
  gray = tasks.degrade(col, clean)
  out, how = tasks.postprocess(col, clean[::-1], gray)
  assert "luma" in how
  # the result's luma is the observation's (BT.601)
  y = lambda x: x @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(y(out), y(gray.image), atol=1e-5)
  # inpainting with --paste-known: known pixels from the observation, the result in the holes
  inp = tasks.parse_task("inpaint", paste_known=True)
  mask = np.zeros((64, 64, 1), np.float32)
  mask[16:48, 16:48] = 1
  obs = tasks.degrade(inp, clean, mask=mask)
  out, how = tasks.postprocess(inp, -clean, obs)
  assert out.shape == (64, 64, 3) and "known pixels" in how
  np.testing.assert_allclose(out[:16], clean[:16], atol=1e-6)
  np.testing.assert_allclose(out[16:48, 16:48], -clean[16:48, 16:48], atol=1e-6)


def test_metrics_match_the_formula():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
  mse = np.mean((a / 255.0 - b / 255.0) ** 2)
  q = metrics.quality(a, b)
  assert abs(q["psnr"] - (-10 * np.log10(mse))) < 1e-3
  assert abs(metrics.psnr_numpy(a, b) - q["psnr"]) < 1e-3
  assert 0.5 < q["ssim"] < 1.0
  assert metrics.quality(a, a)["ssim"] == pytest.approx(1.0, abs=1e-5)
  # [-1, 1] floats measure the same as their 8-bit images
  assert metrics.psnr(imageio.from_uint8(a), imageio.from_uint8(b)) == pytest.approx(q["psnr"],
                                                                                      abs=1e-3)


def test_a_diverging_image_is_marked_failed_and_the_rest_of_its_batch_finishes(tmp_path):
  """NaN in one image of a batch: that image's metrics.json says failed and why; the other
  image equals its single-image run; the run says so with exit status 3 at the CLI level."""
  import sys
  sys.path.insert(0, str(Path(__file__).parent))
  from batch_helpers import tiny_inverter, tiny_items
  from mgan_jax import resumable
  items = tiny_items(2)
  items[1].observation.image[0, 0, 0] = np.nan          # the target of image 1 is broken
  out = tmp_path / "out"
  state = resumable.open_run_state(out, items, all_names=[i.name for i in items],
                                   settings={"case": "nan"})
  with state:
    written = resumable.run_items(items, tiny_inverter(batch_size=2), out=out, state=state)
  assert [p.name for p in written] == ["img0", "img1"]
  bad = json.loads((out / "img1" / "metrics.json").read_text())
  assert bad["status"] == "failed" and "the loss became nan at iteration 0" in bad["reason"]
  assert sorted(p.name for p in (out / "img1").iterdir()) == ["degraded.png", "metrics.json"]
  good = json.loads((out / "img0" / "metrics.json").read_text())
  assert good["status"] == "ok" and np.isfinite(good["metrics"]["psnr"])
  single = tmp_path / "single"
  resumable.run_items(items[:1], tiny_inverter(batch_size=1), out=single)
  a = latents_io.load(out / "img0" / "latents.npz")[0]
  b = latents_io.load(single / "img0" / "latents.npz")[0]
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5)
