#!/usr/bin/env bash
# The one entry of a lent GPU machine (no internet): install the carried wheels, then run benchmarks/device.py.
#
#   bash benchmarks/device.sh                  # on the machine, from the repository root; `.whl` carried
#   bash benchmarks/device.sh --tests none     # extra arguments go to device.py
#
# The wheels in .whl (git-ignored) are what the machine's image lacks: tyro and its needs, trimesh,
# fast-simplification, imageio-ffmpeg, diffusers, importlib_metadata. sjc itself runs from src/.
# Everything goes to $OUT (else out/device): setup.log, device_log.txt, device_report.txt/.json, pytest logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -V
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || { echo "wheel install failed"; exit 1; }
        echo "installed: $(cd .whl && ls *.whl | tr '\n' ' ')"
    else
        echo "no .whl folder: using the machine's packages only"
    fi
} 2>&1 | tee "$OUT/setup.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# device.py bounds its own tests (--test-budget); this bounds everything, inside the tool's 10 minutes.
timeout "${DEVICE_TIMEOUT:-540}" "$PY" benchmarks/device.py "$@" 2>&1 | tee "$OUT/device_log.txt"
exit "${PIPESTATUS[0]}"
