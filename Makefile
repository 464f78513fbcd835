# django-signal-outbox. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PostgreSQL half of the suite: DATABASE_URL if it names PostgreSQL, else the local server.
PG_URL ?= $(or $(filter postgres%,$(DATABASE_URL)),postgres://postgres@127.0.0.1:5432/test)
SQLITE_URL := sqlite:///$(CURDIR)/tests/.sqlite.db
# The MariaDB/MySQL half of the suite: DATABASE_URL if it names MySQL, else the local server.
MYSQL_URL ?= $(or $(filter mysql%,$(DATABASE_URL)),mysql://root@127.0.0.1:3306/test)
PYTEST_ARGS ?=

.PHONY: venv demo demo-server bench bench-smoke bench-python test test-sqlite test-postgres test-mysql lint typecheck checks postgres-up clean test-matrix test-fast test-fast-postgres
.PHONY: chaos dist typecheck
.PHONY: bench bench-smoke

$(VENV)/.installed: pyproject.toml
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

# The demo, then its admin at http://127.0.0.1:8000/admin/ (admin / admin) with a worker
# running beside it: erin's events fail until they are marked failed, ready to be replayed.
demo-server: demo
	@cd example && DJANGO_SUPERUSER_PASSWORD=admin ../$(PY) manage.py createsuperuser \
	  --noinput --username admin --email admin@social.example
	@echo "Admin: http://127.0.0.1:8000/admin/ (user admin, password admin). Ctrl-C stops both."
	@cd example && ../$(PY) manage.py run_outbox -v0 & worker=$$!; \
	  trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	  cd example && ../$(PY) manage.py runserver 127.0.0.1:8000

test: lint checks test-sqlite test-postgres test-mysql

lint: venv typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy with django-stubs over outbox/ (configuration: [tool.mypy] in pyproject.toml).
typecheck: venv
	DATABASE_URL=$(SQLITE_URL) $(VENV)/bin/mypy

checks: venv
	DATABASE_URL=$(SQLITE_URL) $(PY) -m django check --settings=tests.settings --fail-level WARNING
	DATABASE_URL=$(SQLITE_URL) $(PY) -m django makemigrations --check --dry-run --settings=tests.settings
	cd example && ../$(PY) manage.py check --fail-level WARNING
	cd example && ../$(PY) manage.py makemigrations --check --dry-run

# The fast tier: the tests that start no process (-m "not slow": no worker, cluster, browser or
# wheel build; tests/conftest.py marks them), on SQLite: 31 s on 2 shared cores (40 s beside other
# work; measured with `time make test-fast`). The slow tier is the rest (-m slow); `make test`
# runs both on every database.
test-fast: venv
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The fast tier on PostgreSQL (PG_URL).
test-fast-postgres: venv postgres-up
	DATABASE_URL=$(PG_URL) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-sqlite: venv chromium faketime
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: venv chromium faketime postgres-up
	DATABASE_URL=$(PG_URL) $(PY) -m pytest $(PYTEST_ARGS)

# mysqlclient (the `mysql` extra) builds against Debian's client library: mysql-client
# installs it and pkg-config from apt when missing, then the extra into the virtualenv.
test-mysql: venv chromium faketime mysql-client
	DATABASE_URL=$(MYSQL_URL) $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: mysql-client mysql-client-dev
mysql-client: venv mysql-client-dev
	@$(PY) -c 'import MySQLdb' 2>/dev/null || $(PY) -m pip install -q -e '.[mysql]'

# The headers and pkg-config that building mysqlclient needs (Debian packages).
mysql-client-dev:
	@{ command -v pkg-config >/dev/null && pkg-config --exists mysqlclient; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q default-libmysqlclient-dev pkg-config; }

# Relay throughput (django-q2) beside in-process dispatch; see bench/relay.py for options.
.PHONY: bench-relay
bench-relay: venv postgres-up
	$(PY) bench/relay.py $(BENCH_RELAY_ARGS)

# Start the machine's PostgreSQL if it is down (these machines have pg_ctlcluster).
postgres-up:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1 && \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start && sleep 2; } || true

clean:
	rm -rf $(VENV) .venv-3.* *.egg-info build dist tests/.sqlite*.db example/db.sqlite3 artifacts

# The sdist and wheel into dist/ (build and twine come with the dev extra), checked as PyPI would.
# Any warning from the build (setuptools' BuildBackendWarning, deprecations) fails it; only the
# note that byte-compiling is off (PYTHONDONTWRITEBYTECODE) is let through.
dist: venv
	rm -rf dist build
	$(PY) -m build --outdir dist . > $(VENV)/build.log 2>&1 || { cat $(VENV)/build.log; exit 1; }
	! grep -i 'warning' $(VENV)/build.log | grep -v 'byte-compiling is disabled'
	$(VENV)/bin/twine check --strict dist/*

# --- the test matrix ------------------------------------------------------------------------
# Python 3.10-3.13 beside Django 4.2 (3.10-3.12), 5.2 (3.10-3.13) and 6.x (3.12+; 6.0 on 3.12,
# 6.1 on 3.13, so that each release line and each Python runs without every pair), each cell
# <python>-<django> in its own virtualenv .venv-<cell> (the `mysql` extra built in when MariaDB is
# among MATRIX_DATABASES), on SQLite (a file per cell), PG_URL and MYSQL_URL. A cell whose Python
# is neither under pyenv nor on PATH is skipped with a note. Every cell runs even after one fails;
# a table of results ends the run (each run's log, with its random seed, is in
# .venv-<cell>/pytest-<database>.log).
# MATRIX_TIER=fast runs the fast tier only. The whole suite takes about 5 minutes on SQLite and
# longer on the servers: the full matrix (9 cells x 3 databases) is a job for CI or a night.
# One corner: make test-matrix MATRIX_CELLS=3.10-4.2 MATRIX_DATABASES=sqlite MATRIX_TIER=fast
MATRIX_CELLS ?= 3.10-4.2 3.10-5.2 3.11-4.2 3.11-5.2 3.12-4.2 3.12-5.2 3.12-6.0 3.13-5.2 3.13-6.1
MATRIX_DATABASES ?= sqlite postgres mysql
MATRIX_TIER ?= full
MATRIX_MARK := $(if $(filter fast,$(MATRIX_TIER)),-m "not slow",)
comma := ,
MATRIX_EXTRAS := dev,postgres,q2$(if $(filter mysql,$(MATRIX_DATABASES)),$(comma)mysql,)

test-matrix: $(if $(filter fast,$(MATRIX_TIER)),,chromium faketime) $(if $(filter mysql,$(MATRIX_DATABASES)),mysql-client-dev,) \
		$(if $(filter postgres,$(MATRIX_DATABASES)),postgres-up,)
	@report=""; failed=""; \
	for cell in $(MATRIX_CELLS); do \
	  py=$${cell%-*}; dj=$${cell#*-}; venv=.venv-$$cell; \
	  python=$$(ls -d $(HOME)/.pyenv/versions/$$py.*/bin/python 2>/dev/null | sort -V | tail -1); \
	  [ -n "$$python" ] || python=$$(command -v python$$py || true); \
	  if [ -z "$$python" ]; then echo "matrix: no Python $$py here, cell $$cell skipped"; \
	    report="$$report\n$$cell\t-\t(no Python $$py: skipped)"; continue; fi; \
	  { test -x $$venv/bin/python || { $$python -m venv $$venv && \
	    $$venv/bin/python -m pip install -q --upgrade pip > $$venv/pip.log 2>&1; }; } && \
	  $$venv/bin/python -m pip install -q -e '.[$(MATRIX_EXTRAS)]' "Django~=$$dj.0" > $$venv/pip.log 2>&1 || { \
	    grep -v '^WARNING: Location' $$venv/pip.log; report="$$report\n$$cell\t-\tinstall FAILED"; failed="$$failed $$cell"; continue; }; \
	  django=$$($$venv/bin/python -m django --version); \
	  for db in $(MATRIX_DATABASES); do \
	    case $$db in sqlite) url=sqlite:///$(CURDIR)/tests/.sqlite-$$cell.db;; \
	      postgres) url=$(PG_URL);; mysql) url=$(MYSQL_URL);; esac; \
	    echo "matrix: $$cell (Python $$($$venv/bin/python -c 'import platform; print(platform.python_version())'), Django $$django) on $$db"; \
	    DATABASE_URL=$$url OUTBOX_SQLITE_TEST_NAME=$(CURDIR)/tests/.sqlite-test-$$cell.db \
	      $$venv/bin/python -m pytest $(MATRIX_MARK) $(PYTEST_ARGS) > $$venv/pytest-$$db.log 2>&1; \
	    status=$$?; summary=$$(tail -1 $$venv/pytest-$$db.log | tr -d '=' | sed 's/^ *//; s/ *$$//'); \
	    [ $$status = 0 ] || { failed="$$failed $$cell/$$db"; summary="FAILED: $$summary"; }; \
	    echo "  $$summary"; report="$$report\n$$cell\t$$django\t$$db: $$summary"; \
	  done; \
	done; \
	printf "\nmatrix ($(MATRIX_TIER) tier):\ncell\tDjango\tresult$$report\n"; \
	[ -z "$$failed" ] || { echo "matrix: failed:$$failed"; exit 1; }

