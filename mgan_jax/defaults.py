"""Default settings per generator family, named model and task: one data table.

``python -m mgan_jax.invert`` (both modes) and the library read their defaults here; the command
line overrides them, and the values used are printed at the start of a run and saved in
``metrics.json``. Resolution order (``defaults_for``): the family's entry, the family's per-task
overrides, the named model's entry, the model's per-task overrides. For a combined task
(``super-resolve,colorize``) the overrides of each task apply in order, except ``iterations``:
the largest of the tasks' values.

Keys: ``method`` (CLI name, ``mgan_jax.methods``), ``codes``, ``layer``, ``optimizer``, ``lr``,
``iterations``, ``perceptual_weight``, ``perceptual_size`` (None = the image's own),
``perceptual_layer``, ``factor`` (super-resolve), ``alpha_init``, ``paste_known`` (inpaint),
``back_project`` (super-resolve), ``recipe`` (the recipe applied when ``--recipe`` is not given,
or None).

Recipes (``RECIPES``, ``--recipe NAME``) are named ways to optimise -- optimiser, schedule,
per-latent learning rates, loss, iteration counts -- applied on top of a model's defaults, which
keep saying *what* is optimised (method, codes, layer, initialisation). ``official`` is the
paper's; ``fast`` reaches the official recipe's loss in a fraction of its time
(docs/engine.md, "Time to a good result"). A recipe sets every key of ``RECIPE_KEYS``, so the
result does not depend on the recipe the table applied before, and the output options
(``RECIPE_OUTPUT_KEYS``) only where it names them (``official``: the raw generator output).
"""

from __future__ import annotations

from typing import Any, Mapping

from mgan_jax.errors import UserError

#: The model used when none is named (fetched and converted on first use, ``mgan_jax.assets``).
DEFAULT_MODEL = "dcgan-faces64"

#: The official mGANprior script defaults (``multi_code_inversion.py``), used by the
#: reproducibility mode of ``python -m mgan_jax.invert`` (``--target``).
OFFICIAL: dict[str, Any] = {
    "method": "multi-z", "codes": 20, "layer": 6, "optimizer": "sgd", "lr": 1.0,
    "iterations": 3000, "mse_weight": 1.0, "l1_weight": 0.0, "perceptual_weight": 1e-3,
    "perceptual_size": 256, "perceptual_layer": "relu3_3", "chunk": 100,
}

#: The learning rate used when ``--optimizer`` changes the optimiser from the default one and
#: ``--lr`` is not given: each optimiser's usual scale (official SGD 1.0; Adam 0.01, as the
#: usual w+ projectors), so switching optimisers never keeps a learning rate meant for the other.
OPTIMIZER_LR: dict[str, float] = {"sgd": 1.0, "adam": 0.01}

#: Per-family defaults, then per-task overrides for the family ("tasks"). Keys: method (CLI
#: name), codes, layer, optimizer, lr, iterations, perceptual_weight, perceptual_size (None =
#: the image's own), perceptual_layer, factor (super-resolve), alpha_init.
#: PGGAN: the official mGANprior script defaults (official_mganprior.md §2.7; GD = SGD lr 1,
#: VGG relu3_3 x 1e-3 on a 256 nearest resize; inpainting vgg_lambda 0.1).
#: StyleGAN / StyleGAN2: no official multi-code code exists; multi-code over w+ codes composed
#: after 8x8 (layer 4), Adam 0.01 as the usual w+ projectors -- starting points, not tuned.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "pggan": {
        "method": "multi-code", "codes": 30, "layer": 6, "optimizer": "sgd", "lr": 1.0,
        "iterations": 3000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 16, "alpha_init": "official",
        "tasks": {
            "colorize": {"codes": 20, "layer": 4, "iterations": 1500},
            "inpaint": {"codes": 30, "layer": 4, "iterations": 3000, "perceptual_weight": 1e-4},
            "super-resolve": {"codes": 30, "layer": 6, "iterations": 2000},
        },
    },
    "stylegan": {
        "method": "multi-code", "codes": 10, "layer": 4, "optimizer": "adam", "lr": 0.01,
        "iterations": 1000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 8, "alpha_init": "official", "tasks": {},
    },
    "stylegan2": {
        "method": "multi-code", "codes": 10, "layer": 4, "optimizer": "adam", "lr": 0.01,
        "iterations": 1000, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "perceptual_layer": "relu3_3", "factor": 8, "alpha_init": "official", "tasks": {},
    },
    "dcgan": {
        "method": "multi-code", "codes": 20, "layer": 1, "optimizer": "adam", "lr": 0.1,
        "iterations": 300, "perceptual_weight": 0.0, "perceptual_size": None,
        "perceptual_layer": "relu3_3", "factor": 4, "alpha_init": "official", "tasks": {},
    },
}

