"""The engine: one compiled step and one chunk loop for every inversion in mgan_jax.

Every optimisation -- one image from the library, a batch from the CLI, a checkpointed run on a
TPU host, a researcher's own objective -- runs here::

    program(latents (B, ...), opt_state (B, ...), args)          ONE compiled XLA program
      = shard_map over the devices of a 1-D mesh (axis 'data') of
          vmap over the images of
            lax.scan over `steps` iterations of
              value_and_grad(loss_fn)(latents, *args) -> optax update     (optimize.scan_steps)
            [then render_fn(latents, *args): the image after the chunk]
      -> (latents, opt_state, losses (B, steps), images (B, R, R, 3) | None)

* ``loss_fn(latents, *args) -> scalar`` is one image's loss; any *hashable* callable works
  (``objective.Objective``, a module-level function, a ``functools.partial`` of one with
  hashable keywords). Equal functions hit the same compiled program. ``render_fn(latents, *args)
  -> (1, R, R, 3) or (R, R, 3)`` is optional: with it the program also returns each image after
  every chunk (progress, traces) and ``run`` renders the final images.
* ``args`` are the loss's other arguments; ``arg_axes[i]`` is 0 when ``args[i]`` has a leading
  image axis (targets) and None when it is shared (generator and VGG params: replicated on every
  device, never closed over, no gradients). Gradients are taken w.r.t. the latents only.
* Each image has its own latents, optimiser state and loss mean, and nothing crosses devices,
  so a batch follows its images' single-image dynamics. How the images of a device's slice
  are computed is ``per_image``: ``'vmap'`` (default) batches them into the same operations
  (fastest; the results equal the single-image runs up to float rounding, which differs between
  batch sizes and which a long optimisation amplifies, docs/batch.md), ``'map'`` runs them one
  after the other inside the program (``lax.map``), so every image's arithmetic is the same
  whatever the batch size or device count: the results are bit-identical to the single-image
  runs of the same mode on the same machine, at up to half the throughput on a CPU.
* A batch is padded to a multiple of the mesh size (and to ``batch_size``, so a short tail
  batch reuses the program) by repeating its last image; the padding is dropped.
* ``iterations`` run as a fixed sequence of compiled chunks (``chunk_boundaries``): every
  multiple of ``chunk`` and of ``checkpoint_every``. The sequence is a function of those three
  numbers only, so a run resumed from a checkpoint executes exactly the uninterrupted run's
  programs (bit-identical results on the same machine).
* Programs are compiled ahead of time (``Engine.compile``) and cached for the life of the
  process per (loss_fn, optimiser, steps, render_fn, mesh, argument shapes).

Library entry points: ``Engine`` (a configured batch optimiser), ``run_batch`` (one call) and
``optimize`` (one image, no leading axis).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mgan_jax import optimize as optimize_lib
from mgan_jax import sharding
from mgan_jax.sharding import AXIS

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Chunking.
# ----------------------------------------------------------------------------------------------
def chunk_boundaries(iterations: int, chunk: int, checkpoint_every: int = 0) -> tuple[int, ...]:
  """Ends of the compiled chunks: multiples of ``chunk`` and of ``checkpoint_every`` (0 = none)
  below ``iterations``, then ``iterations``. E.g. (10, 4, 3) -> (3, 4, 6, 8, 9, 10)."""
  if iterations < 0 or chunk < 1 or checkpoint_every < 0:
    raise ValueError(f"invalid chunking: iterations={iterations}, chunk={chunk}, "
                     f"checkpoint_every={checkpoint_every}")
  ends = set(range(chunk, iterations, chunk))
  if checkpoint_every:
    ends |= set(range(checkpoint_every, iterations, checkpoint_every))
  if iterations:
    ends.add(iterations)
  return tuple(sorted(ends))


def chunk_plan(iterations: int, chunk: int, checkpoint_every: int = 0) -> list[int]:
  """Steps of each compiled call (the differences of ``chunk_boundaries``)."""
  ends = chunk_boundaries(iterations, chunk, checkpoint_every)
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


def unroll_for(steps: int) -> int:
  """``lax.scan`` unroll of a chunk: 1 (a rolled loop) normally. Under
  ``jax_disable_most_optimizations`` (fast compiles, the test configuration) XLA:CPU runs
  convolutions ~50x slower inside a while loop, so short chunks are unrolled then."""
  return steps if jax.config.read("jax_disable_most_optimizations") and steps <= 16 else 1


# ----------------------------------------------------------------------------------------------
# States and results.
# ----------------------------------------------------------------------------------------------
class BatchState(NamedTuple):
  """A batch in flight, on the host, without padding (what a checkpoint holds).

  iteration: steps done; latents / opt_state: numpy trees with leading axis n (images);
  losses: (n, iteration) float32, losses[:, i] before step i.
  """
  iteration: int
  latents: Any
  opt_state: Any
  losses: np.ndarray


class BatchResult(NamedTuple):
  latents: Any              # numpy tree (n, ...): final latents of the real images
  losses: np.ndarray        # (n, iterations) float32, losses[:, i] before step i
  opt_state: Any            # numpy tree (n, ...)
  images: np.ndarray | None  # (n, R, R, 3) render_fn of the final latents, or None
  seconds: float            # wall time of the run (compilation included)
  compile_seconds: float    # of which compiling (0 when the programs were cached)
  padding: int              # padding images computed and dropped


# ----------------------------------------------------------------------------------------------
# The compiled programs.
# ----------------------------------------------------------------------------------------------
PER_IMAGE = ("vmap", "map")


def _one_image(fn: Callable, lat: Any, args: tuple) -> Array:
  img = fn(lat, *args)
  return img[0] if img.ndim == 4 else img


def _per_image(fn: Callable, per_image: str, arg_axes: tuple, batched: tuple, args_b: tuple):
  """``fn(*batched_i, args_i)`` for every image i of a device's slice: vmapped, or mapped one
  image after the other (``lax.map``; the shared args are passed through, not mapped)."""
  if per_image == "vmap":
    return jax.vmap(fn, in_axes=(0,) * len(batched) + (arg_axes,))(*batched, args_b)
  per = tuple(a if ax == 0 else None for a, ax in zip(args_b, arg_axes))

  def body(x):
    *b, per_i = x
    a = tuple(p if ax == 0 else s for p, s, ax in zip(per_i, args_b, arg_axes))
    return fn(*b, a)

  return jax.lax.map(body, (*batched, per))


def _chunk_program(loss_fn, tx, steps, unroll, render_fn, arg_axes, per_image, mesh, latents,
                   opt_state, args):
  def local(lat_b, st_b, args_b):
    def one(lat, st, a):
      lat, st, losses = optimize_lib.scan_steps(loss_fn, tx, steps, lat, st, a, unroll=unroll)
      return lat, st, losses, (_one_image(render_fn, lat, a) if render_fn else None)
    return _per_image(one, per_image, arg_axes, (lat_b, st_b), args_b)

  data = P(AXIS)
  arg_specs = tuple(data if a == 0 else P() for a in arg_axes)
  out_specs = (data, data, data, data if render_fn else None)
  return jax.shard_map(local, mesh=mesh, in_specs=(data, data, arg_specs),
                       out_specs=out_specs)(latents, opt_state, args)


def _render_program(render_fn, arg_axes, per_image, mesh, latents, args):
  def local(lat_b, args_b):
    return _per_image(lambda lat, a: _one_image(render_fn, lat, a), per_image, arg_axes,
                      (lat_b,), args_b)

  arg_specs = tuple(P(AXIS) if a == 0 else P() for a in arg_axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), arg_specs),
                       out_specs=P(AXIS))(latents, args)


_CHUNK_JIT = jax.jit(_chunk_program, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7),
                     donate_argnums=(8, 9))
_RENDER_JIT = jax.jit(_render_program, static_argnums=(0, 1, 2, 3))
_PROGRAMS: dict = {}
_PROGRAMS_LOCK = threading.Lock()
_COMPILING: dict = {}     # key -> lock held while that program compiles


def _signature(tree: Any) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return (treedef, tuple((tuple(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype")
                                                  else x.dtype)) for x in leaves))


def _abstract(tree: Any, sharding_: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype,
      sharding=sharding_), tree)


def _compiled(kind: str, static: tuple, trees: tuple, shardings: tuple) -> tuple[Any, float]:
  """(executable, seconds compiling now; 0 when cached) for ``kind`` ('chunk' | 'render').

  Thread-safe: engines may compile from several threads at once (XLA releases the GIL while
  compiling, so distinct programs compile in parallel); a program requested by two threads is
  compiled once, the second waits for it."""
  key = (kind, static, tuple(_signature(t) for t in trees))
  with _PROGRAMS_LOCK:
    hit = _PROGRAMS.get(key)
    if hit is not None:
      return hit, 0.0
    key_lock = _COMPILING.setdefault(key, threading.Lock())
  with key_lock:
    hit = _PROGRAMS.get(key)
    if hit is not None:
      return hit, 0.0
    t0 = time.perf_counter()
    fn = _CHUNK_JIT if kind == "chunk" else _RENDER_JIT
    abstract = tuple(_abstract(t, s) if not isinstance(s, tuple) else
                     tuple(_abstract(a, si) for a, si in zip(t, s))
                     for t, s in zip(trees, shardings))
    exe = fn.lower(*static, *abstract).compile()
    with _PROGRAMS_LOCK:
      _PROGRAMS[key] = exe
      _COMPILING.pop(key, None)
    return exe, time.perf_counter() - t0


def trim_heap() -> bool:
  """Return freed heap pages to the OS (glibc ``malloc_trim``; False where unavailable).

  XLA's compiler frees a lot of memory that the allocator would otherwise keep: trimming after
  compiling lowers a run's peak RSS by about a third on the CPU (docs/engine.md)."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True
  except (OSError, AttributeError):
    return False


