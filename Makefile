# Two entry points that work on a fresh machine: `make demo` and `make test`.
# TORCH selects the torch requirement installed first; the default is the CPU wheel
# on the development machines. Elsewhere: `make demo TORCH=torch` (any release).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,lint]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# The MONAI model zoo's code-format rules (black, isort, flake8 at 120 columns; JSON with 4-space indents)
lint: $(STAMP)
	$(VENV)/bin/black --check --quiet bundle scripts tests
	$(VENV)/bin/isort --check-only --quiet bundle scripts tests
	$(VENV)/bin/flake8 bundle scripts tests
	$(VENV)/bin/pretty-format-json --no-sort-keys --indent=4 configs/*.json

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py metrics

clean:
	rm -rf outputs runs models
