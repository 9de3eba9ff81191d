"""StyleGAN (v1) converter: NVIDIA TF ``G_style`` pickles and genforce state dicts -> Flax.

Both sources map onto the parameter tree of ``mgan_jax.generators.stylegan`` (TF variable
names; dense [in, out]; conv kernels HWIO; NHWC const and noise buffers):

* TF ``Gs`` (``dnnlib.tflib.network.Network``, ``build_func_name == 'G_style'``): own variables
  ``dlatent_avg`` (and ``lod`` in NVIDIA's files), components ``mapping``
  (``Dense{i}/weight|bias``) and ``synthesis``. Dense and conv variables are copied as they
  are; ``4x4/Const/const`` (1, C, 4, 4) and ``noise{i}`` (1, 1, H, W) are transposed to NHWC;
  the final ``ToRGB_lod0`` becomes ``ToRGB``. A *fused* ``Conv0_up/weight`` (transposed
  convolution; ``fused_scale='auto'``: resolutions >= 128) is stored spatially flipped,
  ``w[::-1, ::-1]``: the fused op equals nearest x2 followed by a 3x3 SAME correlation with that
  flipped kernel, which is what the Flax model runs for every up-layer. ``lod`` and
  ``synthesis/lod`` (must be 0) and ``ToRGB_lod{n>0}`` are leftover.
* genforce ``StyleGANGeneratorNet`` state dict: ``*.fc.weight`` [out, in] are transposed,
  ``*.conv.weight`` OIHW -> HWIO, fused ``layer{i}.weight`` (3, 3, Cin, Cout) (copied from TF by
  the official converter) flipped as above; ``synthesis.lod`` (must be 0),
  ``truncation.truncation``, ``*.blur.kernel`` and the intermediate ``output{b}`` are leftover.

Resolution, z/w sizes, mapping depth and width, and the channel schedule are read from the
weights. The default truncation is the official one (psi 0.7 on the first 8 layers), whatever
the pickle's ``static_kwargs`` say. Every expected key must be present with the right shape
(``UserError`` naming the key); unknown keys are errors.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from convert.registry import Conversion, FamilyConverter, weight
from convert.tf_pickle import check_lod, tf_resolution
from mgan_jax.errors import UserError
from mgan_jax.generators.stylegan import StyleGAN, _layer_name

# ----- shared conversion machinery (also used by convert.stylegan2) ----------------------------

#: layout name -> (source array -> target array, target shape -> expected source shape)
LAYOUTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray],
                         Callable[[tuple], tuple]]] = {
    "copy": (lambda a: a, lambda t: t),
    "T": (lambda a: a.T, lambda t: t[::-1]),                                   # [out,in]->[in,out]
    "oihw": (lambda a: a.transpose(2, 3, 1, 0), lambda t: (t[3], t[2], t[0], t[1])),
    "nchw": (lambda a: a.transpose(0, 2, 3, 1), lambda t: (t[0], t[3], t[1], t[2])),
    "flip": (lambda a: a[::-1, ::-1], lambda t: t),
    # the PyTorch StyleGAN2 codebases (convert.stylegan2_pytorch)
    "oihw_flip": (lambda a: a.transpose(2, 3, 1, 0)[::-1, ::-1],
                  lambda t: (t[3], t[2], t[0], t[1])),
    "1oihw": (lambda a: a[0].transpose(2, 3, 1, 0), lambda t: (1, t[3], t[2], t[0], t[1])),
    "1oihw_flip": (lambda a: a[0].transpose(2, 3, 1, 0)[::-1, ::-1],
                   lambda t: (1, t[3], t[2], t[0], t[1])),
    "chw": (lambda a: a.transpose(1, 2, 0)[None], lambda t: (t[3], t[1], t[2])),  # -> 1HWC
    "hw": (lambda a: a[None, :, :, None], lambda t: (t[1], t[2])),               # -> 1HW1
    "flat": (lambda a: a.reshape(-1), lambda t: (1, t[0], 1, 1)),                 # (1,C,1,1)
    "item": (lambda a: a.reshape(()), lambda t: (1,)),                           # (1,) -> ()
    # a bias stored with its +1 (the +1 is added at run time): exact for values in [0.5, 2]
    "minus1": (lambda a: a - np.float32(1), lambda t: t),
}


def flat_shapes(spec: Any) -> dict[str, tuple[int, ...]]:
  """'/'-joined param path -> shape of ``spec.init_params`` (nothing computed)."""
  from mgan_jax.checkpoint import expected_params, flatten
  return {k: tuple(v.shape) for k, v in flatten(expected_params(spec)).items()}


def set_path(tree: dict, key: str, value: np.ndarray) -> None:
  *parents, leaf = key.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def fill_params(spec: Any, source: Mapping[str, Any], table: Mapping[str, tuple[str, str]],
                what: str, noun: str) -> tuple[dict, set]:
  """Build the params of ``spec`` from ``source`` following ``table`` (param path ->
  (source key, layout)). Raises UserError naming the source key on a missing key or a wrong
  shape. Returns (params, used source keys)."""
  params: dict = {}
  used = set()
  for path, shape in flat_shapes(spec).items():
    if path not in table:
      raise AssertionError(f"no source for {path}")   # a converter bug, not a user error
    key, layout = table[path]
    if key not in source:
      raise UserError(f"{what}: missing {noun} {key}")
    value = weight(key, source[key], what)
    fwd, src_shape = LAYOUTS[layout]
    want = tuple(src_shape(shape))
    if tuple(value.shape) != want:
      raise UserError(f"{what}: wrong shape for {key}: expected {want}, got "
                      f"{tuple(value.shape)}")
    set_path(params, path, np.array(fwd(value), dtype=np.float32, order="C"))
    used.add(key)
  return params, used


def leftovers(source: Mapping[str, Any], used: set, allowed: Iterable[str], what: str,
              noun: str, lod_keys: Iterable[str] = ()) -> tuple[str, ...]:
  """Source keys not used: each must fully match one of the ``allowed`` regexes (else
  UserError 'unexpected ...'); ``lod_keys`` must be 0."""
  pats = [re.compile(p) for p in allowed]
  lod_keys = set(lod_keys)
  out = []
  for key in source:
    if key in used:
      continue
    if key in lod_keys:
      check_lod(key, source[key], what)
    elif not any(p.fullmatch(key) for p in pats):
      raise UserError(f"{what}: unexpected {noun} {key}")
    out.append(key)
  return tuple(out)


def tf_variables(net: Any, what: str) -> dict[str, np.ndarray]:
  """Own variables of a TF network stub plus its components' under '<component>/'."""
  out: dict[str, np.ndarray] = {}

  def walk(n: Any, prefix: str) -> None:
    for name, value in list(getattr(n, "variables", None) or []):
      key = prefix + name
      if key in out:
        raise UserError(f"{what}: duplicate variable {key}")
      out[key] = value
    for cname, comp in dict(getattr(n, "components", None) or {}).items():
      walk(comp, f"{prefix}{cname}/")

  walk(net, "")
  return out