# The long fault runs (stress/chaos.py, stress/scale.py) on their own PostgreSQL database.
# Restarts the local PostgreSQL once: do not run it while others use the server.
CHAOS_URL ?= postgres://postgres@127.0.0.1:5432/outbox_chaos
CHAOS_EVENTS ?= 20000
chaos: venv postgres-up
	$(PY) -m stress.chaos --database-url $(CHAOS_URL) --events $(CHAOS_EVENTS) --workers 4 --calm
	$(PY) -m stress.chaos --database-url $(CHAOS_URL) --events $(CHAOS_EVENTS) --workers 4
	$(PY) -m stress.scale --database-url $(CHAOS_URL) --events 200000

# The clock-skew tests (tests/test_clock_skew.py) run workers under Debian's libfaketime.
.PHONY: faketime
FAKETIME_LIB := /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
faketime:
	@test -e $(FAKETIME_LIB) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q faketime; }

# --- the admin (issue 4) -------------------------------------------------------------------
# Playwright drives Debian's Chromium in the browser tests; never a browser download.
.PHONY: chromium test-browser bench-admin bench-admin-replay bench-admin-changelist
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# The browser tests alone, on SQLite (PYTEST_ARGS and DATABASE_URL as for test-sqlite).
test-browser: venv chromium
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest -m browser $(PYTEST_ARGS)

