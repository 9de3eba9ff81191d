"""The batch loop of the user CLI: prepared images -> batches of B -> one compiled, vmapped
optimisation per batch -> per-image outputs written as soon as their batch finishes.

Pipeline (``run_items``)::

    items (Item: one input image, its observation, loss operator, optional clean target)
      -> batches of B (the tail batch is padded by repeating its last item; padding discarded)
      -> Inverter.run: for each chunk of iterations, ONE compiled program
             shard_map over the devices of vmap over images of
             optimize.scan_steps(Objective, tx, steps)  + render
         (each image has its own latents, its own optimiser state and its own loss mean, so an
         image's result equals its single-image run within float tolerance; the batch is
         padded to a multiple of the device count and split over ``Inverter.mesh``)
      -> per image: OUT/<name>/{result.png, degraded.png, grid.png, latents.npz, metrics.json}
         written into a private temporary directory and renamed into place.

Resumable runs (``open_run_state`` + ``run_items(state=...)``, docs/batch.md): finished images
are journaled in OUT/.mgan_jax_run/ and skipped on a rerun; with ``checkpoint_every`` K the
batch in flight is checkpointed every K iterations (the compiled calls end at multiples of K)
and a rerun continues it to bit-identical outputs.

The compiled programs are cached per (objective, optimiser, steps, shapes) for the life of the
process (``_PROGRAMS``), so several runs with the same settings (tests, notebooks) compile once.
Compilation is done ahead of time (``jax.jit(...).lower(...).compile()``) before the first batch
and timed separately.

Every image starts from the same latents drawn from ``settings.seed`` (or its own ``--init``
latents); the final image is rendered by one compiled render program, so re-rendering the saved
latents (``--init FILE --iterations 0``) reproduces ``result.png`` bit for bit.

Progress: one line per chunk on stderr (rewritten in place with ``\\r`` on a terminal): batch,
iteration, loss and PSNR (against the clean target when there is one, else in the observation's
space), mean over the batch's images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mgan_jax import imageio, metrics, sharding, tasks
from mgan_jax import resume as resume_lib
from mgan_jax import latents as latents_lib
from mgan_jax import objective as objective_lib
from mgan_jax import optimize as optimize_lib
from mgan_jax.errors import UserError
from mgan_jax.generators.base import Generator

LATENTS_FORMAT = "mgan_jax.latents"
LATENTS_VERSION = 1
OUTPUT_FILES = ("result.png", "degraded.png", "grid.png", "latents.npz", "metrics.json")


# ----------------------------------------------------------------------------------------------
# Settings and items.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that shapes the optimisation (hashable).

  method: engine latent method (``latents.METHODS``: multi_z, multi_w, multi_wp, z, w, wp);
  codes: N (multi-code); layer: composition layer (multi-code) or None; loss: the objective's
  LossConfig; optimizer: OptimizerConfig; iterations; chunk: iterations per compiled call
  (progress granularity); seed: PRNG seed of the initial latents; init / alpha_init: as
  ``latents.init_latents``; truncation: as ``latents.render``.
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
  image's initial latents (from ``--init``) or None; info: extra JSON for metrics.json.
  """
  name: str
  path: Path
  input: np.ndarray
  fit: imageio.FitReport
  observation: tasks.Observation
  clean: np.ndarray | None = None
  init: dict | None = None
  info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImageResult:
  """One image's outcome. latents: one image's latents (numpy); losses: (iterations,);
  raw: (R, R, 3) generator output; image: the post-processed result; postprocess: its
  description; trace: one row per chunk, {'iteration': steps done, 'loss': the loss at the
  chunk's last step (before its update), 'psnr': of the post-processed image after the chunk
  vs the clean target (when there is one), 'psnr_observed': D(image) vs the observation, in
  its space (masked pixels count as equal)}."""
  latents: dict
  losses: np.ndarray
  raw: np.ndarray
  image: np.ndarray
  postprocess: str
  trace: list
  seconds: float


# ----------------------------------------------------------------------------------------------
# Latent files.
# ----------------------------------------------------------------------------------------------
def save_latents(path: str | os.PathLike, latents: Mapping[str, Any], meta: Mapping) -> None:
  """``latents.npz``: one array per latent key (e.g. ``z`` (N, Z), ``alpha`` (N, C)) and
  ``meta``: a JSON string (format, method, layer, codes, model facts)."""
  meta = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, **dict(meta)}
  arrays = {k: np.asarray(v, np.float32) for k, v in latents.items()}
  if "meta" in arrays:
    raise ValueError("a latent may not be called 'meta'")
  imageio.write_npz(path, {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))})


