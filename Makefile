# shoploop — the two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo test test-unit test-integration bench lint clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "shoploop needs Python 3.11 (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m deploy.embedded

# A seeded storefront posting through the gateway of a running `make run` (flags: DEMO_ARGS="--days 60").
demo: install
	$(PY) -m deploy.demo $(DEMO_ARGS)

# Four workers on two cores: most test time is spent waiting on broker group joins, not computing. Work stealing:
# a worker that runs out takes tests queued on a busy one, so the few long tests do not leave a tail on one worker.
TEST_WORKERS ?= 4
TEST_DIST ?= worksteal

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist $(TEST_DIST)

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist $(TEST_DIST) tests/integration tests/e2e

bench: install
	$(PY) bench/ingest.py
	$(PY) bench/segmentation.py
	$(PY) bench/funnel.py
	$(PY) bench/funnel_queries.py
	$(PY) bench/campaigns.py
	$(PY) bench/campaigns_api.py
	$(PY) bench/gateway.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .data .pytest_cache .ruff_cache
