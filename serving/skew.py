"""Training/serving skew: TFDV statistics of the logged requests compared with the training data's.

Both sides are put in one "request view", the features a query carries, so TFDV compares like with like:

  user_id         the user of a query row (training: of an interaction row)
  history         the item ids of the query's history, the last `contract.HISTORY_LENGTH` (pads dropped;
                  training: the interaction's space-separated `history` split into ids)
  history_length  how many there are

Requests come from the server's request log (``serving.request_log``: TFRecord files of PredictionLog; the
``serving_default``/``query_embedding`` inputs or ``serve_tf_examples``' tf.Examples), read as a stream
by Beam (``ReadAllFromTFRecord``) and turned into Arrow RecordBatches a batch of records at a time;
the training side is the interactions' train split through the one ExampleGen reader. TFDV's
``GenerateStatistics`` computes both, and ``tfdv.validate_statistics(training, schema,
serving_statistics=requests)`` applies the schema's ``skew_comparator``s (L-infinity on user ids and
history item ids; thresholds from ``SkewConfig``).

For operators between pipeline runs:

    python -m serving.skew --request-log outputs/request_log \\
        --statistics outputs/pipeline_root/tower-recs/TrainingServingSkew/statistics   [--schema S.pbtxt]

prints the measurements and anomalies; exit status 1 on skew, 0 without, 2 when it cannot compare.
``--statistics`` takes the training statistics the pipeline's TrainingServingSkew step writes (its
newest run under that folder, a ``Split-train`` folder, or a ``FeatureStats.pb``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.components.skew_config import SkewConfig
from schema import contract
from serving import request_log

HISTORY_LENGTH = "history_length"
REQUEST_FEATURES = (contract.USER_ID, contract.HISTORY, HISTORY_LENGTH)
TRAIN, SERVING = "train", "serving"
STATS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "SchemaDiff.pb"
RESULT_FILE = "skew.json"
# A value's share is compared over TFDV's rank histogram: this many most frequent values per side.
RANK_HISTOGRAM_BUCKETS = 10_000
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


# -- the request view ----------------------------------------------------------------------------
def _record_batch(users: Sequence[np.ndarray], histories: Sequence[np.ndarray], masks: Sequence[np.ndarray]
                  ) -> pa.RecordBatch:
    """Request-view RecordBatch of per-record blocks: user ids [B], histories [B, H], kept-item masks [B, H]."""
    user = np.concatenate(users) if users else np.zeros([0], object)
    lengths = np.concatenate([m.sum(axis=1) for m in masks]).astype(np.int64) if masks else np.zeros([0], np.int64)
    items = np.concatenate([h[m] for h, m in zip(histories, masks)]) if masks else np.zeros([0], object)
    one = np.arange(len(user) + 1, dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.RecordBatch.from_arrays([
        pa.ListArray.from_arrays(pa.array(one), pa.array(user.tolist(), pa.binary())),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(items.tolist(), pa.binary())),
        pa.ListArray.from_arrays(pa.array(one), pa.array(lengths)),
    ], names=list(REQUEST_FEATURES))


def _last_items(history: np.ndarray) -> np.ndarray:
    """Mask of the non-pad entries among each row's last HISTORY_LENGTH ones (the items the model uses)."""
    present = history != contract.PAD.encode()
    from_right = np.cumsum(present[:, ::-1], axis=1)[:, ::-1]
    return present & (from_right <= contract.HISTORY_LENGTH)


