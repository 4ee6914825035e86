# The README's commands. Each target creates .venv when missing and installs into it.
# The interpreter for a new .venv (default: launch/install.sh picks a Python 3.11 or newer).
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dss_jax-installed
LIBTPU := $(VENV)/libtpu/.installed
CUDA_PLUGIN := $(VENV)/cuda_plugin/.installed
PYTEST_ARGS ?=
# Test files run on this many worker processes (pytest-xdist, each file on one worker so
# its module fixtures are built once): much of the suite is single-threaded start-up and
# compilation, which two workers overlap on a 2-core machine.
PYTEST_WORKERS ?= 2

.PHONY: install install-gpu install-tpu compilers quickstart lint test bench clean

$(STAMP): setup.py Makefile launch/install.sh constraints/cpu.txt
	VENV=$(VENV) PYTHON=$(PYTHON) launch/install.sh cpu
	touch $(STAMP)

# The TPU compiler (libtpu as constraints/tpu.txt pins it), for compiling train steps for TPU
# topologies on this host (dss_jax.aot --target=tpu:...): beside the venv's packages, not
# among them, so that only the compiling process loads it (ordinary CPU runs never look
# for a TPU), and only for make test (the quickstart does not need it).
$(LIBTPU): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/libtpu -c constraints/tpu.txt libtpu
	touch $(LIBTPU)

# XLA's GPU compiler (JAX's CUDA plugin, as constraints/gpu.txt pins it), for compiling
# train steps for H100/H200 targets on this host (dss_jax.aot --target=gpu:...): beside
# the venv like libtpu, on the path of the compiling process only, so that CPU runs never
# load CUDA libraries; only for make test.
$(CUDA_PLUGIN): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/cuda_plugin -c constraints/gpu.txt \
		jax-cuda12-plugin jax-cuda12-pjrt
	touch $(CUDA_PLUGIN)

install: $(STAMP)

# libtpu and the CUDA plugin beside the venv, for dss_jax.aot's TPU and GPU targets.
compilers: $(LIBTPU) $(CUDA_PLUGIN)

# dss_jax for a GPU box (jax[cuda12]) or a Cloud TPU VM (jax[tpu]), pinned like the CPU
# install by constraints/gpu.txt or constraints/tpu.txt (launch/install.sh).
install-gpu:
	VENV=$(VENV) launch/install.sh gpu

install-tpu:
	VENV=$(VENV) launch/install.sh tpu

quickstart: $(STAMP)
	$(PY) -m dss_jax.quickstart

# Lint and format checks (pyproject.toml); `ruff format .` fixes the formatting.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint compilers
	DSS_NO_SKIPS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) quickstart_out .pytest_cache
