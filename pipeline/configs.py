"""Pipeline configuration: the one place paths, names and settings are defined.

Every value can be overridden by an environment variable of the same name with
the `TOWER_RECS_` prefix, because the `tfx` CLI runs the runner file without
arguments (e.g. `TOWER_RECS_DATA=/data/ml make run`).
"""
from __future__ import annotations

import json
import os

from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig
from schema import contract
from trainer.model_config import ModelConfig

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOWER_RECS_{name}", default)


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.join(PROJECT_DIR, path))


PIPELINE_NAME = _env("PIPELINE_NAME", "tower-recs")
MODEL_NAME = _env("MODEL_NAME", "tower_recs")

# Data in the contract layout of `schema/contract.py` (see `data/prepare.py`).
DATA_PATH = _abs(_env("DATA", "data/sample"))
INTERACTIONS_PATH = os.path.join(DATA_PATH, contract.INTERACTIONS_DIR)
ITEMS_PATH = os.path.join(DATA_PATH, contract.ITEMS_DIR)

OUTPUT_DIR = _abs(_env("OUTPUT_DIR", "outputs"))
PIPELINE_ROOT = _env("PIPELINE_ROOT", os.path.join(OUTPUT_DIR, "pipeline_root", PIPELINE_NAME))
METADATA_PATH = _env("METADATA_PATH", os.path.join(OUTPUT_DIR, "metadata", PIPELINE_NAME, "metadata.db"))
# Pusher writes <SERVING_MODEL_DIR>/<MODEL_NAME>/<version>/, the layout TF Serving watches.
SERVING_MODEL_DIR = _abs(_env("SERVING_MODEL_DIR", os.path.join(OUTPUT_DIR, "serving_model")))

INTERACTIONS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "interactions", "schema.pbtxt")
ITEMS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "items", "schema.pbtxt")

# Entry points passed to TFX as dotted paths of the installed package (no module packaging).
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.run_fn.run_fn"

TRAIN_STEPS = int(_env("TRAIN_STEPS", "0"))   # 0: train for ModelConfig.epochs
EVAL_STEPS = int(_env("EVAL_STEPS", "0"))

MODEL_CONFIG = ModelConfig(
    preprocess_handle=_abs(_env("PREPROCESS_HANDLE", "models/minilm/preprocess")),
    encoder_handle=_abs(_env("ENCODER_HANDLE", "models/minilm/encoder")),
    epochs=int(_env("EPOCHS", str(ModelConfig.epochs))),
)

# Beam runs in-process by default; on a cluster pass e.g. --runner=DataflowRunner.
BEAM_PIPELINE_ARGS = _env("BEAM_PIPELINE_ARGS", "--direct_running_mode=in_memory --direct_num_workers=1").split()

# -- Gates before Pusher (pipeline/components/retrieval_evaluator.py, serving_check.py) ------------
# RetrievalEvaluator: full-catalogue Recall/NDCG@K; absolute minimums, and the candidate may be at most
# EVAL_MAX_RELATIVE_DROP worse than the latest blessed model on EVAL_BASELINE_METRIC.
EVAL_KS = tuple(int(k) for k in _env("EVAL_KS", "10,50,100").split(","))
EVAL_THRESHOLDS = json.loads(_env("EVAL_THRESHOLDS", '{"recall@50": 0.05}'))
EVAL_BASELINE_METRIC = _env("EVAL_BASELINE_METRIC", "recall@50")
EVAL_MAX_RELATIVE_DROP = float(_env("EVAL_MAX_RELATIVE_DROP", "0.05"))
EVALUATION_CONFIG = EvaluationConfig(ks=EVAL_KS, thresholds=EVAL_THRESHOLDS, baseline_metric=EVAL_BASELINE_METRIC,
                                     max_relative_drop=EVAL_MAX_RELATIVE_DROP)

# ServingCheck: loads the model in a TF + TF Text only process (ops, signatures, warmup, latency).
SERVING_CHECK_CONFIG = ServingCheckConfig(
    latency_calls=int(_env("SERVING_LATENCY_CALLS", "50")),
    max_p99_ms=float(_env("SERVING_MAX_P99_MS", "1000")),
)
# "" (default): ServingCheck. "docker" / "kubernetes": TFX's stock InfraValidator starting
# tensorflow/serving:<TF_SERVING_TAG> (needs a Docker engine or a cluster; not available here).
INFRA_VALIDATOR = _env("INFRA_VALIDATOR", "")
TF_SERVING_TAG = _env("TF_SERVING_TAG", "2.16.1")

# Run reports: <OUTPUT_DIR>/reports/latest.html (+ latest.json); each run's report is also an artifact.
REPORTS_DIR = _abs(_env("REPORTS_DIR", os.path.join(OUTPUT_DIR, "reports")))
