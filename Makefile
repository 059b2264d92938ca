# Two commands for a fresh machine with Python 3.11+ and git: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m supervisor run --config config.toml

test: $(VENV)/.installed
	$(PY) -m pytest -q

check: $(VENV)/.installed
	$(PY) -m supervisor check --config config.toml

clean:
	rm -rf demo $(VENV) *.egg-info
