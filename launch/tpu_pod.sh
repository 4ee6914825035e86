#!/usr/bin/env bash
# Runs dss_jax on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--run_name=R] COMMAND [-- TRAIN FLAGS]
#
# Commands (in the order a run needs them):
#   copy     pack this repository (without .git/.venv) and unpack it on every worker in ~/dss_jax,
#            and each --data directory where the workers read it (below)
#   install  create ~/dss_jax/.venv on every worker and install dss_jax for TPU into it,
#            pinned (launch/install.sh tpu: jax[tpu] with libtpu, constraints/tpu.txt);
#            --extras=hf,... adds setup.py extras
#   check    check on every worker that each directory `copy` staged is there and the same
#            (sha256 of every file against the manifest copy made here)
#   train    check, then start `python -m dss_jax.train TRAIN FLAGS` on every worker, detached; each worker
#            logs to ~/dss_runs/RUN_NAME/worker_N.log and records its pid beside it
#   status   show whether each worker's process is alive, and the last lines of its log
#   logs     copy every worker's log into ./tpu_logs/RUN_NAME/ (worker_N.log)
#   stop     stop the run on every worker (SIGTERM: the trainer saves a checkpoint first;
#            SIGKILL after --grace seconds)
#   delete   delete the TPU VM (asks for confirmation unless --yes)
#   up       copy + install + train
#
# --data=LOCAL_DIR[:REMOTE_DIR] (repeatable, with copy or up) stages data the run reads: the
# paper's caches (DSS_PALM_DIR, ../shared/data/dss_palm), a user's teacher caches or
# corpora. Workers have none of this machine's files. REMOTE_DIR defaults to the place
# LOCAL_DIR has beside this repository (../shared/data/dss_palm -> ~/shared/data/dss_palm,
# beside ~/dss_jax, where the tasks' defaults look), else ~/dss_data/BASENAME; a relative
# REMOTE_DIR is under the worker's home. Point the run's flags at REMOTE_DIR.
#
# Every worker runs the same command with the same gin files; JAX's distributed runtime
# finds the other workers itself (DSS_JAX_DISTRIBUTED=auto). MODEL_DIR must be on a file
# system every worker mounts (gs:// paths are not read or written yet), so that all
# workers write one checkpoint.
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
DATA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --run_name=*) RUN_NAME="${1#*=}" ;;
    --grace=*) GRACE="${1#*=}" ;;
    --extras=*) EXTRAS="${1#*=}" ;;
    --data=*) DATA+=("${1#*=}") ;;
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
  die "$CMD needs the binary's flags after '--', e.g. -- --gin_file=runs/train.gin --gin.MODEL_DIR=\"'/mnt/shared/run'\""
