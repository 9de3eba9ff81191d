"""Test configuration: fast CPU compiles, repo root importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLIs' persistent compilation cache stays off in tests (hermetic; tests/test_compile_cache.py
# turns it on for its own runs)
os.environ.setdefault("MGAN_JAX_COMPILE_CACHE", "off")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
