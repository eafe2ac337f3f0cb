# gcsemb: two commands for a newcomer.
#   make demo   set up .venv (first time) and run the main job on the embedded default
#   make test   set up .venv (first time) and run every test, notebooks included
#   make test-colab   the same tests in .venv-colab, on Colab's package set (constraints/colab.txt)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with; on Colab/Workbench keep the preinstalled one.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.gcsemb-installed
# Downloads are not cached: the two venvs hold two torch builds (~7 GB each) and a cached copy
# of every wheel would add ~3 GB each on CI's disk; a finished venv is never reinstalled anyway.
export PIP_NO_CACHE_DIR := 1
# $(call retry,COMMAND): three tries, 30 s apart. Registries drop a download now and then (CI
# once saw a wheel cut off at the same byte six times in a row); a full disk fails the same
# way, so each failed try prints the free space.
retry = ok=; for try in 1 2 3; do if $(1); then ok=1; break; fi; \
  echo "pip failed (try $$try of 3; free disk: $$(df -h . | awk 'NR==2 {print $$4}'))"; \
  [ $$try = 3 ] || sleep 30; done; [ -n "$$ok" ]
EXTRAS := notebook,lab,demo,dev,ray

.PHONY: demo test test-colab colab-constraints lint bench clean chromium notebooks

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call retry,$(PY) -m pip install --quiet --upgrade pip)
	$(call retry,$(PY) -m pip install --quiet $(TORCH))
	$(call retry,$(PY) -m pip install --quiet -e '.[$(EXTRAS)]')
	touch $@

demo: $(STAMP)
	$(VENV)/bin/gcsemb demo

# --timeout (pytest-timeout, dev extra): a hung test fails after 15 minutes instead of eating CI's 90.
test: $(STAMP) chromium
	$(PY) -m pytest --timeout=900

# ---------------------------------------------------------------------------------------------
# Colab's package set (August 2026 freeze, see constraints/colab.txt) on Colab's own Python
# (3.13) and torch release (2.11; PyPI's build, as Colab's GPU runtime has a CUDA one). The venv
# is made the way a Colab kernel comes to hold gcsemb:
#   1. Colab's pip, Colab's torch, and every package of Colab's that gcsemb's graph uses, at
#      Colab's version (what the kernel holds before the user types anything);
#   2. the user's plain `pip install -e '.[notebook,demo]'` (no constraints), whose
#      "Successfully installed" line must name none of Colab's packages;
#   3. the test tools (dev extra) under the constraints; `pip freeze` must then agree with every
#      Colab pin it lists.
# Then every test but the browser and Ray ones, and the notebooks under nbval.
# the first Python 3.13 that runs (a pyenv shim of a version not selected does not)
COLAB_PYTHON ?= $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13; do \
  $$p -c 'import sys' 2>/dev/null && { command -v $$p; break; }; done)
COLAB_TORCH ?= torch==2.11.0 torchvision==0.26.0
COLAB_VENV := .venv-colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_PIP := $(COLAB_PY) -m pip --no-input
COLAB := constraints/colab.txt
COLAB_FREEZE ?= ../shared/ref/colab-gpu-pip-freeze-2026-08.txt
COLAB_OUT := .artifacts/colab
COLAB_STAMP := $(COLAB_VENV)/.gcsemb-installed
COLAB_USER_EXTRAS := notebook,demo
COLAB_EXTRAS := notebook,demo,dev
# pip 24.1 (Colab's) warns once per package about this machine's file:// index: leave that out.
showlog = grep -v 'is ignored: it is neither a file nor a directory' $(COLAB_OUT)/$(1)

$(COLAB_STAMP): pyproject.toml Makefile $(COLAB) .ci/colab_constraints.py
	rm -rf $(COLAB_VENV) $(COLAB_OUT)
	mkdir -p $(COLAB_OUT)
	@test -n "$(COLAB_PYTHON)" || { echo "make test-colab needs Python 3.13 (Colab's): install it \
	  (e.g. pyenv install 3.13, or apt install python3.13-venv) or pass COLAB_PYTHON=/path/to/python3.13"; exit 1; }
	$(COLAB_PYTHON) -m venv $(COLAB_VENV)
	echo '*' > $(COLAB_VENV)/.gitignore
	$(call retry,$(COLAB_PIP) install -c $(COLAB) pip > $(COLAB_OUT)/pip.log 2>&1) \
	  || { $(call showlog,pip.log); exit 1; }
	$(call retry,$(COLAB_PIP) install -c $(COLAB) $(COLAB_TORCH) > $(COLAB_OUT)/torch.log 2>&1) \
	  || { $(call showlog,torch.log); exit 1; }
	$(call retry,$(COLAB_PIP) install --dry-run --report $(COLAB_OUT)/resolve.json -c $(COLAB) \
	  -e '.[$(COLAB_EXTRAS)]' > $(COLAB_OUT)/resolve.log 2>&1) || { $(call showlog,resolve.log); exit 1; }
	$(COLAB_PY) .ci/colab_constraints.py preinstalled $(COLAB_OUT)/resolve.json \
	  > $(COLAB_OUT)/preinstalled.txt
	$(call retry,$(COLAB_PIP) install -c $(COLAB) -r $(COLAB_OUT)/preinstalled.txt \
	  > $(COLAB_OUT)/colab.log 2>&1) || { $(call showlog,colab.log); exit 1; }
	@echo "Colab's packages in place: $$(wc -l < $(COLAB_OUT)/preinstalled.txt) (.artifacts/colab/preinstalled.txt)"
	$(call retry,$(COLAB_PIP) install -e '.[$(COLAB_USER_EXTRAS)]' > $(COLAB_OUT)/install.log 2>&1) \
	  || { $(call showlog,install.log); exit 1; }
	$(COLAB_PY) .ci/colab_constraints.py check-install $(COLAB_OUT)/install.log \
	  > $(COLAB_OUT)/successfully-installed.txt || { cat $(COLAB_OUT)/successfully-installed.txt; exit 1; }
	cat $(COLAB_OUT)/successfully-installed.txt
	$(call retry,$(COLAB_PIP) install -c $(COLAB) -e '.[$(COLAB_EXTRAS)]' \
	  > $(COLAB_OUT)/install-dev.log 2>&1) || { $(call showlog,install-dev.log); exit 1; }
	grep '^Successfully installed' $(COLAB_OUT)/install-dev.log || true
	$(COLAB_PIP) freeze > $(COLAB_OUT)/freeze.txt
	$(COLAB_PY) .ci/colab_constraints.py check-freeze < $(COLAB_OUT)/freeze.txt
	touch $@

test-colab: $(COLAB_STAMP)
	@if [ -f $(COLAB_FREEZE) ]; then \
	  $(COLAB_PY) .ci/colab_constraints.py generate $(COLAB_FREEZE) --check; fi
	$(COLAB_PY) -m pytest -m 'not browser and not ray' --timeout=900 \
	  --junitxml=$(COLAB_OUT)/junit.xml

# Regenerate constraints/colab.txt from Colab's freeze (commit the result).
colab-constraints:
	$(PYTHON) .ci/colab_constraints.py generate $(COLAB_FREEZE)

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
	rm -rf $(VENV) $(COLAB_VENV) demo-output .pytest_cache