# Figures for the README, on PostgreSQL (BENCH_DATABASE_URL; default a database of its own).
bench-admin: bench-admin-replay bench-admin-changelist
bench-admin-replay: venv postgres-up
	cd bench && ../$(PY) admin_replay.py
bench-admin-changelist: venv postgres-up
	cd bench && ../$(PY) admin_changelist.py
# The admin dashboard's page time with 1,000,000 events (BENCH_DATABASE_URL as above).
.PHONY: bench-dashboard
bench-dashboard: venv postgres-up
	cd bench && ../$(PY) dashboard.py $(BENCH_DASHBOARD_ARGS)
# The claim with ordering keys: 10k due events beside 10k blocked behind a failed one, SQLite and PG.
.PHONY: bench-ordering
bench-ordering: venv postgres-up
	$(PY) bench/ordering_claim.py $(BENCH_ORDERING_ARGS)
# --- benchmarks against the peers (bench/, BENCHMARKS.md) -------------------------------
# A separate virtualenv: django-tasks-db needs Django 6, hence Python >= 3.12 (found on PATH
# or under pyenv). BENCH_PG names the server and the prefix of the databases it recreates.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_PG ?= postgres://postgres@127.0.0.1:5432/bench
BENCH_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) \
	$(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12*/bin/python3) \
	$(shell command -v python3.12 python3.13 2>/dev/null))

$(BENCH_VENV)/.installed: bench/requirements.txt pyproject.toml
	@test -n "$(BENCH_PYTHON)" || { echo "make bench needs Python >= 3.12 (django-tasks-db runs on Django 6); set BENCH_PYTHON"; exit 1; }
	$(MAKE) mysql-client-dev
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -e '.[postgres,mysql]' -r bench/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.run --pg $(BENCH_PG)
	$(MAKE) bench-databases
	$(MAKE) bench-io
	@echo "Relay (django-q2) beside in-process dispatch, events/s:"
	$(MAKE) bench-relay BENCH_RELAY_ARGS="$(or $(BENCH_RELAY_ARGS),--events 1000 --runs 3)"

