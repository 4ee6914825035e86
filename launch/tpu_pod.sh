#!/usr/bin/env bash
# Runs dss_jax on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--run_name=R] COMMAND [-- TRAIN FLAGS]
#
# Commands (in the order a run needs them):
#   copy     pack this repository (without .git/.venv) and unpack it on every worker in ~/dss_jax
#   install  create ~/dss_jax/.venv on every worker and install dss_jax for TPU into it,
#            pinned (launch/install.sh tpu: jax[tpu] with libtpu, constraints/tpu.txt);
#            --extras=hf,... adds setup.py extras
#   train    start `python -m dss_jax.train TRAIN FLAGS` on every worker, detached; each worker
#            logs to ~/dss_runs/RUN_NAME/worker_N.log and records its pid beside it
#   status   show whether each worker's process is alive, and the last lines of its log
#   logs     copy every worker's log into ./tpu_logs/RUN_NAME/ (worker_N.log)
#   stop     stop the run on every worker (SIGTERM: the trainer saves a checkpoint first;
#            SIGKILL after --grace seconds)
#   delete   delete the TPU VM (asks for confirmation unless --yes)
#   up       copy + install + train
#
# Every worker runs the same command with the same gin files; JAX's distributed runtime
# finds the other workers itself (DSS_JAX_DISTRIBUTED=auto). MODEL_DIR should be a
# gs:// path (or a shared file system) so that all workers write one checkpoint.
#
# --dry_run prints the gcloud commands instead of running them. GCLOUD=/path/to/gcloud
# replaces the gcloud binary (the tests use a fake one).
set -euo pipefail

usage() {
  # The comment block at the top of this file, without its '# '.
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
  exit 2
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

TPU="" ZONE="" PROJECT="" RUN_NAME="" DRY_RUN=0 YES=0 GRACE=120 EXTRAS="" CMD=""
# Remote paths: `~` must expand on the worker, not here.
# shellcheck disable=SC2088
REMOTE_DIR='~/dss_jax'
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD="${GCLOUD:-gcloud}"
TRAIN_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --run_name=*) RUN_NAME="${1#*=}" ;;
    --grace=*) GRACE="${1#*=}" ;;
    --extras=*) EXTRAS="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --yes) YES=1 ;;
    -h | --help) usage ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    --*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z "$CMD" ]] || die "one command at a time; got '$CMD' and '$1'"
      CMD="$1"
      ;;
  esac
  shift
done

