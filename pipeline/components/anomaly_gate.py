"""Stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets downstream components run. Transform
and the Trainer are made to depend on this gate, so bad data stops the run before
anything is trained or pushed, with a message that names each column and problem.
"""

import os

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


@tfx.dsl.components.component
def AnomalyGate(
    interaction_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    item_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> None:
    """Raises DataAnomalyError listing every anomaly in interactions and items."""
    problems = [f"interactions {p}" for p in read_anomalies(interaction_anomalies)]
    problems += [f"items {p}" for p in read_anomalies(item_anomalies)]
    if problems:
        raise DataAnomalyError(
            "Input data failed validation; nothing was trained or pushed:\n  " + "\n  ".join(problems))
