# Two entry points that work on a fresh machine: `make demo` and `make test`.
# TORCH selects the torch requirement installed first; the default is the CPU wheel
# on the development machines. Elsewhere: `make demo TORCH=torch` (any release).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all lint benchmark clean

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

# The MONAI model zoo's code-format rules: its runtests.sh --codeformat (black, isort, flake8 with
# bugbear/comprehensions/executable/pep8-naming at 120 columns) and its pre-commit hooks. The
# fixers rewrite what they would change and fail, as pre-commit does.
TEXT_FILES := git ls-files -z -- ':!*.png'
lint: $(STAMP)
	$(VENV)/bin/black --check --quiet bundle scripts tests
	$(VENV)/bin/isort --check-only --quiet bundle scripts tests
	$(VENV)/bin/flake8 bundle scripts tests
	$(VENV)/bin/pretty-format-json --no-sort-keys --indent=4 configs/*.json configs/presets/*.json
	git ls-files -z '*.py' | xargs -0 $(VENV)/bin/check-docstring-first
	$(TEXT_FILES) | xargs -0 $(VENV)/bin/trailing-whitespace-fixer
	$(TEXT_FILES) | xargs -0 $(VENV)/bin/end-of-file-fixer
	$(TEXT_FILES) | xargs -0 $(VENV)/bin/mixed-line-ending
	git ls-files -s | awk '$$1 == "100755" {print $$4}' | xargs -r $(VENV)/bin/check-executables-have-shebangs
	git ls-files -z | xargs -0 $(VENV)/bin/check-case-conflict
	git ls-files -z | xargs -0 $(VENV)/bin/check-added-large-files --enforce-all --maxkb=1024
	$(VENV)/bin/check-toml pyproject.toml

# Training-heavy tests outside the default run: every kill point of both trainings, the
# two-run determinism checks, the proxy-loss ablations, cross-validation of the runner.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py metrics

clean:
	rm -rf outputs runs models