#: Per named model (``--model NAME``, or a ``--checkpoint`` whose model.json records that
#: asset): overrides of the family table.
#:
#: dcgan-faces64 (64x64 DCGAN; measured on examples/: 3 prior samples + the astronaut photo,
#: 2-core CPU; numbers in docs/cli_api.md): multi-code at layer 1 (the 4x4x512 map: the head is
#: one dense product, so N codes cost about what one code costs; layer 2 was 1-4 dB worse and
#: 3x slower), N = 20 (10: -0.5..-1 dB; 30: within +-0.6 dB), alpha 1/N (official; alpha = 1
#: was 1-4 dB worse), Adam lr 0.1 (0.02 / 0.05 / 0.2 worse or equal at 100-300 steps). Per-task
#: iterations where PSNR against the clean image stops rising: reconstruct 300 (still +1-2 dB
#: from 200 to 300), inpaint 200, denoise 200, colorize 100, super-resolve 100 (flat or
#: slightly falling after 100: the prior starts fitting the observation's ambiguity). No
#: perceptual term by default: relu3_3 at the image's own 64x64 (not the official nearest
#: upsampling to 256, 16x the VGG work) doubled the step time for mixed changes (-0.5..+2 dB
#: reconstruct, +-0.5 dB inpaint); ``--perceptual-weight 1e-3`` enables it.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # From docs/RESULTS.md (sweeps on 8 held-out samples, one setting at a time): 400
    # iterations +1.2 dB over 300 for reconstruction; perceptual weight 0.01 +0.5 dB
    # (reconstruction) and +0.35 dB (super-resolution x4), better LPIPS too (inpainting: best PSNR
    # without it, kept off; colorization and denoising: not swept, kept off); inpainting 300
    # iterations within 0.2 dB of the best; pasting the known pixels and back-projecting the
    # super-resolved image better on PSNR and LPIPS for every mask and factor.
    "dcgan-faces64": {
        "codes": 20, "layer": 1, "optimizer": "adam", "lr": 0.1, "iterations": 400,
        "perceptual_weight": 0.01, "perceptual_size": None, "factor": 4,
        "tasks": {"inpaint": {"iterations": 300, "perceptual_weight": 0.0, "paste_known": True},
                  "denoise": {"iterations": 200, "perceptual_weight": 0.0},
                  "colorize": {"iterations": 100, "perceptual_weight": 0.0},
                  "super-resolve": {"iterations": 100, "back_project": True}},
    },
}

#: The optimisation keys every recipe sets (absent keys take these neutral values): optimiser
#: and learning rate, ``schedule`` (``optimize.SCHEDULES``; it decays over the run's iterations)
#: with its ``end_factor`` and ``warmup_steps``, ``lr_multipliers`` (per latent key, e.g.
#: ``{'alpha': 0.1}``), the loss weights, the VGG term's size and layer, and ``iterations``.
RECIPE_KEYS: dict[str, Any] = {
    "optimizer": "sgd", "lr": 1.0, "schedule": "constant", "end_factor": 0.0,
    "warmup_steps": 0, "lr_multipliers": {}, "mse_weight": 1.0, "l1_weight": 0.0,
    "perceptual_weight": 1e-3, "perceptual_size": 256, "perceptual_layer": "relu3_3",
    "iterations": 3000,
}

#: Output options a recipe may set (only where it names them; otherwise the model's stay).
RECIPE_OUTPUT_KEYS = ("paste_known", "back_project")


#: Named recipes: values for ``RECIPE_KEYS`` (missing = the neutral value), then overrides per
#: generator family ("family"), per named model ("model") and per task ("tasks").
#:
#: official: the official mGANprior scripts (official_mganprior.md §2.7): SGD lr 1.0, MSE +
#: 1e-3 * L1(VGG16 relu3_3) on a 256 nearest resize (inpainting: vgg_lambda 0.1 -> 1e-4), 3000
#: iterations (colorization 1500, super-resolution 2000; denoising has no official script: the
#: inversion's 3000).
#:
#: fast: reaches the official recipe's final loss (after 2000 iterations) in a small fraction
#: of its time (docs/engine.md, "Time to a good result"; scripts/bench_quality.py).
#: PGGAN / StyleGAN (the official loss, VGG16 at 256, kept): Adam lr 0.1, constant, 400
#: iterations (a fifth of the official 2000). On the PGGAN-256 benchmark (2-core CPU) it passes
#: the official recipe's 2000-iteration loss after 300 iterations, 0.16x the official wall time,
#: and ends 14 % lower; lr 0.05 and alpha's rate halved were 5-9 % better there and worse on the
#: default prior, a cosine decay worse on both. Not measured on the StyleGAN families.
#: DCGAN: Adam lr 0.1, constant, no perceptual term, 300 iterations (inpaint and denoise 200,
#: colorize and super-resolve 100): with a 64x64 image the official VGG term on a 256
#: upsampling costs ~30x the rest of a step, and Adam on the pixel loss alone passes the
#: official recipe's 2000-iteration loss (VGG term included) within its first 15 iterations; a
#: cosine decay (-3 dB at 300 iterations), alpha's learning rate halved (-1 dB) and the VGG
#: term at 64x64 (5 % lower loss, twice the time) were slower to a good result (2-core CPU,
#: two held-out samples). The default prior's defaults (no recipe) spend more time for quality:
#: the VGG term at weight 0.01 and 400 iterations (docs/RESULTS.md).
RECIPES: dict[str, dict[str, Any]] = {
    "official": {
        "optimizer": "sgd", "lr": 1.0, "mse_weight": 1.0, "l1_weight": 0.0,
        "perceptual_weight": 1e-3, "perceptual_size": 256, "perceptual_layer": "relu3_3",
        "iterations": 3000, "paste_known": False, "back_project": False,
        "tasks": {"colorize": {"iterations": 1500}, "super-resolve": {"iterations": 2000},
                  "inpaint": {"perceptual_weight": 1e-4}},
    },
    "fast": {
        "optimizer": "adam", "lr": 0.1, "perceptual_weight": 1e-3, "perceptual_size": 256,
        "iterations": 400,
        "tasks": {"inpaint": {"perceptual_weight": 1e-4}},
        "family": {"dcgan": {
            "perceptual_weight": 0.0, "perceptual_size": None, "iterations": 300,
            "tasks": {"inpaint": {"iterations": 200}, "denoise": {"iterations": 200},
                      "colorize": {"iterations": 100}, "super-resolve": {"iterations": 100}}}},
    },
}

