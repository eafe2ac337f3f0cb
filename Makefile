# gcsemb: two commands for a newcomer.
#   make demo   set up .venv (first time) and run the main job on the embedded default
#   make test   set up .venv (first time) and run every test, notebooks included
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with; on Colab/Workbench keep the preinstalled one.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.gcsemb-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[notebook,demo,dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/gcsemb demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
