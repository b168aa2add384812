"""Pipeline configuration: the one place paths, names and settings are defined.

Every value can be overridden by an environment variable of the same name with
the `TOWER_RECS_` prefix, because the `tfx` CLI runs the runner file without
arguments (e.g. `TOWER_RECS_DATA=/data/ml make run`).
"""
from __future__ import annotations

import os

from trainer.model_config import ModelConfig

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOWER_RECS_{name}", default)


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.join(PROJECT_DIR, path))


PIPELINE_NAME = _env("PIPELINE_NAME", "tower-recs")
MODEL_NAME = _env("MODEL_NAME", "tower_recs")

# Data in the contract layout of `trainer/features.py` (see `data/prepare.py`).
DATA_PATH = _abs(_env("DATA", "data/sample"))
INTERACTIONS_PATH = os.path.join(DATA_PATH, "interactions")
ITEMS_PATH = os.path.join(DATA_PATH, "items")

OUTPUT_DIR = _abs(_env("OUTPUT_DIR", "outputs"))
PIPELINE_ROOT = _env("PIPELINE_ROOT", os.path.join(OUTPUT_DIR, "pipeline_root", PIPELINE_NAME))
METADATA_PATH = _env("METADATA_PATH", os.path.join(OUTPUT_DIR, "metadata", PIPELINE_NAME, "metadata.db"))
# Pusher writes <SERVING_MODEL_DIR>/<MODEL_NAME>/<version>/, the layout TF Serving watches.
SERVING_MODEL_DIR = _abs(_env("SERVING_MODEL_DIR", os.path.join(OUTPUT_DIR, "serving_model")))

INTERACTIONS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "interactions", "schema.pbtxt")
ITEMS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "items", "schema.pbtxt")

# Entry points passed to TFX as dotted paths of the installed package (no module packaging).
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"

TRAIN_STEPS = int(_env("TRAIN_STEPS", "0"))   # 0: train for ModelConfig.epochs
EVAL_STEPS = int(_env("EVAL_STEPS", "0"))

MODEL_CONFIG = ModelConfig(
    preprocess_handle=_abs(_env("PREPROCESS_HANDLE", "models/minilm/preprocess")),
    encoder_handle=_abs(_env("ENCODER_HANDLE", "models/minilm/encoder")),
    epochs=int(_env("EPOCHS", str(ModelConfig.epochs))),
)

# Beam runs in-process by default; on a cluster pass e.g. --runner=DataflowRunner.
BEAM_PIPELINE_ARGS = _env("BEAM_PIPELINE_ARGS", "--direct_running_mode=in_memory --direct_num_workers=1").split()
