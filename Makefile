# ecbconvert: the two commands a newcomer needs are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SAMPLE  := sample_models/ecbsr_x2_m4c16_prelu.pt
OUT     := build/demo

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: every torch range below is then satisfied without a CUDA download.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py $(SAMPLE) --out $(OUT)

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow" tests

bench: install
	$(BIN)/python scripts/bench_readme.py $(SAMPLE) --out build/bench

lint: install
	$(BIN)/ruff check ecbconvert tests scripts

clean:
	rm -rf build .pytest_cache $(VENV)
