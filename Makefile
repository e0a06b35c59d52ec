# The two commands every checkout supports:
#   make demo   fresh clone -> .venv -> prepare, tokenizer, train, eval, sample (Tiny Shakespeare)
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
RECIPE ?= recipes/shakespeare-char.toml

.PHONY: demo test lint bench clean

# torch is pinned here (not in pyproject, which admits any torch >= 2.4) because 2.13.0's CPU
# wheel is on the build machines' disk; any other version downloads gigabytes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(RUN)
	$(BIN)/lmforge data prepare --builtin tinyshakespeare --out $(RUN)/data
	$(BIN)/lmforge tokenizer train $(RUN)/data --kind char --out $(RUN)/tokenizer
	$(BIN)/lmforge tokenizer encode $(RUN)/data --tokenizer $(RUN)/tokenizer --out $(RUN)/tokens
	$(BIN)/lmforge train --recipe $(RECIPE) --out $(RUN)
	$(BIN)/lmforge eval $(RUN) --split val
	$(BIN)/lmforge eval $(RUN) --split test
	$(BIN)/lmforge generate $(RUN) --prompt "ROMEO:" --max-new-tokens 300 \
		--temperature 0.8 --top-k 50 --top-p 0.95 --seed 1

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/generate_speed.py

clean:
	rm -rf $(VENV) runs
