"""StyleGAN2 from the two PyTorch codebases: conversion, readers and official parity.

Golden values: tests/fixtures/rosinality_sg2_64_ref.npz (rosinality/stylegan2-pytorch's own
``Generator``) and ada_sg2_64_ref.npz (NVlabs/stylegan2-ada-pytorch's own ``Generator``), see
tests/fixtures/README.md. The files are converted with ``python -m convert`` (its ``main``) and
loaded with ``load_model``; w / ws, truncated ws, images from z, truncated images and images
from free w+ must match within 1e-4, the conv_clamp case (ADA ``images_wp_clamp``) within 5e-3.
The network pickle is also rewritten in the byte layouts of older and newer Python / numpy /
torch versions (tests/pytorch_pickles.py) and must convert to the same parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytorch_pickles as P
from convert.__main__ import main as convert_main
from convert.network_pickle import (MAX_MODULE_DEPTH, PersistentObject, module_state_dict,
                                    networks)
from convert.sources import read_source
from convert.stylegan2 import CONVERTER
from convert.stylegan2_pytorch import from_ada, from_network, from_rosinality, mean_w
from convert.torch_pth import Namespace, read_torch_file
from mgan_jax import directions
from mgan_jax.errors import UserError
from mgan_jax.generators import spec_from_json
from mgan_jax.generators.stylegan2 import StyleGAN2
from parity_helpers import FIXTURES, assert_same_params, load_ref, maxdiff, nhwc

ROS, ADA, ADA_SD = "rosinality_sg2_64.pt", "ada_sg2_64.pkl", "ada_sg2_64_state.pt"
TOL, TOL_CLAMP = 1e-4, 5e-3
SPEC = StyleGAN2(resolution=64, latent_dim=64, w_dim=64, mapping_layers=4, mapping_fmaps=64,
                 channels=(32,) * 5, truncation_psi=1.0, truncation_layers=10)


def _convert(tmp_path_factory, fmt, *extra):
  d = tmp_path_factory.mktemp("converted") / fmt.replace(".", "_")
  assert convert_main([str(FIXTURES / fmt), str(d), *extra]) == 0
  from mgan_jax.checkpoint import load_model
  return load_model(d)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return {fmt: _convert(tmp_path_factory, fmt) for fmt in (ROS, ADA)}


@functools.lru_cache(maxsize=None)
def _read(fmt):
  return read_source((FIXTURES / fmt).read_bytes(), fmt).obj


@functools.partial(jax.jit, static_argnums=(0,))
def _outputs(spec, params, avg, z, wp_free, wp_clamp):
  """Everything the references hold, in one program (one synthesis of every w+): truncation
  centre ``avg``, psi 0.7 on all layers."""
  params = {**params, "dlatent_avg": avg}
  w = spec.mapping(params, z)
  wp = spec.truncate(params, w)                                 # default: psi 1, identity
  wp_trunc = spec.truncate(params, w, truncation=(0.7, spec.num_layers))
  parts = dict(images=wp, images_trunc=wp_trunc, images_wp=wp_free, images_wp_clamp=wp_clamp)
  images = spec.synthesize(params, jnp.concatenate(list(parts.values())))
  out = dict(w=w, wp=wp, wp_trunc=wp_trunc)
  start = 0
  for k, v in parts.items():
    out[k] = images[start:start + v.shape[0]]
    start += v.shape[0]
  return out


def test_converted_specs(models):
  ros, ada = (models[f][0] for f in (ROS, ADA))
  assert ros == SPEC and ros.conv_clamp is None
  assert ada == dataclasses.replace(SPEC, conv_clamp=256.0)     # read from the pickle
  assert from_ada(_read(ADA_SD)).spec == ada                    # assumed for state dicts
  assert ros.split_layers() == tuple(range(1, 10)) and ros.synthesis_input_shape() == (10, 64)
  assert spec_from_json(ada.to_json()) == ada
  # the files differ by one Adam step: g_ema vs the ADA G_ema are different weights
  assert maxdiff(models[ROS][1]["mapping"]["Dense0"]["weight"],
                 models[ADA][1]["mapping"]["Dense0"]["weight"]) > 0


def test_rosinality_matches_official(models):
  spec, params = models[ROS]
  ref = load_ref("rosinality_sg2_64_ref.npz")
  assert float(ref["truncation"]) == 0.7
  # the file has no latent average: the converter estimates it (4096 samples, numpy's RNG);
  # rosinality's own estimate (torch's RNG) is the centre of the reference
  assert maxdiff(params["dlatent_avg"], ref["mean_latent"][0]) <= 0.2
  out = _outputs(spec, params, jnp.asarray(ref["mean_latent"][0]), ref["z"], ref["wp_free"],
                 ref["wp_free"][:2])
  assert maxdiff(out["w"], ref["w"]) <= 1e-5
  assert maxdiff(out["wp"], np.broadcast_to(ref["w"][:, None], (4, 10, 64))) <= 1e-5
  for key in ("images", "images_trunc", "images_wp"):
    assert maxdiff(out[key], nhwc(ref[key])) <= TOL, key


def test_ada_matches_official(models):
  spec, params = models[ADA]
  ref = load_ref("ada_sg2_64_ref.npz")
  assert float(ref["truncation_psi"]) == 0.7
  np.testing.assert_array_equal(params["dlatent_avg"], ref["w_avg"])     # mapping.w_avg
  out = _outputs(spec, params, params["dlatent_avg"], ref["z"], ref["wp_free"], ref["wp_clamp"])
  assert maxdiff(out["wp"], ref["ws"]) <= 1e-5
  assert maxdiff(out["wp_trunc"], ref["ws_trunc"]) <= 1e-5
  for key in ("images", "images_trunc", "images_wp"):
    assert maxdiff(out[key], nhwc(ref[key])) <= TOL, key
  # w this large drives the ToRGB outputs past +-256: conv_clamp acts (7.0 without it)
  assert maxdiff(out["images_wp_clamp"], nhwc(ref["images_wp_clamp"])) <= TOL_CLAMP


def test_layout_changes_are_the_documented_ones():
  """Spot checks of the conversion itself: flips only on up-convs, biases without their 1,
  NHWC buffers, dense [in, out]."""
  sd = _read(ADA_SD)
  p = from_ada(sd).params["synthesis"]
  w0 = sd["synthesis.b8.conv0.weight"]                          # (O, I, 3, 3), up-conv
  np.testing.assert_array_equal(p["8x8"]["Conv0_up"]["weight"],
                                w0.transpose(2, 3, 1, 0)[::-1, ::-1])
  np.testing.assert_array_equal(p["8x8"]["Conv1"]["weight"],
                                sd["synthesis.b8.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["8x8"]["Conv1"]["mod_bias"] + 1,
                                sd["synthesis.b8.conv1.affine.bias"])
  np.testing.assert_array_equal(p["noise2"][0, :, :, 0], sd["synthesis.b8.conv1.noise_const"])
  np.testing.assert_array_equal(p["4x4"]["Const"]["const"][0],
                                sd["synthesis.b4.const"].transpose(1, 2, 0))
  g = _read(ROS)["g_ema"]
  q = from_rosinality(g).params
  np.testing.assert_array_equal(q["synthesis"]["16x16"]["Conv0_up"]["weight"],
                                g["convs.2.conv.weight"][0].transpose(2, 3, 1, 0)[::-1, ::-1])
  np.testing.assert_array_equal(q["synthesis"]["16x16"]["ToRGB"]["bias"],
                                g["to_rgbs.1.bias"].reshape(3))
  assert q["synthesis"]["8x8"]["Conv1"]["noise_strength"].shape == ()
  np.testing.assert_array_equal(q["mapping"]["Dense2"]["weight"], g["style.3.weight"].T)


def test_network_pickle_is_read_as_data():
  snap = _read(ADA)
  assert sorted(networks(snap)) == ["D", "G", "G_ema"] and snap["augment_pipe"] is None
  g = snap["G_ema"]
  assert isinstance(g, PersistentObject) and g.class_name == "Generator"
  assert "Module source omitted" in g.module_src and g.attr("img_resolution") == 64
  assert g.children()["mapping"].attr("w_avg_beta") == 0.995
  assert snap["training_set_kwargs"]["resolution"] == 64
  # G_ema.state_dict(): the same tensors, in the same order, as torch.save wrote them
  sd, want = module_state_dict(g, what="G_ema"), _read(ADA_SD)
  assert list(sd) == list(want) and len(sd) == 98
  for k in want:
    np.testing.assert_array_equal(sd[k], want[k], err_msg=k)
  assert CONVERTER.matches_network(g) and not CONVERTER.matches_network(snap["D"])


@pytest.mark.parametrize("protocol, numpy_module, ordered", [
    (3, "numpy.core", True),        # Python 3.7, numpy 1.x, torch 1.x (NVIDIA's released files)
    (4, "numpy._core", False),      # current Python, numpy 2, torch 2
], ids=["py37-numpy1-torch1", "current"])
def test_older_and_newer_network_pickles_convert_the_same(protocol, numpy_module, ordered):
  data = P.network_pickle(_read(ADA), protocol=protocol, numpy_module=numpy_module,
                          ordered=ordered)
  assert data[:2] == bytes([0x80, protocol])
  np_global = f"{numpy_module}.multiarray\nscalar\n".encode()
  if protocol == 3:   # GLOBAL opcodes, builtins.set, OrderedDict module dicts, no FRAME
    assert b"c" + np_global in data and b"cbuiltins\nset\n" in data
    assert b"ccollections\nOrderedDict\n" in data and b"\x95" not in data[:3]
  else:
    assert np_global not in data and b"numpy._core.multiarray" in data
  src = read_source(data, f"snapshot_p{protocol}.pkl")
  assert src.kind == "network" and src.fmt == "network-pickle"
  got, want = from_network(src.obj["G_ema"]), from_network(_read(ADA)["G_ema"])
  assert got.spec == want.spec
  assert jax.tree.all(jax.tree.map(np.array_equal, got.params, want.params))


def test_rosinality_legacy_checkpoint_and_convert_weight_layout(tmp_path, capsys, models):
  """A torch < 1.6 (legacy) train.py checkpoint, and a convert_weight.py checkpoint
  ({'g_ema', 'latent_avg'}: the centre is taken from the file)."""
  ckpt = _read(ROS)
  assert isinstance(ckpt["args"], Namespace) and ckpt["args"].fields["size"] == 64
  legacy = read_source(P.torch_legacy_file(ckpt), "legacy.pt")
  assert legacy.fmt == "torch-legacy" and legacy.obj["args"].fields == ckpt["args"].fields
  assert list(legacy.obj["g_ema"]) == list(ckpt["g_ema"])
  for k, v in ckpt["g_ema"].items():
    np.testing.assert_array_equal(legacy.obj["g_ema"][k], v, err_msg=k)
  ref = load_ref("rosinality_sg2_64_ref.npz")
  avg = ref["mean_latent"][0]
  cw = tmp_path / "550000.pt"
  cw.write_bytes(P.torch_legacy_file({"g_ema": ckpt["g_ema"], "latent_avg": avg}))
  assert convert_main([str(cw), str(tmp_path / "b")]) == 0
  out = capsys.readouterr().out
  assert "(torch-legacy)" in out and "using the state dict under 'g_ema'" in out
  assert "using 'latent_avg' from the checkpoint" in out and "no latent average" not in out
  from mgan_jax.checkpoint import load_model
  spec, pb = load_model(tmp_path / "b")
  np.testing.assert_array_equal(pb["dlatent_avg"], avg)
  np.testing.assert_array_equal(models[ROS][1]["synthesis"]["64x64"]["Conv1"]["weight"],
                                pb["synthesis"]["64x64"]["Conv1"]["weight"])
  # the default centre is now rosinality's (same program as test_rosinality_matches_official)
  out = _outputs(spec, pb, pb["dlatent_avg"], ref["z"], ref["wp_free"], ref["wp_free"][:2])
  assert maxdiff(out["images_trunc"], nhwc(ref["images_trunc"])) <= TOL


def test_mean_latent_estimate():
  spec = SPEC
  params = from_rosinality(_read(ROS)["g_ema"]).params
  w = np.asarray(jax.jit(spec.mapping)(params, np.random.default_rng(0).standard_normal(
      (4096, 64), dtype=np.float32)), np.float64)
  np.testing.assert_allclose(params["dlatent_avg"], w.mean(0), atol=1e-6)
  assert maxdiff(mean_w(spec, params, n=512, seed=1), params["dlatent_avg"]) > 0


def _one_error(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_network_flag_chooses_and_names_what_is_missing(tmp_path, capsys, models):
  ada_g = _convert_cli(tmp_path / "G", ADA, "--network", "G")
  out = capsys.readouterr().out
  assert "using the network 'G'" in out
  ros_g = _convert_cli(tmp_path / "g", ROS, "--network", "g")
  assert "using the state dict under 'g'" in capsys.readouterr().out
  for fmt, (spec, params) in ((ADA, ada_g), (ROS, ros_g)):
    ema = models[fmt][1]
    assert spec == models[fmt][0]
    assert maxdiff(params["synthesis"]["8x8"]["Conv1"]["weight"],
                   ema["synthesis"]["8x8"]["Conv1"]["weight"]) > 0       # G is not G_ema
  cases = [
      (ADA, ["--network", "g_ema"], "has no network 'g_ema' (networks in this file: G "
       "(Generator), D (Discriminator), G_ema (Generator))"),
      (ADA, ["--network", "D"], "recognised a Discriminator network 'D', but no generator "
       "family converter"),
      (ROS, ["--network", "G_ema"], "has no network 'G_ema' (state dicts in this file: 'g', "
       "'d', 'g_ema')"),
      (ROS, ["--network", "args"], "'args' holds a Namespace, not a state dict"),
      (ADA_SD, ["--network", "G_ema"], "holds a single state dict, not several networks"),
      ("stylegan2_64_tf.pkl", ["--network", "G"], "an NVIDIA TF pickle is converted from its Gs"),
      (ADA, ["--conv-clamp", "-3"], "--conv-clamp: expected a positive number or 'none'"),
      ("pggan64.pth", ["--conv-clamp", "none"], "--conv-clamp applies to StyleGAN2 generators"),
  ]
  for fmt, argv, needle in cases:
    out_dir = tmp_path / "bad"
    assert convert_main([str(FIXTURES / fmt), str(out_dir), *argv]) == 2, (fmt, argv)
    line = _one_error(capsys)
    assert needle in line, (needle, line)
    assert not out_dir.exists()


def test_state_dict_conversion_and_conv_clamp_flag(tmp_path, capsys, models):
  """G_ema.state_dict() converts to the pickle's parameters; --conv-clamp sets the clamp."""
  spec, params = _convert_cli(tmp_path / "a", ADA_SD, "--conv-clamp", "none")
  out = capsys.readouterr().out
  assert "the state dict does not record conv_clamp: using 256" in out
  assert "conv_clamp = none (--conv-clamp)" in out
  assert spec == SPEC and spec.conv_clamp is None
  assert_same_params({ADA_SD: (spec, params), ADA: models[ADA]})   # state dict == pickle
  with pytest.raises(ValueError, match="conv_clamp"):
    StyleGAN2(resolution=8, conv_clamp=0)


