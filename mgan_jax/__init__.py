"""mgan_jax: mGANprior (Image Processing Using Multi-Code GAN Prior) in JAX/Flax.

Public modules (imported on first attribute access, so ``import mgan_jax`` stays cheap), by
layer (each imports only from the layers above it; CONTRIBUTING.md has the map):

* the core -- ``generators`` (PGGAN, StyleGAN, StyleGAN2, DCGAN behind one split-at-layer
  interface), ``latents``, ``objective``, ``operators``, ``optimize``, ``perceptual`` (VGG16),
  ``metrics`` (PSNR, SSIM, LPIPS, colorization AuC), ``lpips``, ``baselines`` (the classical
  answers: bicubic, biharmonic fill, denoisers), ``errors``
* the engine -- ``engine`` (the one compiled step and chunk loop), ``sharding`` (devices and
  processes), ``inversion`` (one image from the library)
* files -- ``fileio`` (atomic publishing), ``checkpoint`` (model directories), ``latents_io``,
  ``imageio``, ``runstate`` and ``batch_checkpoint`` (resumable runs)
* the pipeline -- ``tasks``, ``pipeline`` (``Inverter``), ``outputs``, ``progress``,
  ``resumable`` (the one resumable loop), ``defaults``
* editing -- ``directions`` (SeFa, boundary files), ``edits`` (moves, interpolation, style
  mixing)
* assets -- ``assets`` (the pinned default prior and VGG16 weights, fetched on first use)
* command lines -- ``cli``, ``invert`` (``invert_images``, ``invert_reproduce``), ``generate``,
  ``manipulate``
"""

import importlib

__version__ = "0.1.0"

__all__ = ["assets", "baselines", "batch_checkpoint", "checkpoint", "cli", "defaults",
           "directions", "edits", "engine", "errors", "fileio", "generate", "generators",
           "imageio", "inversion", "invert", "invert_images", "invert_reproduce", "latents",
           "latents_io", "lpips", "manipulate", "metrics", "objective", "operators", "optimize",
           "outputs", "perceptual", "pipeline", "progress", "resumable", "runstate", "sharding",
           "tasks"]


def __getattr__(name):
  if name in __all__:
    return importlib.import_module(f"mgan_jax.{name}")
  raise AttributeError(f"module 'mgan_jax' has no attribute {name!r}")
