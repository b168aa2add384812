"""The data checks a schema cannot express, as one Beam job over the ExampleGen outputs.

Run by the AnomalyGate with the pipeline's `beam_pipeline_args`, so they scale out like the stock
components (DirectRunner on every core here; Dataflow or Flink on a cluster). Memory is bounded per
RecordBatch; the only state that grows with the data lives in Beam's shuffles (distinct item ids,
interaction keys), which a distributed runner spills and spreads.

Checks (each problem one readable line, in `data/rules.py`'s words):
  * a split with no rows;
  * values that are not valid UTF-8;
  * the row rules `data.prepare` applies: blank / whitespace / number-like ids in any id column, blank
    titles, timestamps outside the schema's domain (e.g. negative);
  * duplicated item ids in the catalogue and duplicated interaction rows (same user, item, timestamp);
  * interaction item ids outside the catalogue.

    problems = run_checks(interactions_artifact, items_artifact)   # [] when the data is fine
"""
from __future__ import annotations

import os
import tempfile
import uuid
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import example_reader
from schema import contract

MAX_EXAMPLES_SHOWN = 3
# Hash buckets of the cross-split checks (catalogue ids, interaction keys): each bucket is checked in
# memory, so one holds about 1/BUCKETS of the distinct ids / interaction keys.
BUCKETS = 64
BATCH_SIZE = 8192
INTERACTIONS = "interactions"
ITEMS = "items"
# Beam's own defaults for a local run of the checks outside a pipeline (tests, notebooks).
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


