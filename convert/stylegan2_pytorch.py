"""StyleGAN2 from the two PyTorch codebases -> ``mgan_jax.generators.stylegan2``.

Both compute the function of NVIDIA's config-f 'skip' generator, so they convert to the same
Flax spec and parameter tree (TF names and layouts) as ``convert.stylegan2``:

* **rosinality/stylegan2-pytorch** ``Generator`` state dicts: ``g_ema`` (or ``g``) of a
  train.py checkpoint, or of a convert_weight.py checkpoint (``{'g_ema', 'latent_avg'}``; the
  dispatcher hands ``latent_avg`` over with the state dict). Keys ``style.{1..M}``,
  ``input.input``, ``conv1``, ``to_rgb1``, ``convs.{j}``, ``to_rgbs.{k}``, ``noises.noise_{i}``.
* **NVlabs/stylegan2-ada-pytorch** ``Generator``: a network pickle's ``G_ema`` (or ``G``),
  read by ``convert.network_pickle`` (``from_network``: the architecture attributes of its
  modules are checked and give ``conv_clamp``), or ``G_ema.state_dict()`` saved with
  ``torch.save`` (``conv_clamp`` is not recorded there: 256, train.py's value, with a note).
  Keys ``mapping.fc{i}``, ``mapping.w_avg``, ``synthesis.b{R}.{conv0, conv1, torgb}``.

Layout changes (here and nowhere else):

* dense and modulation weights [out, in] -> [in, out]; conv kernels OIHW (rosinality: with a
  leading 1) -> HWIO; the up-convolution kernels (rosinality ``convs.{2k}``, ADA ``conv0``) are
  also flipped spatially: both codebases run ``conv_transpose2d`` with the stored kernel, i.e.
  the correlation of the zero-inserted input with the *flipped* kernel, which is what NVIDIA's
  TF files store (and the Flax model runs);
* modulation biases are stored including their initial 1 and become TF's ``mod_bias`` (without
  it; the model adds 1 at run time): ``stored - 1`` (exact for stored values in [0.5, 2]);
* the constant (ADA (C, 4, 4), rosinality (1, C, 4, 4)) and the noise images (ADA
  ``noise_const`` (R, R), rosinality (1, 1, R, R)) become NHWC; rosinality's scalar noise
  strength (1,) and ToRGB bias (1, 3, 1, 1) become () and (3,);
* the truncation centre ``dlatent_avg`` is ADA's ``mapping.w_avg`` or rosinality's
  ``latent_avg``; a train.py checkpoint has none (rosinality computes ``mean_latent(4096)``
  at use time from torch's RNG), so the converter stores the same estimate, the mean of
  ``mapping(z)`` over 4096 z ~ N(0, 1) drawn with ``numpy.random.default_rng(0)``, and says so.

The resampling filters (``blur.kernel`` / ``upsample.kernel``, ``resample_filter``) must be the
[1, 3, 3, 1] filter the model implements and are leftover. The default truncation is psi 1 on
all layers (both codebases' generate scripts). Missing keys, wrong shapes and unknown keys (a
'resnet' generator's ``skip``, a conditional generator's ``mapping.embed``) are ``UserError``s
naming the key.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from convert.network_pickle import PersistentObject, module_state_dict, modules
from convert.registry import Conversion
from convert.stylegan import (count_indexed, fill_params, leftovers, make_spec,
                              sd_mapping_dims, shape_of)
from mgan_jax.errors import UserError
from mgan_jax.generators.stylegan2 import StyleGAN2, _conv_name

#: conv_clamp of stylegan2-ada-pytorch's train.py, used for state dicts (which do not record it)
ADA_TRAIN_CONV_CLAMP = 256.0
#: samples of the truncation centre computed for rosinality train.py checkpoints
MEAN_LATENT_SAMPLES = 4096
#: [1, 3, 3, 1] outer product / 64: ADA's ``resample_filter`` (its gain is applied at use)
_FIR = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64


# ----- rosinality/stylegan2-pytorch -------------------------------------------------------------

def matches_rosinality(sd: Mapping[str, Any]) -> bool:
  return "input.input" in sd and "conv1.conv.weight" in sd


def _ros_conv(i: int) -> str:
  return "conv1" if i == 0 else f"convs.{i - 1}"


def _ros_rgb(b: int) -> str:
  return "to_rgb1" if b == 0 else f"to_rgbs.{b - 1}"


def _ros_table(spec: StyleGAN2) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("latent_avg", "copy")}
  for i in range(spec.mapping_layers):
    t[f"mapping/Dense{i}/weight"] = (f"style.{i + 1}.weight", "T")
    t[f"mapping/Dense{i}/bias"] = (f"style.{i + 1}.bias", "copy")
  t["synthesis/4x4/Const/const"] = ("input.input", "nchw")
  for i in range(spec.num_conv_layers):
    src = _ros_conv(i)
    scope, name, up = _conv_name(i)
    base = f"synthesis/{scope}/{name}"
    t[f"synthesis/noise{i}"] = (f"noises.noise_{i}", "nchw")
    t[f"{base}/weight"] = (f"{src}.conv.weight", "1oihw_flip" if up else "1oihw")
    t[f"{base}/bias"] = (f"{src}.activate.bias", "copy")
    t[f"{base}/noise_strength"] = (f"{src}.noise.weight", "item")
    t[f"{base}/mod_weight"] = (f"{src}.conv.modulation.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.conv.modulation.bias", "minus1")
  for b in range(len(spec.channels)):
    res = 4 * 2 ** b
    src, base = _ros_rgb(b), f"synthesis/{res}x{res}/ToRGB"
    t[f"{base}/weight"] = (f"{src}.conv.weight", "1oihw")
    t[f"{base}/bias"] = (f"{src}.bias", "flat")
    t[f"{base}/mod_weight"] = (f"{src}.conv.modulation.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.conv.modulation.bias", "minus1")
  return t


def from_rosinality(sd: Mapping[str, Any]) -> Conversion:
  """rosinality ``Generator`` state dict (flat, numpy; ``latent_avg`` optional) -> Conversion."""
  what = "rosinality StyleGAN2 state dict"
  noun = "key"
  mapping = sd_mapping_dims(sd, what, key="style.{}.weight", first=1)
  channels = [shape_of(sd, "conv1.conv.weight", 5, what, noun)[1]]
  while f"convs.{2 * len(channels) - 1}.conv.weight" in sd:
    channels.append(shape_of(sd, f"convs.{2 * len(channels) - 1}.conv.weight", 5, what,
                             noun)[1])
  spec = _spec(what, channels, mapping, conv_clamp=None)
  notes = []
  source = dict(sd)
  if "latent_avg" not in source:
    source["latent_avg"] = np.zeros(spec.w_dim, np.float32)  # replaced below
  params, used = fill_params(spec, source, _ros_table(spec), what, noun)
  if "latent_avg" not in sd:
    params["dlatent_avg"] = mean_w(spec, params)
    used.discard("latent_avg")
    notes.append(f"no latent average in the file: the truncation centre is the mean w of "
                 f"{MEAN_LATENT_SAMPLES} z ~ N(0, 1) (seed 0), as rosinality's "
                 f"mean_latent({MEAN_LATENT_SAMPLES}) estimates it")
  filters = {r"convs\.\d+\.conv\.blur\.kernel": 4 * _FIR, r"to_rgbs\.\d+\.upsample\.kernel":
             4 * _FIR}
  left = leftovers(sd, used, list(filters), what, noun)
  _check_filters(sd, left, filters, what)
  return Conversion(spec=spec, params=params, leftover=left, notes=tuple(notes))


# ----- NVlabs/stylegan2-ada-pytorch -------------------------------------------------------------

def matches_ada(sd: Mapping[str, Any]) -> bool:
  return "synthesis.b4.const" in sd and "mapping.fc0.weight" in sd


def _ada_conv(i: int) -> str:
  b = (i + 1) // 2
  res = 4 * 2 ** b
  return f"synthesis.b{res}." + ("conv1" if i == 0 or i % 2 == 0 else "conv0")


def _ada_table(spec: StyleGAN2) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("mapping.w_avg", "copy")}
  for i in range(spec.mapping_layers):
    t[f"mapping/Dense{i}/weight"] = (f"mapping.fc{i}.weight", "T")
    t[f"mapping/Dense{i}/bias"] = (f"mapping.fc{i}.bias", "copy")
  t["synthesis/4x4/Const/const"] = ("synthesis.b4.const", "chw")
  for i in range(spec.num_conv_layers):
    src = _ada_conv(i)
    scope, name, up = _conv_name(i)
    base = f"synthesis/{scope}/{name}"
    t[f"synthesis/noise{i}"] = (f"{src}.noise_const", "hw")
    t[f"{base}/weight"] = (f"{src}.weight", "oihw_flip" if up else "oihw")
    t[f"{base}/bias"] = (f"{src}.bias", "copy")
    t[f"{base}/noise_strength"] = (f"{src}.noise_strength", "copy")
    t[f"{base}/mod_weight"] = (f"{src}.affine.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.affine.bias", "minus1")
  for b in range(len(spec.channels)):
    res = 4 * 2 ** b
    src, base = f"synthesis.b{res}.torgb", f"synthesis/{res}x{res}/ToRGB"
    t[f"{base}/weight"] = (f"{src}.weight", "oihw")
    t[f"{base}/bias"] = (f"{src}.bias", "copy")
    t[f"{base}/mod_weight"] = (f"{src}.affine.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.affine.bias", "minus1")
  return t


def from_ada(sd: Mapping[str, Any], *, conv_clamp: Optional[float] = ADA_TRAIN_CONV_CLAMP,
             clamp_recorded: bool = False, what: str = "stylegan2-ada-pytorch state dict"
             ) -> Conversion:
  """stylegan2-ada-pytorch ``Generator`` state dict (flat, numpy) -> Conversion.
  ``conv_clamp``: the network's (None: no clamp); ``clamp_recorded``: whether it was read from
  the file (else a note says which value was assumed)."""
  noun = "key"
  if any(k.startswith("mapping.embed.") for k in sd):
    raise UserError(f"{what}: a conditional generator (mapping.embed, c_dim > 0) is not "
                    "supported")
  mapping = sd_mapping_dims(sd, what, key="mapping.fc{}.weight")
  channels = []
  while f"synthesis.b{4 * 2 ** len(channels)}.conv1.weight" in sd:
    channels.append(shape_of(sd, f"synthesis.b{4 * 2 ** len(channels)}.conv1.weight", 4, what,
                             noun)[0])
  spec = _spec(what, channels, mapping, conv_clamp=conv_clamp)
  params, used = fill_params(spec, sd, _ada_table(spec), what, noun)
  filters = {r"synthesis\.b\d+\.resample_filter": _FIR,
             r"synthesis\.b\d+\.conv[01]\.resample_filter": _FIR}
  left = leftovers(sd, used, list(filters), what, noun)
  _check_filters(sd, left, filters, what)
  value = "none" if conv_clamp is None else f"{conv_clamp:g}"
  notes = () if clamp_recorded else (
      f"the state dict does not record conv_clamp: using {value} (stylegan2-ada-pytorch's "
      f"train.py uses {ADA_TRAIN_CONV_CLAMP:g}; --conv-clamp none for a network trained with "
      "--fp32)",)
  return Conversion(spec=spec, params=params, leftover=left, notes=notes)


def matches_network(net: Any) -> bool:
  if not isinstance(net, PersistentObject) or net.class_name != "Generator":
    return False
  synth = net.children().get("synthesis")
  return isinstance(synth, PersistentObject) and "b4" in synth.children()


def from_network(net: PersistentObject) -> Conversion:
  """A stylegan2-ada-pytorch ``Generator`` of a network pickle -> Conversion. Its module
  attributes are checked (architecture 'skip', lrelu, noise inputs, 3 channels, no labels,
  mapping lr multiplier 0.01) and give conv_clamp."""
  what = f"stylegan2-ada-pytorch {net.class_name}"
  if net.class_name != "Generator":
    raise UserError(f"{what}: not a Generator")
  for field, want in (("c_dim", 0), ("img_channels", 3)):
    got = net.attr(field, want)
    if got != want:
      raise UserError(f"{what}: {field}={got!r} is not supported (only {want})")
  clamps = set()
  for name, m in modules(net):
    checks: dict[str, Any] = {}
    if m.class_name == "SynthesisBlock":
      checks = {"architecture": "skip"}
    elif m.class_name == "SynthesisLayer":
      checks = {"activation": "lrelu", "use_noise": True}
    elif m.class_name == "FullyConnectedLayer" and name.startswith("mapping."):
      checks = {"activation": "lrelu", "bias_gain": 0.01}
    for field, want in checks.items():
      got = m.attr(field, want)
      if not _same(got, want):
        raise UserError(f"{what}: {name}.{field}={got!r} is not supported (only {want!r})")
    if m.class_name in ("SynthesisLayer", "ToRGBLayer") and "conv_clamp" in m.state:
      c = m.attr("conv_clamp")
      if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float, np.number))):
        raise UserError(f"{what}: {name}.conv_clamp={c!r} is not a number")
      clamps.add(None if c is None else float(c))
  if len(clamps) > 1:
    raise UserError(f"{what}: its layers use different conv_clamp values "
                    f"{sorted(map(str, clamps))}")
  sd = module_state_dict(net, what=what)
  return from_ada(sd, conv_clamp=clamps.pop() if clamps else None, clamp_recorded=True,
                  what=what)


# ----- shared -----------------------------------------------------------------------------------

def _same(got: Any, want: Any) -> bool:
  if isinstance(want, float):
    return (isinstance(got, (int, float, np.number)) and not isinstance(got, bool)
            and abs(float(got) - want) <= 1e-6 * abs(want))
  return type(got) is type(want) and got == want


def _spec(what: str, channels: list, mapping: dict, *, conv_clamp: Optional[float]) -> StyleGAN2:
  if len(channels) < 2:
    raise UserError(f"{what}: found {len(channels)} resolution block(s); a StyleGAN2 generator "
                    "has at least 4x4 and 8x8")
  num_layers = 2 * len(channels)
  return make_spec(StyleGAN2, what, resolution=4 * 2 ** (len(channels) - 1),
                   channels=tuple(int(c) for c in channels), truncation_psi=1.0,
                   truncation_layers=num_layers, conv_clamp=conv_clamp, **mapping)


def _check_filters(sd: Mapping[str, Any], left: tuple, filters: dict, what: str) -> None:
  for key in left:
    for pat, want in filters.items():
      if re.fullmatch(pat, key):
        got = np.asarray(sd[key])
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-6):
          raise UserError(f"{what}: {key} is not the [1, 3, 3, 1] resampling filter this "
                          "port implements")


def mean_w(spec: StyleGAN2, params: Mapping[str, Any], n: int = MEAN_LATENT_SAMPLES,
           seed: int = 0) -> np.ndarray:
  """Mean of ``mapping(z)`` over ``n`` z ~ N(0, 1) from ``numpy.random.default_rng(seed)``,
  (W,) float32 (rosinality's ``mean_latent(n)`` with numpy's RNG)."""
  import jax
  z = np.random.default_rng(seed).standard_normal((n, spec.latent_dim), dtype=np.float32)
  w = jax.jit(spec.mapping)(params, z)
  return np.asarray(w, np.float64).mean(axis=0).astype(np.float32)


__all__ = ["ADA_TRAIN_CONV_CLAMP", "MEAN_LATENT_SAMPLES", "matches_rosinality",
           "from_rosinality", "matches_ada", "from_ada", "matches_network", "from_network",
           "mean_w"]
