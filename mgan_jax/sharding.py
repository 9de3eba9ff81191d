"""Many images per compiled step, sharded over devices; one share of the inputs per process.

Design (data parallel, nothing shared between images but the weights):

* **Within a process**: a 1-D ``Mesh`` over the process's devices with one axis ``'data'``.
  A batch of B images (per-image latents, per-image optimiser state, per-image targets) is
  padded to a multiple of the device count by repeating its last image (``shard_batch``; the
  padding is discarded afterwards) and placed with ``NamedSharding(mesh, P('data'))``; the
  generator and VGG params are replicated (``P()``). ``batched_chunk`` compiles
  ``shard_map(vmap(optimize.scan_steps))``: each device runs ``steps`` optimiser steps of its own
  images; nothing crosses devices (no collective in the program; tested), so every image follows
  its own single-image dynamics (its own loss mean, its own Adam moments).
* **Across processes** (hosts of a TPU pod slice, or several processes on a multi-GPU machine):
  ``initialize_distributed`` joins them with ``jax.distributed.initialize``; each process takes
  a contiguous share of the input list (``process_share``), runs it on a *process-local* mesh
  over ``jax.local_devices()``, and writes its own outputs (and its own resume state). No
  cross-process collective is ever issued, so processes never wait on each other while working
  and an uneven split (or a preempted host) does not stall the others. A global mesh over all
  hosts would only add synchronisation: inversion has no cross-image reduction to share.

Chunks: a batch runs ``iterations`` steps as a sequence of compiled ``lax.scan`` chunks whose
boundaries are ``chunk_boundaries(iterations, chunk, checkpoint_every)``: every multiple of
``chunk`` and of ``checkpoint_every``, plus ``iterations``. They depend only on those three
numbers, so a run resumed from a checkpoint at iteration i executes exactly the same chunks as
the uninterrupted run (bit-identical results on the same machine).

Example::

    mesh = local_mesh()
    res = optimize_batch(Objective(gen, method='multi_z', layer=6), latents_b,
                         (targets_b, gen_params, vgg_params), arg_axes=(0, None, None),
                         optimizer=OptimizerConfig(), iterations=3000, mesh=mesh)
    res.latents  # numpy tree (B, ...), res.losses (B, 3000)
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mgan_jax import optimize as opt_lib
from mgan_jax.errors import UserError

AXIS = "data"
ENV_COORDINATOR = "MGAN_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "MGAN_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MGAN_JAX_PROCESS_ID"


# ----------------------------------------------------------------------------------------------
# Meshes and placement.
# ----------------------------------------------------------------------------------------------
def local_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """1-D mesh (axis ``'data'``) over ``devices`` (default: this process's ``jax.local_devices()``).

  In a single process this is every device; in a multi-process run it is the process-local mesh
  each process uses for its own share of the images.
  """
  devs = list(jax.local_devices() if devices is None else devices)
  if not devs:
    raise ValueError("local_mesh needs at least one device")
  return Mesh(np.asarray(devs, dtype=object), (AXIS,))


def padded_size(n: int, multiple: int) -> int:
  """Smallest multiple of ``multiple`` that is >= ``n`` (and >= ``multiple``)."""
  if n < 1 or multiple < 1:
    raise ValueError(f"padded_size needs n >= 1 and multiple >= 1, got {n}, {multiple}")
  return int(math.ceil(n / multiple)) * multiple


def batch_size_of(tree: Any) -> int:
  """Length of the leading (image) axis shared by every leaf of ``tree``."""
  sizes = {int(np.shape(x)[0]) for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f"leaves of a batch must share their leading axis, got sizes {sorted(sizes)}")
  return sizes.pop()


def pad_batch(tree: Any, size: int) -> Any:
  """Pad the leading axis of every leaf to ``size`` by repeating the last image (host numpy).

  Repeating a real image (rather than zeros) keeps the padding numerically harmless (no 0/0 in a
  normalisation); the padded images are computed and then dropped.
  """
  def one(x):
    x = np.asarray(x)
    n = x.shape[0]
    if n > size:
      raise ValueError(f"cannot pad a batch of {n} down to {size}")
    if n == size:
      return x
    return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)

  return jax.tree.map(one, tree)


def shard_batch(tree: Any, mesh: Mesh, *, pad_to: int = 0) -> tuple[Any, int]:
  """Place a batch (leading image axis B on every leaf) on ``mesh``, split over ``'data'``.

  The batch is padded (``pad_batch``) to the smallest multiple of the mesh's device count that
  is >= max(B, ``pad_to``) (``pad_to``: the full batch size, so a short tail batch reuses the
  compiled program). Returns
  (sharded tree with leading axis B', number of padding images B' - B). The input is copied to
  the host first, so the caller's arrays are never aliased (the chunk step donates its state).
  """
  tree = jax.device_get(tree)
  n = batch_size_of(tree)
  size = padded_size(max(n, pad_to), mesh.size)
  padded = pad_batch(tree, size)
  return jax.device_put(padded, NamedSharding(mesh, P(AXIS))), size - n


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place ``tree`` (generator / VGG params) fully on every device of ``mesh`` (``P()``)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def unpad(tree: Any, n: int) -> Any:
  """Host numpy copy of the first ``n`` images of every leaf (drops the padding)."""
  return jax.tree.map(lambda x: np.asarray(x)[:n], jax.device_get(tree))


# ----------------------------------------------------------------------------------------------
# The compiled chunk step.
# ----------------------------------------------------------------------------------------------
_CHUNK_FNS: dict = {}


def batched_chunk(loss_fn: Callable[..., jax.Array], tx: optax.GradientTransformation,
                  steps: int, mesh: Mesh, arg_axes: Sequence[int | None]) -> Callable:
  """Jitted ``(latents_b, opt_state_b, args) -> (latents_b, opt_state_b, losses (B, steps))``.

  ``vmap(optimize.scan_steps)`` over the leading image axis of the latents, the optimiser state
  and the args whose ``arg_axes`` entry is 0 (targets); args with ``None`` (generator and VGG
  params) are shared and replicated. Under ``shard_map`` each device runs the images of its
  slice of ``'data'`` and no value crosses devices. The state buffers are donated. Cached per
  (loss_fn, tx, steps, mesh, arg_axes), so repeated calls reuse one compilation.
  """
  arg_axes = tuple(None if a is None else int(a) for a in arg_axes)
  if any(a not in (0, None) for a in arg_axes):
    raise ValueError(f"arg_axes entries must be 0 (per image) or None (shared), got {arg_axes}")
  key = (loss_fn, tx, int(steps), mesh, arg_axes)
  fn = _CHUNK_FNS.get(key)
  if fn is None:
    def per_image(lat, st, args):
      return opt_lib.scan_steps(loss_fn, tx, int(steps), lat, st, args)

    vmapped = jax.vmap(per_image, in_axes=(0, 0, arg_axes))
    arg_specs = tuple(P(AXIS) if a == 0 else P() for a in arg_axes)
    mapped = jax.shard_map(vmapped, mesh=mesh, in_specs=(P(AXIS), P(AXIS), arg_specs),
                           out_specs=(P(AXIS), P(AXIS), P(AXIS)))
    fn = jax.jit(mapped, donate_argnums=(0, 1))
    _CHUNK_FNS[key] = fn
  return fn


def chunk_boundaries(iterations: int, chunk: int, checkpoint_every: int = 0) -> tuple[int, ...]:
  """Ends of the compiled chunks: multiples of ``chunk`` and of ``checkpoint_every`` (0 = none)
  below ``iterations``, then ``iterations``. A pure function of its arguments, so a resumed
  run repeats the uninterrupted run's chunks exactly. E.g. (10, 4, 3) -> (3, 4, 6, 8, 9, 10).
  """
  if iterations < 0 or chunk < 1 or checkpoint_every < 0:
    raise ValueError(f"invalid chunking: iterations={iterations}, chunk={chunk}, "
                     f"checkpoint_every={checkpoint_every}")
  ends = set(range(chunk, iterations, chunk))
  if checkpoint_every:
    ends |= set(range(checkpoint_every, iterations, checkpoint_every))
  if iterations:
    ends.add(iterations)
  return tuple(sorted(ends))


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
  latents: Any          # numpy tree (n, ...): final latents of the real images
  losses: np.ndarray    # (n, iterations) float32
  opt_state: Any        # numpy tree (n, ...)
  seconds: float        # wall time (compilation included)
  padding: int          # padding images that were computed and dropped


def init_state(tx: optax.GradientTransformation, latents: Any) -> Any:
  """Per-image optimiser state of a batch of latents: ``vmap(tx.init)`` (host numpy)."""
  return jax.device_get(jax.vmap(tx.init)(latents))


def state_shapes(optimizer: opt_lib.OptimizerConfig | optax.GradientTransformation,
                 latents: Any) -> Any:
  """Shape structs of ``init_state`` (nothing computed): a template for restoring."""
  tx = opt_lib.as_transformation(optimizer)
  return jax.eval_shape(jax.vmap(tx.init), latents)


def optimize_batch(loss_fn: Callable[..., jax.Array], latents: Any, args: Sequence[Any], *,
                   arg_axes: Sequence[int | None],
                   optimizer: opt_lib.OptimizerConfig | optax.GradientTransformation =
                   opt_lib.OptimizerConfig(),
                   iterations: int, chunk: int = 100, checkpoint_every: int = 0,
                   mesh: Mesh | None = None, pad_to: int = 0, start: BatchState | None = None,
                   on_checkpoint: Callable[[BatchState], Any] | None = None,
                   callback: Callable[[int, np.ndarray], Any] | None = None) -> BatchResult:
  """Optimise a batch of n images, each exactly as its own single-image run would.

  Args:
    loss_fn: one image's ``loss_fn(latents, *args) -> scalar`` (e.g. ``objective.Objective``).
    latents: tree with leading axis n (per-image initial latents; ignored when ``start``).
    args: the loss arguments; ``arg_axes[i]`` is 0 when ``args[i]`` has a leading image axis
      (targets), None when shared (generator / VGG params: replicated over the mesh).
    optimizer, iterations, chunk: as ``optimize.optimize`` (per-image optimiser state).
    checkpoint_every: K > 0 calls ``on_checkpoint(BatchState)`` after every iteration that is a
      multiple of K (and below ``iterations``); it also sets chunk boundaries.
    mesh: default ``local_mesh()``; the batch is padded to a multiple of its size.
    pad_to: also pad to at least this many images (the run's batch size: one compilation for
      full and tail batches).
    start: resume from this state (a checkpoint), continuing with the same chunk boundaries.
    callback: ``callback(done, losses (n, steps))`` after every chunk.
  Returns: ``BatchResult`` (host numpy, padding removed).
  """
  if iterations < 0:
    raise ValueError(f"iterations must be >= 0, got {iterations}")
  mesh = local_mesh() if mesh is None else mesh
  tx = opt_lib.as_transformation(optimizer)
  args = tuple(args)
  arg_axes = tuple(arg_axes)
  if len(arg_axes) != len(args):
    raise ValueError(f"arg_axes has {len(arg_axes)} entries for {len(args)} args")
  t0 = time.perf_counter()
  if start is not None:
    done = int(start.iteration)
    lat_host, st_host = start.latents, start.opt_state
    traces = [np.asarray(start.losses, np.float32).reshape(batch_size_of(lat_host), done)]
  else:
    done = 0
    lat_host = jax.device_get(latents)
    st_host = init_state(tx, lat_host)
    traces = []
  n = batch_size_of(lat_host)
  bounds = chunk_boundaries(iterations, chunk, checkpoint_every)
  if done and done not in bounds:
    raise ValueError(f"cannot resume at iteration {done}: not a chunk boundary of {bounds[:8]}")
  lat, pad = shard_batch(lat_host, mesh, pad_to=pad_to)
  st = jax.device_put(pad_batch(st_host, n + pad), NamedSharding(mesh, P(AXIS)))
  placed = tuple(shard_batch(a, mesh, pad_to=pad_to)[0] if ax == 0 else replicate(a, mesh)
                 for a, ax in zip(args, arg_axes))
  for end in bounds:
    if end <= done:
      continue
    fn = batched_chunk(loss_fn, tx, end - done, mesh, arg_axes)
    lat, st, losses = fn(lat, st, placed)
    losses = np.asarray(jax.device_get(losses))[:n]
    traces.append(losses)
    done = end
    if callback is not None:
      callback(done, losses)
    if on_checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 \
        and done < iterations:
      on_checkpoint(BatchState(done, unpad(lat, n), unpad(st, n),
                               np.concatenate(traces, axis=1)))
  trace = (np.concatenate(traces, axis=1) if traces else np.zeros((n, 0), np.float32))
  out_lat, out_st = unpad(lat, n), unpad(st, n)
  return BatchResult(out_lat, trace.astype(np.float32), out_st, time.perf_counter() - t0, pad)


# ----------------------------------------------------------------------------------------------
# Processes.
# ----------------------------------------------------------------------------------------------
def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  v = environ.get(name)
  if v is None or v == "":
    return None
  try:
    return int(v)
  except ValueError:
    raise UserError(f"environment variable {name}={v!r} is not an integer") from None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *,
                           environ: Mapping[str, str] | None = None) -> tuple[int, int]:
  """Join a multi-process run; returns (process_index, process_count).

  Unset arguments fall back to ``MGAN_JAX_COORDINATOR`` / ``MGAN_JAX_NUM_PROCESSES`` /
  ``MGAN_JAX_PROCESS_ID``. Cases:

  * no coordinator and at most one process: nothing to join (single process), returns (0, 1);
  * ``coordinator='auto'``: ``jax.distributed.initialize()`` with no arguments, which detects
    the cluster itself (TPU pod slices, SLURM, Open MPI);
  * ``coordinator='HOST:PORT'`` with ``num_processes`` and ``process_id``: explicit
    (multi-GPU machine or any cluster; process 0 hosts the coordinator on HOST:PORT).

  Must run before anything touches a JAX backend. Calling it again once joined is a no-op.
  """
  env = os.environ if environ is None else environ
  coordinator = coordinator if coordinator is not None else (env.get(ENV_COORDINATOR) or None)
  if num_processes is None:
    num_processes = _env_int(env, ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _env_int(env, ENV_PROCESS_ID)
  if jax.distributed.is_initialized():
    return jax.process_index(), jax.process_count()
  if coordinator == "auto":
    kwargs = {}
    if num_processes is not None:
      kwargs["num_processes"] = num_processes
    if process_id is not None:
      kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()
  if coordinator is None:
    if num_processes is not None and num_processes > 1:
      raise UserError(f"--num-processes {num_processes} needs --coordinator HOST:PORT "
                      f"(or {ENV_COORDINATOR}; 'auto' on a TPU pod or SLURM)")
    return 0, 1
  if num_processes is None or process_id is None:
    raise UserError(f"--coordinator {coordinator} needs --num-processes and --process-id "
                    f"(or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}), or use --coordinator auto")
  if num_processes < 1:
    raise UserError(f"--num-processes must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise UserError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
  if ":" not in coordinator:
    raise UserError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator!r}")
  if num_processes == 1:
    return 0, 1
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return jax.process_index(), jax.process_count()


def share_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of process ``process_index``'s contiguous share of n items (sizes differ by at
  most one; the first ``n % process_count`` processes take one more)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (1 if process_index < extra else 0)


def process_share(items: Sequence[Any], *, process_index: int | None = None,
                  process_count: int | None = None) -> list:
  """This process's contiguous share of ``items`` (default: ``jax.process_index()`` of
  ``jax.process_count()``). Deterministic; the shares of all processes partition ``items`` in
  order."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  lo, hi = share_bounds(len(items), pi, pc)
  return list(items[lo:hi])


__all__ = ["AXIS", "local_mesh", "padded_size", "batch_size_of", "pad_batch", "shard_batch",
           "replicate", "unpad", "batched_chunk", "chunk_boundaries", "BatchState",
           "BatchResult", "init_state", "state_shapes", "optimize_batch", "initialize_distributed",
           "share_bounds", "process_share", "ENV_COORDINATOR", "ENV_NUM_PROCESSES",
           "ENV_PROCESS_ID"]
