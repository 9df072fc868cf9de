# The README's commands: `make run`, `make test` and `make bench`. Everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# make run trains the demo model only at its default path; a MODEL_PATH of yours must exist.
DEFAULT_MODEL := services/model_api/myfile.pkl
MODEL_PATH ?= $(DEFAULT_MODEL)
export MODEL_PATH

.DEFAULT_GOAL := help
.PHONY: help run test test-compose lint bench install install-test install-lint model broker browser prometheus clean cluster cluster-stop

help:
	@echo "make run    set up (venv, model, RabbitMQ) and run all four services; Ctrl-C stops them"
	@echo "make test   set up and run the whole test suite against a real RabbitMQ"
	@echo "make test-compose  build and run deploy/compose.yml in Docker and drive it (needs root for Docker)"
	@echo "make lint   the lint and type gate: ruff (lint and format) and mypy; fails on any finding"
	@echo "make bench  set up and run the benchmark (about 5 min; BENCH_ARGS=--smoke for a quick check)"
	@echo "make cluster       start (or complete) a local three-node RabbitMQ cluster on 127.0.0.1:5681-5683"
	@echo "make cluster-stop  stop that cluster and remove its data"

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "make: Python 3.11 or newer is needed as '$(PYTHON)' (try: make PYTHON=python3.11 ...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV); echo "make: could not create $(VENV); on Debian/Ubuntu: sudo apt-get install -y python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

# mypy reads the tests too, so the lint venv holds the test dependencies as well.
$(VENV)/.installed-lint: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,lint]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-lint: $(VENV)/.installed-lint

ifeq ($(MODEL_PATH),$(DEFAULT_MODEL))
# The demo model, unless one is there: yours registered at this path, or a profile of a model served elsewhere.
model: | $(VENV)/.installed
	@$(BIN)/python -m services.model_api.train --out $(DEFAULT_MODEL) --if-needed
else
# A path of yours is never trained into: a typo must not serve the demo model in its place.
model:
	@test -f "$(MODEL_PATH)" -o -f "$(MODEL_PATH).json" || { \
	  echo "make: MODEL_PATH=$(MODEL_PATH) does not exist. make run trains only the demo model, at $(DEFAULT_MODEL)"; \
	  echo "      (leave MODEL_PATH unset for it). Train one there: $(BIN)/python -m services.model_api.train --out $(MODEL_PATH)"; \
	  echo "      or register yours: $(BIN)/python -m services.model_api.register $(MODEL_PATH) --reference FILE --target COLUMN"; \
	  echo "      (docs/own-model.md; --prediction-column COLUMN instead of a model file for a model served elsewhere)"; \
	  exit 1; }
endif

broker: $(VENV)/.installed
	@$(BIN)/python -m services.common.ensure_broker

run: $(VENV)/.installed model broker
	@echo "Starting the four services (Ctrl-C stops them all). Open:"
	@echo "  dashboard     http://localhost:$${PLOT_PORT:-8004}/"
	@echo "  histogram     http://localhost:$${PLOT_PORT:-8004}/plot/latest.png"
	@echo "  summary       http://localhost:$${METRIC_PORT:-8003}/metrics/summary"
	@echo "  features_api  http://localhost:$${FEATURES_PORT:-8001}/docs"
	@echo "  model_api     http://localhost:$${MODEL_PORT:-8002}/docs"
	@echo "  metric_api    http://localhost:$${METRIC_PORT:-8003}/docs"
	@echo "  outputs       $${LOGS_DIR:-logs}/metric_log.csv  $${LOGS_DIR:-logs}/error_distribution.png"
	@# honcho answers Ctrl-C by stopping the four services and exiting 130: that is the clean end of a run, not an error.
	@PATH="$(abspath $(BIN)):$$PATH" honcho start -f Procfile; status=$$?; [ $$status -eq 130 ] && exit 0; exit $$status

# The dashboard test drives Debian's chromium (headless); installed here when missing and we are root.
browser:
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: chromium is not installed; installing it with apt-get (a minute or two)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get update -q && apt-get install -y -q chromium; } >/dev/null || \
	      { echo "make: apt-get could not install chromium (see above)"; exit 1; }; \
	  else \
	    echo "make: the dashboard test needs a headless Chromium: sudo apt-get install -y chromium (or set CHROMIUM)"; exit 1; \
	  fi

# The rule tests (promtool) and the live-Prometheus test run Debian's prometheus; installed here when missing and we are root.
prometheus:
	@[ -n "$$PROMETHEUS_BIN" ] || command -v prometheus >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: prometheus is not installed; installing it with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; } >/dev/null || \
	      { echo "make: apt-get could not install prometheus (see above)"; exit 1; }; \
	  else \
	    echo "make: the Prometheus tests need Prometheus and promtool: sudo apt-get install -y prometheus (or set PROMETHEUS_BIN and PROMTOOL_BIN)"; exit 1; \
	  fi

# Two steps: everything but the fault tests on two workers (pytest-xdist; each test has its own queue
# prefix, ports and folders), then the fault tests alone, since they stop and start the broker itself.
test: $(VENV)/.installed-test broker browser prometheus
	$(BIN)/python -m pytest -m 'not faults' -n 2
	$(BIN)/python -m pytest -m faults

# deploy/compose.yml built, run and faulted for real (tests/compose, docs/containers.md). It needs a
# Docker engine: as root, DOCKER_STANDIN_SCRIPT (by default shared/tools/docker-standin-images.sh
# beside this repository) installs and starts one and provides the base images; without one the
# tests are SKIPPED with the reason, which is printed. -s shows the COMPOSE timing lines as they come.
test-compose: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m compose tests/compose -s

# Configured in pyproject.toml ([tool.ruff], [tool.mypy]); needs no broker.
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benchmark: real services on the real broker; tables on stdout, JSON in bench/results/.
bench: $(VENV)/.installed-test broker
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# A local three-node RabbitMQ cluster (docs/cluster.md); never the machine's own broker on 5672.
cluster: $(VENV)/.installed
	@$(BIN)/python -m harness.local_cluster start

cluster-stop: $(VENV)/.installed
	@$(BIN)/python -m harness.local_cluster stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
