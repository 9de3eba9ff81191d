"""StyleGAN2 converter: NVIDIA TF ``G_main`` pickles, genforce, rosinality and
stylegan2-ada-pytorch files -> Flax.

Both sources map onto the parameter tree of ``mgan_jax.generators.stylegan2`` (TF variable
names and layouts):

* TF ``Gs`` (``build_func_name == 'G_main'``, synthesis ``G_synthesis_stylegan2``, architecture
  'skip'): ``dlatent_avg``, ``mapping/Dense{i}/*`` and every synthesis variable are copied as
  they are (conv kernels HWIO, ``mod_weight`` [W, Cin], ``mod_bias`` without the +1, which the
  model adds at run time as TF does); ``4x4/Const/const`` (1, C, 4, 4) and ``noise{i}``
  (1, 1, H, W) are transposed to NHWC. ``Conv0_up`` kernels are *not* flipped: the official
  up-convolution (transposed conv of the flipped kernel) is run as a correlation of the
  zero-inserted input with the stored kernel. ``G_main``'s own ``lod`` (must be 0) is leftover.
* genforce ``StyleGAN2GeneratorNet`` state dict: ``*.fc.weight`` [out, in] are transposed (to
  TF's [in, out]); conv and ToRGB weights are already (k, k, Cin, Cout); ``style.bias`` is the TF
  ``mod_bias`` (genforce adds ``init_bias`` 1 at run time too); ``early_layer.const`` and
  ``layer{i}.noise`` are transposed to NHWC. ``truncation.truncation``, ``layer{i}.filter.kernel``
  and ``upsample.kernel`` are leftover.

The two PyTorch codebases (rosinality/stylegan2-pytorch state dicts, NVlabs/stylegan2-ada-pytorch
network pickles and state dicts) are converted by ``convert.stylegan2_pytorch``; ``CONVERTER``
recognises all five layouts.

Sizes and the channel schedule are read from the weights; the default truncation is the
official one (psi 0.5 on all layers). Missing keys, wrong shapes and unknown keys (e.g. the
'resnet' architecture's ``skip_layer``) are ``UserError``s naming the key.
"""

from __future__ import annotations

from typing import Any, Mapping

from convert import stylegan2_pytorch as pt
from convert.registry import Conversion, FamilyConverter
from convert.stylegan import (count_indexed, fill_params, leftovers, make_spec,
                              sd_mapping_dims, shape_of, tf_style_dims)
from mgan_jax.errors import UserError
from mgan_jax.generators.stylegan2 import StyleGAN2, _conv_name

_CONV_LEAVES = ("weight", "bias", "noise_strength", "mod_weight", "mod_bias")
_RGB_LEAVES = ("weight", "bias", "mod_weight", "mod_bias")


def _tf_table(spec: StyleGAN2) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("dlatent_avg", "copy")}
  for i in range(spec.mapping_layers):
    for leaf in ("weight", "bias"):
      t[f"mapping/Dense{i}/{leaf}"] = (f"mapping/Dense{i}/{leaf}", "copy")
  t["synthesis/4x4/Const/const"] = ("synthesis/4x4/Const/const", "nchw")
  for i in range(spec.num_conv_layers):
    t[f"synthesis/noise{i}"] = (f"synthesis/noise{i}", "nchw")
    scope, name, _ = _conv_name(i)
    for leaf in _CONV_LEAVES:
      t[f"synthesis/{scope}/{name}/{leaf}"] = (f"synthesis/{scope}/{name}/{leaf}", "copy")
  for b in range(len(spec.channels)):
    res = 4 * 2 ** b
    for leaf in _RGB_LEAVES:
      key = f"synthesis/{res}x{res}/ToRGB/{leaf}"
      t[key] = (key, "copy")
  return t


def _sd_table(spec: StyleGAN2) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("truncation.w_avg", "copy")}
  for i in range(spec.mapping_layers):
    t[f"mapping/Dense{i}/weight"] = (f"mapping.dense{i}.fc.weight", "T")
    t[f"mapping/Dense{i}/bias"] = (f"mapping.dense{i}.bias", "copy")
  t["synthesis/4x4/Const/const"] = ("synthesis.early_layer.const", "nchw")
  for i in range(spec.num_conv_layers):
    src = f"synthesis.layer{i}"
    t[f"synthesis/noise{i}"] = (f"{src}.noise", "nchw")
    scope, name, _ = _conv_name(i)
    base = f"synthesis/{scope}/{name}"
    t[f"{base}/weight"] = (f"{src}.weight", "copy")
    t[f"{base}/bias"] = (f"{src}.bias", "copy")
    t[f"{base}/noise_strength"] = (f"{src}.noise_strength", "copy")
    t[f"{base}/mod_weight"] = (f"{src}.style.fc.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.style.bias", "copy")
  for b in range(len(spec.channels)):
    res = 4 * 2 ** b
    src = f"synthesis.output{b}"
    base = f"synthesis/{res}x{res}/ToRGB"
    t[f"{base}/weight"] = (f"{src}.weight", "copy")
    t[f"{base}/bias"] = (f"{src}.bias", "copy")
    t[f"{base}/mod_weight"] = (f"{src}.style.fc.weight", "T")
    t[f"{base}/mod_bias"] = (f"{src}.style.bias", "copy")
  return t


