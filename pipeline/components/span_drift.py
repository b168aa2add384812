"""SpanDriftValidator: TFDV drift comparators between the newest span and the span ingested before it.

TFX 1.16's ExampleValidator takes no previous statistics, and its DistributionValidator compares two
Examples artifacts of the same run. This component runs TFDV's own drift check,
`tfdv.validate_statistics(current, schema, previous_statistics=previous)`, with the schema's
`drift_comparator`s set from `DriftConfig` (L-infinity on user and item ids, Jensen-Shannon on rating).
The previous span's statistics come from the previous run's `SpanStatistics` artifact (a Resolver on
the latest one, TFX's stock LatestArtifactStrategy, so it compiles for Kubeflow too):

    previous = tfx.dsl.Resolver(strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
                                span_statistics=tfx.dsl.Channel(type=SpanStatistics)).with_id(...)
    drift = SpanDriftValidator(examples=example_gen.outputs["examples"], statistics=stats_gen.outputs["statistics"],
                               schema=schema_gen.outputs["schema"], previous=previous.outputs["span_statistics"],
                               config=DriftConfig().to_json())

Outputs: `anomalies` (ExampleAnomalies: TFDV's Anomalies proto in `Split-train/SchemaDiff.pb`, every
measurement in `drift.json`, read by the RunReport) and `span_statistics` (this span's train statistics,
and the baseline it was compared with, for the next run). With `DriftConfig.stop_on_drift` a drift
raises SpanDriftError, which fails the run before Transform: nothing is trained or pushed.
"""

import json
import os
from typing import Optional

from tfx import v1 as tfx
from tfx import types as tfx_types
from tfx.types import standard_artifacts

from pipeline.components.span_config import DriftConfig
from schema import contract

DRIFT_FILE = "drift.json"
_STATS_FILE = "FeatureStats.pb"
_ANOMALIES_FILE = "SchemaDiff.pb"
_CURRENT, _BASELINE = "current", "baseline"
# The split compared: what the model trains on.
SPLIT = contract.TRAIN_SPLIT


class SpanStatistics(tfx_types.Artifact):
    """One span's train statistics (`current/`) and those of the span it was compared with (`baseline/`).

    Custom properties: `span`, `baseline_span` (-1: none).
    """
    TYPE_NAME = "tower_recs.SpanStatistics"  # KFP v2 needs <namespace>.<TypeName>


class SpanDriftError(ValueError):
    """Raised when consecutive spans drift and `DriftConfig.stop_on_drift` is set."""


def _read_stats(path: str):
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx.dsl.io import fileio

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with fileio.open(path, "rb") as f:
        stats.ParseFromString(f.read())
    return stats


def _write(path: str, data: bytes) -> None:
    from tfx.dsl.io import fileio

    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "wb") as f:
        f.write(data)


