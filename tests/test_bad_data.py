"""Bad input data stops the pipeline before training, with a message naming the column and problem.

Fast checks (one per malformed input) run the pipeline's own validation code in-process:
the CsvExampleGen, StatisticsGen and ExampleValidator executors with the pipeline's settings and
curated schemas, then the AnomalyGate's checks (`read_anomalies` + `check_examples`). Unchanged
inputs are validated once and reused. One end-to-end test runs the real pipeline on bad data after
a good run: the run fails with the message, nothing new is pushed, the pushed version is untouched.
"""
import hashlib
import os
import shutil

import pandas as pd
import pytest

import gate_pipeline_run as runs
from data import prepare, rules
from data.prepare import EVAL_FILE as EVAL_CSV, ITEMS_FILE as ITEMS_CSV, TRAIN_FILE as TRAIN_CSV
from pipeline import configs
from pipeline.configs import INTERACTIONS_SCHEMA, ITEMS_SCHEMA


# -- the pipeline's validation, component by component (executors, no orchestration) --------------
def _artifact(cls, uri, splits=None):
    from tfx.types import artifact_utils

    artifact = cls()
    artifact.uri = uri
    os.makedirs(uri, exist_ok=True)
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


_BEAM_ARGS = configs.BEAM_PIPELINE_ARGS   # the pipeline's own (TFX stages nothing with them)


def _example_gen(input_base, splits, work, hash_buckets_split=None):
    """CsvExampleGen of one input, as pipeline/pipeline.py configures it."""
    from tfx.components.example_gen.csv_example_gen import executor as csv_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    input_config = example_gen_pb2.Input(
        splits=[example_gen_pb2.Input.Split(name=name, pattern=pattern) for name, pattern in splits])
    output_config = example_gen_pb2.Output()
    if hash_buckets_split:
        output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name=hash_buckets_split, hash_buckets=1)]))
    names = [name for name, _ in splits]
    examples = _artifact(standard_artifacts.Examples, os.path.join(work, "examples"), names)
    csv_executor.Executor(csv_executor.Executor.Context(beam_pipeline_args=_BEAM_ARGS, tmp_dir=work)).Do(
        {}, {"examples": [examples]},
        {"input_base": input_base, "input_config": proto_utils.proto_to_json(input_config),
         "output_config": proto_utils.proto_to_json(output_config), "output_data_format": 6,
         "output_file_format": 5})
    return examples


def _validate_input(input_base, splits, schema_path, work, hash_buckets_split=None):
    """ExampleGen -> StatisticsGen -> ExampleValidator of one input, as pipeline/pipeline.py wires them."""
    from tfx.components.example_validator import executor as validator_executor
    from tfx.components.statistics_gen import executor as stats_executor
    from tfx.types import standard_artifacts

    examples = _example_gen(input_base, splits, work, hash_buckets_split)
    names = [name for name, _ in splits]
    statistics = _artifact(standard_artifacts.ExampleStatistics, os.path.join(work, "statistics"), names)
    stats_executor.Executor(stats_executor.Executor.Context(beam_pipeline_args=_BEAM_ARGS, tmp_dir=work)).Do(
        {"examples": [examples]}, {"statistics": [statistics]}, {"exclude_splits": "[]"})
    schema = _artifact(standard_artifacts.Schema, os.path.join(work, "schema"))
    shutil.copy(schema_path, os.path.join(schema.uri, "schema.pbtxt"))
    anomalies = _artifact(standard_artifacts.ExampleAnomalies, os.path.join(work, "anomalies"))
    validator_executor.Executor().Do({"statistics": [statistics], "schema": [schema]},
                                     {"anomalies": [anomalies]}, {"exclude_splits": "[]"})
    return examples, anomalies


_CACHE = {}


def _digest(*paths):
    h = hashlib.sha256()
    for path in paths:
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
        h.update(b"\0" + path.encode())
    return h.hexdigest()[:16]


INTERACTION_SPLITS = [("train", "train/*"), ("eval", "eval/*")]
ITEM_SPLITS = [("items", "*")]


def _examples(data_dir, work_dir):
    """CsvExampleGen outputs (interactions, items) of a contract directory, without statistics or validation."""
    return (_example_gen(os.path.join(data_dir, "interactions"), INTERACTION_SPLITS,
                         os.path.join(work_dir, "interactions")),
            _example_gen(os.path.join(data_dir, "items"), ITEM_SPLITS, os.path.join(work_dir, "items"),
                         hash_buckets_split="items"))


