# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install mechmon with
# torch pinned to 2.13.0 (the local CPU wheel), so nothing pulls another torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# TransformerLens 3.x (HookedTransformer) in an environment of its own: the dev extra installs 4.x
TL3 := .venv-tl3/bin
TL3_READY := .venv-tl3/installed

$(BIN)/mechmon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0" -e ".[dev]"
	touch $@

$(TL3_READY): pyproject.toml
	$(PYTHON) -m venv .venv-tl3
	$(TL3)/pip install -q "torch==2.13.0" -e . "transformer-lens>=3,<4" pytest
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/mechmon

demo: install
	$(BIN)/python examples/stdlib_induction.py

test: install $(TL3_READY)
	# LitGPT's model file for its test, without litgpt's pins (they would downgrade transformers)
	$(BIN)/pip install -q --no-deps "litgpt==0.5.13"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	HF_HUB_OFFLINE=1 MECHMON_TL_MAJOR=3 $(TL3)/python -m pytest -q -p no:cacheprovider tests/adapters/test_transformer_lens.py

lint: install
	$(BIN)/ruff check mechmon tests examples benchmarks

bench: install
	$(BIN)/python benchmarks/overhead.py
