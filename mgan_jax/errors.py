"""User-facing errors: one clear line naming the file, key or flag, and a non-zero exit."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """A problem with the user's input (a file, key or flag). CLIs print it as one line."""


def cli_entry(main):
  """Wrap a CLI ``main(argv) -> int``: a UserError becomes ``error: ...`` on stderr, exit 2."""

  @functools.wraps(main)
  def wrapper(argv=None):
    try:
      return main(argv)
    except UserError as e:
      prog = getattr(main, "__module__", "mgan_jax")
      print(f"error: {e}", file=sys.stderr)
      del prog
      return 2

  return wrapper
