# netmoments developer targets. The README's two commands are `make run` (set everything up, then the main job) and
# `make test` (set everything up, then every test); .ci/run calls `make test`. Each target depends on what it needs:
# `venv` (.venv with the package and its dev tools), `system` (Debian packages: Chromium for the book's browser test,
# MathJax for the offline book, Fashion-MNIST for the datasets chapter) and `data` (the verified datasets).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
VERSION := $(shell sed -n 's/^version *= *//p' settings.ini)
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE
export NETMOMENTS_DATA ?= $(abspath ../shared/data)

.PHONY: setup venv system data run check test sync sync-check test-nbs test-py bench book wheel clean

# Everything: the Debian packages first (python3-venv among them where Debian's python3 makes the venv), then .venv.
setup: system venv data

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py settings.ini constraints.txt
	python3 -m venv $(VENV)
	@echo "installing netmoments and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install -q -c constraints.txt -e ".[dev]" > $(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; exit 1; }
	touch $@

# Installs what is missing (as root); fails, saying what is missing, when it cannot.
system:
	@tools/system_packages.sh

# The external datasets in $NETMOMENTS_DATA (../shared/data) are checked against their SHA256SUMS when present;
# without them, what needs MNIST or Spambase is skipped or falls back to the bundled slice.
data:
	@if [ -f "$(NETMOMENTS_DATA)/SHA256SUMS" ]; then \
	  (cd "$(NETMOMENTS_DATA)" && sha256sum --quiet -c SHA256SUMS) \
	    || { echo "the datasets in $(NETMOMENTS_DATA) do not match its SHA256SUMS" >&2; exit 1; }; \
	else echo "note: no datasets in $(NETMOMENTS_DATA) (NETMOMENTS_DATA): MNIST and Spambase checks are skipped"; fi

# The main job on its defaults: the bundled LeNet and MNIST slice, nothing external.
run: setup
	$(BIN)/netmoments tightness

check: venv
	$(BIN)/netmoments check

# Notebooks, paired scripts and exported modules must agree: re-export, clean and sync must leave the tree unchanged.
sync-check: venv
	@tools/sync_check.sh

test-nbs: venv system data
	$(BIN)/nbdev_test --n_workers 1 --timing

test-py: venv system data
	BOOK_DIR=$(abspath _book) $(PY) -m pytest tests -q

test: setup sync-check test-nbs test-py

sync: venv
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/jupytext --quiet --sync nbs/*.ipynb

bench: venv
	$(BIN)/netmoments bench

book: venv system
	$(PY) tools/book.py

# dist/: the sdist, and the wheel built from it (pip install dist/netmoments-*.whl).
wheel: venv
	rm -rf dist
	$(PY) -m build --sdist --no-isolation --outdir dist .
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist dist/netmoments-$(VERSION).tar.gz

clean:
	rm -rf _book _proc _docs .pytest_cache build dist
