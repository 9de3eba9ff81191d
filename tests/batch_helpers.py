"""Helpers shared by the batch / resume / distributed tests (not a test module).

* ``tiny_items(n)`` / ``tiny_inverter(...)``: an in-process pipeline problem on a random-weight
  8x8 PGGAN (multi_z, 3 codes at layer 2, pixel MSE + L1, Adam): ``pipeline.Item``s with random
  targets and the ``pipeline.Inverter`` for ``resumable.run_items``.
* ``make_cli_inputs(root)``: the same PGGAN as a model directory (``checkpoint.save_model``) and
  random 8x8 PNGs, for CLI subprocesses; ``CLI_FLAGS`` (small settings), ``cli_env(devices)``
  (CPU, forced host devices, fast compiles) and ``start_cli(...)`` (a batch inversion
  subprocess on them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from mgan_jax import objective, optimize
from mgan_jax.generators.pggan import PGGAN

ROOT = Path(__file__).resolve().parent.parent
GEN = PGGAN(resolution=8, latent_dim=8, channels=(8, 8))

#: Small CLI settings for the tiny PGGAN (no VGG, Adam, 2-step compiled chunks).
CLI_FLAGS = ["--codes", "3", "--layer", "2", "--chunk", "4", "--perceptual-weight", "0",
             "--optimizer", "adam", "--lr", "0.05"]


def cli_env(devices: int = 2) -> dict:
  """Environment of a CLI subprocess: CPU, ``devices`` forced host devices, fast compiles."""
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              PYTHONPATH=str(ROOT))


def start_cli(model, images, out, *extra: str, iterations: int,
              checkpoint_every: int) -> subprocess.Popen:
  """``python -m mgan_jax.invert`` on ``make_cli_inputs``' model and images (batch size 2,
  ``CLI_FLAGS``, 2 host devices), started in the background with captured output."""
  cmd = [sys.executable, "-m", "mgan_jax.invert", "--checkpoint", str(model), "--image",
         str(images), "--batch-size", "2", "--iterations", str(iterations),
         "--checkpoint-every", str(checkpoint_every), "--out", str(out), *CLI_FLAGS, *extra]
  # Ctrl-C reaches the command even where the suite itself runs with SIGINT ignored (a
  # background job of a non-interactive shell), since the tests send it on purpose: an ignored
  # signal stays ignored across exec, a handled one does not
  ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  if ignored:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  finally:
    if ignored:
      signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_cli_inputs(root, *, images: int = 5) -> tuple[Path, Path]:
  """A random-weight 8x8 PGGAN model directory and ``images`` random 8x8 PNGs under ``root``.
  Returns (model_dir, image_dir)."""
  from PIL import Image

  from mgan_jax.checkpoint import save_model
  root = Path(root)
  model = save_model(root / "model", GEN, GEN.init_params(jax.random.key(0)))
  (root / "images").mkdir()
  rng = np.random.default_rng(0)
  for k in range(images):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        root / "images" / f"img{k}.png")
  return Path(model), root / "images"


def tiny_items(n: int) -> list:
  """``n`` pipeline items ``img<k>`` (reconstruction of a fixed random 8x8 image of seed k)."""
  from mgan_jax import imageio, pipeline, tasks
  task = tasks.parse_task("reconstruct")
  items = []
  for k in range(n):
    im = np.asarray(jax.random.uniform(jax.random.key(k), (8, 8, 3), minval=-1, maxval=1),
                    np.float32)
    items.append(pipeline.Item(name=f"img{k}", path=Path(f"img{k}.png"), input=im,
                               fit=imageio.FitReport((8, 8), (8, 8)),
                               observation=tasks.degrade(task, im), clean=im))
  return items


def tiny_inverter(*, batch_size: int = 2, checkpoint_every: int = 0, iterations: int = 8,
                  chunk: int = 4):
  """The ``pipeline.Inverter`` of ``tiny_items`` (pixel MSE + L1, Adam lr 0.05)."""
  from mgan_jax import pipeline, tasks
  settings = pipeline.Settings(
      method="multi_z", codes=3, layer=2,
      loss=objective.LossConfig(mse_weight=1.0, l1_weight=0.5, perceptual_weight=0.0),
      optimizer=optimize.OptimizerConfig(name="adam", lr=0.05), iterations=iterations,
      chunk=chunk)
  return pipeline.Inverter(GEN, GEN.init_params(jax.random.key(0)), None, settings,
                           tasks.parse_task("reconstruct"), batch_size=batch_size,
                           checkpoint_every=checkpoint_every)
