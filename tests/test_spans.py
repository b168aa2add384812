"""Spans (issue 15): data tools write time-ordered `interactions/span-<N>/`, the pipeline reads the latest (or a
pinned) span and a window of spans, and TFDV drift between consecutive spans warns or stops the run.

The unit tests build the pipeline and check the pieces; `test_spanned_runs_*` runs the real ExampleGen,
StatisticsGen, resolvers, SpanDriftValidator and Pusher with LocalDagRunner on a tiny spanned data set.
"""
import csv
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from data import prepare
from data.sample import generate
from pipeline.components.span_config import DriftConfig, SpanConfig
from schema import contract

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_RECS_")}
    env.update(TF_USE_LEGACY_KERAS="1", PYTHONPATH=PROJECT_DIR, TF_CPP_MIN_LOG_LEVEL="2")
    env.update({f"TOWER_RECS_{k}": str(v) for k, v in settings.items()})
    return env


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- data tools --------------------------------------------------------------------------------------
def test_data_sample_cli_writes_time_ordered_spans(tmp_path):
    args = ["--users", "40", "--items", "80", "--interactions", "1200", "--seed", "3"]
    spanned = subprocess.run([sys.executable, "-m", "data.sample", "--out", str(tmp_path / "s"), "--spans", "3", *args],
                             cwd=PROJECT_DIR, env=_env(), capture_output=True, text=True, timeout=300)
    assert spanned.returncode == 0, spanned.stderr
    assert "span-3:" in spanned.stdout
    flat = subprocess.run([sys.executable, "-m", "data.sample", "--out", str(tmp_path / "f"), *args],
                          cwd=PROJECT_DIR, env=_env(), capture_output=True, text=True, timeout=300)
    assert flat.returncode == 0, flat.stderr

    assert prepare.spans(str(tmp_path / "s")) == [1, 2, 3]
    assert prepare.spans(str(tmp_path / "f")) == []
    assert sorted(os.listdir(tmp_path / "s" / "interactions")) == ["span-1", "span-2", "span-3"]
    # One catalogue, the same as without spans.
    assert _csv(tmp_path / "s" / "items" / "items.csv") == _csv(tmp_path / "f" / "items" / "items.csv")
    rows, last = [], None
    for span in (1, 2, 3):
        train, evals, _ = prepare.read_contract(str(tmp_path / "s"), span=span)
        assert len(train) and len(evals)
        stamps = pd.concat([train, evals])[contract.TIMESTAMP]
        if last is not None:
            assert stamps.min() >= last, f"span {span} starts before span {span - 1} ends"
        last = stamps.max()
        # Within a span, each user's eval rows are not older than their train rows.
        latest_train = train.groupby(contract.USER_ID)[contract.TIMESTAMP].max()
        earliest_eval = evals.groupby(contract.USER_ID)[contract.TIMESTAMP].min()
        both = latest_train.index.intersection(earliest_eval.index)
        assert (earliest_eval[both] >= latest_train[both]).all()
        rows.append(pd.concat([train, evals]))
    key = [contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP, contract.HISTORY]
    ftrain, fevals, _ = prepare.read_contract(str(tmp_path / "f"))
    # Same interactions (and histories, computed over the whole timeline) as the unspanned layout.
    spanned_rows = pd.concat(rows)[key].sort_values(key).reset_index(drop=True)
    flat_rows = pd.concat([ftrain, fevals])[key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(spanned_rows, flat_rows)


def test_too_many_spans_is_rejected_and_nothing_is_written(tmp_path):
    inter, items = generate(n_users=5, n_items=10, n_interactions=20, seed=1)
    inter[contract.TIMESTAMP] = 1_600_000_000 + (inter.index % 2)  # two distinct timestamps
    with pytest.raises(ValueError, match=r"into 3 time spans: span\(s\) \[3\] would be empty"):
        prepare.write_contract(inter, items, str(tmp_path / "out"), spans=3)
    assert not (tmp_path / "out").exists()


def test_movielens_importer_writes_spans(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{(u + m) % 5 + 1}.0,{1_000_000_000 + 1000 * u + m}\n" for u in range(1, 7) for m in range(1, 6)))
    (src / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m},Movie {m} (2000),Drama\n" for m in range(1, 6)))
    proc = subprocess.run([sys.executable, "-m", "data.movielens", "--src", str(src), "--out", str(tmp_path / "o"),
                           "--spans", "2"], cwd=PROJECT_DIR, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert prepare.spans(str(tmp_path / "o")) == [1, 2]
    first, _, _ = prepare.read_contract(str(tmp_path / "o"), span=1)
    second, _, _ = prepare.read_contract(str(tmp_path / "o"), span=2)
    # Users 1-3 rated first, users 4-6 later: the time cut puts them in different spans.
    assert set(first[contract.USER_ID]) == {"u1", "u2", "u3"} and set(second[contract.USER_ID]) == {"u4", "u5", "u6"}


# -- settings and the pipeline's shape ---------------------------------------------------------------
def test_span_and_drift_settings_are_checked_and_read_from_the_environment():
    from pipeline.overrides import from_env

    with pytest.raises(ValueError, match=r"SpanConfig.window \(TOWER_RECS_SPAN_WINDOW\): must be >= 1"):
        from_env(SpanConfig(), "SPAN", {"TOWER_RECS_SPAN_WINDOW": "0"})
    with pytest.raises(ValueError, match=r"DriftConfig.item_id_linf \(TOWER_RECS_DRIFT_ITEM_ID_LINF\)"):
        from_env(DriftConfig(), "DRIFT", {"TOWER_RECS_DRIFT_ITEM_ID_LINF": "2"})
    cfg = from_env(DriftConfig(), "DRIFT", {"TOWER_RECS_DRIFT_STOP_ON_DRIFT": "1", "TOWER_RECS_DRIFT_RATING_JS": "0"})
    assert cfg.stop_on_drift and contract.RATING not in cfg.comparators()
    assert DriftConfig.from_json(cfg.to_json()) == cfg


def _spanned_data(path, n_spans=2):
    inter, items = generate(n_users=30, n_items=60, n_interactions=600, seed=5)
    prepare.write_contract(inter, items, str(path), spans=n_spans)
    return str(path)


def _kwargs(data_dir, tmp_path, **overrides):
    from pipeline import configs

    kwargs = configs.pipeline_kwargs()
    kwargs.update(interactions_path=os.path.join(data_dir, contract.INTERACTIONS_DIR),
                  items_path=os.path.join(data_dir, contract.ITEMS_DIR), pipeline_root=str(tmp_path / "root"))
    kwargs.update(overrides)
    return kwargs


def _node(pipeline, node_id):
    return next(c for c in pipeline.components if c.id == node_id)


def test_pipeline_reads_spans_only_when_the_data_has_them(tmp_path):
    from pipeline.pipeline import create_pipeline

    spanned = create_pipeline(**_kwargs(_spanned_data(tmp_path / "s"), tmp_path, span_config=SpanConfig(window=3)))
    ids = {c.id for c in spanned.components}
    assert {"SpanDriftValidator", "LatestSpanStatisticsResolver", "SpanWindowResolver"} <= ids
    gen = _node(spanned, "InteractionExampleGen")
    assert "span-{SPAN}/train/*" in gen.exec_properties["input_config"]
    # Transform trains on the window; the evaluator judges on ExampleGen's (the newest span's) output.
    assert _node(spanned, "Transform").inputs["examples"].producer_component_id == "SpanWindowResolver"
    assert _node(spanned, "RetrievalEvaluator").inputs["examples"].producer_component_id == "InteractionExampleGen"

    pinned = create_pipeline(**_kwargs(_spanned_data(tmp_path / "p"), tmp_path, span_config=SpanConfig(pin=1)))
    assert '"start_span_number": 1' in _node(pinned, "InteractionExampleGen").exec_properties["range_config"]
    assert "SpanWindowResolver" not in {c.id for c in pinned.components}

    flat_dir = tmp_path / "f"
    prepare.write_contract(*generate(n_users=30, n_items=60, n_interactions=600, seed=5), str(flat_dir))
    flat = create_pipeline(**_kwargs(str(flat_dir), tmp_path))
    assert not {"SpanDriftValidator", "SpanWindowResolver"} & {c.id for c in flat.components}
    assert "span" not in _node(flat, "InteractionExampleGen").exec_properties["input_config"]


def test_kubeflow_build_refuses_a_window_it_cannot_compile(tmp_path):
    from pipeline.pipeline import create_pipeline

    data = _spanned_data(tmp_path / "s")
    with pytest.raises(ValueError, match=r"TOWER_RECS_SPAN_WINDOW\) = 2 needs the ML Metadata resolver"):
        create_pipeline(**_kwargs(data, tmp_path, span_config=SpanConfig(window=2), baseline_resolution="kfp"))
    kfp = create_pipeline(**_kwargs(data, tmp_path, baseline_resolution="kfp"))
    assert "SpanDriftValidator" in {c.id for c in kfp.components}


# -- drift -------------------------------------------------------------------------------------------
def _stats(frame):
    import tensorflow_data_validation as tfdv

    return tfdv.generate_statistics_from_dataframe(frame)


def _schema():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(os.path.join(PROJECT_DIR, "schema", "interactions", "schema.pbtxt")) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


@pytest.mark.slow
def test_drift_compare_flags_shifted_ids_and_ratings_only():
    from pipeline.components.span_drift import compare

    def frame(items, ratings, users):
        n = len(items)
        return pd.DataFrame({contract.USER_ID: users, contract.ITEM_ID: items,
                             contract.TIMESTAMP: list(range(n)), contract.RATING: ratings, contract.HISTORY: [""] * n})

    base = frame([f"i{k % 50}" for k in range(1000)], [float(k % 5 + 1) for k in range(1000)],
                 [f"u{k % 40}" for k in range(1000)])
    same = frame([f"i{(k + 7) % 50}" for k in range(1000)], [float((k + 2) % 5 + 1) for k in range(1000)],
                 [f"u{(k + 3) % 40}" for k in range(1000)])
    # Half of the interactions go to one item, ratings collapse to 5.
    shifted = frame(["i1" if k % 2 else f"i{k % 50}" for k in range(1000)], [5.0] * 1000,
                    [f"u{k % 40}" for k in range(1000)])
    anomalies, rows = compare(_stats(same), _stats(base), _schema(), DriftConfig())
    assert not anomalies.anomaly_info and {r["feature"] for r in rows} == {"user_id", "item_id", "rating"}
    assert all(not r["drift"] and r["value"] <= r["threshold"] for r in rows)
    anomalies, rows = compare(_stats(shifted), _stats(base), _schema(), DriftConfig())
    assert set(anomalies.anomaly_info) == {"item_id", "rating"}
    by_feature = {r["feature"]: r for r in rows}
    assert by_feature["item_id"]["drift"] and by_feature["item_id"]["value"] > 0.4
    assert not by_feature["user_id"]["drift"]


def test_report_shows_span_drift():
    from pipeline.report import span_drift_html

    drift = {"span": 3, "baseline_span": 2, "config": {"stop_on_drift": False}, "drifted": ["item_id"],
             "comparisons": [{"feature": "item_id", "comparator": "l_infty", "value": 0.41, "threshold": 0.05,
                              "drift": True},
                             {"feature": "user_id", "comparator": "l_infty", "value": 0.01, "threshold": 0.2,
                              "drift": False}]}
    page = span_drift_html(drift)
    assert "span 3 vs span 2: drift in item_id (l_infty 0.41 &gt; 0.05)" in page
    assert "warning only" in page and "<td>DRIFT</td>" in page and "<td>ok</td>" in page
    assert span_drift_html(None) == ""


# -- the real components on a spanned data set (LocalDagRunner, SQLite ML Metadata) ----------------------
class _SpansSeenExecutor:
    """Executor of SpansSeen (built lazily: TFX is imported by the tests that run it)."""


def _spans_seen_component():
    """A consumer recording the spans of the Examples it receives (the window Transform would get)."""
    global _SpansSeenExecutor
    from tfx import types
    from tfx.dsl.components.base import base_component, base_executor, executor_spec
    from tfx.types import standard_artifacts
    from tfx.types.component_spec import ChannelParameter

    class Spec(types.ComponentSpec):
        PARAMETERS = {}
        INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
        OUTPUTS = {"seen": ChannelParameter(type=standard_artifacts.ExampleAnomalies)}

    class Executor(base_executor.BaseExecutor):
        def Do(self, input_dict, output_dict, exec_properties):
            from pipeline.components.span_window import span_of

            output_dict["seen"][0].set_string_custom_property(
                "spans", json.dumps([span_of(a) for a in input_dict["examples"]]))

    # TFX records the executor by its qualified name.
    Executor.__qualname__ = Executor.__name__ = "_SpansSeenExecutor"
    _SpansSeenExecutor = Executor

    class SpansSeen(base_component.BaseComponent):
        SPEC_CLASS = Spec
        EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

        def __init__(self, examples):
            super().__init__(spec=Spec(examples=examples, seen=types.Channel(type=standard_artifacts.ExampleAnomalies)))

    return SpansSeen


def _span_pipeline(root, data_dir, serving_dir, model_dir, span_config, drift_config):
    """ExampleGen (spans) + StatisticsGen + schema + the pipeline's drift and window nodes + Pusher."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline.pipeline import _interaction_example_gen, _span_drift, _span_window, _validated

    gen = _interaction_example_gen(os.path.join(data_dir, contract.INTERACTIONS_DIR), True, span_config.pin)
    stats, schema, _ = _validated(gen.outputs["examples"], configs.INTERACTIONS_SCHEMA, "Interaction")
    previous, drift = _span_drift(gen.outputs["examples"], stats.outputs["statistics"], schema.outputs["schema"],
                                  drift_config)
    window = _span_window(gen, span_config, "mlmd")
    seen = _spans_seen_component()(examples=window.outputs["examples"]).with_id("SpansSeen")
    model = tfx.dsl.Importer(source_uri=model_dir, artifact_type=tfx.types.standard_artifacts.Model
                             ).with_id("ModelImporter")
    pusher = tfx.components.Pusher(model=model.outputs["result"], push_destination=tfx.proto.PushDestination(
        filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)))
    pusher.add_upstream_node(drift)  # as Transform does in the pipeline: stopped drift, nothing pushed
    return tfx.dsl.Pipeline(
        pipeline_name="spans-test", pipeline_root=os.path.join(root, "root"),
        components=[gen, stats, schema, previous, drift, window, seen, model, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.db")),
        beam_pipeline_args=configs.BEAM_PIPELINE_ARGS, enable_cache=True)


def _outputs(root, node_id, key):
    """Custom properties and span of the artifacts `node_id` output under `key`, oldest first."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx

    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(root, "metadata.db")))
    context = store.get_context_by_type_and_name("node", f"spans-test.{node_id}")
    executions = store.get_executions_by_context(context.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    ids = sorted({e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT
                  and e.path.steps[0].key == key})
    return [{**{k: v.string_value or v.int_value for k, v in a.custom_properties.items()}, "uri": a.uri}
            for a in store.get_artifacts_by_id(ids)]


@pytest.mark.e2e
@pytest.mark.slow
def test_spanned_runs_read_the_latest_span_window_and_drift_warns_or_stops_the_push(tmp_path):
    from tfx import v1 as tfx

    from pipeline.components.span_drift import DRIFT_FILE

    data = _spanned_data(tmp_path / "data")
    # Span 2 drifts on purpose: half its train interactions go to one item, and every rating is 5.
    span2 = os.path.join(data, prepare.span_file(2, contract.TRAIN_SPLIT))
    rows = pd.read_csv(span2, dtype=str, keep_default_na=False)
    rows.loc[rows.index % 2 == 0, contract.ITEM_ID] = rows[contract.ITEM_ID].iloc[0]
    rows[contract.RATING] = "5.0"
    rows.to_csv(span2, index=False)
    held = tmp_path / "span-2"
    os.rename(os.path.join(data, contract.INTERACTIONS_DIR, "span-2"), held)
    root, serving = str(tmp_path / "run"), str(tmp_path / "serving")

    def run(span_config=SpanConfig(window=2), drift_config=DriftConfig()):
        model_dir = tmp_path / f"model-{len(os.listdir(tmp_path))}"  # a new model each run (no cached push)
        model_dir.mkdir()
        (model_dir / "saved_model.pb").write_bytes(b"a model")
        tfx.orchestration.LocalDagRunner().run(
            _span_pipeline(root, data, serving, str(model_dir), span_config, drift_config))

    run()  # only span 1 exists
    os.rename(held, os.path.join(data, contract.INTERACTIONS_DIR, "span-2"))
    run()  # span 2 arrived: ExampleGen takes the latest, drift warns, the model is pushed
    assert [a["span"] for a in _outputs(root, "InteractionExampleGen", "examples")] == [1, 2]
    assert [sorted(json.loads(a["spans"])) for a in _outputs(root, "SpansSeen", "seen")] == [[1], [1, 2]]
    first, second = (json.load(open(os.path.join(a["uri"], DRIFT_FILE)))
                     for a in _outputs(root, "SpanDriftValidator", "anomalies"))
    assert first["baseline_span"] is None and first["drifted"] == []
    assert (second["span"], second["baseline_span"]) == (2, 1)
    assert {"item_id", "rating"} <= set(second["drifted"]) and "user_id" not in second["drifted"]
    assert len(os.listdir(serving)) == 2

    with pytest.raises(Exception, match=r"span 2 vs span 1: drift in item_id") as failure:
        run(drift_config=DriftConfig(stop_on_drift=True))  # the same span again, now drift stops the run
    assert "nothing was trained or pushed" in str(failure.value)
    assert len(os.listdir(serving)) == 2, "a run stopped by drift pushed a model"


@pytest.mark.slow
def test_kubeflow_spec_reads_the_latest_span_and_checks_drift(tmp_path):
    from pipeline import kubeflow_runner

    out = tmp_path / "spec.json"
    assert kubeflow_runner.main(["--output", str(out), "--spans", "--bucket", "gs://b"]) == 0
    spec = json.loads(out.read_text())
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {"SpanDriftValidator", "LatestSpanStatisticsResolver"} <= set(tasks)
    assert "span-{SPAN}/train/*" in json.dumps(tasks["InteractionExampleGen"])
    # Without --spans the compiler does not look into the bucket: the unspanned layout.
    assert kubeflow_runner.main(["--output", str(tmp_path / "flat.json"), "--bucket", "gs://b"]) == 0
    assert "SpanDriftValidator" not in (tmp_path / "flat.json").read_text()


# -- recurring runs: the documented commands parse ----------------------------------------------------
def test_documented_kfp_recurring_run_command_parses(tmp_path):
    import shlex

    from kfp.cli import recurring_run

    text = open(os.path.join(PROJECT_DIR, "deploy", "README.md"), encoding="utf-8").read()
    line = next(ln for ln in text.splitlines() if ln.startswith("kfp ") and "recurring-run create" in ln)
    package = "outputs/kubeflow/tower-recs.yaml"  # what `pipeline.kubeflow_runner --output ...json` writes
    assert package in line
    (tmp_path / "spec.yaml").write_text("{}")
    args = shlex.split(line.split("recurring-run create", 1)[1].replace(package, str(tmp_path / "spec.yaml")))
    ctx = recurring_run.create.make_context("create", args)  # unknown options raise
    assert ctx.params["cron_expression"] == "0 30 2 * * *" and ctx.params["max_concurrency"] == 1
    assert ctx.params["catchup"] is False and ctx.params["experiment_name"] == "tower-recs"


def test_systemd_unit_runs_the_tfx_cli_with_valid_span_settings():
    import configparser

    from pipeline.overrides import from_env

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(os.path.join(PROJECT_DIR, "deploy", "systemd", "tower-recs-daily.service"))
    assert unit["Service"]["ExecStart"].endswith("/.venv/bin/tfx run create --engine local --pipeline_name tower-recs")
    environment = dict(kv.split("=", 1) for kv in unit["Service"]["Environment"].split())
    assert from_env(SpanConfig(), "SPAN", environment).window == 7
    assert from_env(DriftConfig(), "DRIFT", environment) == DriftConfig()
    timer = configparser.ConfigParser(interpolation=None)
    timer.read(os.path.join(PROJECT_DIR, "deploy", "systemd", "tower-recs-daily.timer"))
    assert timer["Timer"]["OnCalendar"] == "*-*-* 02:30:00"