DEFAULTS = {"family": FAMILY_DEFAULTS, "model": MODEL_DEFAULTS, "recipe": RECIPES}


def _layered(sources: list[dict], tasks: tuple[str, ...]) -> dict[str, Any]:
  """``sources`` in order, each followed by its per-task overrides; a combined task's
  iterations: the largest of the tasks' own values."""
  out: dict[str, Any] = {}
  for src in sources:
    out.update({k: v for k, v in src.items() if k not in ("tasks", "family", "model")})
    for name in tasks:
      out.update(src.get("tasks", {}).get(name, {}))
  if len(tasks) > 1:
    own = [_layered(sources, (name,)).get("iterations") for name in tasks]
    if all(v is not None for v in own):
      out["iterations"] = max(own)
  return out


def apply_recipe(defaults: dict[str, Any], recipe: str | Mapping[str, Any], *, family: str,
                 model: str | None, tasks: tuple[str, ...]) -> dict[str, Any]:
  """``defaults`` with the optimisation keys (``RECIPE_KEYS``) of ``recipe`` -- a name of
  ``RECIPES`` or a recipe given as data, laid out as the table's entries -- for this family,
  model and tasks, and the output options it names; UserError naming ``--recipe`` for an
  unknown name or key."""
  if isinstance(recipe, str):
    rec = RECIPES.get(recipe)
    if rec is None:
      raise UserError(f"--recipe: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
  else:
    rec = dict(recipe)
  unknown = sorted(set(rec) - set(RECIPE_KEYS) - set(RECIPE_OUTPUT_KEYS)
                   - {"tasks", "family", "model", "name"})
  if unknown:
    raise UserError(f"--recipe: unknown recipe keys {', '.join(unknown)} "
                    f"(known: {', '.join([*RECIPE_KEYS, *RECIPE_OUTPUT_KEYS])})")
  sources = [RECIPE_KEYS, rec, rec.get("family", {}).get(family, {}),
             rec.get("model", {}).get(model or "", {})]
  out = dict(defaults)
  out.update({k: v for k, v in _layered(sources, tasks).items() if k != "name"})
  out["recipe"] = recipe if isinstance(recipe, str) else rec.get("name", "custom")
  return out


def defaults_for(family: str, model: str | None, tasks: tuple[str, ...], *,
                 recipe: str | None = None) -> dict[str, Any]:
  """Resolved defaults for a generator ``family``, a named ``model`` (or None) and the task
  names (``tasks.Task.tasks``), with ``recipe`` (default: the table's ``recipe`` entry, if
  any) applied (``apply_recipe``)."""
  fam = FAMILY_DEFAULTS.get(family)
  if fam is None:
    raise UserError(f"no defaults for generator family {family!r}")
  out = {**RECIPE_KEYS, "recipe": None,
         **_layered([fam, MODEL_DEFAULTS.get(model or "", {})], tasks)}
  name = recipe or out.get("recipe")
  return apply_recipe(out, name, family=family, model=model, tasks=tasks) if name else out


def model_has_defaults(name: str | None) -> bool:
  """True when ``name`` has its own entry in ``MODEL_DEFAULTS``."""
  return bool(name) and name in MODEL_DEFAULTS


__all__ = ["DEFAULT_MODEL", "OFFICIAL", "OPTIMIZER_LR", "FAMILY_DEFAULTS", "MODEL_DEFAULTS",
           "RECIPE_KEYS", "RECIPE_OUTPUT_KEYS", "RECIPES", "DEFAULTS", "defaults_for",
           "apply_recipe", "model_has_defaults"]