if [[ ("$CMD" == train || "$CMD" == up) && ${#TRAIN_ARGS[@]} -eq 0 ]]; then
  die "$CMD needs the binary's flags after '--', e.g. -- --gin_file=runs/train.gin --gin.MODEL_DIR=\"'gs://bucket/run'\""
fi
[[ -n "$CMD" ]] || die "no command given: copy | install | train | status | logs | stop | delete | up"
[[ -n "$TPU" ]] || die "--tpu=NAME is required (the TPU VM's name)"
[[ -n "$ZONE" ]] || die "--zone=ZONE is required (e.g. us-central2-b)"
[[ "$EXTRAS" =~ ^[a-z0-9_,-]*$ ]] || die "--extras takes setup.py extras separated by commas (e.g. hf), got '$EXTRAS'"
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$GRACE'"
[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]*$ ]] || die "--run_name may only contain letters, digits, '.', '_' and '-'"
if [[ -z "$RUN_NAME" ]]; then
  RUN_NAME="run_$(date +%Y%m%d_%H%M%S)"
fi
# shellcheck disable=SC2088
REMOTE_RUN='~/dss_runs/'"$RUN_NAME"

GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_FLAGS+=(--project="$PROJECT")
fi

# Prints a command (shell-quoted, so it can be pasted) or runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Runs a bash snippet on every worker of the TPU VM.
on_all_workers() {
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

# The worker's index: TPU VMs publish it in their metadata (DSS_WORKER_ID overrides).
# Expanded on the worker, hence single quotes.
# shellcheck disable=SC2016
WORKER_ID='${DSS_WORKER_ID:-$(curl -sf --max-time 10 -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)}'

cmd_copy() {
  local tarball
  if [[ "$DRY_RUN" == 1 ]]; then
    tarball="${TMPDIR:-/tmp}/dss_jax_upload/dss_jax.tar.gz"  # nothing is created
  else
    tarball="$(mktemp -d)/dss_jax.tar.gz"
  fi
  run tar -C "$REPO" --exclude=.git --exclude=.venv --exclude='*.pyc' --exclude=__pycache__ \
    --exclude=launch_logs --exclude=tpu_logs -czf "$tarball" .
  run "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$TPU:~/dss_jax.tar.gz" "${GCLOUD_FLAGS[@]}" --worker=all
  on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf ~/dss_jax.tar.gz -C $REMOTE_DIR && rm ~/dss_jax.tar.gz"
  run rm -r "$(dirname "$tarball")"
}

cmd_install() {
  # One install path for every platform: launch/install.sh (it finds a Python 3.11+ and
  # installs a missing venv module on first use).
  on_all_workers "cd $REMOTE_DIR && bash launch/install.sh tpu ${EXTRAS//,/ }"
}

cmd_train() {
  [[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "train needs the binary's flags after '--', e.g. -- --gin_file=runs/train.gin ..."
  local args
  args="$(printf '%q ' "${TRAIN_ARGS[@]}")"
  # setsid + nohup: the run survives the ssh session; the pid file lets `stop` find it.
  on_all_workers "mkdir -p $REMOTE_RUN; W=$WORKER_ID; cd $REMOTE_DIR || exit 1; DSS_JAX_DISTRIBUTED=auto setsid nohup .venv/bin/python -m dss_jax.train $args > $REMOTE_RUN/worker_\$W.log 2>&1 < /dev/null & echo \$! > $REMOTE_RUN/worker_\$W.pid; echo \"worker \$W: pid \$!, log $REMOTE_RUN/worker_\$W.log\""
}

cmd_status() {
  on_all_workers "W=$WORKER_ID; P=\$(cat $REMOTE_RUN/worker_\$W.pid 2>/dev/null || true); if [ -n \"\$P\" ] && kill -0 \"\$P\" 2>/dev/null; then echo \"worker \$W: running (pid \$P)\"; else echo \"worker \$W: not running\"; fi; tail -n 3 $REMOTE_RUN/worker_\$W.log 2>/dev/null || true"
}

cmd_logs() {
  local dest="tpu_logs/$RUN_NAME"
  run mkdir -p "$dest"
  run "$GCLOUD" compute tpus tpu-vm scp "$TPU:$REMOTE_RUN/worker_*.log" "$dest/" "${GCLOUD_FLAGS[@]}" --worker=all
}

cmd_stop() {
  # SIGTERM to the whole process group (setsid made the trainer its leader), then SIGKILL
  # to whatever is left after the grace period.
  on_all_workers "W=$WORKER_ID; P=\$(cat $REMOTE_RUN/worker_\$W.pid 2>/dev/null || true); if [ -z \"\$P\" ]; then echo \"worker \$W: no pid file\"; exit 0; fi; kill -TERM -- -\"\$P\" 2>/dev/null || true; for i in \$(seq $GRACE); do kill -0 \"\$P\" 2>/dev/null || break; sleep 1; done; kill -KILL -- -\"\$P\" 2>/dev/null || true; rm -f $REMOTE_RUN/worker_\$W.pid; echo \"worker \$W: stopped\""
}

cmd_delete() {
  if [[ "$YES" != 1 && "$DRY_RUN" != 1 ]]; then
    read -r -p "delete TPU VM $TPU in $ZONE? [y/N] " answer
    [[ "$answer" == y || "$answer" == Y ]] || die "not deleted"
  fi
  run "$GCLOUD" compute tpus tpu-vm delete "$TPU" "${GCLOUD_FLAGS[@]}" --quiet
}

case "$CMD" in
  copy) cmd_copy ;;
  install) cmd_install ;;
  train) cmd_train ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  up) cmd_copy && cmd_install && cmd_train ;;
  *) die "unknown command '$CMD': copy | install | train | status | logs | stop | delete | up" ;;
esac
