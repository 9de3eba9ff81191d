"""The optimisation loop: optax steps under ``lax.scan``, in chunks, inside one jitted function.

Official loop (``inversion/inversion_methods.py: GradientDescent``): per iteration forward ->
loss -> backward -> ``SGD(lr=1.0)`` step on [z, alpha]; no schedule, no clipping, the final
iterate is the result. Here::

    state = (latents, opt_state)
    for each chunk of ``chunk`` iterations (one compiled call, chunk size static):
        scan: loss_i, g_i = value_and_grad(loss_fn)(latents, *args); latents <- optax step
    -> losses[i] = loss at the latents *before* step i (losses[0] at the initial latents)

``loss_fn(latents, *args) -> scalar`` is static (hashed: use ``objective.Objective`` or a
module-level function so repeated calls reuse the compilation); ``args`` are pytrees (target,
generator params, VGG params) that are *constants* of the optimisation: gradients are taken
w.r.t. the latents only. The state buffers are donated to each chunk call.

Per image, nothing couples images: ``scan_steps`` is vmap-able over a leading image axis of
(latents, opt_state, per-image args) -- element-wise optimisers (sgd, adam, schedules) keep the
per-image dynamics exact. Example::

    step = functools.partial(scan_steps, loss_fn, tx, steps)
    batched = jax.jit(jax.vmap(step, in_axes=(0, 0, (0, None, None))))
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "exponential", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hashable optimiser description; ``build()`` gives the optax transformation.

  Fields:
    name: ``'sgd'`` (official ``GD``: ``torch.optim.SGD``, no momentum by default) or ``'adam'``
      (``torch.optim.Adam`` defaults b1 0.9, b2 0.999, eps 1e-8).
    lr: learning rate (official 1.0; far too high for Adam).
    momentum, nesterov: SGD momentum (official 0).
    b1, b2, eps: Adam moments.
    schedule: ``'constant'`` (official), ``'cosine'`` (to ``lr * end_factor``), ``'exponential'``
      (``decay_rate`` per ``decay_steps``), ``'linear'`` (to ``lr * end_factor``).
    decay_steps: schedule length (cosine / linear) or period (exponential).
    warmup_steps: linear warm-up from 0 before the schedule.
    end_factor, decay_rate: schedule shape.
    lr_multipliers: per-latent-key learning-rate factors, e.g. ``(('alpha', 0.1),)``
      (``optax.multi_transform``); keys not listed use 1.
  """

  name: str = "sgd"
  lr: float = 1.0
  momentum: float = 0.0
  nesterov: bool = False
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  schedule: str = "constant"
  decay_steps: int = 1000
  warmup_steps: int = 0
  end_factor: float = 0.0
  decay_rate: float = 0.5
  lr_multipliers: tuple[tuple[str, float], ...] = ()

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.name!r} (known: {', '.join(OPTIMIZERS)})")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
    if not self.lr > 0:
      raise ValueError(f"learning rate must be > 0, got {self.lr}")
    object.__setattr__(self, "lr_multipliers",
                       tuple((str(k), float(v)) for k, v in self.lr_multipliers))

  def learning_rate(self, scale: float = 1.0) -> float | optax.Schedule:
    lr = self.lr * scale
    if self.schedule == "constant":
      sched = None
    elif self.schedule == "cosine":
      sched = optax.cosine_decay_schedule(lr, self.decay_steps, alpha=self.end_factor)
    elif self.schedule == "linear":
      sched = optax.linear_schedule(lr, lr * self.end_factor, self.decay_steps)
    else:
      sched = optax.exponential_decay(lr, self.decay_steps, self.decay_rate)
    if self.warmup_steps:
      sched = optax.join_schedules(
          [optax.linear_schedule(0.0, lr, self.warmup_steps), sched or optax.constant_schedule(lr)],
          [self.warmup_steps])
    return lr if sched is None else sched

  def _one(self, scale: float) -> optax.GradientTransformation:
    lr = self.learning_rate(scale)
    if self.name == "sgd":
      return optax.sgd(lr, momentum=self.momentum or None, nesterov=self.nesterov)
    return optax.adam(lr, b1=self.b1, b2=self.b2, eps=self.eps)

  def build(self) -> optax.GradientTransformation:
    if not self.lr_multipliers:
      return self._one(1.0)
    mult = dict(self.lr_multipliers)
    labels = lambda tree: {k: jax.tree.map(lambda _: k if k in mult else "_", v)
                           for k, v in tree.items()}
    txs = {k: self._one(v) for k, v in mult.items()}
    txs["_"] = self._one(1.0)
    return optax.multi_transform(txs, labels)


