"""User-facing errors: one clear line naming the file, key or flag, and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence

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
