"""What every command line of mgan_jax shares: the parser base, argument types, the method
vocabulary, the model flags and the one error path.

Vocabulary (the same in every command and mode):

* methods (``--method``): ``multi-code`` (mGANprior: ``multi-z`` for z-input priors, ``multi-w+``
  for StyleGAN and StyleGAN2), ``multi-z``, ``multi-w``, ``multi-w+``, and single codes ``z``,
  ``w``, ``w+``, ``w+noise`` (w+ and the per-layer noise maps). The engine's names
  (``multi_z``, ``multi_w``, ``multi_wp``, ``wp``, ``wp_noise``) are accepted as aliases.
* ``--model NAME|DIR``: a named prior fetched on first use (``mgan_jax.assets.MODELS``) or a
  converted model directory (``python -m convert``); ``--checkpoint DIR`` is an alias for a
  directory.
* ``--init FILE``: initial latents, a latents file (``mgan_jax.latents_io``).
* ``--perceptual-size PX|own``: the VGG input side; ``own`` (or 0) keeps the image's resolution.

Errors: a ``UserError`` anywhere becomes one ``error: ...`` line and exit status 2
(``errors.cli_entry``); argparse's own errors are routed the same way (``Parser``).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Mapping

from mgan_jax.errors import UserError

#: CLI method names, in the order shown by --help.
METHODS = ("multi-code", "multi-z", "multi-w", "multi-w+", "z", "w", "w+", "w+noise")
#: CLI name -> engine method (``mgan_jax.latents.METHODS``); ``multi-code`` depends on the model.
_ENGINE = {"multi-z": "multi_z", "multi-w": "multi_w", "multi-w+": "multi_wp", "z": "z",
           "w": "w", "w+": "wp", "w+noise": "wp_noise"}
#: Accepted spellings -> CLI name (the engine's names, and w+ written as wp).
METHOD_ALIASES = {"multi_z": "multi-z", "multi_w": "multi-w", "multi_wp": "multi-w+",
                  "multi-wp": "multi-w+", "wp": "w+", "wp_noise": "w+noise",
                  "wp-noise": "w+noise", "multi_code": "multi-code"}


class Parser(argparse.ArgumentParser):
  """argparse that reports errors as one-line UserErrors (exit 2 through ``cli_entry``)."""

  def error(self, message: str):  # noqa: D401
    raise UserError(message)


def method_name(text: str) -> str:
  """argparse type: a method or an alias -> its CLI name."""
  name = METHOD_ALIASES.get(text, text)
  if name not in METHODS:
    raise argparse.ArgumentTypeError(
        f"unknown method {text!r} (choose from {', '.join(METHODS)}; the engine names "
        f"{', '.join(sorted(k for k in METHOD_ALIASES if '_' in k))} are accepted too)")
  return name


def engine_method(name: str, gen: Any) -> str:
  """CLI method name (or alias) -> engine method for generator ``gen``; UserError naming
  ``--method`` when the generator has no such latent space."""
  name = METHOD_ALIASES.get(name, name)
  if name == "multi-code":
    return "multi_z" if tuple(gen.latent_spaces) == ("z",) else "multi_wp"
  if name not in _ENGINE:
    raise UserError(f"--method: unknown method {name!r} (choose from {', '.join(METHODS)})")
  eng = _ENGINE[name]
  space = {"multi_z": "z", "multi_w": "w", "multi_wp": "wp", "wp_noise": "wp"}.get(eng, eng)
  if space not in gen.latent_spaces:
    raise UserError(f"--method {name}: {gen.family} generators have no {space!r} latent space "
                    f"(they take {', '.join(gen.latent_spaces)})")
  if eng == "wp_noise" and getattr(gen, "noise_shapes", None) is None:
    raise UserError(f"--method {name}: {gen.family} generators have no noise maps")
  return eng


def cli_method(engine: str) -> str:
  """Engine method -> its CLI name (for messages and metrics)."""
  return {v: k for k, v in _ENGINE.items()}.get(engine, engine)


def int_arg(minimum: int = 0):
  """argparse type: an integer >= ``minimum``."""
  def parse(text: str) -> int:
    try:
      v = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
    return v
  parse.__name__ = f"integer >= {minimum}"
  return parse


def float_arg(minimum: float | None = None, *, strict: bool = False, maximum: float | None = None):
  """argparse type: a finite float >= ``minimum`` (> when ``strict``), <= ``maximum``."""
  def parse(text: str) -> float:
    try:
      v = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
      raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
      raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
      raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {v:g}")
    return v
  parse.__name__ = "number"
  return parse


def size_arg(text: str) -> int:
  """argparse type for ``--perceptual-size``: pixels, or ``own`` / 0 = the image's own
  resolution (returned as 0)."""
  if text.lower() in ("own", "none", "native"):
    return 0
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a size in pixels or 'own', got {text!r}") \
        from None
  if v < 0:
    raise argparse.ArgumentTypeError(f"must be a size in pixels >= 1, or 'own' (0), got {v}")
  return v


def layers_arg(text: str) -> tuple[str, ...]:
  """argparse type: comma-separated VGG16 layer names."""
  names = tuple(s.strip() for s in text.split(",") if s.strip())
  if not names:
    raise argparse.ArgumentTypeError("expected one or more VGG16 layer names (e.g. relu3_3)")
  return names


def add_model_arguments(parser: argparse.ArgumentParser, *, default_help: str) -> None:
  """``--model NAME|DIR`` and its alias ``--checkpoint DIR`` (mutually exclusive)."""
  g = parser.add_mutually_exclusive_group()
  g.add_argument("--model", default=None, metavar="NAME|DIR",
                 help=f"a named prior fetched on first use, or a converted model directory "
                      f"(python -m convert); {default_help}")
  g.add_argument("--checkpoint", default=None, metavar="DIR",
                 help="a converted model directory (alias of --model DIR)")


def model_source(args: argparse.Namespace) -> tuple[str | None, str | None]:
  """(named model, model directory) from ``--model`` / ``--checkpoint`` (one is None; both
  None = the default model). A ``--model`` value that is an existing directory, or that looks
  like a path, is a model directory."""
  if getattr(args, "checkpoint", None) is not None:
    return None, args.checkpoint
  model = getattr(args, "model", None)
  if model is not None and (os.path.isdir(model) or os.sep in model or model.startswith(".")):
    return None, model
  return model, None


def load_model(args: argparse.Namespace) -> tuple[Any, Any, str, str | None]:
  """(spec, params, label, model name) of ``--model`` / ``--checkpoint`` (``assets.
  load_generator``); a problem is a UserError naming the flag."""
  from mgan_jax import assets
  name, directory = model_source(args)
  flag = "--checkpoint" if getattr(args, "checkpoint", None) is not None else "--model"
  try:
    return assets.load_generator(name, directory=directory)
  except UserError as e:
    raise UserError(f"{flag}: {e}") from None


# ----------------------------------------------------------------------------------------------
# The persistent compilation cache.
# ----------------------------------------------------------------------------------------------
ENV_COMPILE_CACHE = "MGAN_JAX_COMPILE_CACHE"


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--no-compile-cache", action="store_true",
                      help="do not read or write the persistent compilation cache (on by "
                           f"default, in the asset cache's xla/ directory; {ENV_COMPILE_CACHE}"
                           "=0 turns it off too, or names another directory)")


def compile_cache_dir(args: argparse.Namespace | None = None,
                      environ: Mapping[str, str] | None = None) -> str | None:
  """Where compiled programs are kept across runs, or None when the cache is off: off with
  ``--no-compile-cache`` or ``MGAN_JAX_COMPILE_CACHE=0`` (also ``off``, ``false``, ``no``);
  a directory given by that variable; else ``<asset cache>/xla`` (``$MGAN_JAX_CACHE`` or
  ``~/.cache/mgan_jax``)."""
  env = os.environ if environ is None else environ
  if args is not None and getattr(args, "no_compile_cache", False):
    return None
  value = env.get(ENV_COMPILE_CACHE, "").strip()
  if value.lower() in ("0", "off", "false", "no"):
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  from mgan_jax import assets
  return os.fspath(assets.cache_dir() / "xla")


#: Compile time (s) from which a program is kept in the persistent compilation cache.
COMPILE_CACHE_MIN_SECONDS = 0.5


def enable_compile_cache(args: argparse.Namespace | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache (``compile_cache_dir``) for this process, so a
  repeated command skips compiling the programs it compiled before (those that took at least
  ``COMPILE_CACHE_MIN_SECONDS`` to compile: ``set_compile_cache_threshold``). Call before
  anything compiles. Returns the directory, or None when off."""
  path = compile_cache_dir(args)
  if path is None:
    return None
  import jax
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"{ENV_COMPILE_CACHE}: cannot create the compilation cache {path} "
                    f"({e.strerror or e}); pass --no-compile-cache") from None
  jax.config.update("jax_compilation_cache_dir", path)
  set_compile_cache_threshold()
  return path