def clear_cache() -> None:
  """Forget the compiled programs of this process (e.g. after changing a global JAX option)."""
  with _PROGRAMS_LOCK:
    _PROGRAMS.clear()


# ----------------------------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------------------------
class Engine:
  """A configured batch optimiser (see the module docstring).

  Args:
    loss_fn: one image's ``loss_fn(latents, *args) -> scalar`` (hashable).
    optimizer: ``optimize.OptimizerConfig`` or an optax transformation (one object kept alive
      across calls, since jit hashes it by identity).
    arg_axes: per loss argument, 0 (per image, leading axis) or None (shared).
    iterations: steps per image; chunk: steps per compiled call (progress granularity);
    checkpoint_every: K > 0 also ends a chunk at every multiple of K and calls
      ``on_checkpoint`` there.
    render_fn: optional ``render_fn(latents, *args) -> image`` (hashable).
    mesh: devices the batch is split over (default ``sharding.local_mesh()``).
    batch_size: images per program; every batch is padded to it (and to a multiple of the
      mesh size), so one program serves full and tail batches.
    per_image: ``'vmap'`` (default, fastest) or ``'map'`` (bit-identical to single-image runs
      whatever the batch size; see the module docstring).
  """

  def __init__(self, loss_fn: Callable[..., Array], *,
               optimizer: optimize_lib.OptimizerConfig | optax.GradientTransformation,
               arg_axes: Sequence[int | None], iterations: int, chunk: int = 100,
               checkpoint_every: int = 0, render_fn: Callable[..., Array] | None = None,
               mesh: Mesh | None = None, batch_size: int = 1, per_image: str = "vmap"):
    if per_image not in PER_IMAGE:
      raise ValueError(f"per_image must be one of {PER_IMAGE}, got {per_image!r}")
    self.per_image = per_image
    if iterations < 0:
      raise ValueError(f"iterations must be >= 0, got {iterations}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.arg_axes = tuple(None if a is None else int(a) for a in arg_axes)
    if any(a not in (0, None) for a in self.arg_axes):
      raise ValueError(f"arg_axes entries must be 0 (per image) or None (shared), got "
                       f"{self.arg_axes}")
    self.loss_fn = loss_fn
    self.render_fn = render_fn
    self.tx = optimize_lib.as_transformation(optimizer)
    self.iterations = int(iterations)
    self.chunk = int(chunk)
    self.checkpoint_every = int(checkpoint_every)
    self.plan = chunk_plan(self.iterations, self.chunk, self.checkpoint_every)
    self.mesh = mesh if mesh is not None else sharding.local_mesh()
    self.batch_size = int(batch_size)
    self.padded_size = sharding.padded_size(self.batch_size, self.mesh.size)
    self.compile_seconds = 0.0
    self._data = NamedSharding(self.mesh, P(AXIS))
    self._repl = NamedSharding(self.mesh, P())

  # ----- pieces ------------------------------------------------------------------------------
  def init_state(self, latents: Any) -> Any:
    """Per-image optimiser state of a batch of latents (host numpy, leading axis n)."""
    return jax.device_get(jax.vmap(self.tx.init)(latents))

  def state_shapes(self, latents: Any) -> Any:
    """Shape structs of ``init_state(latents)`` (nothing computed): a template for restoring."""
    return jax.eval_shape(jax.vmap(self.tx.init), latents)

  def _pad(self, tree: Any, n: int) -> Any:
    if n > self.padded_size:
      raise ValueError(f"a batch holds at most {self.batch_size} images, got {n}")
    return sharding.pad_batch(tree, self.padded_size)

  def _place_args(self, args: tuple, n: int) -> tuple:
    return tuple(jax.device_put(self._pad(a, n), self._data) if ax == 0
                 else jax.device_put(a, self._repl) for a, ax in zip(args, self.arg_axes))

  def _arg_shardings(self) -> tuple:
    return tuple(self._data if ax == 0 else self._repl for ax in self.arg_axes)

  def _programs(self, lat, st, args) -> tuple[dict, Any]:
    """The compiled chunk programs (by step count) and the render program (or None)."""
    compiled_before = self.compile_seconds
    progs = {}
    for steps in sorted(set(self.plan)):
      static = (self.loss_fn, self.tx, steps, unroll_for(steps), self.render_fn, self.arg_axes,
                self.per_image, self.mesh)
      progs[steps], dt = _compiled("chunk", static, (lat, st, args),
                                   (self._data, self._data, self._arg_shardings()))
      self.compile_seconds += dt
    render = None
    if self.render_fn is not None:
      render, dt = _compiled("render", (self.render_fn, self.arg_axes, self.per_image, self.mesh),
                             (lat, args),
                             (self._data, self._arg_shardings()))
      self.compile_seconds += dt
    if self.compile_seconds > compiled_before:
      trim_heap()
    return progs, render

  def compile(self, latents: Any, args: Sequence[Any]) -> float:
    """Compile the programs for batches shaped like (``latents``, ``args``) now (leading axis n
    of the per-image entries); returns the seconds spent (0 when cached)."""
    before = self.compile_seconds
    n = sharding.batch_size_of(latents)
    lat = self._pad(jax.device_get(latents), n)
    st = self._pad(self.init_state(jax.device_get(latents)), n)
    placed = tuple(self._pad(a, n) if ax == 0 else a for a, ax in zip(args, self.arg_axes))
    self._programs(lat, st, placed)
    return self.compile_seconds - before

  def chunk_program(self, latents: Any, args: Sequence[Any]) -> tuple[Callable, tuple]:
    """The compiled program of the plan's first chunk and its placed inputs, for benchmarks:
    ``program(latents, opt_state, args) -> (latents, opt_state, losses (B, steps), images)``
    (latents and opt_state are donated). Compilation time is added to ``compile_seconds``."""
    n = sharding.batch_size_of(latents)
    lat = jax.device_put(self._pad(jax.device_get(latents), n), self._data)
    st = jax.device_put(self._pad(self.init_state(jax.device_get(latents)), n), self._data)
    placed = self._place_args(tuple(args), n)
    progs, _ = self._programs(lat, st, placed)
    return progs[self.plan[0]], (lat, st, placed)

  # ----- running ----------------------------------------------------------------------------
  def render(self, latents: Any, args: Sequence[Any]) -> np.ndarray:
    """Images (n, R, R, 3) of a batch of latents with ``render_fn`` (host numpy)."""
    if self.render_fn is None:
      raise ValueError("this engine has no render_fn")
    n = sharding.batch_size_of(latents)
    lat = jax.device_put(self._pad(jax.device_get(latents), n), self._data)
    args = self._place_args(tuple(args), n)
    _, render = self._programs(lat, self._pad(self.init_state(jax.device_get(latents)), n),
                               args)
    return np.asarray(jax.device_get(render(lat, args)))[:n]

  def run(self, latents: Any, args: Sequence[Any], *, start: BatchState | None = None,
          on_chunk: Callable[[int, np.ndarray, np.ndarray | None], Any] | None = None,
          on_checkpoint: Callable[[BatchState], Any] | None = None) -> BatchResult:
    """Optimise a batch of n images (n <= batch_size), each as its own single-image run.

    Args:
      latents: tree with leading axis n: the initial latents (only the tree structure is
        used when ``start`` is given).
      args: the loss arguments (per ``arg_axes``).
      start: continue from this state (a checkpoint); the remaining chunks are the
        uninterrupted run's, so the results are identical.
      on_chunk: ``on_chunk(done, losses (n, steps), images (n, R, R, 3) or None)`` after every
        chunk.
      on_checkpoint: ``on_checkpoint(BatchState)`` after every chunk ending at a multiple of
        ``checkpoint_every`` below ``iterations``.
    Returns: ``BatchResult`` (host numpy, padding removed).
    """
    t0 = time.perf_counter()
    compile_before = self.compile_seconds
    args = tuple(args)
    if len(args) != len(self.arg_axes):
      raise ValueError(f"arg_axes has {len(self.arg_axes)} entries for {len(args)} args")
    if start is not None:
      done = int(start.iteration)
      lat_host, st_host = start.latents, start.opt_state
      n = sharding.batch_size_of(lat_host)
      traces = [np.asarray(start.losses, np.float32).reshape(n, done)]
      if done and done not in chunk_boundaries(self.iterations, self.chunk,
                                               self.checkpoint_every):
        raise ValueError(f"cannot resume at iteration {done}: not a chunk boundary")
    else:
      done = 0
      lat_host = jax.device_get(latents)
      n = sharding.batch_size_of(lat_host)
      st_host = self.init_state(lat_host)
      traces = []
    lat = jax.device_put(self._pad(lat_host, n), self._data)
    st = jax.device_put(self._pad(st_host, n), self._data)
    placed = self._place_args(args, n)
    progs, render = self._programs(lat, st, placed)
    offset = 0
    for steps in self.plan:
      offset += steps
      if offset <= done:
        continue                      # done before the checkpoint this run resumed from
      lat, st, losses, images = progs[steps](lat, st, placed)
      losses = np.asarray(jax.device_get(losses))[:n]
      traces.append(losses)
      done = offset
      if on_chunk is not None:
        on_chunk(done, losses, None if images is None else np.asarray(images)[:n])
      if (on_checkpoint is not None and self.checkpoint_every
          and done % self.checkpoint_every == 0 and done < self.iterations):
        on_checkpoint(BatchState(done, sharding.unpad(lat, n), sharding.unpad(st, n),
                                 np.concatenate(traces, axis=1)))
    images = None if render is None else np.asarray(jax.device_get(render(lat, placed)))[:n]
    trace = np.concatenate(traces, axis=1) if traces else np.zeros((n, 0), np.float32)
    return BatchResult(sharding.unpad(lat, n), trace.astype(np.float32), sharding.unpad(st, n),
                       images, time.perf_counter() - t0, self.compile_seconds - compile_before,
                       self.padded_size - n)


def run_batch(loss_fn: Callable[..., Array], latents: Any, args: Sequence[Any], *,
              arg_axes: Sequence[int | None],
              optimizer: optimize_lib.OptimizerConfig | optax.GradientTransformation =
              optimize_lib.OptimizerConfig(),
              iterations: int, chunk: int = 100, checkpoint_every: int = 0,
              render_fn: Callable[..., Array] | None = None, mesh: Mesh | None = None,
              pad_to: int = 0, per_image: str = "vmap", start: BatchState | None = None,
              on_chunk: Callable[[int, np.ndarray, np.ndarray | None], Any] | None = None,
              on_checkpoint: Callable[[BatchState], Any] | None = None) -> BatchResult:
  """Optimise a batch of n images in one call: ``Engine(...).run(...)`` with batch_size
  max(n, ``pad_to``). Example::

      res = run_batch(Objective(gen, method='multi_z', layer=6), latents_b,
                      (targets_b, gen_params, vgg_params), arg_axes=(0, None, None),
                      iterations=3000, optimizer=OptimizerConfig('sgd', lr=1.0))
      res.latents  # numpy tree (n, ...); res.losses (n, 3000)
  """
  ref = start.latents if start is not None else latents
  n = sharding.batch_size_of(ref)
  eng = Engine(loss_fn, optimizer=optimizer, arg_axes=arg_axes, iterations=iterations,
               chunk=chunk, checkpoint_every=checkpoint_every, render_fn=render_fn, mesh=mesh,
               batch_size=max(n, pad_to), per_image=per_image)
  return eng.run(latents, args, start=start, on_chunk=on_chunk, on_checkpoint=on_checkpoint)


class OptimizeResult(NamedTuple):
  latents: Any          # final latents (after the last step), numpy
  losses: np.ndarray    # (iterations,) float32, losses[i] before step i
  opt_state: Any
  seconds: float        # wall time of the loop (compilation included)


def optimize(loss_fn: Callable[..., Array], latents: Any, args: Sequence[Any], *,
             optimizer: optimize_lib.OptimizerConfig | optax.GradientTransformation =
             optimize_lib.OptimizerConfig(),
             iterations: int, chunk: int = 100, per_image: str = "vmap",
             callback: Callable[[int, np.ndarray], Any] | None = None) -> OptimizeResult:
  """One image (no leading axis): ``run_batch`` on a batch of one, on one device.

  ``callback(done_iterations, chunk_losses (steps,))`` after every chunk. All ``args`` are
  shared (the image's target included). The input latents are never donated.
  """
  one = jax.tree.map(lambda x: np.asarray(x)[None], jax.device_get(latents))
  cb = None if callback is None else (lambda done, losses, _: callback(done, losses[0]))
  res = run_batch(loss_fn, one, tuple(args), arg_axes=(None,) * len(tuple(args)),
                  optimizer=optimizer, iterations=iterations, chunk=chunk,
                  mesh=sharding.local_mesh(jax.local_devices()[:1]), per_image=per_image,
                  on_chunk=cb)
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  return OptimizeResult(first(res.latents), res.losses[0], first(res.opt_state), res.seconds)


__all__ = ["PER_IMAGE", "Engine", "BatchState", "BatchResult", "run_batch", "optimize", "OptimizeResult",
           "chunk_boundaries", "chunk_plan", "default_chunk", "unroll_for", "clear_cache",
           "trim_heap"]
