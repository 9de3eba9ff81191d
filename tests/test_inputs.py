"""Input images and masks of every kind a user may give: a documented conversion or one clear
error line naming the file (``mgan_jax.imageio``, ``mgan_jax.tasks.check_mask``)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgan_jax import imageio, tasks
from mgan_jax.errors import UserError


def _save(path: Path, im: Image.Image, **kw) -> Path:
  im.save(path, **kw)
  return path


def test_gray_16bit_float_palette_cmyk_are_converted(tmp_path):
  g = _save(tmp_path / "g.png", Image.fromarray(np.full((4, 4), 51, np.uint8)))
  x, rep = imageio.read_image(g, size=4)
  np.testing.assert_allclose(x, 51 / 127.5 - 1, atol=1e-6)
  assert rep.conversions == ("gray repeated to RGB",)
  g16 = _save(tmp_path / "g16.png", Image.fromarray(np.full((4, 4), 65535, np.uint16)))
  assert np.allclose(imageio.read_image(g16, size=4)[0], 1.0)
  f = _save(tmp_path / "f.tiff", Image.fromarray(np.full((4, 4), 0.25, np.float32)))
  np.testing.assert_allclose(imageio.read_image(f, size=4)[0], -0.5, atol=1e-6)
  nan = np.full((4, 4), 0.25, np.float32)
  nan[0, 0] = np.nan
  bad = _save(tmp_path / "nan.tiff", Image.fromarray(nan))
  with pytest.raises(UserError, match="nan.tiff: the image holds NaN"):
    imageio.read_image(bad, size=4)
  rgb = np.zeros((4, 4, 3), np.uint8)
  rgb[..., 0] = 255
  p = _save(tmp_path / "p.png", Image.fromarray(rgb).convert("P"))
  x, rep = imageio.read_image(p, size=4)
  np.testing.assert_allclose(x[..., 0], 1.0) and np.testing.assert_allclose(x[..., 1:], -1.0)
  assert "palette converted to RGB" in rep.conversions
  c = _save(tmp_path / "c.jpg", Image.fromarray(rgb).convert("CMYK"))
  x, rep = imageio.read_image(c, size=4)
  assert x.shape == (4, 4, 3) and x[..., 0].mean() > 0.8 and "CMYK converted to RGB" in \
      rep.conversions


def test_transparency_is_composited_over_white_and_opaque_alpha_dropped(tmp_path):
  a = np.zeros((4, 4, 4), np.uint8)
  a[..., 3] = 255
  a[:2, :, 3] = 0                       # top half transparent (black RGB underneath)
  x, rep = imageio.read_image(_save(tmp_path / "t.png", Image.fromarray(a)), size=4)
  np.testing.assert_allclose(x[:2], 1.0)          # white where transparent
  np.testing.assert_allclose(x[2:], -1.0)         # black where opaque
  assert rep.conversions == ("transparency composited over white",)
  assert imageio.read_image(_save(tmp_path / "o.png", Image.fromarray(a[2:])), size=(4, 2)
                            )[1].conversions == ()  # fully opaque: alpha dropped silently
  la = Image.fromarray(a).convert("LA")
  x, rep = imageio.read_image(_save(tmp_path / "la.png", la), size=4)
  np.testing.assert_allclose(x[:2], 1.0) and "transparency" in rep.conversions[0]
  # a palette image with a transparent colour
  pal = Image.fromarray(a).convert("P")
  pal.info["transparency"] = pal.getpixel((0, 0))
  x, _ = imageio.read_image(_save(tmp_path / "pt.png", pal,
                                  transparency=pal.getpixel((0, 0))), size=4)
  np.testing.assert_allclose(x[:2], 1.0)


def test_exif_orientation_is_applied(tmp_path):
  a = np.zeros((2, 4, 3), np.uint8)
  a[:, :2] = 255                          # white left half of a 4-wide, 2-high image
  exif = Image.Exif()
  exif[0x0112] = 6                        # "rotate 90 CW to display"
  path = _save(tmp_path / "r.jpg", Image.fromarray(a), exif=exif.tobytes(), quality=100)
  x, rep = imageio.read_image(path, size=(2, 4))     # shown 2 wide, 4 high
  assert x.shape == (4, 2, 3) and rep.original == (2, 4)
  assert x[:2].mean() > 0.5 and x[2:].mean() < -0.5  # the white half is now on top


def _png_header_only(width: int, height: int) -> bytes:
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                           0, 0)) + chunk(b"IEND", b""))


def test_huge_tiny_missing_and_non_images_are_one_line(tmp_path):
  huge = tmp_path / "huge.png"
  huge.write_bytes(_png_header_only(10000, 10000))          # 100 megapixels declared, 57 bytes
  with pytest.raises(UserError, match=r"huge.png: image is 10000x10000 \(100 megapixels\)"):
    imageio.read_image(huge, size=64)
  huge.write_bytes(_png_header_only(20000, 20000))          # PIL's own bomb limit
  with pytest.raises(UserError, match=r"huge.png: cannot read as an image \(.*decompression"):
    imageio.read_image(huge, size=64)
  tiny = _save(tmp_path / "tiny.png", Image.fromarray(np.zeros((1, 1, 3), np.uint8)))
  with pytest.raises(UserError, match="tiny.png: image is 1x1 but 64x64 is needed; pass --fit"):
    imageio.read_image(tiny, size=64)
  x, rep = imageio.read_image(tiny, size=64, fit="resize")
  assert x.shape == (64, 64, 3) and rep.op == "resize"
  (tmp_path / "notes.png").write_text("not an image")
  with pytest.raises(UserError, match="notes.png: cannot read as an image"):
    imageio.read_image(tmp_path / "notes.png", size=64)
  with pytest.raises(UserError, match="missing.png: no such image file"):
    imageio.read_image(tmp_path / "missing.png", size=64)
  truncated = io.BytesIO()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated, format="PNG")
  (tmp_path / "cut.png").write_bytes(truncated.getvalue()[:60])
  with pytest.raises(UserError, match="cut.png: cannot read as an image"):
    imageio.read_image(tmp_path / "cut.png", size=64)


def test_mask_rule_binarizes_soft_masks_and_refuses_degenerate_ones():
  m = np.zeros((8, 8, 1), np.float32)
  m[2:6, 2:6] = 1.0
  got, note = tasks.check_mask(m)
  np.testing.assert_array_equal(got, m) and note == ""
  soft = m * 0.7 + 0.1                                # a blurred / gray mask
  got, note = tasks.check_mask(soft, what="--mask s.png")
  np.testing.assert_array_equal(got, m)
  assert note.startswith("soft mask binarized at 50% gray (64 intermediate pixel(s))")
  with pytest.raises(UserError, match="--mask b.png: marks no missing pixel"):
    tasks.check_mask(np.zeros((8, 8, 1)), what="--mask b.png")
  with pytest.raises(UserError, match="--mask w.png: marks every pixel missing"):
    tasks.check_mask(np.ones((8, 8, 1)), what="--mask w.png")


def test_directories_and_globs_skip_masks(tmp_path):
  for n in ("a.png", "b.png", "mask_center.png", "Mask2.png", "hole.png"):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / n)
  skipped: list = []
  got = imageio.list_inputs([tmp_path], exclude=[tmp_path / "hole.png"], skipped=skipped)
  assert [p.name for p in got] == ["a.png", "b.png"]
  assert sorted(p.name for p in skipped) == ["Mask2.png", "hole.png", "mask_center.png"]
  assert [p.name for p in imageio.list_inputs([str(tmp_path / "*.png")])] == [
      "a.png", "b.png", "hole.png"]
  # a mask named explicitly is an input (the user asked for it)
  assert imageio.list_inputs([tmp_path / "mask_center.png"]) == [tmp_path / "mask_center.png"]
  with pytest.raises(UserError, match=r"the input .*a.png is given more than once"):
    imageio.output_names([tmp_path / "a.png", tmp_path / "a.png"])