def load_latents(path: str | os.PathLike) -> tuple[dict, dict]:
  """(latents, meta) from a file written by ``save_latents``; UserError naming the file."""
  path = Path(path)
  try:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise UserError(f"{path}: not an mgan_jax latents file (a plain array; expected the "
                      "latents.npz written by `python -m mgan_jax.invert --image ...`)")
    with f:
      arrays = {k: np.asarray(f[k]) for k in f.files}
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"{path}: cannot read latents ({str(e).splitlines()[0] if str(e) else e!r})"
                    ) from None
  meta_raw = arrays.pop("meta", None)
  try:
    meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
  except json.JSONDecodeError:
    meta = {}
  if meta.get("format") != LATENTS_FORMAT:
    raise UserError(f"{path}: not an mgan_jax latents file (written by `python -m "
                    "mgan_jax.invert --image ...` as latents.npz)")
  return {k: v.astype(np.float32) for k, v in arrays.items()}, meta


def check_latents(latents: Mapping[str, np.ndarray], gen: Generator, settings: Settings, *,
                  what: str) -> dict:
  """Check one image's latents against the shapes ``settings`` need; UserError otherwise."""
  want = latents_lib.latent_shapes(gen, method=settings.method, codes=settings.codes,
                                   layer=settings.layer)
  got = {k: tuple(np.shape(v)) for k, v in latents.items()}
  wantt = {k: tuple(v) for k, v in want.items()}
  if set(got) != set(wantt) or any(got[k] != wantt[k] for k in wantt):
    raise UserError(f"{what}: latents {got} do not fit method {settings.method!r} "
                    f"(codes {settings.codes}, layer {settings.layer}): expected {wantt}")
  return {k: np.asarray(latents[k], np.float32) for k in wantt}


# ----------------------------------------------------------------------------------------------
# Compiled programs.
# ----------------------------------------------------------------------------------------------
def _render_one(objective: objective_lib.Objective, gen_params, latents) -> jax.Array:
  return latents_lib.render(objective.gen, gen_params, latents, method=objective.method,
                            layer=objective.layer, truncation=objective.truncation,
                            compose=objective.compose)[0]


def _scan_steps(loss_fn, tx, steps: int, unroll: int, latents, opt_state, args):
  """``optimize.scan_steps`` with ``unroll`` positional, for the runner's static arguments."""
  return optimize_lib.scan_steps(loss_fn, tx, steps, latents, opt_state, args, unroll=unroll)


def _unroll(steps: int) -> int:
  """1 (a rolled loop) normally. Under ``jax_disable_most_optimizations`` (the CPU test
  configuration) XLA:CPU runs the generator's convolutions ~50x slower inside a while loop
  (measured: 2.2 s vs 0.04 s per DCGAN step), so the chunk is unrolled then."""
  return steps if jax.config.read("jax_disable_most_optimizations") and steps <= 16 else 1


def _chunk_program(objective, tx, steps, unroll, mesh, latents, opt_state, targets, gen_params,
                   vgg_params):
  """vmap over images of ``steps`` optimiser steps, then the images after them, sharded over
  ``mesh`` (``shard_map``: each device runs its slice of the images; the generator and VGG
  params are replicated; no value crosses devices).
  latents / opt_state / targets: leading axis B (a multiple of the mesh size). Returns
  (latents, opt_state, losses (B, steps), images (B, R, R, 3))."""
  def local(lat_b, st_b, tgt_b, gp, vp):
    def one(lat, st, tgt):
      lat, st, losses = _scan_steps(objective, tx, steps, unroll, lat, st, (tgt, gp, vp))
      return lat, st, losses, _render_one(objective, gp, lat)
    return jax.vmap(one)(lat_b, st_b, tgt_b)
  d, r = P(sharding.AXIS), P()
  return jax.shard_map(local, mesh=mesh, in_specs=(d, d, d, r, r), out_specs=(d, d, d, d))(
      latents, opt_state, targets, gen_params, vgg_params)


def _render_program(objective, mesh, latents, gen_params):
  def local(lat_b, gp):
    return jax.vmap(lambda lat: _render_one(objective, gp, lat))(lat_b)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(sharding.AXIS), P()),
                       out_specs=P(sharding.AXIS))(latents, gen_params)


