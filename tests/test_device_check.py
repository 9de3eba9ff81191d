"""scripts/device_check.py, the accelerator check: its report from the steps' outputs (the steps
themselves are the parity tests and the benchmark scripts; running them on an accelerator is
what the script is for)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
  spec = importlib.util.spec_from_file_location("device_check", ROOT / "scripts" /
                                                "device_check.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_report_collects_the_numbers_and_failures():
  dc = _module()
  bench = {"sec_per_iter": 0.071, "compile_s": 12.5, "peak_rss_mb": 2100.0,
           "device_peak_mb": 5400.2, "setting": {"generator": "pggan256", "codes": 20}}
  rows = [{"batch": b, "seconds": s, "images_per_s": b / s, "scaling": r}
          for b, s, r in ((1, 0.5, 1.0), (8, 1.0, 4.0))]
  results = [
      {"name": "parity", "command": "pytest -q tests", "returncode": 0, "seconds": 80.0,
       "output": "....\n120 passed in 79.9s\n"},
      {"name": "bench_invert", "command": "bench_invert", "returncode": 0, "seconds": 40.0,
       "output": "noise\n" + json.dumps(bench) + "\n"},
      {"name": "bench_batch", "command": "bench_batch", "returncode": 1, "seconds": 9.0,
       "output": "\n".join(json.dumps(r) for r in rows)},
  ]
  dev = {"platform": "gpu", "count": 1, "kind": "NVIDIA H200", "jax": "0.10.2"}
  text = "\n".join(dc.report(dev, results, quick=False, machine="x86_64", today="2026-01-01"))
  assert text.startswith("# Device check: gpu (NVIDIA H200 x 1)")
  assert "| parity | passed | 80.0 |" in text and "| bench_batch | FAILED (1) | 9.0 |" in text
  assert "seconds per iteration: **0.071**" in text and "device peak memory: 5400.2 MB" in text
  assert "Setting: generator pggan256, codes 20." in text
  assert "| 8 | 1.000 | 8.00 | 4.00x |" in text
  assert "120 passed in 79.9s" in text
  assert dc._json_lines('x\n{"a": 1}\n{broken}\n') == [{"a": 1}]


def test_skip_parity_names_only_known_tests(capsys):
  import pytest
  dc = _module()
  with pytest.raises(SystemExit) as e:
    dc.main(["--skip-parity", "tests/test_vgg.py,tests/test_nothing.py"])
  assert e.value.code == 2
  assert "--skip-parity: tests/test_nothing.py is not one of the parity tests" in \
      capsys.readouterr().err


def test_only_names_known_steps(capsys):
  import pytest
  dc = _module()
  with pytest.raises(SystemExit) as e:
    dc.main(["--only", "parity,bench_gpu"])
  assert e.value.code == 2 and "--only: bench_gpu is not a step" in capsys.readouterr().err
