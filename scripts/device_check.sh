#!/usr/bin/env bash
# Parity at full float32 precision and the speed / memory benchmarks on the machine's
# accelerator (GPU or TPU); writes docs/device_check_<platform>.md. See scripts/device_check.py.
#   scripts/device_check.sh            # on the accelerator machine
#   scripts/device_check.sh --quick    # a smoke test of the script itself (any machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PY" scripts/device_check.py "$@"
