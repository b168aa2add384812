"""Stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets downstream components run. Transform
and the Trainer are made to depend on this gate, so bad data stops the run before
anything is trained or pushed, with a message that names each column and problem.
"""

import collections
import glob
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from schema import contract

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


# -- checks a schema cannot express (read from the ExampleGen outputs) ----------------------------
_MAX_EXAMPLES_SHOWN = 3


def _read_split(artifact, split: str, columns) -> "dict[str, list]":
    """Raw bytes/ints of `columns` in one split of an ExampleGen output (missing values: None)."""
    import tensorflow as tf

    out = {name: [] for name in columns}
    files = sorted(glob.glob(os.path.join(artifact_utils.get_split_uri([artifact], split), "*")))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        for name in columns:
            feature = example.features.feature.get(name)
            kind = feature.WhichOneof("kind") if feature is not None else None
            values = list(getattr(feature, kind).value) if kind else []
            out[name].append(values[0] if values else None)
    return out


def _shown(values) -> str:
    values = sorted(values, key=repr)
    more = f" (and {len(values) - _MAX_EXAMPLES_SHOWN} more)" if len(values) > _MAX_EXAMPLES_SHOWN else ""
    return ", ".join(repr(v) for v in values[:_MAX_EXAMPLES_SHOWN]) + more


def _utf8_problems(name: str, split: str, columns: "dict[str, list]") -> "list[str]":
    problems = []
    for column, values in columns.items():
        bad = [i for i, v in enumerate(values) if isinstance(v, bytes) and not _is_utf8(v)]
        if bad:
            problems.append(f"{name} {split}: column '{column}': {len(bad)} value(s) are not valid UTF-8 "
                            f"(rows {bad[:_MAX_EXAMPLES_SHOWN]})")
    return problems


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _text(value):
    """A value read by `_read_split` as text; None (a missing value) stays None."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _display(value) -> str:
    """repr of a value with bytes decoded: 'u0001', None, 1579316128."""
    return repr(_text(value) if isinstance(value, bytes) else value)


def _row_rule_problems(name: str, split: str, rows: "dict[str, list]") -> "list[str]":
    """The row rules of `data.rules` (ids, required text, timestamp range), naming the first rows that break them."""
    from data import rules

    bad = collections.defaultdict(list)  # (column, problem) -> row numbers in the split
    for column in rules.ID_COLUMNS[name]:
        for i, value in enumerate(rows[column]):
            problem = rules.id_problem(_text(value))
            if problem:
                bad[(column, problem)].append(i)
    for column in rules.TEXT_COLUMNS.get(name, ()):
        bad[(column, rules.BLANK)] += [i for i, value in enumerate(rows[column]) if rules.is_blank(_text(value))]
    for i, value in enumerate(rows.get(contract.TIMESTAMP, ())):
        if isinstance(value, int) and not rules.timestamp_in_range(value):
            bad[(contract.TIMESTAMP, rules.TIMESTAMP_OUT_OF_RANGE)].append(i)
    shown = rules.DUPLICATE_KEY if name == "interactions" else (contract.ITEM_ID, contract.TITLE)
    return [f"{name} {split}: column '{column}' {problem} in {len(index)} row(s), first: "
            + "; ".join(" ".join(f"{c}={_display(rows[c][i])}" for c in shown) for i in index[:_MAX_EXAMPLES_SHOWN])
            for (column, problem), index in bad.items() if index]


def check_examples(interactions, items, interaction_splits=(contract.TRAIN_SPLIT, contract.EVAL_SPLIT),
                   item_split=contract.ITEMS_SPLIT) -> "list[str]":
    """Referential integrity, duplicates and UTF-8 of the ExampleGen outputs, one line per problem.

    Args:
      interactions, items: the ExampleGen output artifacts.
      interaction_splits, item_split: the splits to read.

    Returns:
      Readable problems, e.g. "interactions train: column 'item_id': 2 item id(s) outside the domain ...";
      empty when the data is fine.
    """
    from data import rules

    problems = []
    catalogue = _read_split(items, item_split, contract.ITEM_COLUMNS)
    if not catalogue[contract.ITEM_ID]:
        problems.append(f"items {item_split}: dataset: no rows (empty file?)")
    problems += _utf8_problems("items", item_split, catalogue)
    problems += _row_rule_problems("items", item_split, catalogue)
    item_ids = [v for v in catalogue[contract.ITEM_ID] if v is not None]
    counts = collections.Counter(item_ids)
    duplicated = {v for v, n in counts.items() if n > 1}
    if duplicated:
        problems.append(f"items {item_split}: column '{contract.ITEM_ID}': {len(duplicated)} duplicated item id(s) "
                        f"in the catalogue: {_shown(duplicated)}")
    known = set(item_ids)
    seen_rows: dict = {}
    for split in interaction_splits:
        rows = _read_split(interactions, split, contract.INTERACTION_COLUMNS)
        if not rows[contract.USER_ID]:
            problems.append(f"interactions {split}: dataset: no rows (empty file?)")
        problems += _utf8_problems("interactions", split, rows)
        problems += _row_rule_problems("interactions", split, rows)
        unknown = {v for v in rows[contract.ITEM_ID] if v is not None and v not in known}
        if unknown:
            problems.append(
                f"interactions {split}: column '{contract.ITEM_ID}': {len(unknown)} item id(s) outside the domain "
                f"(not in the item catalogue): {_shown(unknown)}")
        keys = list(zip(*(rows[c] for c in rules.DUPLICATE_KEY)))
        repeated = [key for key in keys if key in seen_rows or seen_rows.setdefault(key, split) != split]
        if repeated:
            problems.append(
                f"interactions {split}: {rules.DUPLICATE_ROWS}: {len(repeated)} row(s) {rules.DUPLICATE_ROWS_DETAIL}: "
                f"{_shown(set(repeated))}")
    return problems


@tfx.dsl.components.component
def AnomalyGate(
    interaction_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    item_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    interactions: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
    items: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
) -> None:
    """Raises DataAnomalyError listing every anomaly in interactions and items.

    With `interactions` and `items` (the ExampleGen outputs) it also checks what the schema cannot:
    interaction item ids outside the catalogue, duplicated rows / item ids, invalid UTF-8, and the row rules
    `data.prepare` applies (`data/rules.py`: blank or malformed ids, blank titles, timestamps out of range).
    """
    problems = [f"interactions {p}" for p in read_anomalies(interaction_anomalies)]
    problems += [f"items {p}" for p in read_anomalies(item_anomalies)]
    if interactions is not None and items is not None:
        problems += check_examples(interactions, items)
    if problems:
        raise DataAnomalyError(
            "Input data failed validation; nothing was trained or pushed:\n  " + "\n  ".join(problems))