def validate_contract(data_dir, work_dir):
    """The problems the pipeline's AnomalyGate raises for a contract directory (empty list: data OK)."""
    from pipeline.components.anomaly_gate import check_examples, read_anomalies

    inter_key = _digest(os.path.join(data_dir, TRAIN_CSV), os.path.join(data_dir, EVAL_CSV))
    items_key = _digest(os.path.join(data_dir, ITEMS_CSV))
    if ("i", inter_key) not in _CACHE:
        _CACHE[("i", inter_key)] = _validate_input(
            os.path.join(data_dir, "interactions"), INTERACTION_SPLITS,
            INTERACTIONS_SCHEMA, os.path.join(work_dir, "interactions"))
    if ("c", items_key) not in _CACHE:
        _CACHE[("c", items_key)] = _validate_input(
            os.path.join(data_dir, "items"), ITEM_SPLITS, ITEMS_SCHEMA, os.path.join(work_dir, "items"),
            hash_buckets_split="items")
    interactions, inter_anomalies = _CACHE[("i", inter_key)]
    items, item_anomalies = _CACHE[("c", items_key)]
    problems = [f"interactions {p}" for p in read_anomalies(inter_anomalies)]
    problems += [f"items {p}" for p in read_anomalies(item_anomalies)]
    return problems + check_examples(interactions, items)


# -- malformed inputs ------------------------------------------------------------------------------
def _read(data_dir, rel):
    return pd.read_csv(os.path.join(data_dir, rel), dtype=str, keep_default_na=False)


def _write(df, data_dir, rel):
    df.to_csv(os.path.join(data_dir, rel), index=False)


def missing_column(d):
    for rel in (TRAIN_CSV, EVAL_CSV):
        _write(_read(d, rel).drop(columns=["timestamp"]), d, rel)


def wrong_type(d):
    df = _read(d, TRAIN_CSV)
    df.loc[3, "timestamp"] = "abc"
    _write(df, d, TRAIN_CSV)


def empty_title(d):
    df = _read(d, ITEMS_CSV)
    df.loc[5, "title"] = ""
    _write(df, d, ITEMS_CSV)


def unknown_item(d):
    df = _read(d, EVAL_CSV)
    df.loc[2, "item_id"] = "i_not_in_catalogue"
    _write(df, d, EVAL_CSV)


def duplicated_rows(d):
    df = _read(d, TRAIN_CSV)
    _write(pd.concat([df, df.iloc[:4]], ignore_index=True), d, TRAIN_CSV)


def non_utf8(d):
    path = os.path.join(d, ITEMS_CSV)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    fields = lines[4].split(b",")
    fields[1] = b"Bad \xff\xfe title"
    lines[4] = b",".join(fields)
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))


def timestamp_out_of_range(d):
    df = _read(d, TRAIN_CSV)
    df.loc[1, "timestamp"] = "99999999999"
    _write(df, d, TRAIN_CSV)


def empty_file(d):
    open(os.path.join(d, EVAL_CSV), "w").close()


CASES = [
    (missing_column, ["column 'timestamp'"]),
    (wrong_type, ["column 'timestamp'"]),
    (empty_title, ["column 'title'"]),
    (unknown_item, ["column 'item_id'", "outside the domain", "i_not_in_catalogue"]),
    (duplicated_rows, ["duplicated rows"]),
    (non_utf8, ["utf-8", "decode"]),  # CsvExampleGen itself stops on undecodable bytes
    (timestamp_out_of_range, ["column 'timestamp'", "Out-of-range"]),
    (empty_file, ["interactions eval", "no rows"]),
]


@pytest.fixture(scope="module")
def validation_work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("validation"))


@pytest.mark.slow
def test_good_data_passes(tiny_data, validation_work):
    assert validate_contract(tiny_data, os.path.join(validation_work, "good")) == []


@pytest.mark.slow
@pytest.mark.parametrize("corrupt,expected", CASES, ids=[c.__name__ for c, _ in CASES])
def test_bad_data_is_rejected_with_a_clear_message(corrupt, expected, tiny_data, validation_work, tmp_path):
    data_dir = str(tmp_path / "data")
    shutil.copytree(tiny_data, data_dir)
    corrupt(data_dir)
    try:
        problems = validate_contract(data_dir, os.path.join(validation_work, corrupt.__name__))
        message = "\n".join(problems)
    except Exception as e:  # noqa: BLE001  (a component that fails on the input also stops the run)
        message = f"{type(e).__name__}: {e}"
    print(message)
    assert message, f"{corrupt.__name__} was not detected"
    for text in expected:
        assert text.lower() in message.lower(), message


# -- the row rules of data/rules.py: the same answer from data.prepare and from the pipeline ------
# Each corruption touches its own rows, so all of them go through ExampleGen once, together.
def _set(d, rel, row, column, value):
    df = _read(d, rel)
    df.loc[row, column] = value
    _write(df, d, rel)


