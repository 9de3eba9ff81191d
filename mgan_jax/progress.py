"""Progress lines on stderr: ``[batch 1/3] it 150/300 | loss 0.0123 | PSNR 28.41 dB | 12.3 s |
ETA 14 s`` (means over the batch's images), rewritten in place on a terminal.

The ETA is the remaining iterations of the run (this batch and the batches still to do) at the
speed measured so far in this run, compilation excluded.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence, TextIO

import numpy as np


def _duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
  """Progress of a run of ``batches`` batches of ``iterations`` steps (``enabled=False``:
  silent)."""

  def __init__(self, *, batches: int, iterations: int, stream: TextIO | None = None,
               enabled: bool = True):
    self.batches = batches
    self.iterations = iterations
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.batch = 0
    self.t0 = time.perf_counter()
    self._steps_done = 0          # iterations run in this process, all batches
    self._seconds = 0.0           # their wall time
    self._batch_last = (0, time.perf_counter())
    self._remaining_batches = batches

  def start_batch(self, index: int, names: Sequence[str], *, remaining: int | None = None
                  ) -> None:
    """Batch ``index`` starts; ``remaining``: batches still to run after it (default: the
    ones after ``index``)."""
    self.batch = index
    self.t0 = time.perf_counter()
    self._batch_last = (0, self.t0)
    self._remaining_batches = (self.batches - index - 1) if remaining is None else remaining
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    self._line(f"[batch {index + 1}/{self.batches}] {len(names)} image(s): {shown}", final=True)

  def resumed_at(self, done: int) -> None:
    """The batch continues from a checkpoint at iteration ``done``."""
    self._batch_last = (done, time.perf_counter())

  def chunk(self, done: int, rows: Sequence[dict]) -> None:
    now = time.perf_counter()
    last_done, last_t = self._batch_last
    self._steps_done += done - last_done
    self._seconds += now - last_t
    self._batch_last = (done, now)
    ok = [r for r in rows if "psnr_observed" in r] or list(rows)  # failed images: no PSNR
    loss = float(np.mean([r["loss"] for r in ok]))
    key = "psnr" if all("psnr" in r for r in ok) else "psnr_observed"
    psnr = float(np.mean([r.get(key, np.nan) for r in ok]))
    label = "PSNR" if key == "psnr" else "PSNR(obs)"
    left = (self.iterations - done) + self._remaining_batches * self.iterations
    eta = ""
    if self._steps_done:
      eta = f" | ETA {_duration(left * self._seconds / self._steps_done)}"
    msg = (f"[batch {self.batch + 1}/{self.batches}] it {done}/{self.iterations} | loss "
           f"{loss:.5f} | {label} {psnr:.2f} dB | {now - self.t0:.1f} s{eta}")
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


__all__ = ["Progress"]