def compare(current, baseline, schema, config: DriftConfig) -> tuple[object, list[dict]]:
    """TFDV's drift check of `current` against `baseline` statistics (DatasetFeatureStatisticsList).

    Returns:
      (the Anomalies proto with only the drift anomalies, one row per comparator:
       {"feature", "comparator", "value", "threshold", "drift"}).
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

    schema = schema_pb2.Schema.FromString(schema.SerializeToString())
    comparators = config.comparators()
    for feature, (kind, threshold) in comparators.items():
        getattr(tfdv.get_feature(schema, feature).drift_comparator, kind).threshold = threshold
    anomalies = tfdv.validate_statistics(current, schema, previous_statistics=baseline)
    # Schema anomalies are the ExampleValidator's and the AnomalyGate's business: keep the drift ones.
    drift_types = {anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                   anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH}
    for feature in list(anomalies.anomaly_info):
        reasons = [r for r in anomalies.anomaly_info[feature].reason if r.type in drift_types]
        if reasons:
            del anomalies.anomaly_info[feature].reason[:]
            anomalies.anomaly_info[feature].reason.extend(reasons)
        else:
            del anomalies.anomaly_info[feature]
    anomalies.ClearField("dataset_anomaly_info")
    rows = []
    for info in anomalies.drift_skew_info:
        feature = info.path.step[-1]
        for measurement in info.drift_measurements:
            rows.append({"feature": feature, "comparator": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(
                measurement.type).lower(), "value": float(measurement.value),
                "threshold": float(measurement.threshold), "drift": feature in anomalies.anomaly_info})
    return anomalies, sorted(rows, key=lambda r: r["feature"])


def _baseline(previous: Optional[SpanStatistics], span: int) -> tuple[int, Optional[str]]:
    """(span, FeatureStats.pb path) to compare span `span` with; (-1, None) when there is none.

    The previous run's span if it is older; when the previous run ingested this same span (a rerun),
    the span that run compared with; nothing for an older span than the previous run's (a backfill).
    """
    if previous is None:
        return -1, None
    previous_span = previous.get_int_custom_property("span")
    if previous_span < span:
        return previous_span, os.path.join(previous.uri, _CURRENT, _STATS_FILE)
    baseline_span = previous.get_int_custom_property("baseline_span")
    if previous_span == span and 0 <= baseline_span < span:
        return baseline_span, os.path.join(previous.uri, _BASELINE, _STATS_FILE)
    return -1, None


@tfx.dsl.components.component
def SpanDriftValidator(
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    statistics: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.InputArtifact[standard_artifacts.Schema],
    anomalies: tfx.dsl.components.OutputArtifact[standard_artifacts.ExampleAnomalies],
    span_statistics: tfx.dsl.components.OutputArtifact[SpanStatistics],
    previous: tfx.dsl.components.InputArtifact[SpanStatistics] = None,
    config: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Compares this span's train statistics with the previous span's; raises SpanDriftError on drift
    when `config` (DriftConfig JSON) says `stop_on_drift`. `examples`: the ExampleGen output the
    statistics describe (it carries the span)."""
    from absl import logging
    from tfx.types import artifact_utils
    from tfx.utils import io_utils

    cfg = DriftConfig.from_json(config)
    from pipeline.components.span_window import span_of

    span = span_of(examples)
    current_path = os.path.join(statistics.uri, f"Split-{SPLIT}", _STATS_FILE)
    baseline_span, baseline_path = _baseline(previous, span)
    _write(os.path.join(span_statistics.uri, _CURRENT, _STATS_FILE), _read_stats(current_path).SerializeToString())
    span_statistics.set_int_custom_property("span", span)
    span_statistics.set_int_custom_property("baseline_span", baseline_span)
    result = {"span": span, "baseline_span": baseline_span if baseline_path else None, "split": SPLIT,
              "config": json.loads(cfg.to_json()), "comparisons": [], "drifted": []}
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = anomalies_pb2.Anomalies()
    if baseline_path:
        baseline = _read_stats(baseline_path)
        _write(os.path.join(span_statistics.uri, _BASELINE, _STATS_FILE), baseline.SerializeToString())
        schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
        found, rows = compare(_read_stats(current_path), baseline, schema_proto, cfg)
        result["comparisons"] = rows
        result["drifted"] = sorted({r["feature"] for r in rows if r["drift"]})
    anomalies.split_names = artifact_utils.encode_split_names([SPLIT])
    _write(os.path.join(anomalies.uri, f"Split-{SPLIT}", _ANOMALIES_FILE), found.SerializeToString())
    _write(os.path.join(anomalies.uri, DRIFT_FILE), json.dumps(result, indent=2).encode())
    anomalies.set_int_custom_property("span", span)
    anomalies.set_int_custom_property("drift", len(result["drifted"]))
    message = describe(result)
    logging.info("SpanDriftValidator: %s", message)
    if result["drifted"] and cfg.stop_on_drift:
        raise SpanDriftError(f"{message}; nothing was trained or pushed (DriftConfig.stop_on_drift, "
                             "TOWER_RECS_DRIFT_STOP_ON_DRIFT)")


def describe(result: dict) -> str:
    """One line for a drift.json, e.g. "span 3 vs span 2: drift in item_id (infinity_norm 0.41 > 0.05)"."""
    if result.get("baseline_span") is None:
        return f"span {result['span']}: no earlier span ingested before it, nothing to compare"
    head = f"span {result['span']} vs span {result['baseline_span']}"
    drifted = [r for r in result["comparisons"] if r["drift"]]
    if not drifted:
        return f"{head}: no drift (" + ", ".join(
            f"{r['feature']} {r['comparator']} {r['value']:.3g} <= {r['threshold']:.3g}"
            for r in result["comparisons"] if r["threshold"] > 0) + ")"
    return f"{head}: drift in " + ", ".join(
        f"{r['feature']} ({r['comparator']} {r['value']:.3g} > {r['threshold']:.3g})" for r in drifted)