def empty_user_id(d):
    _set(d, TRAIN_CSV, 1, "user_id", "")


def whitespace_user_id(d):
    _set(d, TRAIN_CSV, 2, "user_id", "   ")


def empty_item_id(d):
    _set(d, EVAL_CSV, 1, "item_id", "")


def item_id_with_space(d):
    _set(d, TRAIN_CSV, 3, "item_id", "i0001 x")


def number_like_user_id(d):
    _set(d, TRAIN_CSV, 4, "user_id", "42")


def negative_timestamp(d):
    _set(d, TRAIN_CSV, 5, "timestamp", "-86400")


def blank_title(d):
    _set(d, ITEMS_CSV, 6, "title", "  ")


def blank_catalogue_id(d):
    _set(d, ITEMS_CSV, 7, "item_id", " ")


ROW_RULE_CASES = [  # (corruption, the split, the column, the problem in data/rules.py's words)
    (empty_user_id, "interactions train", "user_id", rules.BLANK),
    (whitespace_user_id, "interactions train", "user_id", rules.BLANK),
    (empty_item_id, "interactions eval", "item_id", rules.BLANK),
    (item_id_with_space, "interactions train", "item_id", rules.ID_WHITESPACE),
    (number_like_user_id, "interactions train", "user_id", rules.ID_NUMBER_LIKE),
    (negative_timestamp, "interactions train", "timestamp", rules.TIMESTAMP_OUT_OF_RANGE),
    (blank_title, "items items", "title", rules.BLANK),
    (blank_catalogue_id, "items items", "item_id", rules.BLANK),
]


@pytest.fixture(scope="module")
def row_rule_problems(tiny_data, tmp_path_factory):
    """check_examples on the ExampleGen outputs of one contract folder holding every row-rule corruption."""
    from pipeline.components.anomaly_gate import check_examples

    base = tmp_path_factory.mktemp("row_rules")
    data_dir = str(base / "data")
    shutil.copytree(tiny_data, data_dir)
    for corrupt, *_ in ROW_RULE_CASES:
        corrupt(data_dir)
    return check_examples(*_examples(data_dir, str(base / "work")))


@pytest.mark.parametrize("corrupt,split,column,problem", ROW_RULE_CASES, ids=[c.__name__ for c, *_ in ROW_RULE_CASES])
def test_row_rules_give_the_same_answer_in_data_prepare_and_the_pipeline(
        corrupt, split, column, problem, row_rule_problems, tiny_data, tmp_path, capsys):
    # The pipeline's AnomalyGate check on a hand-written contract folder...
    found = [p for p in row_rule_problems if p.startswith(f"{split}: column '{column}' {problem} in ")]
    assert found, "\n".join(row_rule_problems)
    # ...and data.prepare on the same files, one corruption at a time, name the same column and problem.
    data_dir = str(tmp_path / "data")
    shutil.copytree(tiny_data, data_dir)
    corrupt(data_dir)
    rel = EVAL_CSV if split == "interactions eval" else TRAIN_CSV
    code = prepare.main(["--interactions", os.path.join(data_dir, rel), "--items", os.path.join(data_dir, ITEMS_CSV),
                         "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"column '{column}' {problem} in 1 row(s): line " in err, err
    assert not (tmp_path / "out").exists()


# -- the real pipeline -----------------------------------------------------------------------------
@pytest.mark.e2e
def test_pipeline_stops_on_bad_data_and_keeps_the_pushed_model(tiny_encoder):
    run = runs.good_run(tiny_encoder)
    assert len(run["versions"]) == 1, run["versions"]
    before = runs.snapshot(run["serving_dir"])
    trainer_dir = os.path.join(run["output"], "pipeline_root", "tower-recs", "CatalogTrainer", "model")
    models_before = sorted(os.listdir(trainer_dir))

    bad_data = os.path.join(run["base"], "bad_data")
    shutil.copytree(run["data"], bad_data)
    unknown_item(bad_data)
    proc = runs.run_pipeline(run, data_dir=bad_data)

    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "DataAnomalyError" in log and "Input data failed validation" in log, log[-3000:]
    assert "column 'item_id'" in log and "outside the domain" in log and "i_not_in_catalogue" in log
    # Nothing trained, nothing pushed, the served version untouched (same files, sizes, mtimes).
    assert sorted(os.listdir(trainer_dir)) == models_before
    assert runs.snapshot(run["serving_dir"]) == before
    assert "FAILED at AnomalyGate" in runs.latest_line(run)
