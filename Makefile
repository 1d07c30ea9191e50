# make demo: the main job on the embedded corpus.  make test: ruff, mypy (pyproject's [tool.mypy]) and the test suite.  Both set themselves up.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch (on this project's machines it lies on disk). GPU users: install the CUDA
# build of torch into $(VENV) first (or set TORCH_SPEC); a torch that is already there is kept.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,hf,analysis,tensorboard,eval,cluster

.PHONY: setup test demo lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(PY) -m ruff check src tests
	$(PY) -m mypy
	$(PY) -m pytest

# Prepares the embedded corpus, trains configs/cpu/tiny.yaml and its LowRank-32% twin, prints the table.
demo: setup
	$(VENV)/bin/lowrank-lm demo configs/cpu/tiny.yaml

lint: setup
	$(PY) -m ruff check src tests

clean-venv:
	rm -rf $(VENV)
