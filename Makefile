# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install mechmon with
# torch pinned to 2.13.0 (the local CPU wheel), so nothing pulls another torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/mechmon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0" -e ".[dev]"
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/mechmon

demo: install
	$(BIN)/python examples/stdlib_induction.py

test: install
	# LitGPT's model file for its test, without litgpt's pins (they would downgrade transformers)
	$(BIN)/pip install -q --no-deps "litgpt==0.5.13"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check mechmon tests examples benchmarks

bench: install
	$(BIN)/python benchmarks/overhead.py
