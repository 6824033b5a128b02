# Every command a user or CI runs. `make test` and `make demo` install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The world's trained models are cached here (once per checkout; see services/cdul/world/cache.py).
export CDUL_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: install test lint unit demo clean proto world-models

# The venv is rebuilt when the pins change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# gRPC stubs from protos/ into services/cdul/_proto (committed; a test checks they are current).
proto: $(STAMP)
	$(PY) -m cdul.clip_service.codegen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The world's models are trained (or reused from .cache/) before pytest starts, so no
# test's timeout pays for training and the progress bars show in CI's log.
world-models: $(STAMP)
	$(VENV)/bin/cdul world models

test: $(STAMP) world-models
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit

demo: $(STAMP)
	@echo "make demo is not built yet: the end-to-end chain lands with issue 7 (see README)." >&2
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache services/*.egg-info

# -- serving ---------------------------------------------------------------------------
.PHONY: archive bench-p5
ARCH ?= resnet101
IMAGE_SIZE ?= 224
MODEL_STORE ?= $(CURDIR)/artifacts/model-store
# The TorchServe archive of a trained classifier: make archive WEIGHTS=classifier.pt CLASSES=classes.txt
archive: $(STAMP)
	@test -n "$(WEIGHTS)" -a -n "$(CLASSES)" || { echo "usage: make archive WEIGHTS=state_dict.pt CLASSES=classes.txt|a,b,c" >&2; exit 2; }
	$(VENV)/bin/cdul archive --weights $(WEIGHTS) --classes $(CLASSES) --arch $(ARCH) --image-size $(IMAGE_SIZE) --output-dir $(MODEL_STORE) --force
# Benchmark P5: TorchServe (16 clients, batching) vs in-process forward
bench-p5: $(STAMP)
	$(PY) benchmarks/p5_torchserve.py
