#!/usr/bin/env bash
# GPU checks for the decoding core, sized to finish in under 5 minutes on one H100/H200:
# the gpu-marked tests, then the decoding benchmark (ours vs HF generate) on CUDA.
#
#   bash benchmarks/gpu.sh                 # with the project's .venv (pip install -e .[gpu,dev])
#   PY=python3 OUT=/some/dir bash benchmarks/gpu.sh
#
# Without an installed package (a bare machine that has torch/transformers/lightning), put
# wheels of the missing pure dependencies (pydantic, faiss-cpu, ...) in .whl/: they are
# installed into a temporary site dir and the repo is used through PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/npd-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/npd-site"
fi
nvidia-smi -L || true
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
"cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
status=0
timeout 150 "$PY" -m pytest tests/core tests/index tests/merge -m gpu -q -p no:cacheprovider -o addopts="" \
  2>&1 | tee "$OUT/gpu_tests.log" || status=1
timeout 240 "$PY" benchmarks/decoding.py --device cuda --docs 100000 --ce-rows 160000 \
  --queries 64 --repeats 3 --dtypes fp32 bf16 --out "$OUT/decoding_gpu.json" 2>&1 | grep -v "it/s" || status=1
exit $status