def _query_rows(entry) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(user ids [B], histories [B, H]) of one PredictionLog; None for requests that are not queries."""
    import tensorflow as tf

    if entry.WhichOneof("log_type") != "predict_log":
        return None
    inputs = entry.predict_log.request.inputs
    if contract.INPUT_EXAMPLES in inputs:          # serve_tf_examples: tf.Examples with the CSV's columns
        users, histories = [], []
        for serialized in tf.make_ndarray(inputs[contract.INPUT_EXAMPLES]).reshape([-1]):
            features = tf.train.Example.FromString(serialized).features.feature
            users.append(b"".join(features[contract.USER_ID].bytes_list.value[:1]))
            histories.append(b" ".join(features[contract.HISTORY].bytes_list.value).split())
        width = max((len(h) for h in histories), default=0)
        padded = np.full([len(histories), width], contract.PAD.encode(), object)
        for row, items in enumerate(histories):
            padded[row, width - len(items):] = items
        return np.asarray(users, object), padded
    if contract.USER_ID not in inputs:
        return None
    users = tf.make_ndarray(inputs[contract.USER_ID]).reshape([-1])
    if contract.HISTORY in inputs:
        history = tf.make_ndarray(inputs[contract.HISTORY]).reshape([len(users), -1])
    else:
        history = np.zeros([len(users), 0], object)
    return users.astype(object), history.astype(object)


def request_view_of_logs(records: Iterable[bytes]) -> pa.RecordBatch:
    """One request-view RecordBatch of serialized PredictionLogs (one row per query row of a request)."""
    from tensorflow_serving.apis import prediction_log_pb2

    users, histories, masks = [], [], []
    for record in records:
        rows = _query_rows(prediction_log_pb2.PredictionLog.FromString(record))
        if rows is not None:
            users.append(rows[0])
            histories.append(rows[1])
            masks.append(_last_items(rows[1]))
    return _record_batch(users, histories, masks)


def request_view_of_examples(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The request view of interaction RecordBatches (the ExampleGen reader's: one list value per row)."""
    from pipeline.example_reader import first_values

    user = first_values(batch.column(batch.schema.get_field_index(contract.USER_ID)))
    index = batch.schema.get_field_index(contract.HISTORY)
    if index < 0:
        text = pa.array([b""] * batch.num_rows, pa.binary())
    else:
        text = pa.array(first_values(batch.column(index)).tolist(), pa.binary()).fill_null(b"")
    split = pc.utf8_split_whitespace(text.cast(pa.string()))
    # "" and leading/trailing blanks split into empty strings: drop them, as the model drops pads.
    tokens, rows = pc.list_flatten(split), pc.list_parent_indices(split)
    keep = pc.greater(pc.utf8_length(tokens), 0)
    lengths = np.bincount(rows.filter(keep).to_numpy(), minlength=batch.num_rows).astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    one = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
    return pa.RecordBatch.from_arrays([
        pa.ListArray.from_arrays(one, pa.array(user.tolist(), pa.binary())),
        pa.ListArray.from_arrays(offsets, tokens.filter(keep).cast(pa.binary())),
        pa.ListArray.from_arrays(one, pa.array(lengths)),
    ], names=list(REQUEST_FEATURES))


# -- statistics ----------------------------------------------------------------------------------
def recent_log_files(path: str, max_age_hours: float = 0.0, now: Optional[float] = None) -> list[str]:
    """Closed request-log files under `path` (a directory, filename prefix or glob), newer than max_age_hours."""
    cutoff = (now or time.time()) - max_age_hours * 3600 if max_age_hours > 0 else float("-inf")
    return [f for f, mtime in request_log.log_files(path) if mtime >= cutoff]


def _stats_options():
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(num_rank_histogram_buckets=RANK_HISTOGRAM_BUCKETS, num_top_values=20)