_chunk_jit = jax.jit(_chunk_program, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(5, 6))
_render_jit = jax.jit(_render_program, static_argnums=(0, 1))
_PROGRAMS: dict = {}


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return (treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", None) or
                                                   np.asarray(x).dtype)) for x in leaves))


def _abstract(tree, shardings: Sequence[Any]) -> tuple:
  """Shape/dtype/sharding structs of the argument trees (for ahead-of-time lowering)."""
  return tuple(jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      np.shape(x), getattr(x, "dtype", None) or np.asarray(x).dtype, sharding=sh), a)
      for a, sh in zip(tree, shardings))


def _compiled(kind: str, static: tuple, args: tuple):
  """AOT-compiled program for (kind, static args, argument shapes), cached; returns
  (executable, seconds spent compiling now (0 when cached)). The last static argument is the
  mesh: batched arguments are lowered split over its ``'data'`` axis, params replicated."""
  key = (kind, static, _signature(args))
  hit = _PROGRAMS.get(key)
  if hit is not None:
    return hit, 0.0
  t0 = time.perf_counter()
  fn = _chunk_jit if kind == "chunk" else _render_jit
  mesh = static[-1]
  data, repl = NamedSharding(mesh, P(sharding.AXIS)), NamedSharding(mesh, P())
  shardings = (data, data, data, repl, repl) if kind == "chunk" else (data, repl)
  exe = fn.lower(*static, *_abstract(args, shardings)).compile()
  _PROGRAMS[key] = exe
  return exe, time.perf_counter() - t0


def chunk_plan(iterations: int, chunk: int, checkpoint_every: int = 0) -> list[int]:
  """Steps per compiled call: ``chunk`` repeated, then the remainder (if any). With
  ``checkpoint_every`` K, the calls also end at every multiple of K
  (``sharding.chunk_boundaries``), so that a run resumed from a checkpoint repeats the
  uninterrupted run's calls exactly."""
  if iterations < 0 or chunk < 1:
    raise ValueError(f"invalid iterations={iterations} / chunk={chunk}")
  ends = sharding.chunk_boundaries(iterations, chunk, checkpoint_every)
  return [b - a for a, b in zip((0,) + ends[:-1], ends)]


def default_chunk(iterations: int, updates: int = 10) -> int:
  """About ``updates`` progress updates per run, preferring a chunk that divides
  ``iterations`` (one compiled program instead of two)."""
  if iterations <= 0:
    return 1
  target = max(1, math.ceil(iterations / updates))
  for d in range(target, 2 * target + 1):
    if iterations % d == 0:
      return d
  return target