def tf_kwargs(net: Any, component: str | None = None) -> dict:
  """static_kwargs of ``net`` updated with those of ``component`` (if any)."""
  kw = dict(getattr(net, "static_kwargs", None) or {})
  if component is not None:
    comp = dict(getattr(net, "components", None) or {}).get(component)
    kw.update(dict(getattr(comp, "static_kwargs", None) or {}))
  return kw


def check_kwargs(kwargs: Mapping[str, Any], required: Mapping[str, Any], what: str) -> None:
  """Refuse architectures this port does not implement (only keys that are present)."""
  for k, want in required.items():
    if k not in kwargs:
      continue
    got = kwargs[k]
    ok = (list(got) == list(want)) if isinstance(want, (list, tuple)) else got == want
    if isinstance(got, np.ndarray):
      ok = got.tolist() == (list(want) if isinstance(want, (list, tuple)) else want)
    if not ok:
      raise UserError(f"{what}: static_kwargs {k}={got!r} is not supported (only {want!r})")


def count_indexed(keys: Iterable[str], pattern: str) -> int:
  """1 + the largest integer captured by ``pattern`` (0 if none matches)."""
  rx = re.compile(pattern)
  idx = [int(m.group(1)) for m in map(rx.fullmatch, keys) if m]
  return max(idx) + 1 if idx else 0


def shape_of(source: Mapping[str, Any], key: str, ndim: int, what: str, noun: str
             ) -> tuple[int, ...]:
  if key not in source:
    raise UserError(f"{what}: missing {noun} {key}")
  shape = tuple(np.shape(source[key]))
  if len(shape) != ndim:
    raise UserError(f"{what}: {key} has shape {shape}; expected {ndim} dimensions")
  return shape


# ----- StyleGAN: the parameter table ------------------------------------------------------------

def _up_is_fused(res: int, fused_scale: Any) -> bool:
  if fused_scale == "auto":
    return res >= 128
  return bool(fused_scale)


