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

# ---- labeler (issue 4) ---------------------------------------------------------------------
# Both targets need a CLIP similarity service. By default they start `cdul clip-serve` on
# loopback (port CLIP_PORT) for the duration and stop it at the end; CLIP_ENDPOINT=host:port
# uses a running one instead (e.g. a GPU node, or the compose service). Output goes to a run
# URI: file://... by default, s3://BUCKET/RUN with S3_ENDPOINT/S3_ACCESS_KEY/S3_SECRET_KEY set.
CDUL := $(VENV)/bin/cdul
WORLD_DIR ?= $(CURDIR)/.cache/world-val500
CLIP_PORT ?= 51051
CLIP_ENDPOINT ?=
LABEL_RUN ?= file://$(CURDIR)/artifacts/label-world
SNIPPETS ?= grid:3x3
TABLE2_RUN ?= file://$(CURDIR)/artifacts/table2
TABLE2_SPECS ?= patch:64 patch:32 patch:16 patch:3 grid:3x3
VOC_ROOT ?=
CLIP_MODEL ?= RN50
CLIP_PRETRAINED ?= openai
# Shell prologue: pick the model (the world's tiny CLIP unless VOC_ROOT is set), then start a
# service unless CLIP_ENDPOINT is given. patch:3 on a VOC image is ~20,000 snippets per request,
# hence the raised per-request and queue limits.
define CLIP_UP
set -euo pipefail; \
if [ -z "$(VOC_ROOT)" ]; then \
  test -d $(WORLD_DIR)/JPEGImages || $(CDUL) world generate $(WORLD_DIR) --train 0 --val 500; \
  model=cdul-tiny-rn; pretrained=$$($(CDUL) world models --json | \
    $(PY) -c 'import json,sys; print(json.load(sys.stdin)["clip_pretrained"])'); \
else model="$(CLIP_MODEL)"; pretrained="$(CLIP_PRETRAINED)"; fi; \
endpoint="$(CLIP_ENDPOINT)"; \
if [ -z "$$endpoint" ]; then \
  endpoint=127.0.0.1:$(CLIP_PORT); \
  $(CDUL) clip-serve --model "$$model" --pretrained "$$pretrained" --host 127.0.0.1 \
    --port $(CLIP_PORT) --metrics-port -1 --max-snippets 25000 --max-queue-views 65536 & \
  server=$$!; trap 'kill $$server 2>/dev/null || true; wait $$server 2>/dev/null || true' EXIT; \
fi;
endef

.PHONY: label-world table2

# The labeler on the embedded world (offline): 500 val scenes (generated once under WORLD_DIR),
# SNIPPETS (grid:3x3) into LABEL_RUN, the mAP table, then a zeta sweep from the stored alpha/beta.
label-world: $(STAMP)
	@$(CLIP_UP) \
	$(CDUL) label voc:$(WORLD_DIR):val -o $(LABEL_RUN) --endpoint "$$endpoint" --snippets $(SNIPPETS); \
	$(CDUL) label-sweep $(LABEL_RUN)

# The study's Table 2: pseudo-label mAP of global (the "global" column, the same in every run),
# patch 64/32/16/3 px and the paper's 3x3 grid, one run per spec under TABLE2_RUN, then one table.
# Default: the embedded world with the tiny CLIP. On VOC2012 val:
#   make table2 VOC_ROOT=/data/VOCdevkit/VOC2012 CLIP_PRETRAINED=/models/RN50-openai.pt
# (CLIP_MODEL defaults to RN50; CLIP_PRETRAINED=openai needs open_clip's weights cache). patch:3
# costs ~20,000 CLIP passes per VOC image: point CLIP_ENDPOINT at GPU replicas for that one.
table2: $(STAMP)
	@$(CLIP_UP) \
	dataset=$${VOC_ROOT:+voc:$(VOC_ROOT):val}; dataset=$${dataset:-voc:$(WORLD_DIR):val}; runs=; \
	for spec in $(TABLE2_SPECS); do \
	  run=$(TABLE2_RUN)/$$(echo $$spec | tr ':/' '--'); runs="$$runs $$run"; \
	  $(CDUL) label "$$dataset" -o $$run --endpoint "$$endpoint" --snippets $$spec --max-in-flight 8; \
	done; \
	$(CDUL) label-report $$runs
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
