# netmoments developer targets. `make check` and `make test` are the README's two commands; .ci/run calls `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE
export NETMOMENTS_DATA ?= $(abspath ../shared/data)

.PHONY: setup system check test sync sync-check test-nbs test-py bench book clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py settings.ini constraints.txt
	python3 -m venv $(VENV)
	@echo "installing netmoments and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install -q -c constraints.txt -e ".[dev]" > $(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; exit 1; }
	touch $@

# Debian packages for the offline book and its browser test (root only; skipped when already there).
system:
	@tools/system_packages.sh

check: setup
	$(BIN)/netmoments check

# Notebooks, paired scripts and exported modules must agree: re-export, clean and sync must leave the tree unchanged.
sync-check: setup
	@tools/sync_check.sh

test-nbs: setup
	$(BIN)/nbdev_test --n_workers 1 --timing

test-py: setup system
	$(PY) -m pytest tests -q

test: sync-check test-nbs test-py

sync: setup
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/jupytext --quiet --sync nbs/*.ipynb

bench: setup
	$(BIN)/netmoments bench

book: setup system
	$(PY) tools/book.py

clean:
	rm -rf _book _proc _docs .pytest_cache