def compute_statistics(out_dir: str, log_files: Sequence[str], training_pattern: Optional[str] = None,
                       beam_pipeline=None) -> dict[str, str]:
    """Request-view statistics of the logs (and of the training examples), one Beam job; {split: path}.

    Writes `<out_dir>/Split-serving/FeatureStats.pb` (and `Split-train/`), the ExampleStatistics layout.
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv

    from pipeline import example_reader

    paths = {}
    if not training_pattern and not log_files:
        return paths
    pipeline = beam_pipeline or beam.Pipeline(argv=list(LOCAL_BEAM_ARGS))
    with pipeline as p:
        if training_pattern:
            paths[TRAIN] = os.path.join(out_dir, f"Split-{TRAIN}", STATS_FILE)
            _ = (p | "ReadTraining" >> example_reader.beam_source(training_pattern, example_reader.INTERACTIONS_SCHEMA)
                 | "TrainingView" >> beam.Map(request_view_of_examples)
                 | "TrainingStats" >> tfdv.GenerateStatistics(_stats_options())
                 | "WriteTraining" >> tfdv.WriteStatisticsToBinaryFile(paths[TRAIN]))
        if log_files:
            paths[SERVING] = os.path.join(out_dir, f"Split-{SERVING}", STATS_FILE)
            _ = (p | "LogFiles" >> beam.Create(list(log_files))
                 | "ReadLogs" >> beam.io.ReadAllFromTFRecord()
                 | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
                 | "RequestView" >> beam.Map(request_view_of_logs)
                 | "ServingStats" >> tfdv.GenerateStatistics(_stats_options())
                 | "WriteServing" >> tfdv.WriteStatisticsToBinaryFile(paths[SERVING]))
    return paths


def load_training_statistics(path: str):
    """Request-view training statistics from a FeatureStats.pb, a Split-train folder or a component's output."""
    import tensorflow_data_validation as tfdv

    candidates = [path, os.path.join(path, STATS_FILE), os.path.join(path, f"Split-{TRAIN}", STATS_FILE)]
    if os.path.isdir(path):                       # <component>/statistics/<execution id>/Split-train/...
        runs = sorted((d for d in os.listdir(path) if d.isdigit()), key=int, reverse=True)
        candidates += [os.path.join(path, d, f"Split-{TRAIN}", STATS_FILE) for d in runs]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise FileNotFoundError(f"no training statistics at {path} (expected a {STATS_FILE}, a Split-{TRAIN} "
                                f"folder or the TrainingServingSkew component's statistics folder)")
    stats = tfdv.load_stats_binary(found)
    names = {f.path.step[-1] for f in stats.datasets[0].features if f.path.step} if stats.datasets else set()
    if HISTORY_LENGTH not in names:
        raise ValueError(f"{found} are not request-view statistics (no {HISTORY_LENGTH!r} feature; StatisticsGen's "
                         f"have the raw history strings): pass the TrainingServingSkew step's statistics")
    return stats


# -- comparison ----------------------------------------------------------------------------------
def skew_schema(config: SkewConfig):
    """The request view's schema with TFDV skew comparators at `config`'s thresholds (0: not compared)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for name, kind in ((contract.USER_ID, schema_pb2.BYTES), (contract.HISTORY, schema_pb2.BYTES),
                       (HISTORY_LENGTH, schema_pb2.INT)):
        schema.feature.add(name=name, type=kind)
    features = {f.name: f for f in schema.feature}
    if config.user_id_linf:
        features[contract.USER_ID].skew_comparator.infinity_norm.threshold = config.user_id_linf
    if config.history_item_linf:
        features[contract.HISTORY].skew_comparator.infinity_norm.threshold = config.history_item_linf
    if config.history_length_jsd:
        features[HISTORY_LENGTH].skew_comparator.jensen_shannon_divergence.threshold = config.history_length_jsd
    return schema


def compare(training_stats, serving_stats, schema) -> tuple[list[str], list[dict], object]:
    """(anomaly lines, measurements, Anomalies proto) of `tfdv.validate_statistics` with the serving stats."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    anomalies = tfdv.validate_statistics(training_stats, schema, serving_statistics=serving_stats)
    lines = []
    for name, info in sorted(anomalies.anomaly_info.items()):
        lines.append(f"{name}: " + "; ".join(r.description or r.short_description for r in info.reason))
    measurements = []
    for info in anomalies.drift_skew_info:
        for m in info.skew_measurements:
            measurements.append({"feature": ".".join(info.path.step), "comparator":
                                 anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type),
                                 "value": float(m.value), "threshold": float(m.threshold)})
    return lines, measurements, anomalies


def _num_examples(stats) -> int:
    return int(stats.datasets[0].num_examples) if stats.datasets else 0


