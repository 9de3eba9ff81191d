"""``python -m mgan_jax.invert``: restore images with a multi-code GAN prior.

Two modes share one vocabulary (``mgan_jax.cli``):

* the user mode (``--image``; ``mgan_jax.invert_images``): image files in; tasks, batches,
  devices, resumable runs; per-image results, latents and metrics out;
* the reproducibility mode (``--target``; ``mgan_jax.invert_reproduce``): the official
  optimisation of one target array from given or seeded initial latents, with its loss trace.

``--help`` describes the user mode; ``--target T.npy --help`` the reproducibility mode.
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  """Dispatch on ``--target``: the reproducibility mode when it is given, else the user mode."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a == "--target" or a.startswith("--target=") for a in argv):
    from mgan_jax import invert_reproduce
    return invert_reproduce.main(argv)
  from mgan_jax import invert_images
  return invert_images.main(argv)


if __name__ == "__main__":
  sys.exit(main())
