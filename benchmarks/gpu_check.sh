#!/bin/bash
# The GPU benchmark set, one stage after another, on an H100/H200 host (about 15 minutes
# for the default stages). From the repo root, after `pip install -e ".[test,cuda]"`:
#
#   bash benchmarks/gpu_check.sh                 # base train seq512 large
#   bash benchmarks/gpu_check.sh base attn       # any stages, in order
#
# Stages (each cut at its budget in seconds, so a slow one cannot eat the next):
#   base    BERT-base, seq 128, batch 256, bf16: ours vs HF eager vs HF torch.compile,
#           top 25 GPU kernels                                             (BUDGET_BASE=240)
#   train   train.py, base config, bf16, 300 steps on the bundled corpus: cold compile to
#           step 200, then a resume to 300 with the compilation cache warm (BUDGET_TRAIN=240)
#   seq512  BERT-base, seq 512, batch 32, bf16: ours vs HF eager             (BUDGET_SEQ512=130)
#   large   BERT-large, seq 128, batch 128, bf16: ours only (MFU)            (BUDGET_LARGE=130)
#   attn    BERT-base, seq 128, batch 256, bf16, attention dropout 0 (so attention is fused):
#           ours only, train.attention_impl=auto (cuDNN flash attention) vs explicit
#           (scores materialised)                                          (BUDGET_ATTN=200)
# TRAIN_EXTRA: more train.py flags (a CPU smoke test of the script: a tiny model, 8 steps).
# Logs go to $OUT/<stage>.log (default /tmp/gpu_check); the last lines printed summarise
# each stage's result lines. On a host without package access, wheels put in .whl/ are
# installed first (into /tmp/site).
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader
  python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__,
    jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch',
    torch.__version__, 'transformers', transformers.__version__)"
  git log -1 --format='commit %h %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.log"

BENCH="python3 -m benchmarks.train_step --platform gpu --dtype bfloat16 --steps 8 --repeats 5 --warmup 4"

stage_base() {
  $BENCH --config base --seq 128 --batch 256 --hf-compile --top-ops 25
}
stage_seq512() {
  $BENCH --config base --seq 512 --batch 32
}
stage_large() {
  $BENCH --config large --seq 128 --batch 128 --skip-hf
}
stage_attn() {
  for impl in auto explicit; do
    echo "attention_impl=$impl"
    $BENCH --config base --seq 128 --batch 256 --skip-hf --steps 4 --repeats 3 \
      --override model.attention_probs_dropout_prob=0.0 --override train.attention_impl=$impl
  done
}

# Copies stdin to stdout, each line (tqdm's \r updates split too) prefixed with the seconds
# since $1, and marks the first progress update past the bar's initial count: the first
# train call done.
stamp() {
  python3 -u -c '
import os, re, sys, time
t0, first = float(sys.argv[1]), None
while chunk := os.read(0, 65536).decode(errors="replace"):  # tqdm ends no line: stamp now
    for part in filter(str.strip, re.split(r"[\r\n]", chunk)):
        print(f"{time.time() - t0:7.1f} s  {part}")
        m = re.search(r"\| *(\d+)/\d+ \[", part)
        if m and first is None:
            first = int(m.group(1))
        elif m and int(m.group(1)) > first >= 0:
            print(f"{time.time() - t0:7.1f} s  first train call done (steps {first}-{m.group(1)})")
            first = -1' "$1"
}

stage_train() {
  local work=/tmp/gpu_check_train run start rc
  rm -rf "$work"
  # Run 1 stops (and saves) after step 200 with a cold cache; run 2 resumes it to step 300
  # with the cache warm. "time to first step" = the first progress line past the start step.
  for run in cold warm; do
    start=$(date +%s.%N)
    python3 train.py --config configs/base.py --workdir "$work" \
      --config.train.dtype=bfloat16 --config.train.steps=300 --config.train.eval_batches=10 \
      --config.train.log_every=50 --config.checkpoint.every=100 \
      $([ $run = cold ] && echo --config.train.stop_after=200) ${TRAIN_EXTRA:-} 2>&1 \
      | stamp "$start"
    rc=${PIPESTATUS[0]}
    echo "run $run: exit $rc, $(python3 -c "import time; print(f'{time.time() - $start:.1f}')") s in all"
    echo "cache entries: $(ls "$work/jax_cache" 2>/dev/null | wc -l)"
  done
  cat "$work/metrics.jsonl"
  python3 -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if "tokens_per_sec" in line]
print("train tokens/s by step:", ", ".join("%d: %.0f" % (r["step"], r["tokens_per_sec"])
                                          for r in rows))' \
    "$work/metrics.jsonl"
}

declare -A BUDGET=([base]=${BUDGET_BASE:-240} [train]=${BUDGET_TRAIN:-240}
                   [seq512]=${BUDGET_SEQ512:-130} [large]=${BUDGET_LARGE:-130}
                   [attn]=${BUDGET_ATTN:-200})
for s in ${@:-base train seq512 large}; do
  [ -n "${BUDGET[$s]:-}" ] || { echo "error: unknown stage $s (base, train, seq512, large, attn)"; exit 2; }
done
for stage in "${@:-base train seq512 large}"; do
  for s in $stage; do
    echo "=== $s (budget ${BUDGET[$s]} s)" | tee "$OUT/$s.log"
    export -f stage_$s stamp
    export BENCH TRAIN_EXTRA
    timeout -k 10 "${BUDGET[$s]}" bash -c "stage_$s" 2>&1 | tee -a "$OUT/$s.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $s: cut at its budget of ${BUDGET[$s]} s" | tee -a "$OUT/$s.log"
  done
done

echo "=== summary"
for s in base train seq512 large attn; do
  [ -f "$OUT/$s.log" ] || continue
  echo "--- $s"
  grep -E '^(config|matmul|ours|hf|ratio|run |attention_impl|cache entries|error|train tokens)|cut at|resumed|first train|eval step|stopped' \
    "$OUT/$s.log" | grep -v '^ours: build' | cut -c1-240
  grep -E '^ours: build' "$OUT/$s.log"
done
