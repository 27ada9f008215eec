# The two commands the README opens with: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-ci test-slow lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/childsafe pipeline experiment=age_synthetic
	$(BIN)/childsafe pipeline experiment=content_synthetic
	@echo
	@echo "Bundles:      $(CURDIR)/releases/childsafe-age_synthetic  $(CURDIR)/releases/childsafe-content_synthetic"
	@echo "Try one:      $(BIN)/childsafe-filter releases/childsafe-age_synthetic <image or folder>"
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

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs releases .cache .pytest_cache
