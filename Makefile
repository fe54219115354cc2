# Lanes: every target uses .venv and makes it first when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
QUEUES ?=
NAME   ?=
MODE   ?=
PROCESSES ?=
HORSE_JOBS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most tests wait on real workers and servers, not the CPU, so
# four share two cores well. TEST_PROCESSES=0 runs them in this process, one at a time.
TEST_PROCESSES ?= 4
ARGS ?=

export PYTHONPATH := $(CURDIR)

.PHONY: up-docker down-docker install up down migrate api worker scheduler admin reconcile prune demo test test-fast lint format bench clean help browser

help:
	@echo "make demo      run the whole platform (Redis, SQLite, API, two workers, scheduler) in one terminal"
	@echo "make test      lint and every test (SQLite, and PostgreSQL where it answers)"
	@echo "make install | up | down | migrate | api | scheduler | lint | bench"
	@echo "make worker [QUEUES=high] [NAME=w1] [MODE=fork|simple] [HORSE_JOBS=100] [PROCESSES=4]"
	@echo "make reconcile | prune   repair rows against RQ | delete finished rows past LANES_RETENTION_DAYS"
	@echo "make admin ARGS='create-tenant NAME --plan pro'   tenants and API keys (python -m backend.admin --help)"

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/python -m backend.devredis up

down: $(STAMP)
	$(BIN)/python -m backend.devredis down

migrate: $(STAMP)
	$(BIN)/python -m backend.migrate

api: $(STAMP) migrate
	$(BIN)/python -m backend.serve

worker: $(STAMP)
	$(BIN)/python -m worker $(QUEUES) $(if $(NAME),--name $(NAME)) $(if $(MODE),--mode $(MODE)) $(if $(HORSE_JOBS),--horse-jobs $(HORSE_JOBS)) $(if $(PROCESSES),--processes $(PROCESSES))

scheduler: $(STAMP) migrate
	$(BIN)/python -m scheduler $(if $(NAME),--name $(NAME))

admin: $(STAMP) migrate
	$(BIN)/python -m backend.admin $(ARGS)

reconcile: $(STAMP)
	$(BIN)/python -m backend.reconcile

prune: $(STAMP)
	$(BIN)/python -m backend.prune

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

browser:
	sh scripts/ensure_chromium.sh

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy backend worker scheduler lanes bench

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

up-docker:
	docker compose -f docker/docker-compose.yml up -d --build

down-docker:
	docker compose -f docker/docker-compose.yml down

clean:
	rm -rf $(VENV) .lanes .mypy_cache .ruff_cache .pytest_cache
