# The README's commands. Each target creates .venv when missing and installs into it.
PYTHON ?= python3
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

.PHONY: install quickstart lint test bench clean

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: anything that asks for `torch` later is then satisfied
	# and pip does not pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,torch,hf]'
	touch $(STAMP)

# The TPU compiler (jax 0.10.2 pins libtpu 0.0.42), for compiling train steps for TPU
# topologies on this host (dss_jax.aot --target=tpu:...): beside the venv's packages, not
# among them, so that only the compiling process loads it (ordinary CPU runs never look
# for a TPU), and only for make test (the quickstart does not need it).
$(LIBTPU): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/libtpu 'libtpu==0.0.42.*'
	touch $(LIBTPU)

# XLA's GPU compiler (JAX's CUDA plugin, of the installed jax's version), for compiling
# train steps for H100/H200 targets on this host (dss_jax.aot --target=gpu:...): beside
# the venv like libtpu, on the path of the compiling process only, so that CPU runs never
# load CUDA libraries; only for make test.
$(CUDA_PLUGIN): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/cuda_plugin \
		"jax-cuda12-plugin==$$($(PY) -c 'import jax; print(jax.__version__)')" \
		"jax-cuda12-pjrt==$$($(PY) -c 'import jax; print(jax.__version__)')"
	touch $(CUDA_PLUGIN)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m dss_jax.quickstart

# Lint and format checks (pyproject.toml); `ruff format .` fixes the formatting.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint $(LIBTPU) $(CUDA_PLUGIN)
	DSS_NO_SKIPS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) quickstart_out .pytest_cache
