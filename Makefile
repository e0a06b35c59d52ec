# The two commands every checkout supports:
#   make demo   fresh clone -> .venv -> prepare, tokenizer, train, eval, sample (Tiny Shakespeare)
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
RECIPE ?= recipes/shakespeare-char.toml

.PHONY: demo test lint bench clean translate-multi30k bert-mlm lstm-shakespeare

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

# The model families beyond the GPT (recipes/*.toml; figures in docs/recipes.md).
SHARED ?= ../shared/data
M30K := $(SHARED)/translation/multi30k

translate-multi30k: $(VENV)/.installed
	rm -rf runs/multi30k
	$(BIN)/lmforge data pairs --kind bpe --vocab-size 8000 --max-len 64 --out runs/multi30k/pairs \
		--train-src $(M30K)/train.en.gz --train-tgt $(M30K)/train.de.gz \
		--val-src $(M30K)/val.en.gz --val-tgt $(M30K)/val.de.gz \
		--test-src $(M30K)/test_2016_flickr.en.gz --test-tgt $(M30K)/test_2016_flickr.de.gz
	$(BIN)/lmforge train --recipe recipes/translate-multi30k.toml --out runs/multi30k
	$(BIN)/lmforge eval runs/multi30k --bleu --split test --output runs/multi30k/test_2016_flickr.de

bert-mlm: $(VENV)/.installed
	rm -rf runs/bert-mlm
	$(BIN)/lmforge data prepare \
		$(SHARED)/wikipedia-sample/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \
		--val-fraction 0.1 --test-fraction 0.1 --out runs/bert-mlm/data
	$(BIN)/lmforge tokenizer train runs/bert-mlm/data --kind wordpiece --lowercase \
		--vocab-size 8000 --out runs/bert-mlm/tokenizer
	$(BIN)/lmforge tokenizer encode runs/bert-mlm/data --tokenizer runs/bert-mlm/tokenizer \
		--out runs/bert-mlm/tokens
	$(BIN)/lmforge train --recipe recipes/bert-mlm.toml --out runs/bert-mlm
	$(BIN)/lmforge eval runs/bert-mlm --split test

lstm-shakespeare: $(VENV)/.installed
	rm -rf runs/lstm
	$(BIN)/lmforge data prepare --builtin tinyshakespeare --out runs/lstm/data
	$(BIN)/lmforge tokenizer train runs/lstm/data --kind char --out runs/lstm/tokenizer
	$(BIN)/lmforge tokenizer encode runs/lstm/data --tokenizer runs/lstm/tokenizer --out runs/lstm/tokens
	$(BIN)/lmforge train --recipe recipes/lstm-shakespeare.toml --out runs/lstm
	$(BIN)/lmforge eval runs/lstm --split val
	$(BIN)/lmforge generate runs/lstm --prompt "ROMEO:" --max-new-tokens 200 --seed 1

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
