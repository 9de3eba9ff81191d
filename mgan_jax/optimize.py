"""Optimisers and the optimisation step: optax updates under ``lax.scan``, pure and vmap-able.

Official loop (``inversion/inversion_methods.py: GradientDescent``): per iteration forward ->
loss -> backward -> ``SGD(lr=1.0)`` step on [z, alpha]; no schedule, no clipping, the final
iterate is the result. Here ``scan_steps`` runs ``steps`` such iterations of one image::

    for i in range(steps):
        loss_i, g_i = value_and_grad(loss_fn)(latents, *args); latents <- optax step
    -> losses[i] = loss at the latents *before* step i (losses[0] at the initial latents)

``loss_fn(latents, *args) -> scalar`` is static (hashable); ``args`` (target, generator params,
VGG params) are constants of the optimisation: gradients are taken w.r.t. the latents only.
Nothing couples images, so ``scan_steps`` is vmapped over a leading image axis by
``mgan_jax.engine``, which compiles and runs it (one program per chunk of iterations); element-
wise optimisers (sgd, adam, schedules) keep the per-image dynamics exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
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


__all__ = ["OptimizerConfig", "OPTIMIZERS", "SCHEDULES", "as_transformation", "scan_steps"]
