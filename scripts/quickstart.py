#!/usr/bin/env python3
"""Set up a virtual environment and run the demo or the tests: the README's two commands.

    python3 scripts/quickstart.py demo    # venv + install + the main job on the embedded prior
    python3 scripts/quickstart.py test    # venv + install + the test suite

Needs only python3 (3.10-3.12) and access to the package registry. The venv lives in .venv/ at
the repository root and is reused on later runs. The install is pinned by ``constraints.txt``
(the exact versions the test suite was run with), so a new release upstream cannot change what
a fresh clone gets. Extra arguments after ``demo`` / ``test`` are passed on (to the demo script
or to pytest).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PY = os.path.join(VENV, "bin", "python")
STAMP = os.path.join(VENV, ".mgan_jax-installed")


def _run(cmd: list[str]) -> None:
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


CONSTRAINTS = os.path.join(ROOT, "constraints.txt")


def _pyproject_hash() -> str:
  h = hashlib.sha256()
  for name in ("pyproject.toml", "constraints.txt"):
    with open(os.path.join(ROOT, name), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def ensure_venv() -> None:
  """Create .venv and install the project (editable, with test extras) if not done yet."""
  if sys.version_info < (3, 10):
    sys.exit("error: Python >= 3.10 is required (found %s)" % sys.version.split()[0])
  if not os.path.exists(PY):
    print(f"creating virtual environment in {VENV}", flush=True)
    venv.EnvBuilder(with_pip=True).create(VENV)
  want = _pyproject_hash()
  if os.path.exists(STAMP) and open(STAMP).read() == want:
    return
  _run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", CONSTRAINTS,
        "-e", ".[test]"])
  with open(STAMP, "w") as f:
    f.write(want)


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in ("demo", "test"):
    print(__doc__.strip())
    return 2
  ensure_venv()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if argv[0] == "test":
    # two workers: the suite is mostly single-threaded XLA compilation (CI has 2 cores)
    cmd = [PY, "-m", "pytest", "-q", "-n", os.environ.get("MGAN_JAX_TEST_WORKERS", "2"), "tests",
           *argv[1:]]
  else:
    cmd = [PY, os.path.join(ROOT, "scripts", "demo.py"), *argv[1:]]
  print("+", " ".join(cmd), flush=True)
  return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
