# make demo: set up .venv if needed, then run the pipeline on the embedded synthfaces dataset.
# make test: set up .venv if needed, then run the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
XAI := $(VENV)/bin/xai-lab
STAMP := $(VENV)/.installed
EXP ?= configs/experiments/exp000_resnet18_saliency_synthfaces.yaml
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test lint clean

# Installs once; re-runs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(XAI) prepare --config $(EXP)
	$(XAI) train --config $(EXP)
	$(XAI) evaluate --run-dir artifacts/runs/$(basename $(notdir $(EXP)))/latest
	$(XAI) plots --run-dir artifacts/runs/$(basename $(notdir $(EXP)))/latest
	$(XAI) explain --run-dir artifacts/runs/$(basename $(notdir $(EXP)))/latest
	@echo "reports: $$(readlink -f artifacts/runs/$(basename $(notdir $(EXP)))/latest | sed 's#/runs/#/reports/#')"

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check xai_lab sweeps tests benchmarks

clean:
	rm -rf artifacts ray_results data/processed
