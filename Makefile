# Two commands do all set-up on a fresh machine: `make predict` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup predict test lint bench eval train train-smoke image container-test

setup: $(STAMP)
$(STAMP): requirements-dev.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

# One sample case through predict.sh exactly as the container runs it (minus Docker).
PREDICT_DIR := reports/predict
PREDICT_CASE := MR_ICBM152_tissue.npz
predict: setup
	rm -rf $(PREDICT_DIR) && mkdir -p $(PREDICT_DIR)/in $(PREDICT_DIR)/out
	cp tests/data/inputs/$(PREDICT_CASE) $(PREDICT_DIR)/in/
	@t0=$$(date +%s.%N); \
	INPUT_DIR=$(CURDIR)/$(PREDICT_DIR)/in OUTPUT_DIR=$(CURDIR)/$(PREDICT_DIR)/out \
		PATH="$(CURDIR)/.venv/bin:$$PATH" sh predict.sh; \
	t1=$$(date +%s.%N); \
	echo "output: $(PREDICT_DIR)/out/$(PREDICT_CASE)"; \
	$(PY) -m harness.summary $(PREDICT_DIR)/out/$(PREDICT_CASE) --input $(PREDICT_DIR)/in/$(PREDICT_CASE) \
		--seconds $$(awk "BEGIN { print $$t1 - $$t0 }")

test: setup
	$(PY) -m pytest -q tests

# ruff: its default rules plus E501 at the line-length in ruff.toml (CI runs this via .ci/run); hadolint: Dockerfile.
lint: setup
	$(PY) -m ruff check app training harness tests
	.venv/bin/hadolint Dockerfile

# The official loop replayed on the labelled cases (tests/data/labelled + ../shared/samples/labelled):
# engine vs baselines, box and no-box; report in reports/eval/. Narrow it with
# EVAL_ARGS="--cases MR_PyRadiomics_brain2 --predictor engine,classical".
# Validation set: make valset && make eval EVAL_ARGS="--data reports/valset" (box cases also run
# without boxes here; no-box cases of its tasks.json only without).
EVAL_ARGS ?=
eval: setup
	$(PY) -m harness.eval --both-modes $(EVAL_ARGS)

# The task-mix validation set (real CT/MR with rule labels + procedural cases) -> reports/valset,
# see harness/valset.py. Skips the cases whose source in ../shared/samples is absent.
.PHONY: valset
valset: setup
	$(PY) -m harness.valset --out reports/valset

# Procedural head CTs (soft tissue around a skull) through the official loop, engine only; see harness/headct.py.
.PHONY: headct
headct: setup
	$(PY) -m harness.headct

# Procedural parcellated MR brains (lobes, cortex parcels) through the official loop, engine only; see harness/brains.py.
.PHONY: brains
brains: setup
	$(PY) -m harness.brains

# The valset's halved CT cases (lung1, AMOS) at native in-plane resolution and its ICBM lobar parcels at 2x, engine only; see harness/native.py.
.PHONY: native
native: setup
	$(PY) -m harness.native

# The export decision: CANDIDATE (a weights folder) against weights/ on the export rule's measures,
# cached in reports/compare/; needs the valset (make valset). See harness/compare.py.
.PHONY: compare
compare: setup
	@test -n "$(CANDIDATE)" || { echo "usage: make compare CANDIDATE=DIR" >&2; exit 2; }
	$(PY) -m harness.compare --candidate $(CANDIDATE)

# Delivery image, on a machine with Docker and docker-squash (pip install docker-squash==1.2.2).
# Not runnable on the CI machine (no Docker engine): there, `make container-test` builds and
# runs the same Dockerfile with buildah/podman on a stand-in base.
TEAM ?= segfm3d
image:
	docker build -t $(TEAM):latest .
	docker-squash -t $(TEAM):latest $(TEAM):latest
	docker save $(TEAM):latest | gzip -c > $(TEAM).tar.gz
	ls -l $(TEAM).tar.gz

# Build the image with buildah on a cached stand-in base (root; store in /var/tmp/segfm-ctr) and
# run it on 3 cases as the organisers do. SQUASH=1 adds the squashed image + gzipped archive.
SQUASH ?= 0
container-test: setup
	SQUASH=$(SQUASH) bash tests/container/container_test.sh

# Speed and memory of `python -m app` per case (fresh process each): start-up, per-class, total, RSS.
bench: setup
	$(PY) -m harness.bench $(BENCH_ARGS)

# Training (resumable: rerun to continue; see training/train.py). CI runs only train-smoke.
train: setup
	$(PY) -m training.train --expert global --minutes $(or $(MINUTES),60)
	$(PY) -m training.manifest

train-smoke: setup
	$(PY) -m training.train --smoke --out-dir runs/smoke --export runs/smoke/expert.pt

# Real-data layer speed (training.data): samples/s with 0, 1, 2 workers, with and without the
# memory-mapped cache, and the share of a training step spent waiting for data (fake data set
# unless BENCH_DATA_ARGS="--data DIR ..."). A few minutes on 2 cores.
.PHONY: bench-data
bench-data: setup
	$(PY) -m harness.bench_data $(BENCH_DATA_ARGS)
