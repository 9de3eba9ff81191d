"""mgan_jax: mGANprior (Image Processing Using Multi-Code GAN Prior) in JAX/Flax.

Public modules (imported on first attribute access, so ``import mgan_jax`` stays cheap):

* ``generators``  -- PGGAN, StyleGAN, StyleGAN2, DCGAN behind one split-at-layer interface
* ``checkpoint``  -- converted model directories (``load_model`` / ``save_model``)
* ``latents``, ``objective``, ``optimize``, ``operators``, ``perceptual`` -- the inversion engine
* ``tasks``, ``imageio``, ``metrics``, ``runner``, ``app`` -- the user pipeline and CLI
* ``sharding``, ``resume`` -- many devices and hosts, preemption-safe runs
* ``directions``, ``edits``, ``manipulate`` -- semantic editing (SeFa, boundary files),
  interpolation, style mixing and their CLI
* ``assets`` -- the pinned default prior and VGG16 weights, fetched and cached on first use
"""

import importlib

__version__ = "0.1.0"

__all__ = ["app", "assets", "checkpoint", "directions", "edits", "errors", "generators",
           "imageio", "latents", "manipulate", "metrics", "objective", "operators", "optimize",
           "perceptual", "resume", "runner", "sharding", "tasks"]


def __getattr__(name):
  if name in __all__:
    return importlib.import_module(f"mgan_jax.{name}")
  raise AttributeError(f"module 'mgan_jax' has no attribute {name!r}")
