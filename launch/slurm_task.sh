#!/usr/bin/env bash
# One SLURM task of a multi-node run (started by launch/slurm_gpu.sbatch through srun):
# picks this task's GPUs and runs the train binary with the t5x multi-host flags.
#
# With several tasks per node and no GPU binding by SLURM (CUDA_VISIBLE_DEVICES unset
# or listing every GPU of the node), task L of the node gets GPU L, so each process
# drives exactly one GPU; with one task per node the process drives all of them.
set -euo pipefail

die() {
  echo "slurm_task.sh: $*" >&2
  exit 2
}

for var in SLURM_PROCID SLURM_NTASKS SLURM_LOCALID DSS_COORDINATOR_ADDRESS; do
  [[ -n "${!var:-}" ]] || die "$var is not set; start this through launch/slurm_gpu.sbatch"
done

TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE:-1}"
TASKS_PER_NODE="${TASKS_PER_NODE%%(*}"  # SLURM writes e.g. "8(x2)" for 8 tasks on each of 2 nodes
if [[ "$TASKS_PER_NODE" -gt 1 ]]; then
  IFS=, read -r -a visible <<< "${CUDA_VISIBLE_DEVICES:-}"
  if [[ ${#visible[@]} -ne 1 ]]; then
    if [[ ${#visible[@]} -gt 1 ]]; then
      [[ "$SLURM_LOCALID" -lt ${#visible[@]} ]] || die "task $SLURM_LOCALID of the node but only ${#visible[@]} GPUs visible"
      export CUDA_VISIBLE_DEVICES="${visible[$SLURM_LOCALID]}"
    else
      export CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"
    fi
  fi
fi

PYTHON="${DSS_JAX_PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m dss_jax.train "$@" \
  --multiprocess_gpu \
  --coordinator_address="$DSS_COORDINATOR_ADDRESS" \
  --process_count="$SLURM_NTASKS" \
  --process_index="$SLURM_PROCID"
