# `make demo` and `make test` are all a new user needs: each sets up .venv first (once).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# CUDA builds that also run on a CPU-only machine; fastreid 1.4.0's own pins (torch==1.13.1) have no
# Python 3.11 build, so fastreid is installed with --no-deps and its real needs come from setup.py.
TORCH  := torch==2.14.1 torchvision==0.29.1
# faiss build: empty = gpu where torch sees CUDA, cpu elsewhere; `make setup FAISS=cpu` to choose
FAISS  ?=

.PHONY: setup demo test gpu-check clean

setup: $(VENV)/.ready

$(VENV)/.ready: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet --no-deps fastreid==1.4.0
	@faiss="$(FAISS)"; [ -n "$$faiss" ] || faiss=$$($(PY) -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')"); \
	echo "faiss: installing the $$faiss build (by default gpu where torch sees CUDA, else cpu; FAISS=cpu|gpu chooses)"; \
	$(PY) -m pip install --quiet -e ".[$$faiss,test]"
	$(PY) -m mdpr_plugin.evaluation.cython_ranking
	touch $@

demo: setup
	$(PY) train_net.py --config-file configs/MDPR/demo.yml

test: setup
	$(PY) -m pytest tests -q

# every CUDA path in a few minutes on one GPU: the gpu tests, then the timing table (ARGS=--write-docs writes it
# into docs/benchmarks.md); without CUDA the timing script says so in one line and nothing else runs
gpu-check: setup
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m pytest tests/gpu -m gpu -q && $(PY) -m benchmarks.gpu_timing $(ARGS); \
	else $(PY) -m benchmarks.gpu_timing; fi

clean:
	rm -rf $(VENV) logs *.egg-info build
