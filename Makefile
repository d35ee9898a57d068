# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CODE := control agent shared cloud_init tenant tests bench

.PHONY: run test lint typecheck unit unit-postgres bench bench-fleet clean docs dist stop-workers openclaw-image

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p data
	$(PY) -m control --local-secrets data

lint: $(STAMP)
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# The PostgreSQL pass (issue 16): every test that can reach a database (tests/conftest.py
# selects them under --db=postgres) again, each on a fresh PostgreSQL database. Not the
# Docker, OpenClaw, block-device and browser tests: the backend is the same API to them.
# About 6.5 minutes with -n 2 on the 2-core CI machine under load.
unit-postgres: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --db=postgres \
		-m "not docker and not openclaw and not blockdev and not browser" tests

test: lint typecheck unit unit-postgres

bench: $(STAMP)
	$(PY) bench/heartbeats.py
	$(PY) bench/placement.py

# A whole fleet (issue 16): long-polls, heartbeats at the served interval, users and an
# open dashboard; docs/benchmarks.md. `make bench-fleet FLEET_ARGS="--workers 10000
# --insert-workers"` for the issue's size; add `--postgres --replicas 2` for replicas on a
# throwaway PostgreSQL cluster.
FLEET_ARGS ?= --workers 1000 --insert-workers
bench-fleet: $(STAMP)
	$(PY) bench/fleet.py $(FLEET_ARGS)

dist: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

# Local workers (PROVIDER=local) outlive `make run`, as real servers outlive the
# control plane; this stops them.
stop-workers:
	@for f in data/workers/*/server.json data/workers/router.json; do [ -f "$$f" ] && $(PY) -c 'import json, os, signal, sys; m = json.load(open(sys.argv[1])); [os.kill(p, signal.SIGTERM) for p in (m.get("pid"), m.get("router_pid")) if p]' "$$f" 2>/dev/null; done; true

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The real OpenClaw tenant image, from PyPI, npm and Debian (docs/openclaw-image.md);
# prints its tag and builds nothing when the inputs did not change.
openclaw-image: $(STAMP)
	$(PY) -m tenant.openclaw.build

docs: $(STAMP)
	$(PY) -c 'from control.settings import reference_markdown; print(reference_markdown(), end="")' > docs/configuration.md
