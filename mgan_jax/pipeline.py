"""The image pipeline: prepared images (``Item``) -> batches -> the engine -> per-image results.

``Inverter`` is what the CLI runs and what a library user runs, with the official objective or
their own::

    inv = Inverter(gen, gen_params, vgg_params, settings, task, batch_size=8)
    results = inv.run(items)                       # one batch: list[ImageResult]
    # a researcher's variant, on the same path (batched, sharded, checkpointed, resumable):
    inv = Inverter(gen, gen_params, None, settings, task, batch_size=8,
                   objective=my_loss, render=my_render)
    resumable.run_items(items, inv, out="out/", state=...)

* ``settings`` (``Settings``) fix the latent parameterisation, the loss and the optimiser.
* ``objective(latents, target, gen_params, vgg_params) -> scalar`` is one image's loss
  (default: ``settings.objective(gen)``, the official mGANprior loss); any hashable callable.
  ``render(latents, target, gen_params, vgg_params) -> (1, R, R, 3)`` is the image of the
  latents (default: that objective's ``renderer``). ``target`` is an ``objective.Target`` built
  from the item's observation with the task's operator.
* Every image starts from the same latents drawn from ``settings.seed`` (or its own ``init``);
  each has its own optimiser state and loss, so a batch result equals the single-image runs up
  to float rounding (``mgan_jax.engine``).
* The final image comes from one compiled render program, so re-rendering saved latents
  (``--init FILE --iterations 0``) reproduces ``result.png`` bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mgan_jax import engine as engine_lib
from mgan_jax import imageio, latents as latents_lib, metrics, perceptual, tasks
from mgan_jax import objective as objective_lib
from mgan_jax import optimize as optimize_lib
from mgan_jax.batch_checkpoint import Checkpoint
from mgan_jax.generators.base import Generator


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that shapes the optimisation (hashable).

  method: engine latent method (``latents.METHODS``); codes: N (multi-code); layer:
  composition layer (multi-code) or None; loss: the objective's LossConfig; optimizer:
  OptimizerConfig; iterations; chunk: iterations per compiled call (progress granularity);
  seed: PRNG seed of the initial latents; init / alpha_init: as ``latents.init_latents``;
  truncation: as ``latents.render``.
  """
  method: str
  codes: int
  layer: int | None
  loss: objective_lib.LossConfig
  optimizer: optimize_lib.OptimizerConfig
  iterations: int
  chunk: int
  seed: int = 0
  init: str = "official"
  alpha_init: str = "official"
  truncation: Any = None

  def objective(self, gen: Generator) -> objective_lib.Objective:
    return objective_lib.Objective(gen=gen, method=self.method, layer=self.layer,
                                   config=self.loss, truncation=self.truncation)

  def to_json(self) -> dict:
    loss = dataclasses.asdict(self.loss)
    opt = {k: v for k, v in dataclasses.asdict(self.optimizer).items()
           if v != getattr(optimize_lib.OptimizerConfig(), k) or k in ("name", "lr")}
    return {"method": self.method, "codes": self.codes if self.method in
            latents_lib.MULTI_METHODS else 1, "layer": self.layer, "iterations": self.iterations,
            "chunk": self.chunk, "seed": self.seed, "init": self.init,
            "alpha_init": self.alpha_init, "optimizer": opt, "loss": loss}


@dataclasses.dataclass
class Item:
  """One input image, prepared (host numpy).

  name: output directory name (unique in the run); path: the input file; input: (h, w, 3) the
  image as read and fitted ([-1, 1]); fit: how it was fitted; observation: what the loss sees
  (``tasks.Observation``); clean: (R, R, 3) the clean target for metrics, or None; init: one
  image's initial latents or None; info: extra JSON for metrics.json; digest: a content hash of
  everything the result depends on besides the settings (image, mask, clean reference, init
  latents), so that a changed input is recomputed on a rerun.
  """
  name: str
  path: Path
  input: np.ndarray
  fit: imageio.FitReport
  observation: tasks.Observation
  clean: np.ndarray | None = None
  init: dict | None = None
  info: dict = dataclasses.field(default_factory=dict)
  digest: str = ""