# Ours on MariaDB/MySQL beside PostgreSQL (bench/databases.py): write path and drain rate.
# BENCH_MYSQL names the server and database it recreates; BENCH_DATABASES_ARGS="--events 2000".
BENCH_MYSQL ?= mysql://root@127.0.0.1:3306/bench_databases
.PHONY: bench-databases
bench-databases: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.databases --pg $(BENCH_PG)_databases --mysql $(BENCH_MYSQL) $(BENCH_DATABASES_ARGS)

# Prints the Python the benchmarks would use (empty when there is none).
bench-python:
	@echo $(BENCH_PYTHON)

# The write path taken apart, one client, in-process (after `make bench` made its databases).
.PHONY: bench-sendpath
bench-sendpath: $(BENCH_VENV)/.installed postgres-up
	BENCH_DATABASE_URL=$(BENCH_PG)_ours $(BENCH_PY) -m bench.sendpath

# A quick A/B of the worker (drain vs the raw floor, LISTEN latency): run it in each checkout.
.PHONY: bench-ab
bench-ab: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.ab --pg $(BENCH_PG)

# Claiming ahead on and off (OUTBOX["WORKER_CLAIM_AHEAD"]) beside the floor, in one run.
.PHONY: bench-claim-ahead
bench-claim-ahead: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.claim_ahead --pg $(BENCH_PG)

# One worker's drain timed from inside: its claims and batches, and whether they overlap.
.PHONY: bench-drain-timeline
bench-drain-timeline: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.drain_timeline --pg $(BENCH_PG)_timeline

# Where the LISTEN latency goes: commit, wake-up, claim and receiver start, timed in the worker.
.PHONY: bench-latency-timeline
bench-latency-timeline: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.latency_timeline --pg $(BENCH_PG)_latency

# The claim and the drain with 1,000,000 finished rows that a held snapshot keeps from VACUUM
# (bench/bloat.py; not in CI: minutes). BENCH_BLOAT_ARGS="--rows 200000 --events 5000".
# The claim beside 10,000,000 done events, and outbox_prune deleting them while a sender
# sends and a worker drains (bench/scale.py; not in CI: 5 GB, 10 to 20 minutes).
# BENCH_SCALE_ARGS="--done 1000000" for a shorter run.
BENCH_SCALE_PG ?= postgres://postgres@127.0.0.1:5432/bench_scale
.PHONY: bench-scale
bench-scale: venv postgres-up
	$(PY) -m bench.scale --pg $(BENCH_SCALE_PG) $(BENCH_SCALE_ARGS)

# The empty claim planned each time or prepared (bench/prepared_claim.py; docs/worker.md).
.PHONY: bench-prepared
bench-prepared: venv postgres-up
	$(PY) -m bench.prepared_claim --pg $(BENCH_SCALE_PG)_prepared

.PHONY: bench-bloat
bench-bloat: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.bloat --pg $(BENCH_PG) $(BENCH_BLOAT_ARGS)

bench-smoke: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.run --smoke --pg $(BENCH_PG)_smoke
	$(BENCH_PY) -m bench.iobound --smoke --pg $(BENCH_PG)_smoke --redis $(BENCH_REDIS)

# The I/O-bound phase (bench/iobound/): receivers that wait 50 ms, one worker at concurrency
# 1/10/50/100, ours beside Celery (Redis broker, BENCH_REDIS: only its own keys are deleted),
# procrastinate and django-q2; 3 runs, medians into BENCHMARKS.md. BENCH_IO_ARGS="--runs 1 --only ours".
BENCH_REDIS ?= redis://127.0.0.1:6379/13
.PHONY: bench-io
bench-io: $(BENCH_VENV)/.installed postgres-up
	$(BENCH_PY) -m bench.iobound --pg $(BENCH_PG) --redis $(BENCH_REDIS) $(BENCH_IO_ARGS)

# The documentation site (mkdocs.yml, docs/) in strict mode: any warning fails the build.
# The `docs` extra (mkdocs, mkdocs-material, mkdocstrings) goes into .venv once; the site into site/.
.PHONY: docs
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
