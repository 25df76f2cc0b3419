# Every target installs what it needs into .venv first, so each works on a fresh machine, and
# from requirements.lock: every package of the dev extra, transitive ones too, pinned with its
# hashes, so a machine next year installs what passed CI. `make lock` remakes it from
# pyproject.toml; `make upgrade` takes the newest releases pyproject.toml allows and tests them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
LOCK   := requirements.lock
# What resolves the lock (`make lock`, `make upgrade`); installing from it needs only pip.
UV     := uv==0.13.9

.PHONY: demo test check bench chaos fmt clean lock upgrade

# pip first, at the lock's version and hash-checked (the venv's own may be years older, and is
# slower), then it installs the rest of the lock, then the package itself, editable, built by
# the locked setuptools; that last step looks at no index, so it fails when pyproject.toml asks
# for something the lock lacks.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@awk '/^pip==/ {p = 1; print; next} /^[^ ]/ {p = 0} p && !/#/' $(LOCK) > $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	@$(BIN)/python -m pip install --quiet --no-index --no-build-isolation -e '.[dev]' || \
		{ echo "$(LOCK) does not satisfy pyproject.toml: run make lock"; exit 1; }
	@touch $(STAMP)

# The headless browser the HTML report's tests draw it in (Debian's package). Installed where
# this user may (root with apt-get); elsewhere the browser tests skip and say why.
$(CHROMIUM): | $(STAMP)
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) || \
		echo "note: chromium could not be installed; the browser tests will skip"; \
	else echo "note: no chromium and no root to install it; the browser tests will skip"; fi
	@touch $(CHROMIUM)

## demo: the demo jobs on the built-in fake provider, then the cost report from DuckDB
demo: $(STAMP)
	rm -rf data/demo.duckdb data/demo.duckdb.wal data/runs data/scans data/scans-expected.jsonl
	$(BIN)/pipeline run jobs/review_sentiment.toml --fake --db data/demo.duckdb
	$(BIN)/pipeline run jobs/review_sentiment_claude.toml --fake --db data/demo.duckdb --quiet
	$(BIN)/pipeline run jobs/review_sentiment_gemini.toml --fake --db data/demo.duckdb --quiet
	$(BIN)/pipeline run jobs/invoice_extraction.toml --fake --db data/demo.duckdb --quiet
	$(BIN)/python data/generate_scans.py
	$(BIN)/pipeline run jobs/invoice_scans.toml --fake --db data/demo.duckdb --quiet
	$(BIN)/pipeline report --db data/demo.duckdb
	@echo "the same as a page with charts: $$($(BIN)/pipeline report --db data/demo.duckdb --html data/demo-report.html)"

## test: the whole test suite (fake provider on loopback; no network)
test: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q

## check: formatting, lint, strict typing, and the layers of pipeline/ (pyproject.toml)
check: $(STAMP)
	$(BIN)/ruff format --check pipeline tests bench data
	$(BIN)/ruff check pipeline tests bench data
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo

## bench: throughput, CPU per row, rate-limit accuracy and memory; prints figures and ratios
bench: $(STAMP)
	$(BIN)/python -m compileall -q pipeline  # as an installed package would be: no compiling per run
	$(BIN)/python bench/run.py

## chaos: the fault matrix: 20 seeds of faults, kills and resumes; one table row per seed
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py --seeds 20

## lock: resolve requirements.lock again from pyproject.toml, keeping each pin that still fits
# (for Python 3.11+ on any platform: Linux x86_64 and aarch64 alike). LOCK_FLAGS passes uv more,
# e.g. make lock LOCK_FLAGS="--upgrade-package duckdb" moves that one package to its newest.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet '$(UV)'
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --group build --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command 'make lock' \
		--output-file $(LOCK) $(LOCK_FLAGS)

## upgrade: re-lock at the newest releases pyproject.toml allows, print what moved, check and test
upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade
	@git diff --unified=0 -- $(LOCK) | grep '^[-+][a-z]' || echo "no pin changed since the last commit"
	$(MAKE) check test

fmt: $(STAMP)
	$(BIN)/ruff format pipeline tests bench data
	$(BIN)/ruff check --fix pipeline tests bench data

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data/demo.duckdb data/runs data/*.html \
		data/scans data/scans-expected.jsonl
