# django-signal-outbox. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PostgreSQL half of the suite: DATABASE_URL if it names PostgreSQL, else the local server.
PG_URL ?= $(or $(filter postgres%,$(DATABASE_URL)),postgres://postgres@127.0.0.1:5432/test)
SQLITE_URL := sqlite:///$(CURDIR)/tests/.sqlite.db
PYTEST_ARGS ?=

.PHONY: venv demo test test-sqlite test-postgres lint checks postgres-up clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgres,q2]'
	touch $@

venv: $(VENV)/.installed

# The example site end to end on a fresh SQLite database (example/db.sqlite3).
demo: venv
	@rm -f example/db.sqlite3
	@cd example && ../$(PY) manage.py migrate -v0
	@cd example && ../$(PY) manage.py demo_scenario
	@echo "2. The worker runs what committed: manage.py run_outbox --once"
	@cd example && ../$(PY) manage.py run_outbox --once
	@cd example && ../$(PY) manage.py demo_report

test: lint checks test-sqlite test-postgres

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

checks: venv
	DATABASE_URL=$(SQLITE_URL) $(PY) -m django check --settings=tests.settings --fail-level WARNING
	DATABASE_URL=$(SQLITE_URL) $(PY) -m django makemigrations --check --dry-run --settings=tests.settings
	cd example && ../$(PY) manage.py check --fail-level WARNING
	cd example && ../$(PY) manage.py makemigrations --check --dry-run

test-sqlite: venv
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: venv postgres-up
	DATABASE_URL=$(PG_URL) $(PY) -m pytest $(PYTEST_ARGS)

# Start the machine's PostgreSQL if it is down (these machines have pg_ctlcluster).
postgres-up:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1 && \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start && sleep 2; } || true

clean:
	rm -rf $(VENV) *.egg-info tests/.sqlite*.db example/db.sqlite3 artifacts
