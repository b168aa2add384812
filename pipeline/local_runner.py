"""Runs the pipeline on this machine with LocalDagRunner (ML Metadata in SQLite).

Used by the `tfx` CLI (`tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py`,
then `tfx run create --engine local --pipeline_name tower-recs`) and runnable directly:
`python -m pipeline.local_runner`. Settings come from `pipeline/configs.py`.
"""
import os
import sys

# The tfx CLI runs this file as a script: make the project importable and Keras 2 the default.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import logging  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from pipeline import configs  # noqa: E402
from pipeline.pipeline import create_pipeline  # noqa: E402


def build() -> tfx.dsl.Pipeline:
    """The local pipeline: configs.py settings, SQLite metadata."""
    return create_pipeline(
        pipeline_name=configs.PIPELINE_NAME,
        pipeline_root=configs.PIPELINE_ROOT,
        interactions_path=configs.INTERACTIONS_PATH,
        items_path=configs.ITEMS_PATH,
        interactions_schema_path=configs.INTERACTIONS_SCHEMA,
        items_schema_path=configs.ITEMS_SCHEMA,
        serving_model_dir=os.path.join(configs.SERVING_MODEL_DIR, configs.MODEL_NAME),
        preprocessing_fn=configs.PREPROCESSING_FN,
        run_fn=configs.RUN_FN,
        model_config=configs.MODEL_CONFIG,
        train_steps=configs.TRAIN_STEPS,
        eval_steps=configs.EVAL_STEPS,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            configs.METADATA_PATH),
        beam_pipeline_args=configs.BEAM_PIPELINE_ARGS,
    )


def run() -> None:
    logging.set_verbosity(logging.INFO)
    tfx.orchestration.LocalDagRunner().run(build())


if __name__ == "__main__":
    run()