# ----- TF pickle ---------------------------------------------------------------------------------

_TF_REQUIRED = {
    "num_channels": 3, "label_size": 0, "architecture": "skip", "nonlinearity": "lrelu",
    "resample_kernel": [1, 3, 3, 1], "mapping_lrmul": 0.01, "mapping_nonlinearity": "lrelu",
    "normalize_latents": True,
}


def matches_tf(net: Any) -> bool:
  if getattr(net, "build_func_name", None) != "G_main":
    return False
  synth = dict(getattr(net, "components", None) or {}).get("synthesis")
  return getattr(synth, "build_func_name", "G_synthesis_stylegan2") == "G_synthesis_stylegan2"


def from_tf(net: Any) -> Conversion:
  """TF ``Gs`` network stub (``G_main``) -> Conversion."""
  what = f"TF network {getattr(net, 'name', 'Gs')!r} (G_main)"
  var, _, dims = tf_style_dims(net, _TF_REQUIRED, what)
  noun = "variable"
  spec = make_spec(StyleGAN2, what, **dims)
  params, used = fill_params(spec, var, _tf_table(spec), what, noun)
  left = leftovers(var, used, [], what, noun, lod_keys=["lod", "synthesis/lod"])
  return Conversion(spec=spec, params=params, leftover=left)


# ----- genforce state dict -----------------------------------------------------------------------

def matches_genforce(sd: Mapping[str, Any]) -> bool:
  return "synthesis.early_layer.const" in sd


def matches_state_dict(sd: Mapping[str, Any]) -> bool:
  return matches_genforce(sd) or pt.matches_rosinality(sd) or pt.matches_ada(sd)


def from_state_dict(sd: Mapping[str, Any]) -> Conversion:
  """A StyleGAN2 state dict (flat, numpy) in the genforce, rosinality or stylegan2-ada-pytorch
  layout -> Conversion."""
  if not matches_genforce(sd):
    if pt.matches_rosinality(sd):
      return pt.from_rosinality(sd)
    if pt.matches_ada(sd):
      return pt.from_ada(sd)
  return from_genforce(sd)      # (--family stylegan2 on anything else: names a missing key)


def from_genforce(sd: Mapping[str, Any]) -> Conversion:
  """genforce ``StyleGAN2GeneratorNet`` state dict (flat, numpy) -> Conversion."""
  what = "StyleGAN2 state dict"
  noun = "key"
  mapping = sd_mapping_dims(sd, what)
  nconv = count_indexed(sd, r"synthesis\.layer(\d+)\..*")
  if nconv < 3 or nconv % 2 == 0:
    raise UserError(f"{what}: found {nconv} conv layers (synthesis.layer0..layer{nconv - 1}); "
                    "a StyleGAN2 has an odd number >= 3"
                    + (f"; missing key synthesis.layer{nconv}.weight" if nconv % 2 == 0 else ""))
  num = nconv + 1
  resolution = 2 ** (num // 2 + 1)
  channels = [shape_of(sd, f"synthesis.layer{2 * b}.weight", 4, what, noun)[-1]
              for b in range(num // 2)]
  spec = make_spec(StyleGAN2, what, resolution=resolution, channels=tuple(channels), **mapping)
  params, used = fill_params(spec, sd, _sd_table(spec), what, noun)
  allowed = [r"truncation\.truncation", r"synthesis\.layer\d+\.filter\.kernel",
             r"synthesis\.upsample\.kernel"]
  left = leftovers(sd, used, allowed, what, noun, lod_keys=["synthesis.lod"])
  return Conversion(spec=spec, params=params, leftover=left)


CONVERTER = FamilyConverter(family="stylegan2", matches_state_dict=matches_state_dict,
                            from_state_dict=from_state_dict, matches_tf=matches_tf,
                            from_tf=from_tf, matches_network=pt.matches_network,
                            from_network=pt.from_network)

__all__ = ["CONVERTER", "from_state_dict", "from_genforce", "from_tf", "matches_state_dict",
           "matches_genforce", "matches_tf"]