# -- formatting ------------------------------------------------------------------------------------
def _text(value) -> Optional[str]:
    """A value as text (bytes decoded, invalid bytes replaced); a missing value stays None."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _display(value) -> str:
    """repr of a value with bytes decoded: 'u0001', None, 1579316128."""
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    return repr(_text(value) if isinstance(value, bytes) else value)


def _shown(values: Sequence, total: int) -> str:
    more = f" (and {total - len(values)} more)" if total > len(values) else ""
    return ", ".join(_display(v) for v in values) + more


# -- per RecordBatch (vectorised with Arrow; Python only over distinct values) ---------------------
def _columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    return {name: example_reader.first_values(batch.column(i)) for i, name in enumerate(batch.schema.names)}


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _invalid_utf8(batch: pa.RecordBatch) -> Iterator[tuple[str, bytes]]:
    """(column, value) of every value that is not UTF-8; Arrow validates a whole column at once."""
    for name, column in zip(batch.schema.names, batch.columns):
        if not pa.types.is_binary(column.type.value_type) and not pa.types.is_large_binary(column.type.value_type):
            continue
        flat = pc.list_flatten(column)
        try:
            flat.cast(pa.large_string())
        except pa.ArrowInvalid:
            for value in pc.unique(flat).to_pylist():
                if value is not None and not _is_utf8(value):
                    yield name, value


def _row_rule_rows(name: str, columns: dict[str, np.ndarray]) -> Iterator[tuple[str, str, int]]:
    """(column, problem, row in batch) of every row that breaks a rule of `data.rules`."""
    from data import rules

    def distinct_bad(values: np.ndarray, problem_of) -> Iterator[tuple[str, np.ndarray]]:
        # Ids repeat across rows: the Python rule runs once per distinct value, the row mask in pandas.
        series = pd.Series(values, dtype=object)
        bad: dict[str, list] = {}
        for value in series.unique():
            problem = problem_of(_text(value))
            if problem:
                bad.setdefault(problem, []).append(value)
        for problem, members in bad.items():
            yield problem, np.flatnonzero(series.isin(members).to_numpy())

    for column in rules.ID_COLUMNS[name]:
        for problem, rows in distinct_bad(columns[column], rules.id_problem):
            yield from ((column, problem, int(i)) for i in rows)
    for column in rules.TEXT_COLUMNS.get(name, ()):
        for problem, rows in distinct_bad(columns[column], lambda v: rules.BLANK if rules.is_blank(v) else None):
            yield from ((column, problem, int(i)) for i in rows)
    if contract.TIMESTAMP in columns:
        ts = columns[contract.TIMESTAMP]
        present = np.array([v is not None for v in ts]) if ts.dtype == object else np.ones(len(ts), bool)
        values = np.where(present, ts, rules.TIMESTAMP_MIN).astype(np.int64)
        out = present & ((values < rules.TIMESTAMP_MIN) | (values > rules.TIMESTAMP_MAX))
        yield from ((contract.TIMESTAMP, rules.TIMESTAMP_OUT_OF_RANGE, int(i)) for i in np.flatnonzero(out))


class _BatchChecks(beam.DoFn):
    """Per-RecordBatch checks; emits tagged findings for the global aggregations."""

    def __init__(self, name: str, split: str):
        self._name, self._split = name, split

    def process(self, batch: pa.RecordBatch):
        from data import rules

        yield beam.pvalue.TaggedOutput("rows", batch.num_rows)
        for column, value in _invalid_utf8(batch):
            yield beam.pvalue.TaggedOutput("utf8", (column, value))
        columns = _columns(batch)
        shown = rules.DUPLICATE_KEY if self._name == INTERACTIONS else (contract.ITEM_ID, contract.TITLE)
        for column, problem, i in _row_rule_rows(self._name, columns):
            example = " ".join(f"{c}={_display(columns[c][i])}" for c in shown)
            yield beam.pvalue.TaggedOutput("rule", ((column, problem), example))
        # Cross-split checks go through hash buckets of arrays: a few Beam elements per batch, not per row.
        item_ids = columns[contract.ITEM_ID]
        if self._name == INTERACTIONS:
            item_ids = pd.unique(item_ids)
        for bucket, ids in _bucketed(np.asarray(item_ids, dtype=object)):
            yield beam.pvalue.TaggedOutput("item_ids", (bucket, (self._split, ids)))
        if self._name == INTERACTIONS:
            keys = pd.DataFrame({c: columns[c] for c in rules.DUPLICATE_KEY})
            for bucket, rows in _bucketed_rows(keys):
                yield beam.pvalue.TaggedOutput("keys", (bucket, (self._split, rows)))


def _bucket_of(frame_or_values) -> np.ndarray:
    if isinstance(frame_or_values, pd.DataFrame):
        hashes = pd.util.hash_pandas_object(frame_or_values, index=False).to_numpy()
    else:
        hashes = pd.util.hash_array(frame_or_values)
    return (hashes % BUCKETS).astype(np.int64)


def _bucketed(values: np.ndarray):
    values = values[pd.notna(values)]
    buckets = _bucket_of(values)
    for bucket in np.unique(buckets):
        yield int(bucket), values[buckets == bucket]


def _bucketed_rows(frame: pd.DataFrame):
    buckets = _bucket_of(frame)
    for bucket in np.unique(buckets):
        yield int(bucket), frame[buckets == bucket].reset_index(drop=True)


def _count_and_examples(pcoll, label: str):
    """(key, value) -> (key, (count, the smallest MAX_EXAMPLES_SHOWN values)): deterministic examples."""
    counts = pcoll | f"{label}Count" >> beam.combiners.Count.PerKey()
    examples = pcoll | f"{label}Examples" >> beam.combiners.Top.SmallestPerKey(MAX_EXAMPLES_SHOWN, key=repr)
    return ({"n": counts, "ex": examples} | f"{label}Join" >> beam.CoGroupByKey()
            | f"{label}Pair" >> beam.MapTuple(lambda k, v: (k, (sum(v["n"]), list(v["ex"][0]) if v["ex"] else []))))


def _split_problems(pipeline, name: str, split: str, pattern: str, schema_path: str):
    """Problem lines of one split, plus its item ids and (interactions) keys for the cross-split checks."""
    label = f"{name}-{split}"
    outputs = (pipeline | f"Read[{label}]" >> example_reader.beam_source(pattern, schema_path, BATCH_SIZE)
               | f"Check[{label}]" >> beam.ParDo(_BatchChecks(name, split)).with_outputs(
                   "rows", "utf8", "rule", "item_ids", "keys"))
    prefix = f"{name} {split}"
    empty = (outputs.rows | f"Rows[{label}]" >> beam.CombineGlobally(sum)
             | f"Empty[{label}]" >> beam.FlatMap(
                 lambda n: [f"{prefix}: dataset: no rows (empty file?)"] if n == 0 else []))
    utf8 = (_count_and_examples(outputs.utf8, f"Utf8[{label}]")
            | f"Utf8Line[{label}]" >> beam.MapTuple(
                lambda column, found: f"{prefix}: column '{column}': {found[0]} distinct value(s) are not valid "
                                      f"UTF-8, e.g. {_shown(found[1], found[0])}"))
    rule = (_count_and_examples(outputs.rule, f"Rule[{label}]")
            | f"RuleLine[{label}]" >> beam.MapTuple(
                lambda key, found: f"{prefix}: column '{key[0]}' {key[1]} in {found[0]} row(s), first: "
                                   + "; ".join(found[1])))
    return [empty, utf8, rule], outputs.item_ids, outputs.keys


def _item_id_findings(kv, item_split: str, interaction_splits: Sequence[str]):
    """One bucket of item ids: ("duplicated", id) for repeated catalogue ids, (split, id) for interaction ids
    outside the catalogue."""
    _, parts = kv
    by_split: dict[str, list] = {}
    for split, ids in parts:
        by_split.setdefault(split, []).append(ids)
    catalogue = pd.Series(np.concatenate(by_split.get(item_split, [np.zeros([0], object)])), dtype=object)
    counts = catalogue.value_counts()
    yield from (("duplicated", v) for v in counts.index[counts.to_numpy() > 1])
    known = pd.Index(catalogue.unique())
    for split in interaction_splits:
        if split in by_split:
            ids = pd.unique(np.concatenate(by_split[split]))
            yield from ((split, v) for v in ids[~pd.Index(ids).isin(known)])


def _repeated_keys(kv, split_order: Sequence[str]):
    """One bucket of interaction keys: (split, key) of each row that repeats an earlier (user, item, timestamp),
    earlier meaning earlier in the split or in an earlier split (data.prepare's order)."""
    from data import rules

    _, parts = kv
    rank = {split: i for i, split in enumerate(split_order)}
    frames = [rows.assign(_split=rank[split]) for split, rows in parts]
    frame = pd.concat(frames, ignore_index=True).sort_values("_split", kind="stable")
    repeated = frame[frame.duplicated(subset=list(rules.DUPLICATE_KEY), keep="first")]
    for split_rank, *key in repeated[["_split", *rules.DUPLICATE_KEY]].itertuples(index=False):
        yield split_order[split_rank], tuple(_text(v) if isinstance(v, bytes) else v for v in key)


def _cross_split_lines(item_ids, keys, item_split: str, interaction_splits: Sequence[str]):
    from data import rules

    findings = (item_ids | "GroupItemIds" >> beam.GroupByKey()
                | "ItemIdFindings" >> beam.FlatMap(_item_id_findings, item_split, list(interaction_splits)))
    duplicated = (findings | "DuplicatedIds" >> beam.Filter(lambda kv: kv[0] == "duplicated")
                  | _Summarise("Dup", lambda _, n, shown: (
                      f"{ITEMS} {item_split}: column '{contract.ITEM_ID}': {n} duplicated item id(s) in the "
                      f"catalogue: {shown}"), keyed=True))
    unknown = (findings | "UnknownIds" >> beam.Filter(lambda kv: kv[0] != "duplicated")
               | _Summarise("Unknown", lambda split, n, shown: (
                   f"{INTERACTIONS} {split}: column '{contract.ITEM_ID}': {n} item id(s) outside the domain "
                   f"(not in the item catalogue): {shown}"), keyed=True))
    repeats = (keys | "GroupKeys" >> beam.GroupByKey()
               | "Repeats" >> beam.FlatMap(_repeated_keys, list(interaction_splits))
               | _Summarise("DupRows", lambda split, n, shown: (
                   f"{INTERACTIONS} {split}: {rules.DUPLICATE_ROWS}: {n} row(s) {rules.DUPLICATE_ROWS_DETAIL}: "
                   f"{shown}"), keyed=True, distinct_examples=True))
    return [duplicated, unknown, repeats]


class _Summarise(beam.PTransform):
    """(key, value) -> one line per key: `line(key, count, shown examples)` (without key if not keyed)."""

    def __init__(self, label: str, line, keyed: bool = False, distinct_examples: bool = False):
        super().__init__(label)
        self._line, self._keyed, self._distinct = line, keyed, distinct_examples

    def expand(self, pcoll):
        def render(key, found):
            count, examples = found
            if self._distinct:  # the same key repeated three times is shown once
                examples = sorted(set(examples), key=repr)
                if examples and isinstance(examples[0], tuple):
                    examples = [tuple(_text(x) if isinstance(x, bytes) else x for x in e) for e in examples]
            shown = _shown(examples, count if not self._distinct else max(count, len(examples)))
            return self._line(key, count, shown) if self._keyed else self._line(count, shown)

        return _count_and_examples(pcoll, self.label) | f"{self.label}Line" >> beam.MapTuple(render)


def build_checks(pipeline, interactions, items, interaction_splits: Sequence[str] = (contract.TRAIN_SPLIT,
                                                                                    contract.EVAL_SPLIT),
                 item_split: str = contract.ITEMS_SPLIT, interactions_schema: str = example_reader.INTERACTIONS_SCHEMA,
                 items_schema: str = example_reader.ITEMS_SCHEMA):
    """Adds the checks to `pipeline`; returns the PCollection of problem lines (strings)."""
    lines, catalogue_ids, _ = _split_problems(pipeline, ITEMS, item_split,
                                              example_reader.split_pattern(items, item_split), items_schema)
    item_ids, keys = [catalogue_ids], []
    for split in interaction_splits:
        split_lines, split_ids, split_keys = _split_problems(
            pipeline, INTERACTIONS, split, example_reader.split_pattern(interactions, split), interactions_schema)
        lines += split_lines
        item_ids.append(split_ids)
        keys.append(split_keys)
    lines += _cross_split_lines(item_ids | "AllItemIds" >> beam.Flatten(), keys | "AllKeys" >> beam.Flatten(),
                                item_split, interaction_splits)
    return lines | "Problems" >> beam.Flatten()


def run_checks(interactions, items, beam_pipeline: Optional[beam.Pipeline] = None,
               output_dir: Optional[str] = None, **kwargs) -> list[str]:
    """Runs the checks as a Beam job and returns the problem lines (empty: the data is fine).

    Args:
      interactions, items: the ExampleGen output artifacts.
      beam_pipeline: a pipeline carrying the run's Beam options (the AnomalyGate's); None runs locally.
      output_dir: where the job writes its findings (a shared filesystem on a cluster; default: the
        pipeline's `temp_location` or a local temporary folder).
      **kwargs: `build_checks`' split and schema arguments.

    Returns:
      Sorted problem lines, e.g. "interactions train: column 'item_id': 2 item id(s) outside the domain ...".
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    if beam_pipeline is None:
        beam_pipeline = beam.Pipeline(options=PipelineOptions(list(LOCAL_BEAM_ARGS)))
    base = output_dir or beam_pipeline.options.view_as(GoogleCloudOptions).temp_location or tempfile.gettempdir()
    prefix = os.path.join(base, f"tower-recs-data-checks-{uuid.uuid4().hex}", "problems")
    with beam_pipeline as p:
        _ = (build_checks(p, interactions, items, **kwargs)
             | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".txt"))
    return _read_lines(prefix)


def _read_lines(prefix: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    lines: list[str] = []
    for match in FileSystems.match([prefix + "*"])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            lines += [line for line in f.read().decode("utf-8").splitlines() if line]
    FileSystems.delete([os.path.dirname(prefix)])
    return sorted(lines, key=_order)


def _order(line: str) -> tuple:
    """Catalogue first, then interaction splits in the contract's order, then the line."""
    split_rank = {f"{ITEMS} ": 0, f"{INTERACTIONS} {contract.TRAIN_SPLIT}": 1, f"{INTERACTIONS} {contract.EVAL_SPLIT}": 2}
    return next((rank for start, rank in split_rank.items() if line.startswith(start)), 3), line
