"""Invert one image, end to end, from the library: latents, target, objective, the engine.

::

    res = invert_image(gen, gen_params, image, vgg_params=vgg, method="multi_z", layer=6,
                       codes=20, iterations=1500, optimizer=OptimizerConfig("sgd", lr=1.0),
                       operator=operators.Grayscale())
    res.image       # (R, R, 3) raw generator output at the final latents
    res.losses      # (iterations,) the objective before each step

This is what the reproducibility mode of ``python -m mgan_jax.invert`` (``--target``) runs; it
reproduces the official optimisation trajectory. Many images, files, tasks and resumable runs:
``mgan_jax.pipeline`` / ``mgan_jax.resumable`` (the same engine).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mgan_jax import engine, latents as latents_lib, objective as objective_lib
from mgan_jax import operators as ops, optimize as optimize_lib, perceptual
from mgan_jax.generators.base import Generator


@dataclasses.dataclass
class InversionResult:
  latents: dict          # final latents (numpy)
  image: np.ndarray      # (R, R, 3) raw generator output at the final latents
  losses: np.ndarray     # (K,) loss before each step
  final_loss: float      # loss at the final latents
  seconds: float         # optimisation wall time (compilation included)


def _evaluate_impl(obj, latents, target, gen_params, vgg_params):
  return obj(latents, target, gen_params, vgg_params), obj.renderer(latents, target, gen_params)


_evaluate = jax.jit(_evaluate_impl, static_argnums=(0,))


def evaluate(obj: objective_lib.Objective, latents: Any, target: objective_lib.Target,
             gen_params: Any, vgg_params: Any) -> tuple[jax.Array, jax.Array]:
  """(loss, image (1, R, R, 3)) of one image's ``latents`` under the objective ``obj``."""
  return _evaluate(obj, latents, target, gen_params, vgg_params)


def invert_image(gen: Generator, gen_params: Mapping, target: Any, *,
                 vgg_params: Mapping | None = None, method: str = "multi_z",
                 layer: int | None = 6, codes: int = 20, init: Mapping[str, Any] | None = None,
                 key: jax.Array | None = None, config: objective_lib.LossConfig | None = None,
                 optimizer: Any = None, iterations: int = 3000, chunk: int = 100,
                 operator: ops.Operator | None = None, mode: str = "degrade",
                 truncation: Any = None,
                 callback: Callable[[int, np.ndarray], Any] | None = None) -> InversionResult:
  """Invert one image.

  Args:
    gen, gen_params: generator spec and params.
    target: (H, W, 3) or (1, H, W, 3) image in [-1, 1] (the clean image for mode 'degrade',
      the observation for mode 'observation').
    vgg_params: VGG16 params (needed when the loss has a perceptual term).
    method, layer, codes: latent parameterisation (``latents.METHODS``).
    init: initial latents, else ``init_latents(key, ...)`` (official init; ``key`` default
      ``jax.random.key(0)``).
    config: ``objective.LossConfig`` (default: official). optimizer: ``OptimizerConfig``
      (default SGD lr 1.0) or an optax transformation.
    operator, mode: task operator and target mode (``objective.make_target``).
    callback: ``callback(done_iterations, chunk_losses)`` once per chunk.
  """
  config = config or objective_lib.LossConfig()
  optimizer = optimizer or optimize_lib.OptimizerConfig()
  operator = operator or ops.Identity()
  multi, _ = latents_lib.method_space(method)
  if init is None:
    key = jax.random.key(0) if key is None else key
    lat = latents_lib.init_latents(key, gen, gen_params, method=method, codes=codes,
                                   layer=layer if multi else None)
  else:
    lat = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(init))
  if vgg_params is not None and config.uses_vgg:  # only the convs the loss uses
    vgg_params = perceptual.needed_params(vgg_params, config.perceptual_layers)
  tgt = objective_lib.make_target(target, vgg_params, config=config, operator=operator,
                                  mode=mode)
  obj = objective_lib.Objective(gen=gen, method=method, layer=layer if multi else None,
                                config=config, truncation=truncation)
  res = engine.optimize(obj, lat, (tgt, gen_params, vgg_params), optimizer=optimizer,
                        iterations=iterations, chunk=chunk, callback=callback)
  loss, image = evaluate(obj, res.latents, tgt, gen_params, vgg_params)
  return InversionResult(latents=jax.tree.map(np.asarray, res.latents),
                         image=np.asarray(image)[0], losses=res.losses,
                         final_loss=float(loss), seconds=res.seconds)


__all__ = ["InversionResult", "invert_image", "evaluate"]
