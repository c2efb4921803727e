# Quick start: `make run` (the whole asset graph on the generated small world), `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= small
SEED ?= 0
# Where Dagster keeps its history and runs the steps (deploy/dagster/<mode>/dagster.yaml,
# orchestration/deployment.py): embedded (SQLite, in-process, no server) | postgres | celery.
MODE ?= embedded
export MMPIPE_MODE := $(MODE)
export DAGSTER_HOME := $(CURDIR)/.dagster_home$(if $(filter-out embedded,$(MODE)),_$(MODE))
# Which params.yaml `scales:` preset the pipeline trains with (mmpipe/config.py).
export MMPIPE_SCALE := $(SCALE)
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: lock setup run world version materialize ablations day pin-side medium-pin-side test bench ui worker clean

setup: $(VENV)/.installed

# torch comes first, pinned: the CPU wheel on disk. A looser requirement pulls CUDA builds.
# Every version comes from constraints.txt (what CI tested), so a fresh machine gets the same set.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@# DVC pulls hydra-core, which pins antlr4 4.9; Dagster's asset-selection parser needs 4.13.
	@# DVC only needs antlr through hydra's `dvc exp run -S` composition, which we do not use.
	$(BIN)/pip install -q antlr4-python3-runtime==4.13.2 2>&1 | grep -v "requires antlr4" || true
	@# The team modes' Dagster libraries: no release matches dagster 1.13.28 (0.29.27 is the newest,
	@# pinned to dagster 1.13.27), so they go in without their `dagster==` pin; their own
	@# dependencies (psycopg2-binary, redis, celery) come from pyproject.toml like any other.
	$(BIN)/pip install -q --no-deps -c constraints.txt dagster-postgres dagster-celery
	touch $@

# Re-pin constraints.txt to what .venv holds (after changing pyproject.toml: `make setup` with
# the new requirement, then `make lock`). torch loses the local `+cpu` tag of the CPU wheel (the
# pin matches it and PyPI's build alike); antlr4 goes back to the 4.9.3 that DVC's hydra pins, so
# the constraints stay installable in one resolve (setup then upgrades it, see above).
lock: setup
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/' \
	    -e 's/^antlr4-python3-runtime==.*/antlr4-python3-runtime==4.9.3/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster/$(MODE)/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp $< $@

run: setup world version materialize

world: setup
	$(BIN)/mmpipe world generate --scale $(SCALE) --seed $(SEED) --out data/raw

# Version the landing zone with DVC and push it to the local remote (.dvc_remote/).
version: setup
	$(BIN)/dvc add -q data
	$(BIN)/dvc push -q

# Register the landing zone's days as partitions, then the whole graph over all of them in one run
# (every asset but the sweeps of the ablations group: `make ablations`).
materialize: setup $(DAGSTER_HOME)/dagster.yaml
	days=$$($(BIN)/python -m orchestration.ingest sync) && \
	$(BIN)/dagster asset materialize --select 'not group:ablations' -m orchestration.definitions --partition-range $$days

# Each system's sweeps and their report (storage/reports/<system>_ablations/), after `make run`.
ablations: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize --select 'group:ablations' -m orchestration.definitions

# A new day: advance the generated world by one day and ingest only that day (no training).
day: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/mmpipe world advance --days 1 --root data/raw
	days=$$($(BIN)/python -m orchestration.ingest sync) && \
	$(BIN)/dagster asset materialize -m orchestration.definitions --partition $${days#*...} \
	  --select "$$($(BIN)/python -m orchestration.ingest assets)"

# The pin side (validation, graph, PinCLIP, eval, gate, embeddings, index) as phases of runs, each
# day-partitioned phase as PARALLEL concurrent runs over disjoint days (orchestration/parallel_runs.py);
# step times, wall time and peak memory go to storage/reports/pin_side_runs.json.
PARALLEL ?= 2
pin-side: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.parallel_runs pin-side --parallel $(PARALLEL) --report storage/reports/pin_side_runs.json

# The medium world's (100k pins; `make world SCALE=medium` first) with the multiprocess executor.
medium-pin-side:
	$(MAKE) pin-side SCALE=medium MODE=multiprocess

test: setup
	$(BIN)/python -m pytest -q

# Every benchmark in one run: benchmarks/results/bench.md and bench.json (run_all.py --help:
# --quick for tiny sizes, --index-n 1000000 for the full index comparison).
bench: setup
	$(BIN)/python benchmarks/run_all.py

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

# MODE=celery: one Celery worker on this machine (one step at a time; start one per machine),
# broker and result backend from MMPIPE_CELERY_BROKER / MMPIPE_CELERY_BACKEND.
worker: setup $(DAGSTER_HOME)/dagster.yaml
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dagster-celery worker start -A dagster_celery.app -y deploy/dagster/celery/celery.yaml

clean:
	rm -rf storage .dagster_home .dagster_home_*
