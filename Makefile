# Two commands set everything up on a fresh Debian machine:
#   make demo   venv, install, embedded PostgreSQL (unless DATABASE_URL),
#               migrations, demo data, rendered configs, summary
#   make test   the whole suite (engine tests build the Asterisk chroot)
PYTHON   ?= python3
VENV     ?= .venv
STATE    ?= .dustel
BIN       = $(VENV)/bin
STAMP     = $(VENV)/.installed

.PHONY: demo test venv system-deps test-caches lint bench clean wheelhouse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages for the engine tests (sipp, mmdebstrap); idempotent.
system-deps:
	@scripts/system-deps.sh

demo: venv
	$(BIN)/dustel --state-dir $(STATE) demo

# the Debian trees the engine and deployment tests use, built or found here
# (a line per step) rather than silently inside a test
test-caches: system-deps
	@scripts/test-caches.sh

test: venv system-deps test-caches
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# dustel's wheel and its dependencies' for the Ansible dustel role (offline install)
wheelhouse: venv
	scripts/wheelhouse.sh build/wheelhouse $(BIN)/pip

lint: venv
	$(BIN)/ruff check dustel tests bench

bench: venv
	$(BIN)/python bench/render.py
	$(BIN)/python bench/esl_events.py
	$(BIN)/python bench/queue_stats.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/esl_policy.py
	$(BIN)/python bench/fax.py
	$(BIN)/python bench/mailgw.py
	$(BIN)/python bench/billing.py
	$(BIN)/python bench/portal.py

# the embedded PostgreSQL of the demo is stopped before its files go
clean:
	-[ -x $(BIN)/dustel ] && [ -d $(STATE)/pg ] && $(BIN)/dustel --state-dir $(STATE) db stop
	rm -rf $(VENV) $(STATE)