def _tf_table(spec: StyleGAN, fused: Callable[[int], bool]) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("dlatent_avg", "copy")}
  for i in range(spec.mapping_layers):
    for leaf in ("weight", "bias"):
      t[f"mapping/Dense{i}/{leaf}"] = (f"mapping/Dense{i}/{leaf}", "copy")
  for i in range(spec.num_layers):
    t[f"synthesis/noise{i}"] = (f"synthesis/noise{i}", "nchw")
    scope, name, kind = _layer_name(i)
    base = f"synthesis/{scope}/{name}"
    for leaf in ("bias", "Noise/weight", "StyleMod/weight", "StyleMod/bias"):
      t[f"{base}/{leaf}"] = (f"{base}/{leaf}", "copy")
    if kind == "const":
      t[f"{base}/const"] = (f"{base}/const", "nchw")
    else:
      t[f"{base}/weight"] = (f"{base}/weight",
                             "flip" if kind == "up" and fused(i) else "copy")
  for leaf in ("weight", "bias"):
    t[f"synthesis/ToRGB/{leaf}"] = (f"synthesis/ToRGB_lod0/{leaf}", "copy")
  return t


def _sd_table(spec: StyleGAN, fused: Callable[[int], bool]) -> dict[str, tuple[str, str]]:
  t: dict[str, tuple[str, str]] = {"dlatent_avg": ("truncation.w_avg", "copy")}
  for i in range(spec.mapping_layers):
    t[f"mapping/Dense{i}/weight"] = (f"mapping.dense{i}.fc.weight", "T")
    t[f"mapping/Dense{i}/bias"] = (f"mapping.dense{i}.wscale.bias", "copy")
  for i in range(spec.num_layers):
    src = f"synthesis.layer{i}"
    t[f"synthesis/noise{i}"] = (f"{src}.epilogue.apply_noise.noise", "nchw")
    scope, name, kind = _layer_name(i)
    base = f"synthesis/{scope}/{name}"
    t[f"{base}/bias"] = (f"{src}.epilogue.bias", "copy")
    t[f"{base}/Noise/weight"] = (f"{src}.epilogue.apply_noise.weight", "copy")
    t[f"{base}/StyleMod/weight"] = (f"{src}.epilogue.style_mod.dense.fc.weight", "T")
    t[f"{base}/StyleMod/bias"] = (f"{src}.epilogue.style_mod.dense.wscale.bias", "copy")
    if kind == "const":
      t[f"{base}/const"] = (f"{src}.const", "nchw")
    elif kind == "up" and fused(i):
      t[f"{base}/weight"] = (f"{src}.weight", "flip")
    else:
      t[f"{base}/weight"] = (f"{src}.conv.weight", "oihw")
  last = len(spec.channels) - 1
  t["synthesis/ToRGB/weight"] = (f"synthesis.output{last}.conv.weight", "oihw")
  t["synthesis/ToRGB/bias"] = (f"synthesis.output{last}.bias", "copy")
  return t


def tf_style_dims(net: Any, required: Mapping[str, Any], what: str
                  ) -> tuple[dict[str, np.ndarray], dict, dict]:
  """Shared reading of a StyleGAN / StyleGAN2 TF ``Gs``: checks the components and their
  static_kwargs against ``required``, and reads every architecture number from the variables.

  Returns (variables, synthesis static_kwargs, spec keyword arguments).
  """
  comps = dict(getattr(net, "components", None) or {})
  for c in ("mapping", "synthesis"):
    if c not in comps:
      raise UserError(f"{what}: missing component {c!r}")
  kw_s = tf_kwargs(net, "synthesis")
  check_kwargs(kw_s, required, what)
  check_kwargs(tf_kwargs(net, "mapping"), required, what)
  var = tf_variables(net, what)
  noun = "variable"
  m_layers = count_indexed(var, r"mapping/Dense(\d+)/weight")
  if m_layers < 1:
    raise UserError(f"{what}: missing variable mapping/Dense0/weight")
  z_dim, fmaps = shape_of(var, "mapping/Dense0/weight", 2, what, noun)
  w_dim = shape_of(var, f"mapping/Dense{m_layers - 1}/weight", 2, what, noun)[1]
  resolution = tf_resolution(var, "synthesis/", kw_s.get("resolution"), what)
  channels = [shape_of(var, "synthesis/4x4/Conv/weight", 4, what, noun)[-1]]
  r = 8
  while r <= resolution:
    channels.append(shape_of(var, f"synthesis/{r}x{r}/Conv1/weight", 4, what, noun)[-1])
    r *= 2
  dims = dict(resolution=resolution, latent_dim=z_dim, w_dim=w_dim, mapping_layers=m_layers,
              mapping_fmaps=fmaps if m_layers > 1 else w_dim, channels=tuple(channels))
  return var, kw_s, dims


