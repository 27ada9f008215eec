# The two commands the README opens with: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline by default for all that make starts, `make mlflow-server` included (docs/privacy.md); a value you set wins.
MLFLOW_DISABLE_TELEMETRY ?= true
DO_NOT_TRACK ?= true
export MLFLOW_DISABLE_TELEMETRY DO_NOT_TRACK

.PHONY: demo test test-ci test-slow lint install lock clean mlflow-server

# Every third-party package comes from the hashed lock (pip itself and the setuptools that builds the two
# projects included, so nothing unverified is fetched); the two projects of this repository follow with
# --no-deps. docs/privacy.md: how the lock is made and updated.
$(STAMP): pyproject.toml runtime/pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e ./runtime -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the newest versions the pyproject ranges admit and rewrite requirements.lock; review the diff.
# The lock covers every extra of both projects (tests/unit/test_offline_and_lock.py checks it): name a new one here.
LOCK_REPORT := .cache/lock-report.json
LOCK_EXTRAS := dev,timm,ray

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(dir $(LOCK_REPORT))
	$(BIN)/pip install --quiet --dry-run --ignore-installed --report $(LOCK_REPORT) \
		pip "setuptools>=68" -e "./runtime[video]" -e ".[$(LOCK_EXTRAS)]"
	$(BIN)/python -m scripts.lock $(LOCK_REPORT) > requirements.lock.new
	mv requirements.lock.new requirements.lock

# The demo signs its bundles with a throwaway key pair it creates here (ignored by git). A real release key
# lives outside the repo: export CHILDSAFE_SIGNING_KEY=/secure/release.key (or the PEM text) before exporting.
DEMO_KEYS := $(CURDIR)/.cache/release-keys

demo: $(STAMP)
	test -f $(DEMO_KEYS)/release.key || $(BIN)/childsafe keys new --out $(DEMO_KEYS)
	@echo "Signing the demo bundles with the demo release key $(DEMO_KEYS)/release.key (made for this checkout only)"
	CHILDSAFE_SIGNING_KEY=$(DEMO_KEYS)/release.key $(BIN)/childsafe pipeline experiment=age_synthetic
	CHILDSAFE_SIGNING_KEY=$(DEMO_KEYS)/release.key $(BIN)/childsafe pipeline experiment=content_synthetic
	@echo
	@echo "Bundles:      $(CURDIR)/releases/childsafe-age_synthetic  $(CURDIR)/releases/childsafe-content_synthetic"
	@echo "Signed with:  $(DEMO_KEYS)/release.key (public key $(DEMO_KEYS)/release.pub)"
	@echo "Try one:      $(BIN)/childsafe-filter --public-key $(DEMO_KEYS)/release.pub releases/childsafe-content_synthetic <image, folder or video>"
	@echo "              (the age bundle judges faces: add --boxes faces.jsonl or --detector; docs/runtime.md)"
	@echo "Run folders:  $(CURDIR)/outputs/  (re-running make demo resumes; rm -r outputs/pipeline to start over)"
	@echo "MLflow:       $(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The slow tests CI also runs: real servers, real process groups, real kills.
test-ci: $(STAMP)
	$(BIN)/python -m pytest -m "slow and ci"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# The GPU path end to end on this machine's GPUs, under 8 minutes on one (tracking/gpu_check.py, docs/scaling.md):
# fine-tunes, calibrate, evaluate, export, bench figures and DDP, one table, written into docs/benchmarks.md.
# GPU_CHECK_DOCS= leaves the docs alone; `python -m scripts.gpu_check --size tiny` is the same logic on CPU.
GPU_CHECK_DOCS ?= $(CURDIR)/docs/benchmarks.md
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python -m scripts.gpu_check --work-dir $(CURDIR)/outputs/gpu-check $(if $(GPU_CHECK_DOCS),--docs $(GPU_CHECK_DOCS))

# A shared MLflow tracking server on this machine (docs/scaling.md: team setup with a database and an object store).
# Defaults serve the embedded SQLite store; override, e.g. MLFLOW_BACKEND_STORE=postgresql://user@db/mlflow
# MLFLOW_ARTIFACTS=s3://bucket/mlflow. Clients: export MLFLOW_TRACKING_URI=http://$(MLFLOW_HOST):$(MLFLOW_PORT)
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 2
MLFLOW_BACKEND_STORE ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlruns/artifacts
MLFLOW_SERVER_OPTS ?=

mlflow-server: $(STAMP)
	$(if $(filter sqlite:///%,$(MLFLOW_BACKEND_STORE)),mkdir -p $(dir $(patsubst sqlite:///%,%,$(MLFLOW_BACKEND_STORE))))
	exec $(BIN)/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		--backend-store-uri $(MLFLOW_BACKEND_STORE) --serve-artifacts --artifacts-destination $(MLFLOW_ARTIFACTS) \
		$(MLFLOW_SERVER_OPTS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs releases .cache .pytest_cache
