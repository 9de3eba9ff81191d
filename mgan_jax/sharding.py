"""Devices and processes: meshes, padding and placement of batches, one share of the inputs
per process.

Design (data parallel, nothing shared between images but the weights):

* **Within a process**: a 1-D ``Mesh`` over the process's devices with one axis ``'data'``.
  A batch of B images (per-image latents, optimiser state and targets) is padded to a multiple
  of the device count by repeating its last image (``pad_batch``; the padding is discarded
  afterwards, ``unpad``) and placed with ``NamedSharding(mesh, P('data'))``; the generator and
  VGG params are replicated (``P()``). ``mgan_jax.engine`` compiles the program that runs on
  this placement.
* **Across processes** (hosts of a TPU pod slice, or several processes on a multi-GPU machine):
  ``initialize_distributed`` joins them with ``jax.distributed.initialize``; each process takes
  a contiguous share of the input list (``process_share``), runs it on a *process-local* mesh
  over ``jax.local_devices()``, and writes its own outputs (and its own resume state). No
  cross-process collective is ever issued, so processes never wait on each other while working
  and an uneven split (or a preempted host) does not stall the others. A global mesh over all
  hosts would only add synchronisation: inversion has no cross-image reduction to share.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

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


def unpad(tree: Any, n: int) -> Any:
  """Host numpy copy of the first ``n`` images of every leaf (drops the padding)."""
  return jax.tree.map(lambda x: np.asarray(x)[:n], jax.device_get(tree))


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


__all__ = ["AXIS", "local_mesh", "padded_size", "batch_size_of", "pad_batch", "unpad",
           "initialize_distributed", "share_bounds", "process_share", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]