def sd_mapping_dims(sd: Mapping[str, Any], what: str, key: str = "mapping.dense{}.fc.weight",
                    first: int = 0) -> dict:
  """Mapping-network numbers of a StyleGAN / StyleGAN2 state dict whose dense weights [out, in]
  are ``key.format(i)`` for i = first, first + 1, ... (genforce: ``mapping.dense{i}.fc.weight``
  from 0): the spec keyword arguments latent_dim, w_dim, mapping_layers, mapping_fmaps."""
  noun = "key"
  pattern = re.escape(key).replace(re.escape("{}"), r"(\d+)")
  m_layers = count_indexed(sd, pattern) - first
  if m_layers < 1:
    raise UserError(f"{what}: missing key {key.format(first)}")
  fmaps, z_dim = shape_of(sd, key.format(first), 2, what, noun)
  w_dim = shape_of(sd, key.format(first + m_layers - 1), 2, what, noun)[0]
  return dict(latent_dim=z_dim, w_dim=w_dim, mapping_layers=m_layers,
              mapping_fmaps=fmaps if m_layers > 1 else w_dim)


def make_spec(cls: type, what: str, **kw) -> Any:
  """``cls(**kw)`` (a StyleGAN / StyleGAN2 spec), its ValueError as a UserError naming ``what``."""
  try:
    return cls(**kw)
  except ValueError as e:
    raise UserError(f"{what}: {e}") from None


# ----- TF pickle ---------------------------------------------------------------------------------

_TF_REQUIRED = {
    "num_channels": 3, "label_size": 0, "use_styles": True, "const_input_layer": True,
    "use_noise": True, "nonlinearity": "lrelu", "use_wscale": True, "use_pixel_norm": False,
    "use_instance_norm": True, "blur_filter": [1, 2, 1], "mapping_lrmul": 0.01,
    "mapping_nonlinearity": "lrelu", "normalize_latents": True,
}


def matches_tf(net: Any) -> bool:
  return getattr(net, "build_func_name", None) == "G_style"


def from_tf(net: Any) -> Conversion:
  """TF ``Gs`` network stub (``G_style``) -> Conversion."""
  what = f"TF network {getattr(net, 'name', 'Gs')!r} (G_style)"
  var, kw_s, dims = tf_style_dims(net, _TF_REQUIRED, what)
  noun = "variable"
  fused_scale = kw_s.get("fused_scale", "auto")
  if fused_scale not in ("auto", True, False):
    raise UserError(f"{what}: static_kwargs fused_scale={fused_scale!r} is not supported")
  spec = make_spec(StyleGAN, what, **dims)
  fused = lambda i: _up_is_fused(4 * 2 ** (i // 2), fused_scale)  # noqa: E731
  params, used = fill_params(spec, var, _tf_table(spec, fused), what, noun)
  left = leftovers(var, used, [r"synthesis/ToRGB_lod[1-9]\d*/(weight|bias)"], what, noun,
                   lod_keys=["lod", "synthesis/lod"])
  return Conversion(spec=spec, params=params, leftover=left)


# ----- genforce state dict -----------------------------------------------------------------------

def matches_state_dict(sd: Mapping[str, Any]) -> bool:
  return "synthesis.layer0.const" in sd and any(k.startswith("synthesis.layer0.epilogue.")
                                                for k in sd)


def from_state_dict(sd: Mapping[str, Any]) -> Conversion:
  """genforce ``StyleGANGeneratorNet`` state dict (flat, numpy) -> Conversion."""
  what = "StyleGAN state dict"
  noun = "key"
  mapping = sd_mapping_dims(sd, what)
  num = count_indexed(sd, r"synthesis\.layer(\d+)\..*")
  if num < 4 or num % 2:
    raise UserError(f"{what}: found {num} synthesis layers (synthesis.layer0..layer{num - 1}); "
                    "a StyleGAN has an even number >= 4"
                    + (f"; missing key synthesis.layer{num}.conv.weight" if num % 2 else ""))
  resolution = 2 ** (num // 2 + 1)
  channels = [shape_of(sd, f"synthesis.layer{2 * b + 1}.conv.weight", 4, what, noun)[0]
              for b in range(num // 2)]
  spec = make_spec(StyleGAN, what, resolution=resolution, channels=tuple(channels), **mapping)
  fused = lambda i: f"synthesis.layer{i}.weight" in sd  # noqa: E731
  params, used = fill_params(spec, sd, _sd_table(spec, fused), what, noun)
  last = num // 2 - 1
  allowed = [r"truncation\.truncation", r"synthesis\.layer\d+\.blur\.kernel"]
  allowed += [rf"synthesis\.output{b}\.(conv\.weight|bias)" for b in range(last)]
  left = leftovers(sd, used, allowed, what, noun, lod_keys=["synthesis.lod"])
  return Conversion(spec=spec, params=params, leftover=left)


CONVERTER = FamilyConverter(family="stylegan", matches_state_dict=matches_state_dict,
                            from_state_dict=from_state_dict, matches_tf=matches_tf,
                            from_tf=from_tf)

__all__ = ["CONVERTER", "from_state_dict", "from_tf", "matches_state_dict", "matches_tf"]
