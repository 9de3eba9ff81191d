"""User-facing errors: one clear line naming the file, key or flag, and a non-zero exit."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UserError(Exception):
  """A problem with the user's input (a file, key or flag). CLIs print it as one line."""


def cli_entry(main: Callable[[Sequence[str] | None], int] | None = None, *,
              interrupted: str = "interrupted"):
  """Wrap a CLI ``main(argv) -> int``: a UserError becomes ``error: ...`` on stderr and exit
  status 2; Ctrl-C becomes the one line ``interrupted`` (the text is the command's own, e.g.
  how to resume) and exit status 130. Usable as ``cli_entry(main)`` or
  ``cli_entry(interrupted="...")(main)``."""

  def wrap(fn):
    @functools.wraps(fn)
    def wrapper(argv=None):
      try:
        return fn(argv)
      except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
      except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return wrapper

  return wrap(main) if main is not None else wrap


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
  """Hold Ctrl-C (SIGINT) until the block ends, then deliver it as it would have been.

  For blocks that a ``KeyboardInterrupt`` must not enter: a library writing from threads and an
  event loop (orbax) aborts the process or loses the interrupt when one arrives mid-write. Only
  the main thread handles signals; elsewhere (and where SIGINT is ignored) the block runs as
  is."""
  previous = signal.getsignal(signal.SIGINT)
  if (threading.current_thread() is not threading.main_thread()
      or previous in (signal.SIG_IGN, None)):
    yield
    return
  held: list[int] = []
  signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if held:
    if callable(previous):
      previous(signal.SIGINT, None)     # Python's default handler raises KeyboardInterrupt
    else:                               # SIG_DFL: terminate as the signal would have
      signal.raise_signal(signal.SIGINT)
