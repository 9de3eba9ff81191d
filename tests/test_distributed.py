"""A real multi-process run of the user CLI (``python -m mgan_jax.invert --image ...``): two
processes on localhost joined by ``jax.distributed.initialize`` (coordinator on 127.0.0.1, a
free port), each with two forced CPU devices, each inverting its share of the inputs into the
same OUT; their combined outputs must equal a single-process run's.

Tiny random-weight PGGAN model directory, 5 images, batch 2, checkpoints on (with several
processes they are written as npz, see mgan_jax/batch_checkpoint.py).
"""

from __future__ import annotations

import json
import socket
import subprocess

import numpy as np
from PIL import Image

from batch_helpers import make_cli_inputs, start_cli
from mgan_jax import runstate


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli(model, images, out, *extra):
  return start_cli(model, images, out, *extra, iterations=8, checkpoint_every=4)


def _finish(proc) -> str:
  try:
    _, err = proc.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-3000:]
  return err


def test_two_processes_equal_one(tmp_path):
  model, images = make_cli_inputs(tmp_path)
  addr = f"127.0.0.1:{_free_port()}"
  procs = [_cli(model, images, tmp_path / "multi", "--coordinator", addr, "--num-processes",
                "2", "--process-id", str(i)) for i in range(2)]
  single = _cli(model, images, tmp_path / "single")
  logs = [_finish(p) for p in procs]
  _finish(single)

  assert "process 0 of 2: 3 of 5 image(s), 2 local device(s)" in logs[0], logs[0][-2000:]
  assert "process 1 of 2: 2 of 5 image(s), 2 local device(s)" in logs[1], logs[1][-2000:]
  names = [f"img{k}" for k in range(5)]
  # contiguous shares; each process journaled exactly its own images
  for i, share in enumerate((names[:3], names[3:])):
    state = tmp_path / "multi" / runstate.RUN_DIR / f"process-{i:05d}-of-00002"
    items = [json.loads(x)["item"] for x in (state / "finished.log").read_text().splitlines()]
    assert items == share
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["items"] == names and manifest["process_index"] == i
  assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == sorted([*names,
                                                                          runstate.RUN_DIR])
  for name in names:
    a, b = tmp_path / "multi" / name, tmp_path / "single" / name
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    with np.load(a / "latents.npz") as za, np.load(b / "latents.npz") as zb:
      for k in ("z", "alpha"):
        np.testing.assert_allclose(za[k], zb[k], rtol=0, atol=1e-6, err_msg=f"{name}/{k}")
    for png in ("result.png", "degraded.png", "grid.png"):
      pa = np.asarray(Image.open(a / png), int)
      pb = np.asarray(Image.open(b / png), int)
      assert np.abs(pa - pb).max() <= 1, (name, png)
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    np.testing.assert_allclose([r["loss"] for r in ma["trace"]],
                               [r["loss"] for r in mb["trace"]], rtol=1e-5)
    assert ma["settings"] == mb["settings"]