# ----------------------------------------------------------------------------------------------
# The inverter: one compiled program per batch shape.
# ----------------------------------------------------------------------------------------------
def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _index(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


class Inverter:
  """Optimises batches of up to ``batch_size`` items with one compiled program.

  Args:
    gen, gen_params: the generator spec and params; vgg_params: VGG16 params (None when the
      loss has no perceptual term); settings: ``Settings``; spec: the ``tasks.TaskSpec``;
    batch_size: B; every batch is padded to B (and to a multiple of the mesh's device count)
      so one program serves all batches.
    mesh: the devices the batch is split over (``sharding.local_mesh()``: all of this
      process's devices, by default).
    checkpoint_every: K > 0 makes ``run`` hand the batch's state to ``on_checkpoint`` every K
      iterations (and the compiled calls end at multiples of K, see ``chunk_plan``).
  """

  def __init__(self, gen: Generator, gen_params: Mapping, vgg_params: Mapping | None,
               settings: Settings, spec: tasks.TaskSpec, *, batch_size: int,
               mesh: Mesh | None = None, checkpoint_every: int = 0):
    if batch_size < 1:
      raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if checkpoint_every < 0:
      raise UserError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    self.gen = gen
    self.settings = settings
    self.spec = spec
    self.batch_size = int(batch_size)
    self.mesh = mesh if mesh is not None else sharding.local_mesh()
    self.padded_size = sharding.padded_size(self.batch_size, self.mesh.size)
    self.checkpoint_every = int(checkpoint_every)
    self.gen_params = sharding.replicate(gen_params, self.mesh)
    self.vgg_params = (sharding.replicate(vgg_params, self.mesh) if settings.loss.uses_vgg
                       and vgg_params is not None else None)
    self._vgg_host = vgg_params if settings.loss.uses_vgg else None
    self._data = NamedSharding(self.mesh, P(sharding.AXIS))
    self.objective = settings.objective(gen)
    self.tx = optimize_lib.as_transformation(settings.optimizer)
    self.compile_seconds = 0.0
    self._init = None

  # ----- pieces ------------------------------------------------------------------------------
  def initial_latents(self) -> dict:
    """One image's initial latents from ``settings.seed`` (numpy)."""
    if self._init is None:
      s = self.settings
      lat = latents_lib.init_latents(self.gen, self.gen_params, jax.random.key(s.seed),
                                     method=s.method, codes=s.codes, layer=s.layer, init=s.init,
                                     alpha_init=s.alpha_init)
      self._init = jax.tree.map(np.asarray, lat)
    return self._init

  def target(self, item: Item) -> objective_lib.Target:
    op = tasks.operator(self.spec, item.observation)
    return objective_lib.make_target(item.observation.target, self._vgg_host,
                                     config=self.settings.loss, operator=op, mode="observation")

  def plan(self) -> list[int]:
    """Steps of each compiled call (``chunk_plan`` with the checkpoint interval)."""
    return chunk_plan(self.settings.iterations, self.settings.chunk, self.checkpoint_every)

  def initial_state(self, items: Sequence[Item]) -> tuple[dict, Any]:
    """The real items' initial latents and optimiser state (host numpy, leading axis n), the
    templates a checkpoint of their batch is restored into."""
    lat = _stack([it.init if it.init is not None else self.initial_latents() for it in items])
    return lat, jax.device_get(jax.vmap(self.tx.init)(lat))

  def _batch_args(self, items: Sequence[Item]):
    """Padded (latents, opt_state, targets) with leading axis ``padded_size`` (the last item
    repeated), and the real items' unstacked targets."""
    n = len(items)
    if not 1 <= n <= self.batch_size:
      raise ValueError(f"a batch holds 1..{self.batch_size} items, got {n}")
    lat, opt_state = self.initial_state(items)
    tgts = [self.target(it) for it in items]
    size = self.padded_size
    return (sharding.pad_batch(lat, size), sharding.pad_batch(opt_state, size),
            sharding.pad_batch(_stack(tgts), size), tgts)

  def _programs(self, lat, opt_state, targets):
    plan = self.plan()
    progs = {}
    for steps in sorted(set(plan)):
      progs[steps], dt = _compiled("chunk", (self.objective, self.tx, steps, _unroll(steps),
                                             self.mesh),
                                   (lat, opt_state, targets, self.gen_params, self.vgg_params))
      self.compile_seconds += dt
    render, dt = _compiled("render", (self.objective, self.mesh), (lat, self.gen_params))
    self.compile_seconds += dt
    return plan, progs, render

  def compile(self, example: Sequence[Item]) -> float:
    """Compile the programs for batches shaped like ``example`` now; returns the seconds."""
    before = self.compile_seconds
    lat, st, targets, _ = self._batch_args(example[:self.batch_size])
    self._programs(lat, st, targets)
    return self.compile_seconds - before

  # ----- running ----------------------------------------------------------------------------
  def run(self, items: Sequence[Item], *,
          on_chunk: Callable[[int, list[dict]], Any] | None = None,
          start: resume_lib.Checkpoint | None = None,
          on_checkpoint: Callable[[sharding.BatchState, dict], Any] | None = None
          ) -> list[ImageResult]:
    """Optimise ``items`` (at most B) together. ``on_chunk(done, rows)`` after each chunk with
    one trace row per real item.

    ``start``: continue from a checkpoint of this batch (its state and, in ``extra['trace']``,
    the per-image trace rows so far); the remaining calls are the uninterrupted run's, so the
    results are identical. ``on_checkpoint(state, {'trace': rows})`` is called every
    ``checkpoint_every`` iterations (before the last) with the real images' state on the host.
    """
    t0 = time.perf_counter()
    n = len(items)
    lat, st, targets, tgts = self._batch_args(items)
    plan, progs, render = self._programs(lat, st, targets)
    traces: list[list[dict]] = [[] for _ in range(n)]
    losses_parts = []
    done = 0
    if start is not None:
      done = int(start.state.iteration)
      lat = sharding.pad_batch(start.state.latents, self.padded_size)
      st = sharding.pad_batch(start.state.opt_state, self.padded_size)
      losses_parts.append(np.asarray(start.state.losses, np.float32).reshape(n, done))
      traces = [list(rows) for rows in start.extra.get("trace", traces)]
      if len(traces) != n:
        raise UserError("checkpoint trace does not match its batch; delete the checkpoint")
    lat = jax.device_put(lat, self._data)
    st = jax.device_put(st, self._data)
    targets = jax.device_put(targets, self._data)
    total = self.settings.iterations
    k = self.checkpoint_every
    offset = 0
    for steps in plan:
      offset += steps
      if offset <= done:
        continue            # done before the checkpoint this run resumed from
      lat, st, losses, images = progs[steps](lat, st, targets, self.gen_params, self.vgg_params)
      losses = np.asarray(losses)[:n]
      images = np.asarray(images)[:n]
      losses_parts.append(losses)
      done = offset
      rows = []
      for i, it in enumerate(items):
        row = self._trace_row(it, tgts[i], images[i], done, float(losses[i, -1]))
        traces[i].append(row)
        rows.append(row)
      if on_chunk is not None:
        on_chunk(done, rows)
      if on_checkpoint is not None and k and done % k == 0 and done < total:
        on_checkpoint(sharding.BatchState(done, sharding.unpad(lat, n), sharding.unpad(st, n),
                                          np.concatenate(losses_parts, axis=1)),
                      {"trace": traces, "plan": plan})
    raw = np.asarray(render(lat, self.gen_params))[:n]
    lat_host = jax.device_get(lat)
    all_losses = (np.concatenate(losses_parts, axis=1) if losses_parts
                  else np.zeros((n, 0), np.float32))
    seconds = time.perf_counter() - t0
    out = []
    for i, it in enumerate(items):
      image, how = tasks.postprocess(self.spec, raw[i], it.observation)
      out.append(ImageResult(_index(lat_host, i), all_losses[i].astype(np.float32), raw[i],
                             image, how, traces[i], seconds))
    return out

  def _trace_row(self, item: Item, target: objective_lib.Target, raw: np.ndarray, done: int,
                 loss: float) -> dict:
    row = {"iteration": done, "loss": loss}
    seen = np.asarray(target.operator(jnp.asarray(raw)[None]))[0]
    row["psnr_observed"] = metrics.psnr_numpy(seen, np.asarray(target.image)[0])
    if item.clean is not None:
      image, _ = tasks.postprocess(self.spec, raw, item.observation)
      row["psnr"] = metrics.psnr_numpy(imageio.to_uint8(image), imageio.to_uint8(item.clean))
    return row


# ----------------------------------------------------------------------------------------------
# Progress.
# ----------------------------------------------------------------------------------------------
class Progress:
  """Plain stderr progress: ``[batch 1/3] it 150/300 | loss 0.0123 | PSNR 28.41 dB | 12.3 s``
  (mean over the batch's images). On a terminal the line is rewritten in place."""

  def __init__(self, *, batches: int, iterations: int, stream: TextIO | None = None,
               enabled: bool = True):
    self.batches = batches
    self.iterations = iterations
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.batch = 0
    self.t0 = time.perf_counter()

  def start_batch(self, index: int, names: Sequence[str]) -> None:
    self.batch = index
    self.t0 = time.perf_counter()
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    self._line(f"[batch {index + 1}/{self.batches}] {len(names)} image(s): {shown}", final=True)

  def chunk(self, done: int, rows: Sequence[dict]) -> None:
    loss = float(np.mean([r["loss"] for r in rows]))
    key = "psnr" if all("psnr" in r for r in rows) else "psnr_observed"
    psnr = float(np.mean([r[key] for r in rows]))
    label = "PSNR" if key == "psnr" else "PSNR(obs)"
    msg = (f"[batch {self.batch + 1}/{self.batches}] it {done}/{self.iterations} | loss "
           f"{loss:.5f} | {label} {psnr:.2f} dB | {time.perf_counter() - self.t0:.1f} s")
    self._line(msg, final=done >= self.iterations)

  def message(self, text: str) -> None:
    self._line(text, final=True)

  def _line(self, text: str, *, final: bool) -> None:
    if not self.enabled:
      return
    if self.tty:
      self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
    else:
      self.stream.write(text + "\n")
    self.stream.flush()


# ----------------------------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------------------------
def output_dir(out: str | os.PathLike, item: Item) -> Path:
  return Path(out) / item.name


def check_outputs_free(out: str | os.PathLike, items: Sequence[Item], *, force: bool) -> None:
  """Refuse (UserError) before any work when an item's output directory already holds files,
  unless ``force``."""
  if Path(out).exists() and not Path(out).is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  if force:
    return
  taken = [it.name for it in items if imageio.has_outputs(output_dir(out, it))]
  if taken:
    more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
    raise UserError(f"{output_dir(out, items[[it.name for it in items].index(taken[0])])} "
                    f"already holds outputs{more}; pass --force to replace them or choose "
                    "another --out")


def write_outputs(out: str | os.PathLike, item: Item, result: ImageResult, *, force: bool,
                  run_info: Mapping[str, Any], latents_meta: Mapping[str, Any],
                  state: resume_lib.RunState | None = None) -> Path:
  """Write one image's files atomically into ``OUT/<name>/``; returns the directory.

  With a run ``state`` the directory is staged in the run's ``staging/`` and renamed into place
  (never replacing anything: a resumable run skips finished images instead); without, in a
  temporary sibling (``imageio.atomic_directory``, replacing only with ``force``).

  result.png (post-processed result), raw.png (generator output, only when post-processing
  changed it), degraded.png (the observation at its own size), grid.png (input | degraded |
  result | clean when a separate clean target was given), latents.npz (``save_latents``),
  metrics.json.
  """
  final = output_dir(out, item)
  spec_res = result.image.shape[0]
  res8 = imageio.to_uint8(result.image)
  deg_full = tasks.upsample_for_display(item.observation.image, spec_res)
  m: dict[str, Any] = {"image": os.fspath(item.path), "name": item.name}
  m.update(item.info)
  m["fit"] = item.fit.to_json()
  if item.clean is not None:
    clean8 = imageio.to_uint8(item.clean)
    q = metrics.quality(res8, clean8)
    base = metrics.quality(imageio.to_uint8(deg_full), clean8)
    m["metrics"] = {"psnr": q["psnr"], "ssim": q["ssim"], "degraded_psnr": base["psnr"],
                    "degraded_ssim": base["ssim"],
                    "note": "on the 8-bit result.png vs the clean target; degraded_* = the "
                            "observation (nearest-upsampled) vs the clean target"}
  else:
    m["metrics"] = {"note": "no clean target: nothing to compare against (use --clean)"}
  last = result.trace[-1] if result.trace else {}
  m["metrics"]["psnr_observed"] = last.get("psnr_observed")
  m["metrics"]["final_loss"] = float(result.losses[-1]) if len(result.losses) else None
  m["postprocess"] = result.postprocess
  m.update(run_info)
  m["time"] = {"batch_seconds": round(result.seconds, 3), **dict(run_info.get("time", {}))}
  m["trace"] = result.trace
  if state is not None:
    staged = _staged(state, final)
  else:
    staged = imageio.atomic_directory(final, force=force)
  with staged as tmp:
    imageio.write_png(tmp / "result.png", res8)
    if not np.array_equal(imageio.to_uint8(result.raw), res8):
      imageio.write_png(tmp / "raw.png", result.raw)
    imageio.write_png(tmp / "degraded.png", item.observation.image)
    cols = [item.input, deg_full, result.image]
    if item.info.get("clean_image"):
      cols.append(item.clean)
    imageio.write_png(tmp / "grid.png", imageio.grid(cols, size=spec_res))
    save_latents(tmp / "latents.npz", result.latents, latents_meta)
    imageio.write_json(tmp / "metrics.json", m)
  return final


def batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
  return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


@contextlib.contextmanager
def _staged(state: resume_lib.RunState, final: Path):
  with state.atomic_output(final) as stage:
    yield Path(stage)


def open_run_state(out: str | os.PathLike, items: Sequence[Item], *, all_names: Sequence[str],
                   settings: Mapping[str, Any], force: bool = False, process_index: int = 0,
                   process_count: int = 1) -> resume_lib.RunState:
  """The resumable state of this process's ``items`` in OUT (``resume.RunState``).

  * OUT already holds runs of the same settings (``settings``: what determines a result):
    resume (finished images are skipped, a checkpointed batch continues), with or without
    ``force``; other inputs, batch size or process count are fine.
  * OUT holds runs of other settings: UserError naming what differs, unless ``force``: then
    the run state and this process's existing outputs are deleted and a new run starts.
  * No run yet: existing outputs of these items are refused (``check_outputs_free``) unless
    ``force`` (then deleted first).
  ``all_names``: the output names of the whole input list (every process's share), in order.
  """
  if Path(out).exists() and not Path(out).is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  kw = dict(settings=settings, items=list(all_names), process_index=process_index,
            process_count=process_count)
  if resume_lib.has_state(out, process_index, process_count):
    try:
      return resume_lib.RunState(out, **kw)
    except UserError:
      if not force:
        raise
  else:
    check_outputs_free(out, items, force=force)
  if force:
    resume_lib.reset_state(out, process_index, process_count)
    for it in items:
      d = output_dir(out, it)
      if d.is_dir() and not d.is_symlink():
        shutil.rmtree(d)
      elif d.exists() or d.is_symlink():
        d.unlink()
  return resume_lib.RunState(out, **kw)


def run_items(items: Sequence[Item], inverter: Inverter, *, out: str | os.PathLike,
              force: bool = False, progress: Progress | None = None,
              run_info: Mapping[str, Any] | None = None,
              latents_meta: Mapping[str, Any] | None = None,
              on_written: Callable[[Item, Path, ImageResult], Any] | None = None,
              state: resume_lib.RunState | None = None) -> list[Path]:
  """Invert ``items`` in batches of ``inverter.batch_size`` and write each image's outputs as
  soon as its batch finishes. Returns the output directories in input order.

  With a run ``state`` (``open_run_state``) the run is resumable: batches have a fixed
  composition (batch j = items jB .. jB+B-1); a batch whose outputs all exist is skipped; a
  batch with a checkpoint continues from it (``inverter.checkpoint_every`` > 0 writes them);
  each image is journaled once its directory is in place; only missing outputs are written.
  """
  if state is None:
    check_outputs_free(out, items, force=force)
  groups = batches(items, inverter.batch_size)
  progress = progress or Progress(batches=len(groups), iterations=inverter.settings.iterations,
                                  enabled=False)
  outs = {it.name: output_dir(out, it) for it in items}
  finished = state.reconcile(outs) if state is not None else set()
  todo = [j for j, g in enumerate(groups) if not all(it.name in finished for it in g)]
  if finished:
    progress.message(f"resuming {out}: {len(finished)} of {len(items)} image(s) already "
                     "finished")
  if todo:
    dt = inverter.compile(groups[todo[0]])
    progress.message(f"compiled in {dt:.1f} s" if dt else "compiled program reused")
  ckpt_batch = state.latest_checkpoint_batch() if state is not None else None
  written = []
  info = dict(run_info or {})
  for b, group in enumerate(groups):
    names = [it.name for it in group]
    if b not in todo:
      written.extend(outs[n] for n in names)
      if ckpt_batch == b:
        state.clear_checkpoints(b)
      continue
    progress.start_batch(b, names)
    start = None
    if ckpt_batch == b:
      ck = state.load_checkpoint(*inverter.initial_state(group))
      if (ck is not None and ck.batch == b and ck.items == names
          and ck.extra.get("plan") == inverter.plan()):
        start = ck
        progress.message(f"[batch {b + 1}/{len(groups)}] resuming from the checkpoint at "
                         f"iteration {ck.state.iteration}")
      else:
        state.clear_checkpoints(b)
    save = None
    if state is not None and inverter.checkpoint_every:
      save = (lambda bs, extra, b=b, names=names:
              state.save_checkpoint(b, names, bs, extra=extra))
    results = inverter.run(group, on_chunk=progress.chunk, start=start, on_checkpoint=save)
    for it, res in zip(group, results):
      if state is not None and state.is_finished(it.name, outs[it.name]):
        written.append(outs[it.name])   # written before an interruption: kept as it is
        continue
      time_info = {"compile_seconds": round(inverter.compile_seconds, 3),
                   "images_in_batch": len(group), "batch_size": inverter.batch_size}
      path = write_outputs(out, it, res, force=force, run_info={**info, "time": time_info},
                           latents_meta=latents_meta or {}, state=state)
      if state is not None:
        state.mark_finished(it.name, path)
      written.append(path)
      if on_written is not None:
        on_written(it, path, res)
    if state is not None:
      state.clear_checkpoints(b)
  return written


__all__ = ["Settings", "Item", "ImageResult", "Inverter", "Progress", "run_items",
           "write_outputs", "check_outputs_free", "save_latents", "load_latents",
           "check_latents", "chunk_plan", "default_chunk", "batches", "output_dir",
           "open_run_state", "OUTPUT_FILES"]
