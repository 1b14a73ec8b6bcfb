# `make demo` and `make test` are all a new user needs: each sets up .venv first (once).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# CUDA builds that also run on a CPU-only machine; fastreid 1.4.0's own pins (torch==1.13.1) have no
# Python 3.11 build, so fastreid is installed with --no-deps and its real needs come from setup.py.
TORCH  := torch==2.14.1 torchvision==0.29.1
# faiss build: empty = gpu where torch sees CUDA, cpu elsewhere; `make setup FAISS=cpu` to choose
FAISS  ?=

.PHONY: setup demo test test-fast gpu-check clean

setup: $(VENV)/.ready

$(VENV)/.ready: setup.py
	@echo "setup: the virtual environment $(VENV) ($(PYTHON)), with pip upgraded"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "setup: $(TORCH) (the large download, with pip's progress)"
	@$(PY) -m pip install $(TORCH)
	@# fastreid comes last: pip checks the installed packages' pins at every install, and fastreid's are unmet on purpose
	@if $(PY) -m pip show --quiet fastreid >/dev/null 2>&1; then $(PY) -m pip uninstall --quiet --yes fastreid; fi
	@faiss="$(FAISS)"; [ -n "$$faiss" ] || faiss=$$($(PY) -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')"); \
	echo "setup: this package (editable) with its requirements, the test tools and faiss's $$faiss build (by default gpu where torch sees CUDA, else cpu; FAISS=cpu|gpu chooses)"; \
	$(PY) -m pip install -qq -e ".[$$faiss,test]"  # -qq: setuptools' note on every editable install, errors still shown
	@echo "setup: fastreid 1.4.0 without its dependencies (setup.py lists what it needs)"
	@$(PY) -m pip install --quiet --no-deps fastreid==1.4.0
	@# fastreid warns on import that the module about to be built is missing
	@$(PY) -W "ignore:Cython roc evaluation:UserWarning" -m mdpr_plugin.evaluation.cython_ranking
	@touch $@

demo: setup
	$(PY) train_net.py --config-file configs/MDPR/demo.yml

test: setup
	$(PY) -m pytest tests -q

# the edit loop: every test not marked slow (no subprocess, no training run, no benchmark), each within 60 s
test-fast: setup
	$(PY) -m pytest tests -q -m "not slow" --timeout 60

# every CUDA path in a few minutes on one GPU: the gpu tests, then the timing table even when a test failed
# (ARGS=--write-docs writes it into docs/benchmarks.md), status 1 when either failed; without CUDA the timing
# script says so in one line and nothing else runs
gpu-check: setup
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		status=0; $(PY) -m pytest tests/gpu -m gpu -q || status=1; \
		$(PY) -m benchmarks.gpu_timing $(ARGS) || status=1; exit $$status; \
	else $(PY) -m benchmarks.gpu_timing; fi

clean:
	rm -rf $(VENV) logs *.egg-info build
