#!/usr/bin/env bash
# GPU checks for the decoding core, sized to finish in under 5 minutes on one H100/H200:
# the gpu-marked tests, then the decoding benchmark (ours vs HF generate) on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
"$PY" -m pytest tests/core -m gpu -q
PYTHONPATH=. timeout 240 "$PY" benchmarks/decoding.py --device cuda --docs 100000 --ce-rows 160000 \
  --queries 64 --batch 16 --dtypes fp32 bf16 --out "$OUT/decoding_gpu.json"
