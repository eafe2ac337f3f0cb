# gcsemb: two commands for a newcomer.
#   make demo   set up .venv (first time) and run the main job on the embedded default
#   make test   set up .venv (first time) and run every test, notebooks included
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with; on Colab/Workbench keep the preinstalled one.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.gcsemb-installed

.PHONY: demo test lint bench clean chromium notebooks

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[notebook,demo,dev,ray]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/gcsemb demo

test: $(STAMP) chromium
	$(PY) -m pytest

# tests/test_notebooks_browser.py drives Debian's chromium through Playwright (Playwright's own
# browser download is not reachable from CI). Installed as root or via passwordless sudo; where
# neither works the browser test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "chromium is missing and installing it needs root: the browser test will skip."; exit 0; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium is missing and there is no apt-get: the browser test will skip."; exit 0; fi; \
	  echo "Installing Debian's chromium for the browser test (about a minute)..."; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium >/dev/null; }

# Re-run every notebook on the embedded default and store its outputs (commit the result;
# `make test` checks them with nbval).
notebooks: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=600 \
	  --ExecutePreprocessor.record_timing=False notebooks/*.ipynb

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