def set_compile_cache_threshold() -> None:
  """Keep programs that took at least ``COMPILE_CACHE_MIN_SECONDS`` to compile in the persistent
  cache, unless JAX's ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` is set."""
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    import jax
    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)


# ----------------------------------------------------------------------------------------------
# The inversion flags (both modes of python -m mgan_jax.invert).
# ----------------------------------------------------------------------------------------------
def _shown(defaults: Mapping[str, Any] | None, key: str, fmt: str = "{}") -> str:
  if defaults is None or key not in defaults:
    return ""
  v = defaults[key]
  if v is None and key == "perceptual_size":
    v = "own"
  return " (default " + fmt.format(v) + ")"


def add_inversion_arguments(parser: argparse.ArgumentParser, *,
                            defaults: Mapping[str, Any] | None, title: str) -> None:
  """The optimisation and loss flags. Every default is None here (so that an explicit value can
  be told from a default); ``defaults`` are the values ``resolve_settings`` will use, shown in
  --help."""
  from mgan_jax.defaults import RECIPES
  d = defaults
  o = parser.add_argument_group(title)
  shown_recipe = (f" (default {d['recipe']})" if d and d.get("recipe") else
                  " (default: none, the model's own settings)" if d else "")
  o.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                 help="how to optimise: official (the paper's: SGD lr 1.0, MSE + 1e-3 * VGG16 "
                      "relu3_3 at 256, 3000 iterations; colorize 1500, super-resolve 2000) or "
                      "fast (reaches the official loss in a fraction of the time, "
                      "docs/engine.md); sets the optimiser, learning rates, schedule, loss and "
                      f"iterations, which the flags below override{shown_recipe}")
  o.add_argument("--method", type=method_name, default=None, metavar="METHOD",
                 help=f"{', '.join(METHODS)}: multi-code is mGANprior (multi-z for z-input "
                      f"priors, multi-w+ for StyleGAN); the others are single codes"
                      f"{_shown(d, 'method')}")
  o.add_argument("--codes", type=int_arg(1), default=None, metavar="N",
                 help=f"number of latent codes N (multi-code){_shown(d, 'codes')}")
  o.add_argument("--layer", type=int_arg(1), default=None, metavar="L",
                 help=f"composition layer (multi-code): the features after the L-th block "
                      f"(official --composing_layer){_shown(d, 'layer')}")
  o.add_argument("--iterations", type=int_arg(0), default=None, metavar="T",
                 help=f"optimisation steps{_shown(d, 'iterations')}")
  o.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                 help=f"sgd (official GD) or adam{_shown(d, 'optimizer')}")
  o.add_argument("--lr", type=float_arg(0.0, strict=True), default=None, metavar="LR",
                 help=f"learning rate{_shown(d, 'lr', '{:g}')}; when --optimizer changes the "
                      f"optimiser and --lr is not given: sgd 1.0, adam 0.01")
  o.add_argument("--seed", type=int, default=0, metavar="S",
                 help="seed of the initial latents (and of synthesised noise) (default 0)")
  o.add_argument("--init", metavar="FILE",
                 help="initial latents: the latents.npz of an earlier run, or an .npz with one "
                      "array per latent (z (N, Z) and alpha (N, C) for multi-code)"
                      + (", or an earlier --out directory (DIR/<name>/latents.npz)"
                         if "dir_init" in (d or {}) else "")
                      + "; its method, codes and layer are used unless given")
  o.add_argument("--alpha-init", choices=("official", "ones"), default=None,
                 help=f"initial alpha: 1/N (official) or 1{_shown(d, 'alpha_init')}")
  o.add_argument("--mse-weight", type=float_arg(0.0), default=None, metavar="W",
                 help=f"pixel MSE weight (official --l2_lambda){_shown(d, 'mse_weight', '{:g}')}")
  o.add_argument("--l1-weight", type=float_arg(0.0), default=None, metavar="W",
                 help=f"pixel L1 weight (official --l1_lambda){_shown(d, 'l1_weight', '{:g}')}")
  o.add_argument("--perceptual-weight", type=float_arg(0.0), default=None, metavar="W",
                 help=f"weight of the VGG16 feature L1 term (official 1e-3; 0 disables)"
                      f"{_shown(d, 'perceptual_weight', '{:g}')}")
  o.add_argument("--perceptual-layers", "--perceptual-layer", dest="perceptual_layers",
                 type=layers_arg, default=None, metavar="NAMES",
                 help=f"VGG16 layers, comma-separated (relu1_2 ... relu5_3, conv4_3)"
                      f"{_shown(d, 'perceptual_layer')}")
  o.add_argument("--perceptual-size", type=size_arg, default=None, metavar="PX|own",
                 help=f"VGG input side (official 256, nearest resize), or own (also 0): the "
                      f"image's resolution{_shown(d, 'perceptual_size')}")
  o.add_argument("--chunk", type=int_arg(1), default=None, metavar="K",
                 help="iterations per compiled call / progress update (default: about 1/10 of "
                      "the iterations)")