def as_transformation(optimizer: OptimizerConfig | optax.GradientTransformation
                      ) -> optax.GradientTransformation:
  """An OptimizerConfig is built; an optax transformation is used as is (keep one object alive
  across calls so the jit cache, which hashes it by identity, is reused)."""
  if isinstance(optimizer, OptimizerConfig):
    return _built(optimizer)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  raise TypeError(f"optimizer must be an OptimizerConfig or an optax GradientTransformation, got "
                  f"{type(optimizer).__name__}")


_BUILT: dict = {}


def _built(cfg: OptimizerConfig) -> optax.GradientTransformation:
  # Same config -> same transformation object -> jit cache hit.
  if cfg not in _BUILT:
    _BUILT[cfg] = cfg.build()
  return _BUILT[cfg]


def scan_steps(loss_fn: Callable[..., Array], tx: optax.GradientTransformation, steps: int,
               latents: Any, opt_state: Any, args: tuple, *, unroll: int = 1
               ) -> tuple[Any, Any, Array]:
  """``steps`` optimiser steps of one image (pure, un-jitted, vmap-able).

  Returns (latents, opt_state, losses (steps,)) with losses[i] = loss before step i.
  ``unroll`` is passed to ``lax.scan`` (same result, different compiled loop).
  """
  grad_fn = jax.value_and_grad(loss_fn)

  def body(carry, _):
    lat, st = carry
    loss, grads = grad_fn(lat, *args)
    updates, st = tx.update(grads, st, lat)
    return (optax.apply_updates(lat, updates), st), loss

  (latents, opt_state), losses = jax.lax.scan(body, (latents, opt_state), None, length=steps,
                                              unroll=unroll)
  return latents, opt_state, losses


#: ``scan_steps`` jitted with loss_fn / tx / steps static and the state donated.
run_chunk = jax.jit(scan_steps, static_argnums=(0, 1, 2), donate_argnums=(3, 4))


@jax.jit
def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


class OptimizeResult(NamedTuple):
  latents: Any          # final latents (after the last step)
  losses: np.ndarray    # (iterations,) float32, losses[i] before step i
  opt_state: Any
  seconds: float        # wall time of the loop (compilation included)


def optimize(loss_fn: Callable[..., Array], latents: Any, args: Sequence[Any], *,
             optimizer: OptimizerConfig | optax.GradientTransformation = OptimizerConfig(),
             iterations: int, chunk: int = 100,
             callback: Callable[[int, np.ndarray], Any] | None = None,
             opt_state: Any = None) -> OptimizeResult:
  """Run ``iterations`` steps of ``optimizer`` on ``loss_fn(latents, *args)``.

  The host syncs once per chunk (``callback(done_iterations, chunk_losses)`` then). The input
  ``latents`` are copied, never donated. ``opt_state`` resumes a previous run.
  """
  if iterations < 0:
    raise ValueError(f"iterations must be >= 0, got {iterations}")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  tx = as_transformation(optimizer)
  args = tuple(args)
  t0 = time.perf_counter()
  lat = _copy(latents)
  st = tx.init(lat) if opt_state is None else _copy(opt_state)
  traces = []
  done = 0
  while done < iterations:
    steps = min(chunk, iterations - done)
    lat, st, losses = run_chunk(loss_fn, tx, steps, lat, st, args)
    losses = np.asarray(losses)
    traces.append(losses)
    done += steps
    if callback is not None:
      callback(done, losses)
  jax.block_until_ready(lat)
  trace = np.concatenate(traces) if traces else np.zeros((0,), np.float32)
  return OptimizeResult(lat, trace.astype(np.float32), st, time.perf_counter() - t0)


__all__ = ["OptimizerConfig", "OPTIMIZERS", "SCHEDULES", "as_transformation", "scan_steps",
           "run_chunk", "optimize", "OptimizeResult"]
