# `make demo` and `make test` set up .venv on first use, then run. The demo needs only the package; the tests also
# need transformers + torch (the reference) and libtpu (the TPU compiler behind `flan-jax plan`).
PYTHON ?= python3
VENV := .venv
SETUP := $(VENV)/.installed-stamp
TEST_SETUP := $(VENV)/.installed-test-stamp

.PHONY: setup demo test

$(SETUP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e .
	touch $(SETUP)

$(TEST_SETUP): $(SETUP)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(TEST_SETUP)

setup: $(SETUP)

demo: $(SETUP)
	$(VENV)/bin/flan-jax train --gin_file=runs/demo.gin

test: $(TEST_SETUP)
	$(VENV)/bin/python -m pytest -q -rs -n 2 --dist loadfile --durations=15 tests
