# QMCP: `make run` starts a development server, `make prod` the production server, `make test`
# runs the whole test suite.
# Both create the virtual environment in .venv and install requirements.txt on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

WORKERS ?= 1

.PHONY: venv run prod test lint migrate conformance clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/.installed

migrate: venv
	DJANGO_DEBUG=1 $(BIN)/python manage.py migrate --noinput

run: migrate
	@echo ""
	@echo "QMCP on http://$(HOST):$(PORT)/  (admin /admin/, API docs /v1/docs, MCP /mcp)"
	@echo "First admin:  $(BIN)/python manage.py createsuperuser   (with DJANGO_DEBUG=1 set)"
	@echo "API token:    DJANGO_DEBUG=1 $(BIN)/python manage.py create_api_token you@example.com"
	@echo ""
	DJANGO_DEBUG=1 $(BIN)/python manage.py runserver $(HOST):$(PORT)

# Production: uvicorn on uvloop and httptools (qmcp_site/serve.py). Needs SECRET_KEY, and
# `manage.py migrate` run once; with WORKERS > 1, PostgreSQL and REDIS_URL.
prod: venv
	$(BIN)/python -m qmcp_site.serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

conformance: venv
	bash .ci/conformance

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test_db.sqlite3*
