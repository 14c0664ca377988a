# healthmon: `make run` starts the whole pipeline with mock services,
# `make test` runs the test suite.  Both set everything up first.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml hadoop/pom.xml package-lock.json scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

# The local HDFS is the landing store unless HEALTHMON_LANDING says otherwise
# (HEALTHMON_LANDING=file:///path selects the light mode); `up` starts and stops it.
run: setup
	HEALTHMON_LANDING="$${HEALTHMON_LANDING:-hdfs://127.0.0.1:8020/healthmon}" $(VENV)/bin/healthmon up --mock

# pytest exits 5 when it collected no test: that fails here like any error.
test: setup
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/freshness.py

clean:
	rm -rf var .pytest_cache .ruff_cache