def _convert_cli(out_dir, fmt, *argv):
  assert convert_main([str(FIXTURES / fmt), str(out_dir), *argv]) == 0
  from mgan_jax.checkpoint import load_model
  return load_model(out_dir)


def test_state_dict_and_architecture_errors():
  sd = dict(_read(ADA_SD))
  with pytest.raises(UserError, match=r"missing key synthesis\.b16\.torgb\.affine\.bias"):
    from_ada({k: v for k, v in sd.items() if k != "synthesis.b16.torgb.affine.bias"})
  with pytest.raises(UserError, match=r"wrong shape for synthesis\.b8\.conv0\.affine\.weight"):
    from_ada({**sd, "synthesis.b8.conv0.affine.weight": np.zeros((64, 32), np.float32)})
  with pytest.raises(UserError, match=r"unexpected key synthesis\.b8\.skip\.weight"):
    from_ada({**sd, "synthesis.b8.skip.weight": np.zeros((32, 32, 1, 1), np.float32)})
  with pytest.raises(UserError, match=r"conditional generator \(mapping\.embed"):
    from_ada({**sd, "mapping.embed.weight": np.zeros((64, 10), np.float32)})
  with pytest.raises(UserError, match=r"synthesis\.b8\.conv0\.resample_filter is not the "
                     r"\[1, 3, 3, 1\] resampling filter"):
    from_ada({**sd, "synthesis.b8.conv0.resample_filter": np.full((4, 4), 1 / 16, np.float32)})
  g = dict(_read(ROS)["g_ema"])
  with pytest.raises(UserError, match=r"to_rgbs\.2\.upsample\.kernel is not the"):
    from_rosinality({**g, "to_rgbs.2.upsample.kernel": np.ones((4, 4), np.float32)})
  with pytest.raises(UserError, match=r"missing key noises\.noise_8"):
    from_rosinality({k: v for k, v in g.items() if k != "noises.noise_8"})
  # the module attributes of a network pickle are checked
  net = _read(ADA)["G_ema"]
  for path, field, value, needle in (
      (("synthesis", "b16"), "architecture", "resnet", "synthesis.b16.architecture='resnet'"),
      (("synthesis", "b8", "conv0"), "activation", "relu", "activation='relu'"),
      (("mapping", "fc1"), "bias_gain", 1, "mapping.fc1.bias_gain=1"),
      ((), "c_dim", 10, "c_dim=10 is not supported"),
      (("synthesis", "b32", "torgb"), "conv_clamp", None, "different conv_clamp values")):
    with pytest.raises(UserError, match=re.escape(needle)):
      from_network(P.with_state(net, path, **{field: value}))


