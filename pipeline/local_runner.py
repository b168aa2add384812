"""Runs the pipeline on this machine with LocalDagRunner (ML Metadata in SQLite).

Used by the `tfx` CLI (`tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py`,
then `tfx run create --engine local --pipeline_name tower-recs`) and runnable directly:
`python -m pipeline.local_runner`. Settings come from `pipeline/configs.py`.
"""
import os
import sys


def build():
    """The local pipeline (a `tfx.dsl.Pipeline`): configs.py settings, SQLite metadata."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline.pipeline import create_pipeline

    return create_pipeline(
        **configs.pipeline_kwargs(),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            configs.METADATA_PATH))


def run() -> None:
    """Builds the pipeline and runs it to completion with `LocalDagRunner`."""
    from absl import logging
    from tfx import v1 as tfx

    logging.set_verbosity(logging.INFO)
    tfx.orchestration.LocalDagRunner().run(build())


if __name__ == "__main__":
    # The tfx CLI runs this file by path, with pipeline/ first on sys.path (where pipeline.py would
    # shadow the package): put the project first. Importing the package selects Keras 2 before
    # TFX imports TensorFlow.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pipeline  # noqa: F401

    run()