@dataclasses.dataclass
class ImageResult:
  """One image's outcome. latents: one image's latents (numpy); losses: (iterations,);
  raw: (R, R, 3) generator output; image: the post-processed result; postprocess: its
  description; trace: one row per chunk, {'iteration': steps done, 'loss': the loss at the
  chunk's last step (before its update), 'psnr': of the post-processed image after the chunk
  vs the clean target (when there is one), 'psnr_observed': D(image) vs the observation, in
  its space (masked pixels count as equal)}; seconds: the batch's wall time; failed: why the
  image's optimisation failed (NaN or infinite losses, latents or image), else None."""
  latents: dict
  losses: np.ndarray
  raw: np.ndarray
  image: np.ndarray
  postprocess: str
  trace: list
  seconds: float
  failed: str | None = None


def _failure(losses: np.ndarray, latents: Any, image: np.ndarray) -> str | None:
  """Why one image's optimisation failed (non-finite values), or None."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    return (f"the loss became {losses[bad[0]]} at iteration {int(bad[0])} (diverged: try a "
            "smaller --lr)")
  if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(latents)):
    return "the latents became NaN or infinite (diverged: try a smaller --lr)"
  if not np.all(np.isfinite(image)):
    return "the generated image holds NaN or infinite values"
  return None


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _index(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


class Inverter:
  """Optimises batches of up to ``batch_size`` items with one compiled program.

  Args:
    gen, gen_params: the generator spec and params; vgg_params: VGG16 params (None when the
      loss has no perceptual term); settings: ``Settings``; task: the ``tasks.Task``.
    batch_size: B; every batch is padded to B (and to a multiple of the mesh's device count)
      so one program serves all batches.
    mesh: the devices a batch is split over (default: all of this process's devices).
    checkpoint_every: K > 0 hands the batch's state to ``on_checkpoint`` every K iterations.
    objective, render: a custom loss and render function (see the module docstring).
    per_image: ``'vmap'`` (default) or ``'map'``: every image bit-identical to its single-image
      run whatever the batch size (``engine.Engine``).
  """

  def __init__(self, gen: Generator, gen_params: Mapping, vgg_params: Mapping | None,
               settings: Settings, task: tasks.Task, *, batch_size: int,
               mesh: Mesh | None = None, checkpoint_every: int = 0,
               objective: Callable[..., jax.Array] | None = None,
               render: Callable[..., jax.Array] | None = None, per_image: str = "vmap"):
    if checkpoint_every < 0:
      raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    self.gen = gen
    self.settings = settings
    self.task = task
    self.objective = objective if objective is not None else settings.objective(gen)
    if render is None:
      render = getattr(self.objective, "renderer", None) or settings.objective(gen).renderer
    self.render_fn = render
    self.engine = engine_lib.Engine(
        self.objective, optimizer=settings.optimizer, arg_axes=(0, None, None),
        iterations=settings.iterations, chunk=settings.chunk, checkpoint_every=checkpoint_every,
        render_fn=render, mesh=mesh, batch_size=batch_size, per_image=per_image)
    self.mesh = self.engine.mesh
    self.batch_size = self.engine.batch_size
    self.checkpoint_every = self.engine.checkpoint_every
    repl = NamedSharding(self.mesh, P())
    self.gen_params = jax.device_put(gen_params, repl)
    uses_vgg = settings.loss.uses_vgg and vgg_params is not None
    self._vgg_host = (perceptual.needed_params(vgg_params, settings.loss.perceptual_layers)
                      if uses_vgg else None)
    self.vgg_params = jax.device_put(self._vgg_host, repl) if uses_vgg else None
    self._init = None

  @property
  def compile_seconds(self) -> float:
    return self.engine.compile_seconds

  @property
  def plan(self) -> list[int]:
    """Steps of each compiled call (``engine.chunk_plan``)."""
    return list(self.engine.plan)

  # ----- pieces ------------------------------------------------------------------------------
  def initial_latents(self) -> dict:
    """One image's initial latents from ``settings.seed`` (numpy)."""
    if self._init is None:
      s = self.settings
      lat = latents_lib.init_latents(jax.random.key(s.seed), self.gen, self.gen_params,
                                     method=s.method, codes=s.codes, layer=s.layer, init=s.init,
                                     alpha_init=s.alpha_init)
      self._init = jax.tree.map(np.asarray, lat)
    return self._init

  def target(self, item: Item) -> objective_lib.Target:
    op = tasks.operator(self.task, item.observation)
    return objective_lib.make_target(item.observation.target, self._vgg_host,
                                     config=self.settings.loss, operator=op, mode="observation")

  def initial_latents_of(self, items: Sequence[Item]) -> dict:
    """The items' initial latents, stacked (host numpy, leading axis n)."""
    return _stack([it.init if it.init is not None else self.initial_latents() for it in items])

  def templates(self, items: Sequence[Item]) -> tuple[dict, Any]:
    """(latents, optimiser state shapes) of a batch of ``items``: what a checkpoint of their
    batch is restored into."""
    lat = self.initial_latents_of(items)
    return lat, self.engine.state_shapes(lat)

  def _args(self, items: Sequence[Item]) -> tuple[Any, list]:
    tgts = [self.target(it) for it in items]
    return (_stack(tgts), self.gen_params, self.vgg_params), tgts

  def compile(self, example: Sequence[Item]) -> float:
    """Compile the programs for batches shaped like ``example`` now; returns the seconds."""
    example = list(example[:self.batch_size])
    args, _ = self._args(example)
    return self.engine.compile(self.initial_latents_of(example), args)

  # ----- running ----------------------------------------------------------------------------
  def run(self, items: Sequence[Item], *,
          on_chunk: Callable[[int, list[dict]], Any] | None = None,
          start: Checkpoint | None = None,
          on_checkpoint: Callable[[engine_lib.BatchState, dict], Any] | None = None
          ) -> list[ImageResult]:
    """Optimise ``items`` (at most B) together. ``on_chunk(done, rows)`` after each chunk with
    one trace row per item. ``start``: continue from a checkpoint of this batch (its state and,
    in ``extra['trace']``, the trace rows so far). ``on_checkpoint(state, {'trace', 'plan'})``
    every ``checkpoint_every`` iterations."""
    n = len(items)
    if not 1 <= n <= self.batch_size:
      raise ValueError(f"a batch holds 1..{self.batch_size} items, got {n}")
    args, tgts = self._args(items)
    traces: list[list[dict]] = [[] for _ in range(n)]
    if start is not None:
      traces = [list(rows) for rows in start.extra.get("trace", traces)]
      if len(traces) != n:
        raise ValueError("the checkpoint's trace does not match its batch")

    def chunk_done(done: int, losses: np.ndarray, images: np.ndarray | None) -> None:
      rows = []
      for i, it in enumerate(items):
        row = self._trace_row(it, tgts[i], images[i], done, float(losses[i, -1]))
        traces[i].append(row)
        rows.append(row)
      if on_chunk is not None:
        on_chunk(done, rows)

    save = None
    if on_checkpoint is not None:
      save = lambda st: on_checkpoint(st, {"trace": traces, "plan": self.plan})
    res = self.engine.run(self.initial_latents_of(items), args,
                          start=start.state if start is not None else None,
                          on_chunk=chunk_done, on_checkpoint=save)
    out = []
    for i, it in enumerate(items):
      raw = res.images[i]
      lat = _index(res.latents, i)
      failed = _failure(res.losses[i], lat, raw)
      image, how = (raw, "none (failed)") if failed else \
          tasks.postprocess(self.task, raw, it.observation)
      out.append(ImageResult(lat, res.losses[i].astype(np.float32), raw, image, how, traces[i],
                             res.seconds, failed))
    return out

  def _trace_row(self, item: Item, target: objective_lib.Target, raw: np.ndarray, done: int,
                 loss: float) -> dict:
    row = {"iteration": done, "loss": loss}
    if not np.all(np.isfinite(raw)):
      return row
    seen = np.asarray(target.operator(jnp.asarray(raw)[None]))[0]
    row["psnr_observed"] = metrics.psnr_numpy(seen, np.asarray(target.image)[0])
    if item.clean is not None:
      image, _ = tasks.postprocess(self.task, raw, item.observation)
      row["psnr"] = metrics.psnr_numpy(imageio.to_uint8(image), imageio.to_uint8(item.clean))
    return row


__all__ = ["Settings", "Item", "ImageResult", "Inverter"]