fi
[[ -n "$CMD" ]] || die "no command given: copy | install | check | train | status | logs | stop | delete | up"
if [[ ${#DATA[@]} -gt 0 && "$CMD" != copy && "$CMD" != up ]]; then
  die "--data stages directories with copy or up, not $CMD"
fi
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

# Each --data as "LOCAL|REMOTE", LOCAL absolute and REMOTE as the worker's shell reads it,
# checked before anything is copied.
STAGED=()
for spec in ${DATA[@]+"${DATA[@]}"}; do
  local_dir="${spec%%:*}"
  remote_dir=""
  [[ "$spec" == *:* ]] && remote_dir="${spec#*:}"
  [[ -d "$local_dir" ]] || die "--data=$spec: $local_dir is not a directory here"
  local_dir="$(cd "$local_dir" && pwd)"
  [[ "$local_dir" != "$REPO" && "$local_dir" != "$REPO"/* ]] ||
    die "--data=$spec: $local_dir is in this repository, which copy ships already"
  if [[ -z "$remote_dir" ]]; then
    parent="$(dirname "$REPO")"
    if [[ "$local_dir" == "$parent"/* ]]; then
      remote_dir="${local_dir#"$parent"/}"
    else
      remote_dir="dss_data/$(basename "$local_dir")"
    fi
  fi
  [[ "$remote_dir" =~ ^[A-Za-z0-9._/~-]+$ && "$remote_dir" != *..* ]] ||
    die "--data=$spec: the worker directory '$remote_dir' may only hold letters, digits, '.', '_', '-', '/' and '~', and no '..'"
  if [[ "$remote_dir" != /* && "$remote_dir" != "~"* ]]; then
    # shellcheck disable=SC2088  # expanded on the worker
    remote_dir="~/$remote_dir"
  fi
  # shellcheck disable=SC2088
  [[ "$remote_dir" != "~" && "$remote_dir" != "~/" && "$remote_dir" != "~/dss_jax"* ]] ||
    die "--data=$spec: '$remote_dir' is the worker's home or its copy of this repository; give another REMOTE_DIR"
  STAGED+=("$local_dir|$remote_dir")
done

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

# The manifest of a staged directory, on the worker: beside it, not in it.
# shellcheck disable=SC2088  # expanded on the worker
MANIFESTS='~/.dss_staged'

cmd_copy_data() {
  local entry local_dir remote_dir tmp name
  [[ ${#STAGED[@]} -gt 0 ]] || return 0
  tmp="$(mktemp -d)"
  # The list of staged directories that `check` (and so `train`) verifies on every worker.
  : > "$tmp/staged"
  for entry in "${STAGED[@]}"; do
    local_dir="${entry%%|*}"
    remote_dir="${entry#*|}"
    name="$(printf '%s' "$remote_dir" | sha256sum | cut -c1-16)"
    # sha256 of every file, by path relative to the directory.
    (cd "$local_dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) > "$tmp/$name.sha256"
    echo "$remote_dir $name" >> "$tmp/staged"
    echo "staging $local_dir -> $remote_dir on every worker ($(wc -l < "$tmp/$name.sha256") files)"
    tar -C "$local_dir" -czf "$tmp/$name.tar.gz" .
    run "$GCLOUD" compute tpus tpu-vm scp "$tmp/$name.tar.gz" "$tmp/$name.sha256" "$TPU:~/" "${GCLOUD_FLAGS[@]}" --worker=all
    on_all_workers "mkdir -p $MANIFESTS $remote_dir && tar -xzf ~/$name.tar.gz -C $remote_dir && rm ~/$name.tar.gz && mv ~/$name.sha256 $MANIFESTS/"
  done
  run "$GCLOUD" compute tpus tpu-vm scp "$tmp/staged" "$TPU:$MANIFESTS/" "${GCLOUD_FLAGS[@]}" --worker=all
  rm -r "$tmp"  # made here even with --dry_run (the manifests), and removed
}

cmd_check() {
  # Each worker checks every directory copy staged against its manifest, and names what
  # is missing or differs; any worker that fails makes the command fail.
  on_all_workers "W=$WORKER_ID; test -f $MANIFESTS/staged || { echo \"worker \$W: no data staged\"; exit 0; }; bad=0; while read -r dir name; do d=\$(eval echo \"\$dir\"); if [ ! -d \"\$d\" ]; then echo \"worker \$W: \$dir is missing: run copy --data again\"; bad=1; elif ! (cd \"\$d\" && sha256sum --quiet --strict -c $MANIFESTS/\$name.sha256 >/dev/null 2>&1); then echo \"worker \$W: \$dir differs from what copy staged: run copy --data again\"; bad=1; else echo \"worker \$W: \$dir as staged\"; fi; done < $MANIFESTS/staged; exit \$bad"
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
  copy) cmd_copy && cmd_copy_data ;;
  install) cmd_install ;;
  check) cmd_check ;;
  train) cmd_check && cmd_train ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  up) cmd_copy && cmd_copy_data && cmd_install && cmd_check && cmd_train ;;
  *) die "unknown command '$CMD': copy | install | check | train | status | logs | stop | delete | up" ;;
esac
