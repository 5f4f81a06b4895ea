# Two entry points: `make demo` (the main job on the bundled data) and `make test`.
# Both create .venv on a fresh machine first. torch is installed before anything that
# depends on it, pinned to the version already present (or 2.13.0 CPU), so pip never
# swaps in another build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
EXTRAS ?= cpu,dev

.PHONY: demo test venv clean-venv bench

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@# BEIR's own evaluate() is the reference of the metric parity tests; its other
	@# dependencies (sentence-transformers, ...) are not needed for that, so --no-deps.
	$(PY) -m pip install -q --no-deps "beir==2.2.0"
	@touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/npdecode demo

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/eval_baselines.py

clean-venv:
	rm -rf $(VENV)
