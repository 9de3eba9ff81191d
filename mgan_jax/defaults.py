"""Default settings per generator family, named model and task: one data table.

``python -m mgan_jax.invert`` (both modes) and the library read their defaults here; the command
line overrides them, and the values used are printed at the start of a run and saved in
``metrics.json``. Resolution order (``defaults_for``): the family's entry, the family's per-task
overrides, the named model's entry, the model's per-task overrides. For a combined task
(``super-resolve,colorize``) the overrides of each task apply in order, except ``iterations``:
the largest of the tasks' values.

Keys: ``method`` (CLI name, ``mgan_jax.methods``), ``codes``, ``layer``, ``optimizer``, ``lr``,
``iterations``, ``perceptual_weight``, ``perceptual_size`` (None = the image's own),
``perceptual_layer``, ``factor`` (super-resolve), ``alpha_init``.
"""

from __future__ import annotations

from typing import Any

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

DEFAULTS = {"family": FAMILY_DEFAULTS, "model": MODEL_DEFAULTS}


def defaults_for(family: str, model: str | None, tasks: tuple[str, ...]) -> dict[str, Any]:
  """Resolved defaults for a generator ``family``, a named ``model`` (or None) and the task
  names (``tasks.Task.tasks``)."""
  fam = FAMILY_DEFAULTS.get(family)
  if fam is None:
    raise UserError(f"no defaults for generator family {family!r}")
  out = {k: v for k, v in fam.items() if k != "tasks"}
  mod = MODEL_DEFAULTS.get(model or "", {})
  for name in tasks:
    out.update(fam.get("tasks", {}).get(name, {}))
  out.update({k: v for k, v in mod.items() if k != "tasks"})
  for name in tasks:
    out.update(mod.get("tasks", {}).get(name, {}))
  per_task = [src.get("tasks", {}).get(name, {}).get("iterations")
              for src in (fam, mod) for name in tasks]
  per_task = [v for v in per_task if v is not None]
  if len(tasks) > 1 and per_task:
    out["iterations"] = max(per_task)
  return out


def model_has_defaults(name: str | None) -> bool:
  """True when ``name`` has its own entry in ``MODEL_DEFAULTS``."""
  return bool(name) and name in MODEL_DEFAULTS


__all__ = ["DEFAULT_MODEL", "OFFICIAL", "OPTIMIZER_LR", "FAMILY_DEFAULTS", "MODEL_DEFAULTS",
           "DEFAULTS", "defaults_for", "model_has_defaults"]
