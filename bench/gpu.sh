#!/usr/bin/env bash
# The GPU training benchmark: dss_jax's packed train step for T5 v1.1 base and large in
# bfloat16, with step time, real tokens/s and model FLOPs utilisation (MFU).
#
#   bench/gpu.sh             on a machine with a GPU and a JAX that sees it (jax[cuda12]:
#                            `make install-gpu` beforehand: this script installs
#                            nothing and reaches no network)
#   bench/gpu.sh --dry-run   the same path on CPU with the tiny shape and 2 steps (checks
#                            the script; its "MFU" is against a nominal 1 TFLOP/s)
#
# Environment: PYTHON (default .venv/bin/python, else python3), SIZES (default "base
# large"), EXAMPLES_PER_STEP (default 128), STEPS (10), WARMUP (2), DATASETS (svamp),
# PEAK_TFLOPS (default: the GPU's dense bf16 peak from its name, bench/flops.py), IMPL
# (default: "both" when torch sees CUDA, so the reference runs on the GPU too, else "jax").
# Extra arguments go to bench/train_throughput.py (e.g. --profile_dir=DIR). Results are
# appended as JSON lines to bench/results/gpu_<date>.jsonl.
#
# Every dss_jax step is padded to the same number of packed rows (--same_row_count: one
# compilation, as a training run with a fixed batch of rows); the padding rows count as
# computed, not as real tokens. With IMPL=both, each side runs in its own process (dss_jax
# first), each with the whole GPU, and the ratio of their real tokens/s is printed.
# Compiled steps are cached in bench/results/jax_cache (JAX_COMPILATION_CACHE_DIR).
#
# A machine without the task code's TensorFlow/SeqIO (JAX, PyTorch and gin-config are
# enough) runs this from a copy of the tokenized-data cache: run the benchmark once where
# the data tools are, then carry $DSS_CACHE_DIR/bench and the data folder ($DSS_PALM_DIR).
#
# Precision: bfloat16 compute, float32 master weights and AdamW state (the reference's
# --bf16: torch autocast over float32 parameters).
#
# MFU = model FLOPs per step / step time / peak FLOP/s. Model FLOPs are counted on real
# (non-padding) tokens, per segment, by bench/flops.py:
#   per segment with S_e encoder and S_d decoder tokens (d = d_model, a = heads*d_kv,
#   f = d_ff, g = 2 for gated-GELU, V = vocab, L_e/L_d = encoder/decoder layers)
#     MACs = L_e*[S_e*(4da + (g+1)df) + 2*S_e^2*a]
#          + L_d*[S_d*(6da + (g+1)df) + 2*S_e*da + 2*S_d^2*a + 2*S_d*S_e*a]
#          + S_d*d*V
#   training FLOPs = 6 * MACs  (forward 2*MACs, backward twice that);
#   i.e. about 6 * N_params(non-embedding + lm head) * tokens, plus attention with the
#   full S^2 square for causal self-attention too (as PaLM's MFU). Padding, norms,
#   softmax, dropout, loss and optimiser FLOPs are not counted.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) EXTRA+=("$arg") ;;
  esac
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# Nothing from the network: pip, the HF hub and the data loaders stay offline.
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TF_CPP_MIN_LOG_LEVEL=3

DATASETS=${DATASETS:-svamp}
mkdir -p bench/results
OUT="bench/results/gpu_$(date +%Y%m%d).jsonl"

if [[ $DRY_RUN == 1 ]]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
  SIZES=${SIZES:-tiny}
  EXAMPLES_PER_STEP=${EXAMPLES_PER_STEP:-4}
  STEPS=${STEPS:-2}
  WARMUP=${WARMUP:-1}
  PEAK_TFLOPS=${PEAK_TFLOPS:-1}
  OUT="${DRY_RUN_OUT:-$(mktemp -t gpu_dry_run.XXXXXX.jsonl)}"
else
  SIZES=${SIZES:-base large}
  EXAMPLES_PER_STEP=${EXAMPLES_PER_STEP:-128}
  STEPS=${STEPS:-10}
  WARMUP=${WARMUP:-2}
  PEAK_TFLOPS=${PEAK_TFLOPS:-0}
  if ! "$PYTHON" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' 2>/dev/null; then
    echo "bench/gpu.sh: JAX sees no GPU (backend: $("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo 'jax not importable'))." >&2
    echo "Install jax[cuda12] (make install-gpu) beforehand, or run 'bench/gpu.sh --dry-run' to check the script on CPU." >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi

if [[ -z "${IMPL:-}" ]]; then
  if [[ $DRY_RUN == 0 ]] && "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    IMPL=both
  else
    IMPL=jax
  fi
fi

if [[ $DRY_RUN == 0 ]]; then
  # Compiled steps are kept between the runs (a re-run of the same shapes skips XLA).
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/bench/results/jax_cache}
fi

case $IMPL in
  both) SIDES="jax ref" ;;
  jax|ref) SIDES=$IMPL ;;
  *) echo "bench/gpu.sh: IMPL must be both, jax or ref, got '$IMPL'" >&2; exit 2 ;;
esac

echo "bench/gpu.sh: sizes [$SIZES], $EXAMPLES_PER_STEP examples/step, $STEPS timed steps, impl $IMPL, $(date -u +%Y-%m-%dT%H:%MZ) -> $OUT"
for size in $SIZES; do
  # Each side in its own process, one after the other: the GPU is not shared with
  # other work, so alternating (as on CPU) buys nothing, and each side gets the whole
  # device memory. The reference's process keeps JAX from reserving GPU memory.
  for side in $SIDES; do
    prealloc=true
    [[ $side == ref ]] && prealloc=false
    XLA_PYTHON_CLIENT_PREALLOCATE=$prealloc "$PYTHON" bench/train_throughput.py \
      --size="$size" --dtype=bfloat16 --impl="$side" --datasets="$DATASETS" \
      --examples_per_step="$EXAMPLES_PER_STEP" --steps="$STEPS" --warmup="$WARMUP" \
      --peak_tflops="$PEAK_TFLOPS" --same_row_count --nomemory --json_out="$OUT" ${EXTRA[@]+"${EXTRA[@]}"}
  done
  if [[ $SIDES == "jax ref" ]]; then
    "$PYTHON" bench/compare_sides.py "$OUT" "$size"
  fi
done
