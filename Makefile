# Quick start: `make demo`, then `make test`. Both install into .venv first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-text test test-slow clean

install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls several GB of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps clean-fid==0.1.35  # Inception FID, no torchvision: erase/eval/fid.py
	touch $(STAMP)

demo: install
	$(BIN)/erase demo

demo-text: install
	$(BIN)/erase demo --text --out demo-text-out

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf demo-out demo-text-out benchmark-out .pytest_cache
