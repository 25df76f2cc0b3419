# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium

.PHONY: demo test check bench chaos fmt clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

fmt: $(STAMP)
	$(BIN)/ruff format pipeline tests bench data
	$(BIN)/ruff check --fix pipeline tests bench data

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data/demo.duckdb data/runs data/*.html \
		data/scans data/scans-expected.jsonl
