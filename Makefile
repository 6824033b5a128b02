# Every command a user or CI runs. `make test` and `make demo` install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The world's trained models are cached here (once per checkout; see services/cdul/world/cache.py).
export CDUL_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: install lock test test-repeat test-containers lint unit demo clean proto world-models world-weights

# The venv holds exactly the lock (requirements/dev.txt: every package with its version
# and hashes, torch included, resolved from pyproject.toml by `make lock`), then the
# project itself; it is rebuilt when the lock changes. deploy/install.py installs it with
# uv (the lock's own, 4x faster than pip for torch's 5.5 GB) from where pip is configured
# to find packages, and `uv pip check` proves the set whole.
LOCK := requirements/dev.txt
$(STAMP): pyproject.toml $(LOCK) deploy/install.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) deploy/install.py --venv $(VENV) --lock $(LOCK)
	@touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml's pins (direct) into requirements/*.txt (everything, with hashes)
# with uv: one file per install set (the venv and CI, each image, Label Studio for CI).
# tests/deploy/test_lock.py fails while they disagree; commit both together.
lock: $(STAMP)
	$(PY) deploy/lock.py --uv $(VENV)/bin/uv

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

# The default tiny CLIP ships in the package, compact (services/cdul/world/shipped.py), so
# no checkout trains it: after changing its recipe, this trains it (or takes the model
# .cache/ holds for it, trained here) and rewrites the file; commit both together
# (tests/world/test_shipped.py fails while they disagree).
world-weights: $(STAMP)
	$(VENV)/bin/cdul world models --ship

# --durations: the 25 slowest tests at the end of every run (and every CI log).
# TEST_WORKERS pytest-xdist workers, each test file whole on one of them (--dist loadfile,
# so a module's fixtures start once), torch on one thread in each worker and in every
# process a test starts (OMP_NUM_THREADS=1): two torch processes of two threads each
# thrash on two cores, while many tests wait on servers, JVMs and outages. On 2 cores
# (factor 2.67) the suite took 300 s this way and 436 s in one process. TEST_WORKERS=0:
# one process, torch's own thread count.
TEST_WORKERS ?= 2
TEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1)
TEST_PARALLEL_ARGS = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --torch-threads 1)
test: $(STAMP) world-models
	$(VENV)/bin/ruff check .
	$(TEST_PARALLEL) $(PY) -m pytest -m "not containers" $(TEST_PARALLEL_ARGS) --durations=25

# Finds the test that passes on one machine, one random input or one thread count only
# (an exact comparison of two computations that round apart elsewhere) before CI does:
# the fast tests (not marked slow) once per seed in REPEAT_SEEDS, and the tests that
# compare two runs (marked compares_runs, most of them slow) once, each under 1 and 2
# threads and under each of torch's CPU kernel sets (ATEN_CPU_CAPABILITY: the scalar
# 'default', 'avx2' as on CI's AMD machines, 'avx512' where the CPU has it; a set the CPU
# lacks falls back to the best it has). One test, many seeds:
#   make test-repeat REPEAT_SEEDS=0-199 REPEAT_TESTS=tests/x.py::test_y REPEAT_RUNS=
REPEAT_SEEDS ?= 0-9
REPEAT_CAPABILITIES ?= default avx2 avx512
REPEAT_TESTS ?= tests/unit tests/trainer tests/labeler tests/world tests/clip_service tests/serving
REPEAT_RUNS ?= tests
test-repeat: $(STAMP) world-models
	set -e; for capability in $(REPEAT_CAPABILITIES); do for threads in 1 2; do \
	  echo "== ATEN_CPU_CAPABILITY=$$capability, $$threads thread(s), seeds $(REPEAT_SEEDS)"; \
	  ATEN_CPU_CAPABILITY=$$capability OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -rfE \
	    -m "not slow and not containers" -p no:cacheprovider --seeds $(REPEAT_SEEDS) \
	    --torch-threads $$threads $(REPEAT_TESTS); \
	  if [ -n "$(REPEAT_RUNS)" ]; then \
	    echo "== ATEN_CPU_CAPABILITY=$$capability, $$threads thread(s), two runs compared"; \
	    ATEN_CPU_CAPABILITY=$$capability OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -rfE \
	      -m "compares_runs and not containers" -p no:cacheprovider \
	      --torch-threads $$threads $(REPEAT_RUNS); \
	  fi; \
	done; done

# The whole chain in containers, each run with its pod's spec from the dev overlay (needs a
# running Docker daemon; the tests skip, saying why, without one). Builds every image first
# on the local base, with this machine's local pip indexes where it has any; CDUL_PYTHON_IMAGE
# and CDUL_PACKAGES choose otherwise, see tests/containers/conftest.py).
test-containers: $(STAMP) world-models
	$(PY) -m pytest -m containers --durations=25 tests/containers

unit: $(STAMP)
	$(PY) -m pytest tests/unit

