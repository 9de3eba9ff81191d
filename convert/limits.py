"""Resource caps for reading weight files (per file, per tensor, per pickle).

A weight file from an unknown source is read under three caps, so that a small hostile file
cannot make the reader allocate much more than the file itself:

* ``max_file_bytes`` -- bytes of one input: the file on disk, and separately everything
  materialised from it (archive members inflated from a wheel / zip / tar.gz, torch storages
  read, arrays built), counted together. Default 2 GiB (the largest official file, a
  torchvision VGG16 ``.pth``, is 0.53 GB and materialises about twice that). Environment ``MGAN_JAX_MAX_FILE_BYTES``; ``python -m convert --max-file-bytes``.
* ``max_tensor_elements`` -- elements of one tensor / array. Default 2**27 (134M: 512 MiB of
  float32; the largest official tensor, VGG16 ``classifier.0.weight``, has 103M).
  ``MGAN_JAX_MAX_TENSOR_ELEMENTS``; ``--max-tensor-elements``.
* ``max_pickle_ops`` -- opcodes executed by one pickle (each creates at most a few hundred
  bytes of Python objects). Default 2,000,000 (an official StyleGAN2 TF pickle needs about
  100k). ``MGAN_JAX_MAX_PICKLE_OPS``; ``--max-pickle-ops``.

Reading a file of S bytes needs at most about ``2 S + 2 max_file_bytes + 200 B max_pickle_ops
+ 12 MB`` beyond the interpreter (docs/security.md).

Values accept a plain integer or a binary suffix (``512M``, ``4G``, ``1T``; ``K`` = 1024).

Public API:

* ``Limits`` -- the three caps (frozen dataclass).
* ``DEFAULTS`` -- the defaults above.
* ``current() -> Limits`` -- the caps in force (an ``override`` block, else the environment,
  else the defaults); a malformed environment value is a ``UserError`` naming the variable.
* ``override(**caps)`` -- context manager setting caps for the code inside it.
* ``parse_size(text, *, what) -> int``.
* ``Budget`` / ``budget()`` -- the running byte count of the arrays built from one file.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
from typing import Iterator, Optional

from mgan_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Limits:
  """Caps applied while reading one weight file (see the module docstring)."""
  max_file_bytes: int = 2 * 1024 ** 3
  max_tensor_elements: int = 2 ** 27
  max_pickle_ops: int = 2_000_000


DEFAULTS = Limits()

#: environment variable of each cap.
ENV = {"max_file_bytes": "MGAN_JAX_MAX_FILE_BYTES",
       "max_tensor_elements": "MGAN_JAX_MAX_TENSOR_ELEMENTS",
       "max_pickle_ops": "MGAN_JAX_MAX_PICKLE_OPS"}

_SUFFIX = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_override: contextvars.ContextVar[Optional[Limits]] = contextvars.ContextVar(
    "mgan_jax_limits", default=None)


def parse_size(text: str, *, what: str) -> int:
  """``'123'``, ``'512M'``, ``'4G'``, ``'2GiB'`` -> a positive int; UserError naming ``what``."""
  m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
  if not m:
    raise UserError(f"{what}: expected a positive integer, optionally with a K/M/G/T suffix, "
                    f"got {text!r}")
  value = int(m.group(1)) * _SUFFIX[m.group(2).upper()]
  if value <= 0:
    raise UserError(f"{what}: must be positive, got {text!r}")
  return value


def current() -> Limits:
  """The caps in force: an enclosing ``override``, else the environment, else the defaults."""
  ov = _override.get()
  if ov is not None:
    return ov
  values = {}
  for field, var in ENV.items():
    raw = os.environ.get(var)
    if raw is not None and raw.strip():
      values[field] = parse_size(raw, what=f"environment variable {var}")
  return dataclasses.replace(DEFAULTS, **values)


@contextlib.contextmanager
def override(**caps: Optional[int]) -> Iterator[Limits]:
  """Use these caps (fields of ``Limits``; None keeps the current value) inside the block."""
  unknown = set(caps) - set(ENV)
  if unknown:
    raise TypeError(f"unknown caps {sorted(unknown)}")
  lim = dataclasses.replace(current(), **{k: int(v) for k, v in caps.items() if v is not None})
  token = _override.set(lim)
  try:
    yield lim
  finally:
    _override.reset(token)


class Budget:
  """Bytes materialised from one input so far (inflated members, storages, arrays);
  ``charge`` refuses more than the per-file cap, ``check_elements`` a tensor over its cap."""

  def __init__(self, name: str, limits: Optional[Limits] = None):
    self.name = name
    self.limits = limits or current()
    self.used = 0

  def charge(self, nbytes: int, what: str) -> None:
    self.used += int(nbytes)
    if self.used > self.limits.max_file_bytes:
      raise UserError(
          f"{self.name}: {what} would bring the data materialised from this file to "
          f"{self.used:,} bytes, over the cap of {self.limits.max_file_bytes:,} bytes per file "
          f"(raise it with {ENV['max_file_bytes']} or --max-file-bytes)")

  def check_elements(self, numel: int, what: str) -> None:
    if numel > self.limits.max_tensor_elements:
      raise UserError(
          f"{self.name}: {what} has {numel:,} elements, over the cap of "
          f"{self.limits.max_tensor_elements:,} per tensor (raise it with "
          f"{ENV['max_tensor_elements']} or --max-tensor-elements)")


_budget: contextvars.ContextVar[Optional[Budget]] = contextvars.ContextVar(
    "mgan_jax_budget", default=None)


def budget(name: str = "<input>") -> Budget:
  """The budget of the file being read (a fresh one if none is active)."""
  b = _budget.get()
  return b if b is not None else Budget(name)


@contextlib.contextmanager
def file_budget(name: str) -> Iterator[Budget]:
  """Share one ``Budget`` among everything read from the file ``name`` inside the block
  (an enclosing block for the same input keeps its budget: archive members count together)."""
  outer = _budget.get()
  if outer is not None:
    yield outer
    return
  b = Budget(name)
  token = _budget.set(b)
  try:
    yield b
  finally:
    _budget.reset(token)


def check_file_size(size: int, name: str, what: str = "file") -> None:
  """UserError if an input (or an archive member) of ``size`` bytes is over the file cap."""
  cap = current().max_file_bytes
  if size > cap:
    raise UserError(f"{name}: {what} of {size:,} bytes is over the cap of {cap:,} bytes per "
                    f"file (raise it with {ENV['max_file_bytes']} or --max-file-bytes)")


__all__ = ["Limits", "DEFAULTS", "ENV", "current", "override", "parse_size", "Budget", "budget",
           "file_budget", "check_file_size"]
