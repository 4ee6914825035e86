#!/usr/bin/env bash
# Creates a virtualenv and installs dss_jax into it, pinned for one platform.
#
#   launch/install.sh cpu|gpu|tpu [EXTRA ...]
#
#   cpu  JAX on CPU, with the test, torch (a CPU build) and hf extras: what `make test` runs
#   gpu  jax[cuda12]: JAX's CUDA 12 wheels (the NVIDIA libraries come as wheels; the
#        machine needs only an NVIDIA driver)
#   tpu  jax[tpu]: JAX with libtpu, for Cloud TPU VMs
#
# EXTRA names more of setup.py's extras (e.g. hf). Every package is pinned by
# constraints/PLATFORM.txt (the versions `make test` passed with; constraints/pins.py
# makes and checks them). The make targets (install, install-gpu, install-tpu) and the
# launchers (tpu_pod.sh install) all run this script.
#
# Environment: VENV (default .venv), PYTHON (default: the first of python3.11, python3.12,
# python3.13, python3 that is Python 3.11 or newer: the pinned jax needs 3.11).
set -euo pipefail

die() {
  echo "install.sh: $*" >&2
  exit 2
}

[[ $# -ge 1 ]] || die "name the platform: launch/install.sh cpu|gpu|tpu [EXTRA ...]"
PLATFORM="$1"
shift
case "$PLATFORM" in
  cpu) EXTRAS="test,torch,hf" ;;
  gpu | tpu) EXTRAS="$PLATFORM" ;;
  *) die "unknown platform '$PLATFORM': cpu, gpu or tpu" ;;
esac
for extra in "$@"; do
  [[ "$extra" =~ ^[a-z0-9_-]+$ ]] || die "'$extra' is not an extra's name (see setup.py's extras_require)"
  EXTRAS="$EXTRAS,$extra"
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${VENV:-.venv}"
CONSTRAINTS="constraints/$PLATFORM.txt"

is_new_enough() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

if [[ -x "$VENV/bin/python" ]]; then
  is_new_enough "$VENV/bin/python" ||
    die "$VENV holds Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'); the pinned jax needs 3.11 or newer: remove $VENV (or set VENV=another/dir) and run this again"
else
  if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
      if command -v "$candidate" >/dev/null && is_new_enough "$candidate"; then
        PYTHON="$candidate"
        break
      fi
    done
    [[ -n "${PYTHON:-}" ]] ||
      die "no Python 3.11 or newer on this machine (the pinned jax needs it): install one (Ubuntu 22.04: sudo apt-get install -y python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11"
  fi
  is_new_enough "$PYTHON" || die "PYTHON=$PYTHON is not Python 3.11 or newer (the pinned jax needs it)"
  # Images without the venv module (Ubuntu's python3.X-venv) get it on first use.
  "$PYTHON" -m venv "$VENV" 2>/dev/null || {
    version="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    command -v apt-get >/dev/null || die "$PYTHON has no venv module: install it (python$version-venv) and run this again"
    sudo apt-get install -y -q "python$version-venv" && "$PYTHON" -m venv "$VENV"
  }
fi

PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
if [[ "$PLATFORM" == cpu ]]; then
  # The CPU build of torch first: `torch` is then satisfied and pip pulls no CUDA build.
  "${PIP[@]}" -c "$CONSTRAINTS" torch
fi
"${PIP[@]}" -c "$CONSTRAINTS" -e ".[$EXTRAS]"
"$VENV/bin/python" - "$PLATFORM" "$VENV" <<'EOF'
import importlib.metadata as m, sys
names = {"cpu": ["jax"], "gpu": ["jax", "jax-cuda12-plugin"], "tpu": ["jax", "libtpu"]}[sys.argv[1]]
print(f"dss_jax for {sys.argv[1]} in {sys.argv[2]}:", ", ".join(f"{n} {m.version(n)}" for n in names))
EOF
