# lorafleet — everything installs itself: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LORAFLEET_ENGINE ?= cpu
EXTRAS := train,$(LORAFLEET_ENGINE),dev
STAMP := $(VENV)/.installed-$(LORAFLEET_ENGINE)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench stop clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/system-deps.sh scripts/install.sh
	@# The seconds it took are kept for the demo's timing table.
	@start=$$(date +%s) && bash scripts/system-deps.sh \
	  && { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } \
	  && bash scripts/install.sh $(VENV) $(EXTRAS) \
	  && echo $$(( $$(date +%s) - start )) > $(VENV)/.install-seconds
	@touch $(STAMP)
	@echo "lorafleet installed in $(VENV) (engine: $(LORAFLEET_ENGINE))"

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not integration and not browser and not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check lorafleet train serve evaluate human_review tests benchmarks scripts examples

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

stop:
	@-$(BIN)/python scripts/demo.py --stop 2>/dev/null || true

clean:
	rm -rf $(VENV) .lorafleet .cache .pytest_cache
