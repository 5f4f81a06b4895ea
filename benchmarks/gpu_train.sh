#!/usr/bin/env bash
# The GPU training recipe: Np Decoding trained on full BEIR SciFact and evaluated beside BM25 in
# under 8 minutes on one H100/H200 (bf16-mixed): encoding 5,183 documents, MINUTES of training,
# decoding the 300 test queries. Writes $OUT/scifact_gr_gpu.{json,txt}.
#
#   DATA_DIR=$NPDECODE_DATA bash benchmarks/gpu_train.sh
#
# Settings (environment): PY (python, default .venv/bin/python), DATA_DIR (holds scifact/ in
# BEIR layout; unset: downloaded), DATASET (default beir/scifact), CONFIG (default
# configs/train-scifact-gpu.yml), MINUTES (training budget, default 5), RUN (run dir, default
# runs/scifact-gpu; an unfinished one is resumed), OUT (default benchmarks/results), LP (length
# penalty of the np retriever, default 1.0), SETS (more `--set key=value` items, space-separated).
# The same script runs on a CPU with a tiny config (tests/train/test_gpu_recipe.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
RUN=${RUN:-runs/scifact-gpu}
CONFIG=${CONFIG:-configs/train-scifact-gpu.yml}
DATASET=${DATASET:-beir/scifact}
MINUTES=${MINUTES:-5}
LP=${LP:-1.0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # a bare machine: pure wheels beside the repo
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/npd-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/npd-site"
fi
data=()
[ -n "${DATA_DIR:-}" ] && data=(--data-dir "$DATA_DIR")
sets=(--set "trainer.max_minutes=$MINUTES" --set trainer.progress=false)
for item in ${SETS:-}; do sets+=(--set "$item"); done
resume=()
[ -d "$RUN" ] && [ ! -f "$RUN/manifest.json" ] && resume=(--resume)
start=$(date +%s)
{
  echo "# npdecode on $DATASET: $CONFIG, ${MINUTES} training minutes, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  (nvidia-smi -L 2>/dev/null || echo "no GPU") | head -n 1
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} > "$OUT/scifact_gr_gpu.txt"
if [ ! -f "$RUN/manifest.json" ]; then
  "$PY" -m npdecode train "$CONFIG" --out "$RUN" --dataset "$DATASET" "${data[@]}" "${sets[@]}" "${resume[@]}"
fi
trained=$(date +%s)
"$PY" -m npdecode eval --dataset "$DATASET" "${data[@]}" --retriever bm25 --retriever np --index "$RUN/index" \
  --k 100 --beam 10 --length-penalty "$LP" --no-per-query --json "$OUT/scifact_gr_gpu.json" | tee -a "$OUT/scifact_gr_gpu.txt"
done_at=$(date +%s)
echo "wall: train+index $((trained - start)) s, eval $((done_at - trained)) s, total $((done_at - start)) s" \
  | tee -a "$OUT/scifact_gr_gpu.txt"