def check(out_dir: str, request_log_path: str, config: SkewConfig, training_pattern: Optional[str] = None,
          training_stats=None, beam_pipeline=None) -> dict:
    """Statistics of both sides and the skew comparison; writes them under `out_dir` and returns the result.

    The result (also `<out_dir>/skew.json`): {"status": "checked" | "skipped", "reason", "skewed",
    "anomalies": [line], "measurements": [{feature, comparator, value, threshold}], "requests", "files",
    "training_examples", "action", "request_log", "config"}. "skipped" (with the reason) when no log is
    configured, no recent file is there, or fewer than `config.min_requests` query rows were logged.
    """
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    files = recent_log_files(request_log_path, config.max_log_age_hours) if request_log_path else []
    paths = compute_statistics(out_dir, files, training_pattern, beam_pipeline)
    if training_stats is None and TRAIN in paths:
        training_stats = tfdv.load_stats_binary(paths[TRAIN])
    result = {"status": "skipped", "reason": "", "skewed": False, "anomalies": [], "measurements": [],
              "requests": 0, "files": len(files), "request_log": request_log_path, "action": config.action,
              "training_examples": _num_examples(training_stats) if training_stats is not None else 0,
              "config": json.loads(config.to_json())}
    if not request_log_path:
        result["reason"] = "no request log configured (TOWER_RECS_REQUEST_LOG_DIR is empty)"
    elif not files:
        age = f" written in the last {config.max_log_age_hours:g} h" if config.max_log_age_hours else ""
        result["reason"] = f"no request log files{age} at {request_log_path}"
    else:
        serving_stats = tfdv.load_stats_binary(paths[SERVING])
        result["requests"] = _num_examples(serving_stats)
        if result["requests"] < config.min_requests:
            result["reason"] = (f"only {result['requests']} logged query rows, fewer than SkewConfig.min_requests "
                                f"({config.min_requests})")
        else:
            lines, measurements, anomalies = compare(training_stats, serving_stats, skew_schema(config))
            tf.io.gfile.makedirs(os.path.join(out_dir, f"Split-{SERVING}"))
            with tf.io.gfile.GFile(os.path.join(out_dir, f"Split-{SERVING}", ANOMALIES_FILE), "wb") as f:
                f.write(anomalies.SerializeToString())
            result.update(status="checked", anomalies=lines, measurements=measurements, skewed=bool(lines),
                          reason=(f"{len(lines)} skew anomal{'y' if len(lines) == 1 else 'ies'}" if lines
                                  else "no skew above the thresholds"))
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, RESULT_FILE), "w") as f:
        f.write(json.dumps(result, indent=2))
    return result


def describe(result: dict) -> str:
    """Readable lines of a `check` result (the CLI's output, the pipeline's log)."""
    lines = [f"Training/serving skew: {result['status']} ({result['reason']}); {result['requests']} logged query "
             f"rows in {result['files']} file(s), {result['training_examples']} training rows"]
    for m in result["measurements"]:
        verdict = "SKEW" if m["value"] > m["threshold"] else "ok"
        lines.append(f"  {verdict:4} {m['feature']}: {m['comparator']} {m['value']:.4f} "
                     f"(threshold {m['threshold']:g})")
    lines += [f"  anomaly: {a}" for a in result["anomalies"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m serving.skew`: 1 on skew, 0 without, 2 when it cannot compare (no logs, bad statistics)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--request-log", required=True, help="request log directory, filename prefix or glob")
    parser.add_argument("--statistics", required=True, help="training statistics (TrainingServingSkew's output)")
    parser.add_argument("--schema", default=None,
                        help="a schema.pbtxt with skew_comparators (default: SkewConfig's thresholds)")
    parser.add_argument("--max-age-hours", type=float, default=0.0, help="only newer log files (0: all)")
    parser.add_argument("--min-requests", type=int, default=SkewConfig.min_requests)
    parser.add_argument("--out", default=None, help="where statistics and skew.json go (default: a temp dir)")
    args = parser.parse_args(argv)
    import tempfile

    from pipeline.example_reader import load_schema

    config = SkewConfig(max_log_age_hours=args.max_age_hours, min_requests=args.min_requests)
    try:
        training = load_training_statistics(args.statistics)
        schema = load_schema(os.path.abspath(args.schema)) if args.schema else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or tempfile.mkdtemp(prefix="skew-")
    result = check(out, args.request_log, config, training_stats=training)
    if schema is not None and result["status"] == "checked":
        import tensorflow_data_validation as tfdv

        serving = tfdv.load_stats_binary(os.path.join(out, f"Split-{SERVING}", STATS_FILE))
        lines, measurements, _ = compare(training, serving, schema)
        result.update(anomalies=lines, measurements=measurements, skewed=bool(lines))
    print(describe(result))
    if result["status"] != "checked":
        return 2
    return 1 if result["skewed"] else 0


if __name__ == "__main__":
    sys.exit(main())
