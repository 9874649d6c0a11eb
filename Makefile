# Two commands for a new user: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: demo test test-floors lint typecheck unit bench bench-floors load assets clean

# Reinstall whenever pyproject.toml changes; the stamp records what was installed. Eager
# upgrades: `make test` is the newest-releases leg of the support matrix, so an old venv
# must not keep old releases.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[demo,dev]'
	touch $@

# The oldest-releases leg of the support matrix: every pin of the floors file, exactly.
FLOORS      := .venv-floors
FLOORS_PY   := $(FLOORS)/bin/python
CONSTRAINTS := .ci/constraints-floors.txt

$(FLOORS)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(FLOORS_PY) || $(PYTHON) -m venv $(FLOORS)
	$(FLOORS_PY) -m pip install --quiet --upgrade pip
	$(FLOORS_PY) -m pip install --quiet -e '.[demo,dev]' -c $(CONSTRAINTS)
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[demo,dev,bench]'
	touch $@

demo: $(VENV)/.installed
	@echo ""
	@echo "  amani-observability demo on http://$(HOST):$(PORT)"
	@echo "    API docs:   http://$(HOST):$(PORT)/docs"
	@echo "    metrics:    http://$(HOST):$(PORT)/metrics"
	@echo "    health:     http://$(HOST):$(PORT)/health"
	@echo "  Every response carries X-Request-ID; logs below are JSON, one line per event."
	@echo ""
	$(PY) -m uvicorn examples.demo_app.main:app --host $(HOST) --port $(PORT) --no-access-log

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --strict src

unit: $(VENV)/.installed
	$(PY) -m pytest

test: lint typecheck unit

# The suite at the oldest supported releases (.ci/constraints-floors.txt); prints what it
# runs against and stops if any pin is not what got installed.
test-floors: $(FLOORS)/.installed
	$(FLOORS_PY) .ci/check_floors.py $(CONSTRAINTS)
	$(FLOORS_PY) -m pytest

# Every step runs even when an earlier one misses its target; the exit status says
# whether all of them met theirs. Results: benchmarks/results/*.json, docs/performance.png.
bench: $(VENV)/.installed-bench
	@missed=""; \
	echo "== the benchmark apps do what they claim (tests marked bench)"; \
	$(PY) -m pytest -q -m bench tests/test_benchmark_apps.py || missed="$$missed bench-apps"; \
	echo "== overhead per request (in-process harness)"; \
	$(PY) -m benchmarks.run || missed="$$missed harness"; \
	echo "== plot"; \
	$(PY) -m benchmarks.plot || missed="$$missed plot"; \
	echo "== /metrics scrape cost"; \
	$(PY) -m benchmarks.scrape_cost || missed="$$missed scrape-cost"; \
	echo "== event-loop monitor cost"; \
	$(PY) -m benchmarks.loop_monitor || missed="$$missed loop-monitor"; \
	echo "== steady memory"; \
	$(PY) -m benchmarks.memory || missed="$$missed memory"; \
	echo "== throughput through uvicorn (wrk)"; \
	$(PY) -m benchmarks.throughput || missed="$$missed throughput"; \
	if [ -n "$$missed" ]; then echo "bench: missed or failed:$$missed"; exit 1; fi; \
	echo "bench: every target met"

# The in-process harness again at the oldest supported releases (the floors leg), with
# the peers at the releases pip finds for those pins. Results: benchmarks/results/floors.json.
bench-floors: $(FLOORS)/.installed
	$(FLOORS_PY) -m pip install --quiet -e '.[demo,dev,bench]' -c $(CONSTRAINTS)
	$(FLOORS_PY) .ci/check_floors.py $(CONSTRAINTS)
	$(FLOORS_PY) -m benchmarks.run --out benchmarks/results/floors.json

load: $(VENV)/.installed
	$(PY) -m examples.load --base-url http://$(HOST):$(PORT)

# Re-export the packaged alert rules and dashboard into the compose stack's config/.
assets: $(VENV)/.installed
	$(VENV)/bin/amani-observability export-assets examples --force

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache
