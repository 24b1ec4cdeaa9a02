#!/usr/bin/env bash
# One script that, on a GPU machine, builds, checks and times everything, and writes the results.
#
#   bash benchmarks/run_gpu.sh            # all stages in order (about 15-25 min on an H100, compile included)
#   bash benchmarks/run_gpu.sh check      # install (no network: --no-deps) + CUDA / Triton tests + fast-path tests
#   bash benchmarks/run_gpu.sh kernels    # benchmarks/bench_attention.py on CUDA (Triton vs SDPA / Flex)
#   bash benchmarks/run_gpu.sh tiny       # unipose-tiny latency on CUDA, batches 1 and 8, all backends
#   bash benchmarks/run_gpu.sh serve      # `unipose serve` with its replica on CUDA: benchmarks/serve_load.py
#                                         # (needs the serve extra: ray[serve], fastapi)
#   bash benchmarks/run_gpu.sh 7b         # the unipose-7b configuration, random bf16 weights, batches 1 and 8
#   bash benchmarks/run_gpu.sh 7b1 / 7b8  # the same, one batch size per call (compiling the 7B graphs takes minutes)
#   QUICK=1 bash benchmarks/run_gpu.sh 7b # fewer runs / shorter answers (when a call has a time limit)
#   TRAIN_OUT=DIR bash benchmarks/run_gpu.sh train   # continue the embedded model's training (stage 3) on CUDA;
#                                         # TRAIN_MINUTES (budget, stage 3 gets 22 %), TRAIN_SEED and TRAIN_ARGS
#                                         # (more `unipose train` flags); then ship export / evaluate / install
#
# Where a single command may run at most ~10 minutes (the project's device machines), run the stages as
# separate calls: check + kernels, tiny, 7b1, 7b8. Results: benchmarks/results/{attention_cuda,latency_tiny_cuda,
# latency_7b_cuda}.{json,md,png} and run_gpu_<stage>.log; copied to $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-all}"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
QUICK_ARGS=()
if [[ "${QUICK:-0}" == "1" ]]; then QUICK_ARGS=(--runs 5 --warmup 2 --max-new-tokens 16); fi

log() { echo "[run_gpu $(date +%H:%M:%S)] $*"; }

copy_out() {
  if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    for f in "$RESULTS"/attention_cuda.* "$RESULTS"/latency_*_cuda*.* "$RESULTS"/serve_load_*_cuda.json \
             "$RESULTS"/run_gpu_*.log; do
      [[ -f "$f" ]] && cp "$f" "$OUT/"
    done
  fi
}

stage_check() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" || { log "no CUDA device visible to torch"; return 1; }
  if ! python -c "import unipose_sdk.kernels" 2>/dev/null; then
    log "installing unipose-sdk (editable, no dependencies: the machine has no network)"
    pip install -q --no-deps --no-build-isolation -e . || return 1
  fi
  python -m unipose_sdk info || true
  python -c "from unipose_sdk.kernels import kernel_status; print(kernel_status())" || true
  # GPU tests (Triton kernel, fast path with CUDA graphs) and the CPU equivalence tests they build on.
  python -m pytest -q -x -p no:cacheprovider tests/test_kernels_triton.py tests/test_fast_path.py tests/test_bench.py \
    tests/test_generation.py -m "not slow or gpu"
}

stage_kernels() {
  python benchmarks/bench_attention.py --device cuda -o "$RESULTS"
}

stage_tiny() {
  python benchmarks/bench_latency.py --device cuda --model unipose-tiny --batch-size 1 8 --overwrite "${QUICK_ARGS[@]}" \
    --load-note "run_gpu.sh tiny" -o "$RESULTS"
}

stage_serve() {
  # The load test of the HTTP service against direct calls on the same GPU: one replica holding the GPU, then four
  # replicas sharing it (each replica's Python work, HTTP handling and result encoding, runs in its own process).
  python benchmarks/serve_load.py --task generate --device cuda --clients 1 4 16 64 1 --requests 24 \
    -o "$RESULTS/serve_load_tiny_v2_cuda.json"
  python benchmarks/serve_load.py --task generate --device cuda --replicas 4 --gpus-per-replica 0.25 \
    --clients 1 4 16 64 1 16 --requests 48 --overload-clients 512 -o "$RESULTS/serve_load_tiny_v2_cuda_4replicas.json"
}

stage_train() {
  # Stage 3 from the shipped weights with what a 2-core CPU cannot afford: batches of 128 drawn by worker processes
  # and a 1.5x pool. The step count is left open (--language-steps) so the stage ends by its time share.
  python -m unipose_sdk train -o "${TRAIN_OUT:-runs/gpu_train}" --stages 3 --init-from unipose_sdk/assets/unipose-tiny \
    --device cuda --budget-minutes "${TRAIN_MINUTES:-25}" --seed "${TRAIN_SEED:-6}" --batch-size 128 --workers 6 \
    --threads 2 --language-steps 1000000 --pool-scale 1.5 ${TRAIN_ARGS:-}
}

stage_7b() {
  # Latency does not depend on weight values: random bf16 weights, the 7B shapes (~14.5 GB of LLM weights).
  python benchmarks/bench_latency.py --device cuda --model unipose-7b --batch-size 1 8 --dtype bfloat16 --overwrite "${QUICK_ARGS[@]}" \
    --load-note "run_gpu.sh 7b (random weights)" -o "$RESULTS"
}

stage_7b1() {
  python benchmarks/bench_latency.py --device cuda --model unipose-7b --batch-size 1 --dtype bfloat16 --overwrite "${QUICK_ARGS[@]}" \
    --name latency_7b_cuda_b1 --load-note "run_gpu.sh 7b1 (random weights)" -o "$RESULTS"
}

stage_7b8() {
  python benchmarks/bench_latency.py --device cuda --model unipose-7b --batch-size 8 --dtype bfloat16 --overwrite "${QUICK_ARGS[@]}" \
    --name latency_7b_cuda_b8 --load-note "run_gpu.sh 7b8 (random weights)" -o "$RESULTS"
}

run_stage() {
  local name="$1"
  log "stage $name"
  "stage_$name" 2>&1 | tee "$RESULTS/run_gpu_$name.log"
  local rc=${PIPESTATUS[0]}
  log "stage $name exit $rc"
  copy_out
  return "$rc"
}

case "$STAGE" in
  all) rc=0; for s in check kernels tiny 7b; do run_stage "$s" || rc=1; done; exit $rc ;;
  check|kernels|tiny|serve|train|7b|7b1|7b8) run_stage "$STAGE" ;;
  *) echo "usage: $0 [all|check|kernels|tiny|serve|train|7b|7b1|7b8]" >&2; exit 2 ;;
esac
