#!/usr/bin/env python3
"""The checks to run whenever a GPU or TPU is at hand: parity at full float32 precision, then
the speed and memory benchmarks; the numbers go into ``docs/device_check_<platform>.md``.

    scripts/device_check.sh                  # on the accelerator machine (a few minutes)
    scripts/device_check.sh --quick --out D  # a smoke test of the script itself, on any machine
    scripts/device_check.sh --only parity --skip-parity tests/test_lpips.py
                                             # some steps; parity files left out (no weights)

Steps (each one's output is kept in the report, a failing step does not stop the others):

1. the devices JAX sees;
2. the parity tests (generators, VGG16, LPIPS, operators, SeFa, the official inversion
   trajectory) on the accelerator with ``JAX_DEFAULT_MATMUL_PRECISION=highest``: the fixtures'
   tolerances assume full float32 products, which GPUs (TF32) and TPUs (bf16 passes) do not use
   by default;
3. ``scripts/bench_invert.py``: seconds per iteration of the PGGAN-256 benchmark (N=20,
   layer 6, VGG16 at 256, SGD), compile time, host and device memory;
4. ``scripts/bench_batch.py``: images per second of the default prior's CLI setting at batch
   1, 8 and 32.

``--quick`` shrinks every step (a few parity tests, tiny benchmarks) so that the test suite can
run the script on the CPU; its report is written to ``--out`` (default ``docs/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("parity", "bench_invert", "bench_batch")
PARITY = ["tests/test_pggan.py", "tests/test_stylegan.py", "tests/test_stylegan2.py",
          "tests/test_dcgan.py", "tests/test_vgg.py", "tests/test_lpips.py",
          "tests/test_operators.py", "tests/test_directions.py", "tests/test_edits.py",
          "tests/test_trajectory.py"]


def _devices(env: dict) -> dict:
  code = ("import jax, json; d = jax.devices(); print(json.dumps({'platform': d[0].platform, "
          "'count': len(d), 'kind': getattr(d[0], 'device_kind', ''), 'jax': jax.__version__}))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  if out.returncode:
    return {"platform": "unknown", "count": 0, "kind": "", "error": out.stderr[-500:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def _step(name: str, cmd: list[str], env: dict, timeout: int) -> dict:
  print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
  t = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    rc, out = proc.returncode, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    rc = "timeout"
    out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                  for x in (e.stdout, e.stderr))
  dt = time.perf_counter() - t
  print(f"   -> {rc} in {dt:.0f} s", file=sys.stderr, flush=True)
  return {"name": name, "command": " ".join(cmd), "returncode": rc, "seconds": round(dt, 1),
          "output": out}


def _json_lines(text: str) -> list[dict]:
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


def report(dev: dict, results: list[dict], *, quick: bool, machine: str, today: str
           ) -> list[str]:
  """The markdown report (lines) of a device check: the steps' status, the benchmarks'
  numbers (from the JSON lines they print) and the parity tests' summary line."""
  lines = [f"# Device check: {dev['platform']} ({dev.get('kind') or 'unknown kind'} x "
           f"{dev['count']})", "",
           f"Run on {today} by `scripts/device_check.sh{' --quick' if quick else ''}`; host "
           f"{machine}, jax {dev.get('jax', '?')}, `JAX_DEFAULT_MATMUL_PRECISION=highest`.", ""]
  lines += ["| step | result | seconds |", "|---|---|---:|"]
  for r in results:
    ok = "passed" if r["returncode"] == 0 else f"FAILED ({r['returncode']})"
    lines.append(f"| {r['name']} | {ok} | {r['seconds']} |")
  bench = next((_json_lines(r["output"]) for r in results if r["name"] == "bench_invert"), [])
  if bench:
    b = bench[-1]
    setting = ", ".join(f"{k} {v}" for k, v in (b.get("setting") or {}).items())
    lines += ["", "## One inversion iteration (`scripts/bench_invert.py`)", "",
              f"Setting: {setting}.", "",
              f"* seconds per iteration: **{b.get('sec_per_iter')}**",
              f"* compile: {b.get('compile_s')} s",
              f"* host peak RSS: {b.get('peak_rss_mb')} MB",
              f"* device peak memory: {b.get('device_peak_mb') or 'n/a'} MB"]
  batch = next((_json_lines(r["output"]) for r in results if r["name"] == "bench_batch"), [])
  if batch:
    lines += ["", "## Images per second against the batch size (`scripts/bench_batch.py`)", "",
              "| batch | s / batch | images/s | scaling vs batch 1 |", "|---:|---:|---:|---:|"]
    for row in batch:
      sc = f"{row['scaling']:.2f}x" if row.get("scaling") else "-"
      lines.append(f"| {row['batch']} | {row['seconds']:.3f} | {row['images_per_s']:.2f} | "
                   f"{sc} |")
  parity = next((r for r in results if r["name"] == "parity"), None)
  if parity:
    tail = [x for x in parity["output"].strip().splitlines() if x.strip()][-1:]
    lines += ["", "## Parity tests", "", f"`{parity['command']}`: {' '.join(tail)}"]
  return lines


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
  p.add_argument("--out", default=os.path.join(ROOT, "docs"),
                 help="directory of the report (default docs/)")
  p.add_argument("--timeout", type=int, default=1800, help="seconds per step")
  p.add_argument("--only", default="", metavar="STEPS",
                 help="comma-separated steps to run (parity, bench_invert, bench_batch; "
                      "default all)")
  p.add_argument("--skip-parity", default="", metavar="FILES",
                 help="comma-separated parity test files to leave out (e.g. those whose weights "
                      "are not available on the machine)")
  a = p.parse_args(argv)
  only = [s for s in a.only.split(",") if s]
  if [s for s in only if s not in STEPS]:
    p.error(f"--only: {[s for s in only if s not in STEPS][0]} is not a step "
            f"({', '.join(STEPS)})")
  skip = [f for f in a.skip_parity.split(",") if f]
  unknown = [f for f in skip if f not in PARITY]
  if unknown:
    p.error(f"--skip-parity: {unknown[0]} is not one of the parity tests ({', '.join(PARITY)})")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_DEFAULT_MATMUL_PRECISION="highest",
             PYTHONUNBUFFERED="1", MGAN_JAX_COMPILE_CACHE="off")
  env.pop("JAX_PLATFORMS", None)            # the accelerator if there is one
  dev = _devices(env)
  if dev["platform"] in ("unknown", "cpu"):  # else JAX picks the accelerator by itself ('gpu'
    env["JAX_PLATFORMS"] = "cpu"            # is not a JAX_PLATFORMS name: 'cuda' or 'rocm')
  py = sys.executable
  if a.quick:
    steps = [
        ("parity", [py, "-m", "pytest", "-q", "-x", "tests/test_operators.py"]),
        ("bench_invert", [py, "scripts/bench_invert.py", "--resolution", "32", "--codes", "2",
                          "--layer", "2", "--iterations", "2", "--vgg", "random",
                          "--vgg-size", "32"]),
        ("bench_batch", [py, "scripts/bench_batch.py", "--batch-sizes", "1,2", "--iterations",
                         "2", "--repeats", "1", "--codes", "2", "--json"]),
    ]
  else:
    steps = [
        ("parity", [py, "-m", "pytest", "-q", *(f for f in PARITY if f not in skip)]),
        ("bench_invert", [py, "scripts/bench_invert.py", "--iterations", "20"]),
        ("bench_batch", [py, "scripts/bench_batch.py", "--batch-sizes", "1,8,32",
                         "--iterations", "50", "--repeats", "3", "--json"]),
    ]
  results = [_step(n, c, env, a.timeout) for n, c in steps if not only or n in only]

  name = f"device_check_{dev['platform']}{'_quick' if a.quick else ''}.md"
  lines = report(dev, results, quick=a.quick, machine=f"{platform.machine()}, "
                 f"{os.cpu_count()} CPU cores", today=datetime.date.today().isoformat())
  os.makedirs(a.out, exist_ok=True)
  path = os.path.join(a.out, name)
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  with open(os.path.join(a.out, name.replace(".md", ".log")), "w") as f:
    for r in results:
      f.write(f"== {r['name']}: {r['command']} -> {r['returncode']} ({r['seconds']} s)\n")
      f.write(r["output"] + "\n")
  print(path)
  return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
