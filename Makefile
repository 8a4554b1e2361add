# `make demo` and `make test` set up .venv on first use (about 2 minutes), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/flan-jax train --gin_file=runs/demo.gin

test: setup
	$(VENV)/bin/python -m pytest -q -rs tests