def test_sefa_uses_the_modulation_weights(models):
  """directions.py's StyleGAN2 SeFa on converted models factorises exactly the modulation
  (affine) weights of the original layers: conv layers 0..L-2, then the final ToRGB."""
  sd, g = _read(ADA_SD), _read(ROS)["g_ema"]
  ada_keys = [f"synthesis.b{4 * 2 ** ((i + 1) // 2)}."
              + ("conv1" if i == 0 or i % 2 == 0 else "conv0") + ".affine.weight"
              for i in range(9)] + ["synthesis.b64.torgb.affine.weight"]
  ros_keys = ([f"{'conv1' if i == 0 else f'convs.{i - 1}'}.conv.modulation.weight"
               for i in range(9)] + ["to_rgbs.3.conv.modulation.weight"])
  for fmt, source, keys in ((ADA, sd, ada_keys), (ROS, g, ros_keys)):
    spec, params = models[fmt]
    for layers, idx in (("all", range(10)), ("0-1", range(2)), ("9", [9])):
      fac = directions.sefa(spec, params, layers)
      want = directions.factorize(directions.sefa_weight([source[keys[i]].T for i in idx]))
      np.testing.assert_allclose(fac.eigenvalues, want[0], rtol=1e-5)
      np.testing.assert_allclose(fac.directions, want[1], atol=1e-5)
      assert fac.space == "w" and fac.layers == tuple(idx)


def test_persistent_objects_are_bounded():
  """Deep module nesting, unknown description fields and non-class objects are refused."""
  from convert.network_pickle import _reconstruct_persistent_obj as make
  meta = {"type": "class", "version": 6, "module_src": "raise SystemExit", "class_name": "M",
          "state": {"_modules": {}}}
  net = make(meta)
  for _ in range(MAX_MODULE_DEPTH):
    net = make({**meta, "state": {"_modules": {"m": net}}})
  assert net.depth == MAX_MODULE_DEPTH
  with pytest.raises(UserError, match="nested more than"):
    make({**meta, "state": {"_modules": {"m": net}}})
  for bad, needle in (({**meta, "extra": 1}, "does not have the fields"),
                      ({**meta, "type": "function"}, "only classes"),
                      ({**meta, "class_name": "os.system"}, "not an identifier"),
                      ({**meta, "state": {"_modules": {"m": 3}}}, "not a persistent network")):
    with pytest.raises(UserError, match=needle):
      make(bad)