def resolve_settings(args: argparse.Namespace, gen: Any, defaults: Mapping[str, Any], *,
                     init_meta: Mapping[str, Any] | None = None, model: str | None = None,
                     tasks: tuple[str, ...] = ("reconstruct",)) -> Any:
  """``pipeline.Settings`` from the flags, falling back to the ``--init`` file's method /
  codes / layer, then to ``defaults`` (``mgan_jax.defaults``) with ``--recipe`` applied for
  the generator's family, the named ``model`` and the ``tasks``; UserError for impossible
  combinations."""
  from mgan_jax import defaults as defaults_lib, engine
  from mgan_jax import latents as latents_lib
  from mgan_jax.generators.base import check_layer
  from mgan_jax.objective import LossConfig
  from mgan_jax.optimize import OptimizerConfig
  from mgan_jax.pipeline import Settings
  init_meta = dict(init_meta or {})
  defaults = dict(defaults)
  if getattr(args, "recipe", None) and defaults.get("recipe") != args.recipe:
    defaults = defaults_lib.apply_recipe(defaults, args.recipe, family=gen.family, model=model,
                                         tasks=tuple(tasks))
  if args.method is not None:
    method = engine_method(args.method, gen)
  elif init_meta.get("method") in latents_lib.METHODS:
    method = init_meta["method"]
  else:
    method = engine_method(defaults["method"], gen)
  multi = method in latents_lib.MULTI_METHODS
  if not multi:
    for flag, v in (("--codes", args.codes), ("--layer", args.layer)):
      if v is not None:
        raise UserError(f"{flag} applies to multi-code methods only "
                        f"(--method {cli_method(method)})")
  codes = args.codes if args.codes is not None else init_meta.get("codes", defaults["codes"])
  layer = args.layer if args.layer is not None else init_meta.get("layer", defaults["layer"])
  if multi:
    try:
      check_layer(gen, layer)
    except ValueError:
      valid = gen.split_layers()
      raise UserError(f"--layer {layer} is not a composition layer of this {gen.family} "
                      f"generator (valid: {valid[0]}..{valid[-1]})") from None
  else:
    codes, layer = 1, None
  iterations = args.iterations if args.iterations is not None else defaults["iterations"]
  opt_name = args.optimizer or defaults["optimizer"]
  if args.lr is not None:
    lr = args.lr
  elif args.optimizer is not None and args.optimizer != defaults["optimizer"]:
    lr = defaults_lib.OPTIMIZER_LR[args.optimizer]
  else:
    lr = defaults["lr"]
  schedule = defaults.get("schedule", "constant")
  warmup = int(defaults.get("warmup_steps", 0))
  sched = {} if schedule == "constant" else {
      "schedule": schedule, "decay_steps": max(1, int(iterations) - warmup),
      "end_factor": float(defaults.get("end_factor", 0.0))}
  optimizer = OptimizerConfig(
      name=opt_name, lr=float(lr), warmup_steps=warmup, **sched,
      lr_multipliers=tuple(sorted((defaults.get("lr_multipliers") or {}).items())))
  pick = lambda flag, key, fallback=None: (getattr(args, flag) if getattr(args, flag) is not None
                                           else defaults.get(key, fallback))
  layers = args.perceptual_layers or (defaults["perceptual_layer"],)
  size = defaults["perceptual_size"] if args.perceptual_size is None else \
      (args.perceptual_size or None)
  try:
    loss = LossConfig(mse_weight=float(pick("mse_weight", "mse_weight", 1.0)),
                      l1_weight=float(pick("l1_weight", "l1_weight", 0.0)),
                      perceptual_weight=float(pick("perceptual_weight", "perceptual_weight")),
                      perceptual_layers=tuple(layers), perceptual_size=size)
  except ValueError as e:
    raise UserError(f"--perceptual-layers / --perceptual-size: {e}") from None
  chunk = args.chunk or defaults.get("chunk") or engine.default_chunk(iterations)
  return Settings(method=method, codes=int(codes), layer=layer, loss=loss, optimizer=optimizer,
                  iterations=int(iterations), chunk=int(chunk), seed=int(args.seed),
                  alpha_init=args.alpha_init or defaults.get("alpha_init", "official"))


__all__ = ["METHODS", "METHOD_ALIASES", "Parser", "method_name", "engine_method", "cli_method",
           "int_arg", "float_arg", "size_arg", "layers_arg", "add_model_arguments",
           "model_source", "load_model", "add_inversion_arguments", "resolve_settings",
           "ENV_COMPILE_CACHE", "add_compile_cache_argument", "compile_cache_dir",
           "enable_compile_cache", "COMPILE_CACHE_MIN_SECONDS", "set_compile_cache_threshold"]
