"""Stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets downstream components run. Transform
and the Trainer are made to depend on this gate, so bad data stops the run before
anything is trained or pushed, with a message that names each column and problem.
"""

import os

import apache_beam as beam
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

_ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomalyError(ValueError):
    """Raised when input data violates the schema."""


def read_anomalies(artifact: tfx.types.standard_artifacts.ExampleAnomalies) -> "list[str]":
    """Returns one readable line per anomaly, e.g. "train: column 'timestamp': Out-of-range values"."""
    problems = []
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact.uri, f"Split-{split}", _ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for column, info in sorted(anomalies.anomaly_info.items()):
            details = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
            problems.append(f"{split}: column '{column}': {details}")
        if anomalies.HasField("dataset_anomaly_info"):
            details = "; ".join(
                f"{r.short_description}: {r.description}" for r in anomalies.dataset_anomaly_info.reason)
            problems.append(f"{split}: dataset: {details}")
    return problems


# -- checks a schema cannot express: a Beam job over the ExampleGen outputs (data_checks.py) ---------
def check_examples(interactions, items, beam_pipeline=None, **kwargs) -> "list[str]":
    """Referential integrity, duplicates, UTF-8 and row rules of the ExampleGen outputs, one line per problem.

    Args:
      interactions, items: the ExampleGen output artifacts.
      beam_pipeline: the Beam pipeline to run the checks in (None: a local one).
      **kwargs: `data_checks.build_checks`' splits and schemas.

    Returns:
      Readable problems, e.g. "interactions train: column 'item_id': 2 item id(s) outside the domain ...";
      empty when the data is fine.
    """
    from pipeline.components.data_checks import run_checks

    try:
        return run_checks(interactions, items, beam_pipeline=beam_pipeline, **kwargs)
    except Exception as e:  # noqa: BLE001  (typically values of the wrong type, which the schema check names)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [f"dataset: the examples do not match the schema, so the row checks could not run: "
                f"{type(e).__name__}: {first_line[:500]}"]


@tfx.dsl.components.component(use_beam=True)
def AnomalyGate(
    interaction_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    item_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    interactions: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
    items: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Raises DataAnomalyError listing every anomaly in interactions and items.

    With `interactions` and `items` (the ExampleGen outputs) it also checks what the schema cannot:
    interaction item ids outside the catalogue, duplicated rows / item ids, invalid UTF-8, and the row rules
    `data.prepare` applies (`data/rules.py`: blank or malformed ids, blank titles, timestamps out of range),
    as a Beam job with the pipeline's `beam_pipeline_args` (`data_checks.py`).
    """
    problems = [f"interactions {p}" for p in read_anomalies(interaction_anomalies)]
    problems += [f"items {p}" for p in read_anomalies(item_anomalies)]
    if interactions is not None and items is not None:
        problems += check_examples(interactions, items, beam_pipeline=beam_pipeline)
    if problems:
        raise DataAnomalyError(
            "Input data failed validation; nothing was trained or pushed:\n  " + "\n  ".join(problems))
