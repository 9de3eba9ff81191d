"""`python -m mgan_jax.invert` dispatches to the user mode (--image) or the reproducibility mode
(--target); both report bad input as one error line with exit status 2."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "mgan_jax.invert", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


def test_help_of_each_mode():
  user = _run("--help")
  assert user.returncode == 0
  assert "--task" in user.stdout and "--image" in user.stdout
  assert "--target T.npy --help" in user.stdout  # points to the other mode
  repro = _run("--target", "x.npy", "--help")
  assert repro.returncode == 0
  assert "--perceptual-weights" in repro.stdout and "--trace" in repro.stdout


def test_user_mode_bad_task_is_one_line(tmp_path):
  r = _run("--image", os.path.join(ROOT, "examples", "dcgan_sample_9001.png"), "--task",
           "sharpen", "--out", str(tmp_path / "out"))
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "sharpen" in lines[0]
  assert not (tmp_path / "out").exists()


def test_repro_mode_missing_target_is_one_line(tmp_path):
  r = _run("--checkpoint", str(tmp_path), "--target", str(tmp_path / "missing.npy"),
           "--out", str(tmp_path / "r.npz"))
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:")
  assert not (tmp_path / "r.npz").exists()
