# make demo: set up .venv if needed, then the quickstart sweep on synthfaces (sweep, reports, comparison,
#            index.html); SWEEP=..., ARGS="key=value ..." change it;
#            RESUME=1 DEMO_NAME=<name> carries on with an interrupted one.
# make test: set up .venv (and Chromium, PostgreSQL) if needed, then run the tests (make test-slow: the slow ones).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
XAI := $(VENV)/bin/xai-lab
STAMP := $(VENV)/.installed
SWEEP ?= configs/sweeps/quickstart.yaml
# every demo run gets a folder of its own: earlier results are never overwritten
DEMO_NAME ?= $(basename $(notdir $(SWEEP)))-$(shell date +%Y%m%d-%H%M%S)
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test test-slow lint clean chromium postgres

# Installs once; re-runs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m xai_lab sweep --config $(SWEEP) $(if $(RESUME),--resume) name=$(DEMO_NAME) $(ARGS)
	@echo "open: file://$$(readlink -f ray_results/$(DEMO_NAME)/index.html)"
	@echo "runs: $(XAI) runs --experiment sweep/$(DEMO_NAME)   (or: $(VENV)/bin/mlflow ui)"

# The report test opens index.html in headless Chromium (Debian's chromium package).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { echo "installing chromium for the report test"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }

# The run store's tests run against a real PostgreSQL server (Debian's postgresql package), which
# tests/test_store.py starts on 127.0.0.1 with .ci/postgres-start (or finds at $$XAI_LAB_TEST_POSTGRES).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { echo "installing postgresql for the run store's tests"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq postgresql >/dev/null; }

test: setup chromium postgres
	$(PY) -X faulthandler -m pytest -q

# Whole sweeps and faults, about five minutes more (the FER comparison smoke sweep, a node lost mid-sweep, a sweep on
# a full tmpfs: root, unicode names, a fan-out killed, Ctrl-C'd and SIGTERM'd), run by .ci/run.
test-slow: setup chromium
	$(PY) -X faulthandler -m pytest -q -m slow

lint: setup
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check xai_lab sweeps tests benchmarks

clean:
	rm -rf artifacts ray_results data/processed
