#!/usr/bin/env python3
"""Same-machine reference timing of the OFFICIAL mGANprior PyTorch inversion loop (not a test).

What it replicates. The official code (genforce/mganprior) cannot be downloaded here. This script
rebuilds its hot loop in plain PyTorch from a description of the official code (the project's
reference notes on genforce/mganprior, sections 0, 2.2-2.5 and 4.1). The official files involved
are:

* ``inversion/inversion_methods.py`` (``GradientDescent.invert``). One ``torch.optim.SGD`` with
  lr 1.0 over ``[z (1,N,512), alpha (1,N,C)]``. Each iteration runs forward -> ``zero_grad`` ->
  loss -> ``backward`` -> ``step``, then ``history.append(copy.deepcopy(latents))``, because
  ``video=True`` is the default and cannot be switched off (section 2.5).
* ``derivable_models/derivable_generator.py`` (``PGGAN_multi_z``). The init is ``z ~ randn`` and
  ``alpha = 1/N`` (section 2.2). The forward pass is a Python loop over the N codes:
  ``pre_model(z[:, j].view(-1,512,1,1)) * alpha[:, j].view(-1,C,1,1)``. Then
  ``fused = sum(...) / N`` and ``y = post_model(fused)`` (section 2.3).
* ``models/pggan_generator_network.py`` / ``models/pggan_generator.py`` (``PGGANGeneratorNet``,
  section 4.1).
  * Each ``ConvBlock`` applies, in order: PixelNorm (eps 1e-8), a nearest x2 upsample (first conv
    of each res >= 8), ``Conv2d(bias=False)``, ``WScaleLayer`` (``x * gain/sqrt(fan_in) + bias``)
    and ``LeakyReLU(0.2, inplace=True)``.
  * ``layer0`` is a 4x4 conv with padding 3 on the 1x1 z (gain sqrt(2), fan_in 512*16, so
    the scale is sqrt(2)/4/sqrt(512)).
  * The final ToRGB is a 1x1 conv with gain 1, preceded by PixelNorm, and linear.
  * The channel schedule is ``min(16384 // res, 512)``.
  * The intermediate ToRGBs are stripped (``derivable_models/gan_utils.py``), so
    ``pre_model``/``post_model`` split ``Sequential(layer0..layer{2L-1}, output_last)`` at ``k``.
* ``inversion/losses.py`` (``CombinationLoss``, ``VGGLoss``, section 2.4). The loss is
  ``0*L1 + 1*MSE + 1e-3 * L1(VGG16.features[:16](x), VGG16.features[:16](y))`` (relu3_3).
  * The VGG input is ``(x*0.5+0.5 - mean)/std``, then ``F.interpolate(size=256, 'nearest')``.
  * VGG runs on BOTH the estimate and the target every iteration.

Kept on purpose, because the official time includes it (section 2.4; ``--freeze-weights``
turns the first point off, as a non-official variant):

* The VGG weights and the generator weights keep ``requires_grad=True``. ``BaseGenerator`` only
  calls ``.eval()``, and the weights are never frozen. Every backward therefore also computes
  (and accumulates, because ``zero_grad`` only touches z and alpha) the weight gradients of VGG16
  and of every PGGAN conv, the pre_model ones once per code.
* The unused L1 term (lambda 0) is still computed, as the official code does.

Differences from the official run: the weights are random and the machine is a CPU.
* Generator weights are ~N(0,1), like the TF-stored weights, with the runtime equalized-LR scale.
  Biases are 0.02*N(0,1).
* VGG uses torch's default conv init, built with ``torch.nn`` in the torchvision ``features``
  layout (conv3x3+ReLU x2, maxpool, x2, maxpool, x3 = 16 modules). No torchvision is needed.
* The target is a clamped image of the same generator from one random z.
* CPU instead of ``.cuda()``.

Install (torch is NOT a dependency of mgan_jax; this is a benchmark-only script)::

    python3 -m venv torch-venv && torch-venv/bin/pip install torch==2.13.0 numpy
    torch-venv/bin/python scripts/bench_official_torch.py [--iterations 5] [--codes 20] [--layer 6]

(torch 2.13.0 is a CPU wheel on disk on these machines.)

Prints ONE JSON line, comparable to ``scripts/bench_invert.py`` on the same machine:

* ``sec_per_iter``: the MEDIAN wall time of the timed iterations. Each timed iteration is one
  official iteration, including the deepcopy. They run after ``--warmup`` untimed iterations
  (default 1). ``sec_per_iter_best``, ``sec_per_iter_mean`` and ``sec_per_iter_all`` are given too.
* ``cpu_sec_per_iter``: process CPU time (all threads) of the timed iterations per iteration.
* ``gflop_per_iter``: conv/matmul FLOPs of one full iteration, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` during the first warm-up iteration (the counter
  slows that iteration, which is not timed). ``--no-count-flops`` skips the count.
* ``matmul_peak_gflops``: the best float32 2048^3 ``torch.matmul`` rate, measured in the same
  process before and after the timed run.
* ``peak_rss_mb``: ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _nf(res: int) -> int:
  """Official PGGAN channel schedule ``min(16384 // res, 512)``."""
  return min(16384 // res, 512)


def _build(torch: Any, resolution: int, layer: int, codes: int, vgg_size: int) -> dict:
  """Builds the official-style modules with random weights.

  Returns a dict with ``pre_model``, ``post_model``, ``full`` (nn.Sequential), ``channels`` (C
  at the split), ``feature_shape`` (C, H, W) and ``loss`` (a CombinationLoss-like nn.Module taking
  NCHW images (1, 3, R, R) in [-1, 1]).
  """
  nn = torch.nn
  F = torch.nn.functional

  class PixelNorm(nn.Module):
    def forward(self, x):
      return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)

  class NearestUp2(nn.Module):
    def forward(self, x):
      return F.interpolate(x, scale_factor=2, mode="nearest")

  class WScale(nn.Module):
    """Runtime equalized-LR scale ``gain / sqrt(fan_in)`` plus a trainable bias."""

    def __init__(self, cin: int, cout: int, k: int, gain: float):
      super().__init__()
      self.scale = gain / math.sqrt(cin * k * k)
      self.bias = nn.Parameter(0.02 * torch.randn(cout))

    def forward(self, x):
      return x * self.scale + self.bias.view(1, -1, 1, 1)

  class Block(nn.Module):
    """PixelNorm -> [nearest x2] -> conv (no bias) -> wscale -> [LeakyReLU 0.2, in place]."""

    def __init__(self, cin: int, cout: int, k: int = 3, pad: int = 1, up: bool = False,
                 gain: float = math.sqrt(2.0), linear: bool = False):
      super().__init__()
      self.pixel_norm = PixelNorm()
      self.upsample = NearestUp2() if up else nn.Identity()
      self.conv = nn.Conv2d(cin, cout, k, stride=1, padding=pad, bias=False)
      with torch.no_grad():
        self.conv.weight.normal_(0.0, 1.0)  # TF-stored N(0,1) scale; wscale applied at run time
      self.wscale = WScale(cin, cout, k, gain)
      self.activate = nn.Identity() if linear else nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
      x = self.pixel_norm(x)
      x = self.upsample(x)
      x = self.conv(x)
      x = self.wscale(x)
      return self.activate(x)

  # Sequential(layer0..layer{2L-1}, output_last): what gan_utils.get_gan_model leaves.
  blocks: list = [Block(512, _nf(4), k=4, pad=3), Block(_nf(4), _nf(4))]
  shapes = [(_nf(4), 4, 4), (_nf(4), 4, 4)]
  res = 8
  while res <= resolution:
    blocks.append(Block(_nf(res // 2), _nf(res), up=True))
    blocks.append(Block(_nf(res), _nf(res)))
    shapes += [(_nf(res), res, res)] * 2
    res *= 2
  blocks.append(Block(_nf(resolution), 3, k=1, pad=0, gain=1.0, linear=True))
  num_layers = len(blocks) - 1
  if not 1 <= layer <= num_layers:
    raise ValueError(f"--layer must be in 1..{num_layers} for resolution {resolution}")
  full = nn.Sequential(*blocks).eval()
  pre_model = nn.Sequential(*blocks[:layer])
  post_model = nn.Sequential(*blocks[layer:])

  # torchvision vgg16().features[:16] layout: conv1_1 .. relu3_3 (no maxpool after conv3_3).
  vgg_layers: list = []
  cin = 3
  for cout, reps, pool in ((64, 2, True), (128, 2, True), (256, 3, False)):
    for _ in range(reps):
      vgg_layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
      cin = cout
    if pool:
      vgg_layers.append(nn.MaxPool2d(2, 2))
  assert len(vgg_layers) == 16
  vgg = nn.Sequential(*vgg_layers)  # requires_grad left True, as official

  class VGGLoss(nn.Module):
    def __init__(self):
      super().__init__()
      self.vgg = vgg
      self.mean = torch.tensor([0.485, 0.456, 0.406])
      self.std = torch.tensor([0.229, 0.224, 0.225])

    def forward(self, x, gt):
      x = (x * 0.5 + 0.5).sub_(self.mean[:, None, None]).div_(self.std[:, None, None])
      gt = (gt * 0.5 + 0.5).sub_(self.mean[:, None, None]).div_(self.std[:, None, None])
      fx = self.vgg(F.interpolate(x, size=vgg_size, mode="nearest"))
      fg = self.vgg(F.interpolate(gt, size=vgg_size, mode="nearest"))
      return F.l1_loss(fx, fg, reduction="mean") * 0.001

  class CombinationLoss(nn.Module):
    def __init__(self):
      super().__init__()
      self.l1_lambda, self.l2_lambda, self.vgg_lambda = 0.0, 1.0, 1.0
      self.vgg = VGGLoss()
      self.mse = nn.MSELoss()
      self.l1 = nn.L1Loss()

    def forward(self, x, gt):
      return (self.l1_lambda * self.l1(x, gt) + self.l2_lambda * self.mse(x, gt)
              + self.vgg_lambda * self.vgg(x, gt))

  c = shapes[layer - 1][0]
  return {"pre_model": pre_model, "post_model": post_model, "full": full, "channels": c,
          "feature_shape": shapes[layer - 1], "loss": CombinationLoss(), "vgg": vgg}


def matmul_peak(torch: Any, n: int = 2048, reps: int = 5) -> float:
  """Best float32 n^3 ``torch.matmul`` rate in GFLOP/s."""
  a = torch.randn(n, n)
  b = torch.randn(n, n)
  torch.matmul(a, b)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    torch.matmul(a, b)
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--resolution", type=int, default=256)
  p.add_argument("--codes", type=int, default=20, help="N, the number of latent codes")
  p.add_argument("--layer", type=int, default=6, help="composing layer k (6: 512x16x16)")
  p.add_argument("--iterations", type=int, default=5, help="timed iterations")
  p.add_argument("--warmup", type=int, default=1, help="untimed iterations before the timed ones")
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: "
                 "torch's default)")
  p.add_argument("--lr", type=float, default=1.0, help="SGD lr (official: 1.0)")
  p.add_argument("--vgg-size", type=int, default=256, help="official --image_size")
  p.add_argument("--freeze-weights", action="store_true",
                 help="NOT official: set requires_grad=False on G and VGG weights (shows what "
                 "the wasted weight-gradient compute costs)")
  p.add_argument("--no-count-flops", action="store_true",
                 help="skip the FlopCounterMode count on the first warm-up iteration")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.resolution not in (8, 16, 32, 64, 128, 256, 512, 1024):
    print(f"error: --resolution {args.resolution}: must be a power of two in 8..1024",
          file=sys.stderr)
    return 2
  if args.codes < 1 or args.iterations < 1 or args.warmup < 0:
    print("error: --codes and --iterations must be >= 1, --warmup >= 0", file=sys.stderr)
    return 2

  try:
    import torch
  except ImportError:
    print("error: torch is not installed (benchmark-only; not a mgan_jax dependency): "
          "python3 -m venv torch-venv && torch-venv/bin/pip install torch==2.13.0 numpy",
          file=sys.stderr)
    return 2

  if args.threads is not None:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  peak_before = matmul_peak(torch)

  try:
    m = _build(torch, args.resolution, args.layer, args.codes, args.vgg_size)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  pre_model, post_model, loss_fn = m["pre_model"], m["post_model"], m["loss"]
  if args.freeze_weights:
    for prm in list(m["full"].parameters()) + list(m["vgg"].parameters()):
      prm.requires_grad_(False)
  n, c, zdim = args.codes, m["channels"], 512

  def generator(latents):
    """PGGAN_multi_z.forward: Python loop over the N codes through G1, mean, then G2."""
    z_est, alpha_est = latents
    maps = []
    for j in range(n):
      maps.append(pre_model(z_est[:, j, :].view((-1, zdim, 1, 1)))
                  * alpha_est[:, j, :].view((-1, c, 1, 1)))
    fused = sum(maps) / n
    return post_model(fused)

  with torch.no_grad():
    gt = torch.clamp(m["full"](torch.randn(1, zdim).view(1, zdim, 1, 1)), -1.0, 1.0)

  # GradientDescent.invert with PGGAN_multi_z.init_value (batch size 1).
  latents = [torch.randn((1, n, zdim)), torch.full((1, n, c), 1.0 / n)]
  for t in latents:
    t.requires_grad = True
  optimizer = torch.optim.SGD(latents, lr=args.lr)
  history: list = []
  losses: list[float] = []
  shape_out: list[int] = []

  def iteration() -> None:
    y_estimate = generator(latents)
    optimizer.zero_grad()
    loss = loss_fn(y_estimate, gt)
    loss.backward()
    optimizer.step()
    history.append(copy.deepcopy(latents))  # video=True (cannot be disabled officially)
    losses.append(float(loss.detach()))
    if not shape_out:
      shape_out.extend(y_estimate.shape)

  rss_setup = _rss_mb()
  gflop = None
  warm_times = []
  for i in range(args.warmup):
    t = time.perf_counter()
    if i == 0 and not args.no_count_flops:
      from torch.utils.flop_counter import FlopCounterMode
      counter = FlopCounterMode(display=False)
      with counter:
        iteration()
      gflop = counter.get_total_flops() / 1e9
    else:
      iteration()
    warm_times.append(time.perf_counter() - t)

  times = []
  c0 = time.process_time()
  for _ in range(args.iterations):
    t = time.perf_counter()
    iteration()
    times.append(time.perf_counter() - t)
  cpu_sec = (time.process_time() - c0) / args.iterations
  rss_run = _rss_mb()
  peak_after = matmul_peak(torch)
  peak = max(peak_before, peak_after)
  sec = statistics.median(times)

  n_g = sum(p.numel() for p in m["full"].parameters())
  n_v = sum(p.numel() for p in m["vgg"].parameters())
  out = {
      "sec_per_iter": round(sec, 4),
      "timing": f"median of {args.iterations} timed iterations after {args.warmup} warm-up",
      "sec_per_iter_best": round(min(times), 4),
      "sec_per_iter_mean": round(sum(times) / len(times), 4),
      "sec_per_iter_all": [round(x, 4) for x in times],
      "warmup_sec": [round(x, 4) for x in warm_times],
      "cpu_sec_per_iter": round(cpu_sec, 4),
      "cpu_sec_per_iter_per_core": round(cpu_sec / (os.cpu_count() or 1), 4),
      "peak_rss_mb": round(_rss_mb(), 1),
      "peak_rss_mb_after_setup_run": [round(rss_setup, 1), round(rss_run, 1)],
      "gflop_per_iter": round(gflop, 2) if gflop else None,
      "flops_source": ("torch FlopCounterMode, first warm-up iteration (conv/matmul fwd+bwd, "
                       "incl. VGG/G weight grads)") if gflop else None,
      "achieved_gflops": round(gflop / sec, 2) if gflop else None,
      "matmul_peak_gflops": round(peak, 2),
      "matmul_peak_before_after": [round(peak_before, 2), round(peak_after, 2)],
      "fraction_of_peak": round(gflop / sec / peak, 3) if gflop else None,
      "loss_first_last": [losses[0], losses[-1]],
      "losses_all": [round(x, 6) for x in losses],
      "image_shape": shape_out,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "torch_interop_threads": torch.get_num_interop_threads(),
      "setting": {"generator": f"pggan{args.resolution} official channels, random weights "
                               "(N(0,1) + runtime wscale)",
                  "codes": n, "layer": args.layer, "feature_shape": list(m["feature_shape"]),
                  "iterations": args.iterations, "warmup": args.warmup,
                  "vgg": "random (torch default init), features[:16] relu3_3",
                  "vgg_size": args.vgg_size, "optimizer": f"sgd lr {args.lr}",
                  "loss": "0*L1 + MSE + 1e-3*L1(vgg relu3_3), vgg on estimate and target",
                  "weights_requires_grad": ("G and VGG False (--freeze-weights, NOT official)"
                                            if args.freeze_weights else
                                            "G and VGG True (official)"),
                  "deepcopy_per_iter": True, "generator_params": n_g, "vgg_params": n_v,
                  "layout": "NCHW float32"},
      "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "loadavg_1m": os.getloadavg()[0], "loadavg": list(os.getloadavg()),
                  "python": platform.python_version()},
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