# The whole chain on the embedded world (see `cdul demo --help`); DEMO_ARGS passes options,
# e.g. DEMO_ARGS="--run s3://bucket/demo" with S3_ENDPOINT/S3_ACCESS_KEY/S3_SECRET_KEY set.
# The demo trains (or reuses) the world's models itself, drawing the world meanwhile.
DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/cdul demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache services/*.egg-info

# ---- labeler -------------------------------------------------------------------------------
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

.PHONY: label-world table2 bench-recipes

# The label recipes side by side on two world seeds (val pseudo-label mAP,
# forwards/image, images/s), then the classifier trained on the paper's and the best two.
bench-recipes: $(STAMP) world-models
	$(PY) benchmarks/label_recipes.py --seeds 0,1 --train \
	  --results benchmarks/results/label_recipes_world_cpu_fp32.csv

# Hard labels without ground truth: label-free thresholds vs one 0.5 vs the ceiling, pseudo
# labels and the served classifier, on world seeds nothing was chosen on.
.PHONY: bench-hard-labels
bench-hard-labels: $(STAMP) world-models
	$(PY) benchmarks/hard_labels.py --seeds 5,6,7 \
	  --results benchmarks/results/hard_labels_world_cpu_fp32.csv

# The review queue's first 100/500/1000 labels against a random order and "closest to the
# threshold" on world seeds 5-7 (cross-fitting 2 folds each), then the Label Studio
# backend's /predict latency and 1,000 tasks pushed into (and pulled by) a real Label Studio.
.PHONY: bench-review-queue
bench-review-queue: $(STAMP) world-models
	$(PY) benchmarks/review_queue.py --seeds 5,6,7 \
	  --results benchmarks/results/review_queue_world_cpu_fp32.csv

# The CPU proxy of the CLIP service's request side: the device's work as no-ops,
# one server process and as many as this machine has cores, side by side.
.PHONY: bench-request-side
bench-request-side: $(STAMP)
	$(PY) benchmarks/clip_service_request_side.py --spec grid:3x3 --device-noop \
	  --processes 1 $$(nproc)

# The labeler on the embedded world (offline): 500 val scenes (generated once under WORLD_DIR),
# SNIPPETS (grid:3x3) into LABEL_RUN with the paper's recipe, the mAP table, then the recipe
# sweep (zeta and the other rules) from the stored cosines.
label-world: $(STAMP)
	@$(CLIP_UP) \
	$(CDUL) label voc:$(WORLD_DIR):val -o $(LABEL_RUN) --endpoint "$$endpoint" --snippets $(SNIPPETS) \
	  --recipe paper; \
	$(CDUL) label-sweep $(LABEL_RUN)

# The study's Table 2: pseudo-label mAP of global (the "global" column, the same in every run),
# patch 64/32/16/3 px and the paper's 3x3 grid, one run per spec under TABLE2_RUN (the paper's
# recipe), then one table.
# Default: the embedded world with the tiny CLIP. On VOC2012 val:
#   make table2 VOC_ROOT=/data/VOCdevkit/VOC2012 CLIP_PRETRAINED=/models/RN50-openai.pt
# (CLIP_MODEL defaults to RN50; CLIP_PRETRAINED=openai needs open_clip's weights cache). patch:3
# costs ~20,000 CLIP passes per VOC image: point CLIP_ENDPOINT at GPU replicas for that one.
table2: $(STAMP)
	@$(CLIP_UP) \
	dataset=$${VOC_ROOT:+voc:$(VOC_ROOT):val}; dataset=$${dataset:-voc:$(WORLD_DIR):val}; runs=; \
	for spec in $(TABLE2_SPECS); do \
	  run=$(TABLE2_RUN)/$$(echo $$spec | tr ':/' '--'); runs="$$runs $$run"; \
	  $(CDUL) label "$$dataset" -o $$run --endpoint "$$endpoint" --snippets $$spec --recipe paper \
	    --max-in-flight 8; \
	done; \
	$(CDUL) label-report $$runs

# ---- serving -------------------------------------------------------------------------------
.PHONY: archive bench-torchserve
ARCH ?= resnet101
IMAGE_SIZE ?= 224
MODEL_STORE ?= $(CURDIR)/artifacts/model-store
# The TorchServe archive of a trained classifier: make archive WEIGHTS=classifier.pt CLASSES=classes.txt
archive: $(STAMP)
	@test -n "$(WEIGHTS)" -a -n "$(CLASSES)" || { echo "usage: make archive WEIGHTS=state_dict.pt CLASSES=classes.txt|a,b,c" >&2; exit 2; }
	$(VENV)/bin/cdul archive --weights $(WEIGHTS) --classes $(CLASSES) --arch $(ARCH) --image-size $(IMAGE_SIZE) --output-dir $(MODEL_STORE) --force
# Benchmark P5: TorchServe (16 clients, batching) vs in-process forward
bench-torchserve: $(STAMP)
	$(PY) benchmarks/torchserve_vs_in_process.py

# ---- trainer -------------------------------------------------------------------------------
# `cdul train LABELS_RUN IMAGES`: writes RUN/training/ and RUN/model-store/; rerun to resume.
# The pseudo-label runs come from the labeler (`cdul label`, above).
.PHONY: world-run train-world train-voc-table3-f1 train-voc-table3-f10 bench-alignment
WORLD_ROOT ?= $(CURDIR)/artifacts/world
WORLD_RUN ?= file://$(CURDIR)/artifacts/world-run
VOC_RUN ?= file://$(CURDIR)/artifacts/voc-run
TRAIN_ARGS ?=
TRAIN_DEVICE ?= auto

# A labeled world for train-world: WORLD_ROOT (2,000 train + 500 val scenes) and the pseudo
# labels of its training split in WORLD_RUN (a rerun finds the labels complete and skips them).
world-run: $(STAMP)
	@test -f $(WORLD_ROOT)/ImageSets/Main/val.txt || \
	  $(CDUL) world generate $(WORLD_ROOT) --train 2000 --val 500
	@$(CLIP_UP) \
	$(CDUL) label voc:$(WORLD_ROOT):train -o $(WORLD_RUN) --endpoint "$$endpoint" --snippets $(SNIPPETS)

# The trainer's world preset: ResNet-18 from the world's backbone, 128 px, 10 epochs, F=5.
train-world: world-run
	$(VENV)/bin/cdul train $(WORLD_RUN) voc:$(WORLD_ROOT):train --val voc:$(WORLD_ROOT):val \
	  --preset world --backbone-weights "$$($(VENV)/bin/python -c 'from cdul.world.backbone import ensure_backbone; print(ensure_backbone())')" \
	  --device $(TRAIN_DEVICE) $(TRAIN_ARGS)

# The study's Table 3 on VOC2012 (ResNet-101, ImageNet weights, Adam 1e-5, batch 8).
# VOC_ROOT=/data/VOCdevkit/VOC2012; VOC_RUN holds the labeler's pseudo labels for voc:VOC_ROOT:train.
train-voc-table3-f1: $(STAMP)
	@test -n "$(VOC_ROOT)" || { echo "set VOC_ROOT=/path/to/VOCdevkit/VOC2012" >&2; exit 2; }
	$(VENV)/bin/cdul train $(VOC_RUN) voc:$(VOC_ROOT):train --val voc:$(VOC_ROOT):val \
	  --output $(VOC_RUN)-f1 --arch resnet101 --backbone-weights imagenet --batch-size 8 \
	  --lr 1e-5 --epochs 20 --update-every 1 --warmup-epochs 0 --device $(TRAIN_DEVICE) $(TRAIN_ARGS)

train-voc-table3-f10: $(STAMP)
	@test -n "$(VOC_ROOT)" || { echo "set VOC_ROOT=/path/to/VOCdevkit/VOC2012" >&2; exit 2; }
	$(VENV)/bin/cdul train $(VOC_RUN) voc:$(VOC_ROOT):train --val voc:$(VOC_ROOT):val \
	  --output $(VOC_RUN)-f10 --arch resnet101 --backbone-weights imagenet --batch-size 8 \
	  --lr 1e-5 --epochs 100 --update-every 10 --warmup-epochs 10 --device $(TRAIN_DEVICE) $(TRAIN_ARGS)

# Benchmark P4: a step with gradient alignment vs a plain step, side by side (goal >= 0.95).
bench-alignment: $(STAMP)
	$(PY) benchmarks/alignment_step_overhead.py

# ---- deploy --------------------------------------------------------------------------------
# images: docker build of every image (machines with Docker; context = the repository root).
# k8s: render every kustomize overlay into artifacts/k8s/<overlay>.yaml (offline).
# lint-deploy: the static deployment checks of tests/deploy (also part of `make test`).
.PHONY: images k8s lint-deploy
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEPLOY_IMAGES := clip-service labeler trainer torchserve
K8S_OVERLAYS := $(notdir $(wildcard k8s/overlays/*))

# PYTHON_IMAGE: the base ('' = the official python:3.11 slim image the Dockerfiles name;
# 'local' = cdul-base:bookworm from Debian's packages, for machines that reach no registry).
# PACKAGES: where pip finds packages (pypi, or host: this machine's local pip indexes served
# on loopback for the build). See deploy/docker/build_images.py.
PYTHON_IMAGE ?=
PACKAGES ?= pypi
images:
	@command -v docker >/dev/null || { echo "make images needs Docker (not installed here)" >&2; exit 2; }
	python3 deploy/docker/build_images.py --tag $(IMAGE_TAG) --packages $(PACKAGES) \
	  $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE))

k8s:
	@mkdir -p artifacts/k8s
	set -e; for overlay in $(K8S_OVERLAYS); do \
	  kubectl kustomize k8s/overlays/$$overlay > artifacts/k8s/$$overlay.yaml; \
	  echo "artifacts/k8s/$$overlay.yaml"; \
	done

lint-deploy: $(STAMP)
	$(PY) -m pytest tests/deploy
