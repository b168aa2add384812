"""Pipeline configuration: the one place paths, names and settings are defined.

The `tfx` CLI runs the runner file without arguments, so every value here is set from the
environment (`pipeline/overrides.py`):

  TOWER_RECS_<NAME>                  the settings below, e.g. `TOWER_RECS_DATA=/data/ml make run`
  TOWER_RECS_MODEL_<FIELD>           any `ModelConfig` field, e.g. TOWER_RECS_MODEL_EPOCHS=2
  TOWER_RECS_EVAL_<FIELD>            any `EvaluationConfig` field (RetrievalEvaluator)
  TOWER_RECS_SERVING_CHECK_<FIELD>   any `ServingCheckConfig` field (ServingCheck)
  TOWER_RECS_SKEW_<FIELD>            any `SkewConfig` field (TrainingServingSkew), e.g. _ACTION=stop
  TOWER_RECS_SPAN_<FIELD>            any `SpanConfig` field (spanned data: latest/pinned span, window)
  TOWER_RECS_DRIFT_<FIELD>           any `DriftConfig` field (drift between consecutive spans)
  TOWER_RECS_BEAM_RUNNER             direct | dataflow | flink | spark (pipeline/beam_runners.py)

`pipeline_kwargs()` turns them into the arguments of `pipeline.create_pipeline`, for the local
and the Kubeflow runner alike.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from pipeline import beam_runners
from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig
from pipeline.components.skew_config import SkewConfig
from pipeline.components.span_config import DriftConfig, SpanConfig
from pipeline.overrides import env, from_env
from schema import contract
from trainer.model_config import ModelConfig

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reject_renamed() -> None:
    """Settings that became config fields: their old names, still set, would be ignored without a word."""
    renamed = {"EPOCHS": "MODEL_EPOCHS", "PREPROCESS_HANDLE": "MODEL_PREPROCESS_HANDLE",
               "ENCODER_HANDLE": "MODEL_ENCODER_HANDLE", "SERVING_LATENCY_CALLS": "SERVING_CHECK_LATENCY_CALLS",
               "SERVING_MAX_P99_MS": "SERVING_CHECK_MAX_P99_MS"}
    for old, new in renamed.items():
        if env(old) is not None:
            raise ValueError(f"TOWER_RECS_{old} is now TOWER_RECS_{new}")


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.join(PROJECT_DIR, path))


def ingested_interactions(interactions_path: str, span_config: SpanConfig) -> str:
    """The folder this run's InteractionExampleGen reads: with spans the pinned or the latest `span-<N>` (a daily
    run ingests one small span of a large history), else the whole interactions folder."""
    import tensorflow as tf  # gfile: local paths and gs:// alike

    numbers = {}
    for path in tf.io.gfile.glob(os.path.join(interactions_path, contract.SPAN_PREFIX + "*")):
        suffix = os.path.basename(path.rstrip("/"))[len(contract.SPAN_PREFIX):]
        if suffix.isdigit():
            numbers[int(suffix)] = path
    if span_config.layout == "flat" or not numbers:
        return interactions_path
    latest = numbers[max(numbers)]
    return numbers.get(span_config.pin, latest) if span_config.pin else latest


def _megabytes(name: str, default: str) -> float:
    """A size setting in MB: a number >= 0 or "inf"; anything else is an error naming the variable."""
    text = env(name, default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:    # also NaN
        raise ValueError(f"TOWER_RECS_{name}={text!r}: expected a size in MB (a number >= 0, or inf)")
    return value


_reject_renamed()
PIPELINE_NAME = env("PIPELINE_NAME", "tower-recs")
# The served model's name (TF Serving's model_name): a pipeline setting, not a ModelConfig field.
MODEL_NAME = env("MODEL_NAME", "tower_recs")

# Data in the contract layout of `schema/contract.py` (see `data/prepare.py`).
DATA_PATH = _abs(env("DATA", "data/sample"))
INTERACTIONS_PATH = os.path.join(DATA_PATH, contract.INTERACTIONS_DIR)
ITEMS_PATH = os.path.join(DATA_PATH, contract.ITEMS_DIR)
# Spanned interactions (interactions/span-<N>/, `--spans` of data.sample|movielens|prepare): the latest span
# (or TOWER_RECS_SPAN_PIN=N), a window of the last TOWER_RECS_SPAN_WINDOW spans for training, and the drift
# check between consecutive spans (warns; TOWER_RECS_DRIFT_STOP_ON_DRIFT=1 stops the run).
SPAN_CONFIG = from_env(SpanConfig(), "SPAN")
DRIFT_CONFIG = from_env(DriftConfig(), "DRIFT")

OUTPUT_DIR = _abs(env("OUTPUT_DIR", "outputs"))
PIPELINE_ROOT = env("PIPELINE_ROOT", os.path.join(OUTPUT_DIR, "pipeline_root", PIPELINE_NAME))
METADATA_PATH = env("METADATA_PATH", os.path.join(OUTPUT_DIR, "metadata", PIPELINE_NAME, "metadata.db"))
# Pusher writes <SERVING_MODEL_DIR>/<MODEL_NAME>/<version>/, the layout TF Serving watches.
SERVING_MODEL_DIR = _abs(env("SERVING_MODEL_DIR", os.path.join(OUTPUT_DIR, "serving_model")))
# Run reports: <REPORTS_DIR>/latest.html (+ latest.json); each run's report is also an artifact.
REPORTS_DIR = _abs(env("REPORTS_DIR", os.path.join(OUTPUT_DIR, "reports")))

INTERACTIONS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "interactions", "schema.pbtxt")
ITEMS_SCHEMA = os.path.join(PROJECT_DIR, "schema", "items", "schema.pbtxt")

# Entry points passed to TFX as dotted paths of the installed package (no module packaging).
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.run_fn.run_fn"

# The Trainer's TrainArgs / EvalArgs num_steps (0: ModelConfig.epochs over the data). EVAL_STEPS is
# a pipeline setting, not an EvaluationConfig field.
TRAIN_STEPS = int(env("TRAIN_STEPS", "0"))
EVAL_STEPS = int(env("EVAL_STEPS", "0"))

# Every hyperparameter: ModelConfig's defaults, TOWER_RECS_MODEL_<FIELD> overrides; TF Hub handles
# that are local paths are taken relative to the project.
_model = from_env(ModelConfig(), "MODEL", not_fields=("NAME",))
MODEL_CONFIG = dataclasses.replace(_model, preprocess_handle=_abs(_model.preprocess_handle),
                                   encoder_handle=_abs(_model.encoder_handle))

# GPUs for the Trainer: >0 requests them (KFP resource spec, Vertex machine spec, TFJob) and makes a run
# that sees none fail (ModelConfig.require_gpu; TOWER_RECS_MODEL_REQUIRE_GPU=0 trains on CPU anyway).
# TRAINER_ACCELERATOR: Vertex's accelerator type, or "nvidia.com/gpu" for open-source Kubeflow.
TRAINER_GPUS = int(env("TRAINER_GPUS", "0"))
TRAINER_ACCELERATOR = env("TRAINER_ACCELERATOR", "NVIDIA_TESLA_T4")
if TRAINER_GPUS > 0 and env("MODEL_REQUIRE_GPU") is None:
    MODEL_CONFIG = dataclasses.replace(MODEL_CONFIG, require_gpu=True)

# Beam's DirectRunner: one in-process worker by default. One worker process per core for *every* Beam component
# gained 3% on the whole 1.5M run for twice the peak RSS (scaling_1.5M_options.md: the item-sized jobs and the
# CatalogEmbedder lost), so that is opt-in: TOWER_RECS_BEAM_PIPELINE_ARGS="<EVERY_CORE_BEAM_PIPELINE_ARGS>".
# TOWER_RECS_BEAM_PIPELINE_ARGS replaces the default, e.g. with those or --runner=DataflowRunner ...
SINGLE_WORKER_BEAM_PIPELINE_ARGS = "--direct_running_mode=in_memory --direct_num_workers=1"
EVERY_CORE_BEAM_PIPELINE_ARGS = "--direct_running_mode=multi_processing --direct_num_workers=0"
DEFAULT_BEAM_PIPELINE_ARGS = SINGLE_WORKER_BEAM_PIPELINE_ARGS
BEAM_PIPELINE_ARGS = env("BEAM_PIPELINE_ARGS", DEFAULT_BEAM_PIPELINE_ARGS).split()
# TOWER_RECS_BEAM_RUNNER=dataflow|flink|spark replaces those with the cluster runner's args, validated here.
BEAM_PIPELINE_ARGS = beam_runners.beam_pipeline_args(default_args=BEAM_PIPELINE_ARGS)
# Except for the Beam components that read every interaction (InteractionExampleGen, InteractionStatisticsGen,
# TrainingServingSkew, AnomalyGate, Transform): once the interactions this run ingests (with spans: its span) reach
# EVERY_CORE_MIN_INTERACTIONS_MB on disk, those get a worker process per core. Measured in one session on 2 cores
# (benchmarks/results/scaling_interaction_cores.md): at 1.5M interactions (204 MB) 1.24-1.60x each, 347 -> 253 s for
# the five (two runs each); at 150k (18 MB) 0.33-0.58x (each worker process imports TensorFlow: ~9-29 s per job).
# Fitting a start-up cost and a speed-up per job to the two sizes puts the break-even at 78-115 MB; hence 128. The
# item-sized jobs and the CatalogEmbedder (whose TensorFlow already runs every core; 0.83x with two encoder
# processes) keep the default above. Threads instead of processes (multi_threading) were slower and the
# AnomalyGate's job grew to 23.6 GB until the OOM killer stopped it. Up to EVERY_CORE_MAX_INTERACTIONS_MB only:
# ExampleGen's shuffle holds a whole split in the DirectRunner's memory (one worker: 3.3 GB at 204 MB, 7.2 GB at 809
# MB / 5M), and worker processes add their own heaps (+2.3 GB at 204 MB); at 5M the tree passed 8.9 GB inside
# ExampleGen (stopped; scaling_5M_interaction_cores_rss.csv), over the 8 GB this project budgets. The two sizes'
# line puts that budget at ~600 MB; 384 leaves room. Data past it wants more memory or a cluster runner
# (TOWER_RECS_BEAM_RUNNER). Only for the direct runner with its default args (TOWER_RECS_BEAM_PIPELINE_ARGS unset);
# a minimum of "inf" turns it off; TOWER_RECS_LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS sets what those jobs get instead
# of a process per core.
EVERY_CORE_MIN_INTERACTIONS_MB = _megabytes("EVERY_CORE_MIN_INTERACTIONS_MB", "128")
EVERY_CORE_MAX_INTERACTIONS_MB = _megabytes("EVERY_CORE_MAX_INTERACTIONS_MB", "384")
LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS = env("LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS", EVERY_CORE_BEAM_PIPELINE_ARGS)
INTERACTION_BEAM_PIPELINE_ARGS = (
    LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS.split()
    if env("BEAM_PIPELINE_ARGS") is None and beam_runners.runner_name() == "direct"
    and EVERY_CORE_MIN_INTERACTIONS_MB
    <= beam_runners.megabytes_under(ingested_interactions(INTERACTIONS_PATH, SPAN_CONFIG))
    <= EVERY_CORE_MAX_INTERACTIONS_MB else [])

# -- Gates before Pusher (pipeline/components/retrieval_evaluator.py, serving_check.py) ------------
# RetrievalEvaluator: full-catalogue Recall/NDCG@K against absolute minimums and the latest blessed model.
EVALUATION_CONFIG = from_env(EvaluationConfig(), "EVAL", not_fields=("STEPS",))
# ServingCheck: loads the model in a TF + TF Text only process (ops, signatures, warmup, latency).
SERVING_CHECK_CONFIG = from_env(ServingCheckConfig(), "SERVING_CHECK")
# "" (default): ServingCheck. "docker" / "kubernetes": TFX's stock InfraValidator starting
# tensorflow/serving:<TF_SERVING_TAG> (needs a Docker engine or a cluster; not available here).
INFRA_VALIDATOR = env("INFRA_VALIDATOR", "")
TF_SERVING_TAG = env("TF_SERVING_TAG", "2.16.1")

# -- Training/serving skew (pipeline/components/skew_check.py) --------------------------------------
# The server's request log (python -m serving.server --request_log_dir ...): TFDV compares its requests
# with the training interactions. "" (default): the comparison is skipped, and the run report says so.
REQUEST_LOG_DIR = _abs(env("REQUEST_LOG_DIR")) if env("REQUEST_LOG_DIR") else ""
# Thresholds (L-infinity on user ids and history item ids) and the action on skew: warn (default) | stop.
SKEW_CONFIG = from_env(SkewConfig(), "SKEW")


def pipeline_kwargs() -> dict[str, Any]:
    """The arguments of `pipeline.create_pipeline(...)` these settings give, for a local run.

    The local runner adds its SQLite metadata config; the Kubeflow runner replaces the paths
    with bucket URIs and paths inside its image.

        pipeline = create_pipeline(**pipeline_kwargs(), metadata_connection_config=...)
    """
    return dict(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=PIPELINE_ROOT,
        interactions_path=INTERACTIONS_PATH,
        items_path=ITEMS_PATH,
        interactions_schema_path=INTERACTIONS_SCHEMA,
        items_schema_path=ITEMS_SCHEMA,
        serving_model_dir=os.path.join(SERVING_MODEL_DIR, MODEL_NAME),
        preprocessing_fn=PREPROCESSING_FN,
        run_fn=RUN_FN,
        model_config=MODEL_CONFIG,
        train_steps=TRAIN_STEPS,
        eval_steps=EVAL_STEPS,
        beam_pipeline_args=list(BEAM_PIPELINE_ARGS),
        interaction_beam_pipeline_args=list(INTERACTION_BEAM_PIPELINE_ARGS),
        evaluation_config=EVALUATION_CONFIG,
        serving_check_config=SERVING_CHECK_CONFIG,
        infra_validator=INFRA_VALIDATOR,
        tf_serving_tag=TF_SERVING_TAG,
        report_dir=REPORTS_DIR,
        request_log_dir=REQUEST_LOG_DIR,
        skew_config=SKEW_CONFIG,
        span_config=SPAN_CONFIG,
        drift_config=DRIFT_CONFIG,
    )
