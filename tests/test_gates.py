"""The gates before Pusher: RetrievalEvaluator (ModelBlessing) and ServingCheck (InfraBlessing).

* judge logic of both gates: every rule can fail (no TensorFlow), config validation, probe output checks;
* the real pipeline: an untrained first model (TRAIN_STEPS=1, fresh output dir, no baseline) is not
  blessed and nothing is pushed (it loses to MostPopular); after a good run (shared with
  tests/test_bad_data.py), the same worse model is not blessed and not pushed; the good version stays
  the latest pushed and the latest blessed (the next run's baseline).
Five successive 4%-worse models: tests/test_gate_drift.py.
"""
import json
import os
import sqlite3

import pytest

import gate_pipeline_run as runs
from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig
from trainer.model_config import ModelConfig


def _metrics(recall, ndcg=0.2):
    return {"overall": {"recall@50": recall, "ndcg@10": ndcg, "users": 10}, "slices": {}}


CFG = EvaluationConfig(thresholds={"recall@50": 0.1}, popularity_metric="ndcg@10", popularity_margin=0.25,
                       baseline_metric="recall@50", max_relative_drop=0.05)
POPULAR = _metrics(0.15, ndcg=0.08)


def test_evaluator_judgement_absolute_and_popularity():
    from pipeline.components.retrieval_evaluator import judge

    blessed, reasons = judge(_metrics(0.2), CFG, POPULAR)
    assert blessed and any("no latest pushed model" in r for r in reasons), reasons
    assert any(r.startswith("PASS ndcg@10 = 0.2000 >= MostPopular 0.0800 + 25% = 0.1000") for r in reasons)
    assert not judge(_metrics(0.05), CFG, POPULAR)[0]                      # below the absolute bound
    blessed, reasons = judge(_metrics(0.2, ndcg=0.09), CFG, POPULAR)        # beats popularity, not by 25%
    assert not blessed and [r for r in reasons if r.startswith("FAIL")] == [
        "FAIL ndcg@10 = 0.0900 < MostPopular 0.0800 + 25% = 0.1000"]
    assert not judge(_metrics(0.2), CFG, None)[0]                           # MostPopular not scored: no blessing


def test_evaluator_judgement_regression_against_pushed_and_best_blessed():
    from pipeline.components.retrieval_evaluator import judge

    assert judge(_metrics(0.19), CFG, POPULAR, latest_pushed=_metrics(0.2))[0]        # within 5%
    blessed, reasons = judge(_metrics(0.15), CFG, POPULAR, latest_pushed=_metrics(0.2))
    assert not blessed and any(r.startswith("FAIL") and "latest pushed model 0.2000" in r for r in reasons)
    # Within 5% of the pushed model but not of the best recent blessed one: still no blessing.
    blessed, reasons = judge(_metrics(0.19), CFG, POPULAR, latest_pushed=_metrics(0.195), best_blessed=_metrics(0.21))
    assert not blessed and [r.split(" = ")[0] for r in reasons if r.startswith("FAIL")] == ["FAIL recall@50"]
    assert any("best of the last 5 blessed models 0.2100" in r for r in reasons)


def test_four_percent_losses_cannot_compound():
    """Judged against the latest blessed model only, 4%-worse models pass forever; against the best
    blessed one they stop once the drift passes 5%."""
    from pipeline.components.retrieval_evaluator import judge

    quality = [0.3 * 0.96 ** i for i in range(5)]
    blessed = []
    for i, value in enumerate(quality):
        best = max((quality[j] for j in blessed), default=None)
        if judge(_metrics(value, ndcg=1.0), CFG, POPULAR, best_blessed=None if best is None else _metrics(best))[0]:
            blessed.append(i)
    assert blessed == [0, 1]
    chained = [judge(_metrics(q, ndcg=1.0), CFG, POPULAR, best_blessed=_metrics(prev))[0]
               for prev, q in zip(quality, quality[1:])]
    assert all(chained)    # why a window of blessed models (and the pushed one) is needed, not the latest


@pytest.mark.parametrize("values, setting", [
    ({"baseline_metric": "recal@50"}, "EvaluationConfig.baseline_metric (TOWER_RECS_EVAL_BASELINE_METRIC)"),
    ({"popularity_metric": "ndcg@20"}, "EvaluationConfig.popularity_metric"),
    ({"thresholds": {"recall@500": 0.1}}, "EvaluationConfig.thresholds"),
    ({"thresholds": {"recall@50": 1.5}}, "EvaluationConfig.thresholds"),
    ({"max_relative_drop": 1.0}, "EvaluationConfig.max_relative_drop"),
    ({"popularity_margin": -1.5}, "EvaluationConfig.popularity_margin"),
    ({"baseline_window": 0}, "EvaluationConfig.baseline_window"),
    ({"ks": ()}, "EvaluationConfig.ks"),
])
def test_evaluation_config_errors_name_the_setting(values, setting):
    with pytest.raises(ValueError) as error:
        EvaluationConfig(**values)
    assert setting in str(error.value)
    if "metric" in setting or "thresholds" in setting and "1.5" not in str(values):
        assert "valid names" in str(error.value) and "'recall@50'" in str(error.value)


def test_gate_settings_are_checked_when_the_pipeline_is_built():
    """A misspelt TOWER_RECS_EVAL_BASELINE_METRIC fails `pipeline.configs` (what the runners import)."""
    from pipeline.overrides import from_env

    with pytest.raises(ValueError, match="unknown metric 'recal@50'.*valid names"):
        from_env(EvaluationConfig(), "EVAL", {"TOWER_RECS_EVAL_BASELINE_METRIC": "recal@50"})
    with pytest.raises(ValueError, match="ServingCheckConfig.latency_calls"):
        from_env(ServingCheckConfig(), "SERVING_CHECK", {"TOWER_RECS_SERVING_CHECK_LATENCY_CALLS": "0"})
    cfg = from_env(EvaluationConfig(), "EVAL", {"TOWER_RECS_EVAL_KS": "[5, 20]",
                                                 "TOWER_RECS_EVAL_THRESHOLDS": '{"recall@20": 0.1}',
                                                 "TOWER_RECS_EVAL_POPULARITY_METRIC": "ndcg@5",
                                                 "TOWER_RECS_EVAL_BASELINE_METRIC": "recall@20"})
    assert EvaluationConfig.from_json(cfg.to_json()) == cfg


def test_most_popular_uses_train_popularity_and_exclusions():
    from pipeline.components.retrieval_evaluator import EvalData, compute_metrics, most_popular_top

    data = EvalData(users=["u1", "u2"], histories=[["a"], []], exclude=[["a"], []], relevant=[{"b"}, {"a"}],
                    train_counts=[1, 0], cold_items=set(), catalogue_size=4)
    top = most_popular_top(["a", "b", "c", "d"], data, 2)
    assert top.tolist() == [["b", "c"], ["a", "b"]]
    assert compute_metrics(top, data, [1])["overall"]["recall@1"] == 1.0


def _probe_result(ids=("i1", "i2"), scores=(0.9, 0.5), records=3, **extra):
    k = len(ids)
    return {"ops_not_allowed": [], "signature_problems": [], "project_modules": [],
            "warmup": {"file": True, "records": records, "errors": []},
            "latency_ms": {"p50": 1.0, "p99": 2.0, "mean": 1.0, "calls": 5},
            "probe_outputs": {"item_ids": {"shape": [1, k], "values": [list(ids)]},
                              "scores": {"shape": [1, k], "values": [list(scores)]}}, **extra}


CATALOGUE = {"i1", "i2", "i3"}


def test_serving_check_judgement():
    from pipeline.components.serving_check import judge

    cfg = ServingCheckConfig(max_p99_ms=100, probe_k=2)
    blessed, reasons = judge(_probe_result(), cfg, CATALOGUE)
    assert blessed, reasons
    good = _probe_result()
    for bad in ({"ops_not_allowed": ["ScannSearch"]}, {"signature_problems": ["signature 'x' missing"]},
                {"warmup": {"file": True, "records": 3, "errors": ["record 1: boom"]}},
                {"warmup": {"file": False, "records": 0, "errors": []}},
                {"warmup": {"file": True, "records": 0, "errors": []}},        # an empty warmup file
                {"latency_ms": {"p50": 1.0, "p99": 500.0, "mean": 9.0, "calls": 5}},
                {"latency_ms": None},
                {"project_modules": ["trainer"]}, {"error": "probe exited with 1"}):
        blessed, reasons = judge({**good, **bad}, cfg, CATALOGUE)
        assert not blessed, bad
    reasons = judge({**good, "warmup": {"file": True, "records": 0, "errors": []}}, cfg, CATALOGUE)[1]
    assert any(r.startswith("FAIL") and "no records" in r for r in reasons)


@pytest.mark.parametrize("result, problem", [
    (_probe_result(ids=("i1", "zz")), "not in the catalogue"),
    (_probe_result(ids=("i1", "")), "not in the catalogue"),                 # padding where k items exist
    (_probe_result(scores=(0.1, 0.9)), "not sorted descending"),
    (_probe_result(scores=(0.9, float("-inf"))), "non-finite"),
    (_probe_result(ids=("i1", "i1")), "repeat"),
    (_probe_result(ids=("i1",), scores=(0.9,)), "k=2 not honoured"),
    ({**_probe_result(), "probe_outputs": {}}, "returned nothing"),
])
def test_serving_check_probe_outputs(result, problem):
    from pipeline.components.serving_check import judge

    blessed, reasons = judge(result, ServingCheckConfig(probe_k=2), CATALOGUE)
    assert not blessed
    assert any(r.startswith("FAIL probe outputs") and problem in r for r in reasons), reasons


def test_serving_check_without_catalogue_fails():
    from pipeline.components.serving_check import judge

    assert not judge(_probe_result(), ServingCheckConfig(probe_k=2), None)[0]


def _artifacts(metadata_path, type_name):
    """[(id, uri, {custom property: value})] of one artifact type, oldest first."""
    con = sqlite3.connect(metadata_path)
    rows = con.execute("SELECT a.id, a.uri FROM Artifact a JOIN Type t ON a.type_id = t.id WHERE t.name = ? "
                       "ORDER BY a.id", (type_name,)).fetchall()
    out = []
    for artifact_id, uri in rows:
        props = {name: (i if i is not None else s) for name, i, s in con.execute(
            "SELECT name, int_value, string_value FROM ArtifactProperty WHERE artifact_id = ? AND is_custom_property",
            (artifact_id,))}
        out.append((artifact_id, uri, props))
    con.close()
    return out


def _trainer_base_models(metadata_path):
    """The `base_model` input URIs of each CatalogTrainer execution, oldest first."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(config)
    types = {t.id: t.name for t in store.get_execution_types()}
    out = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        if not types[execution.type_id].endswith("CatalogTrainer"):
            continue
        ids = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id])
               if e.type == metadata_store_pb2.Event.INPUT and e.path.steps[0].key == "base_model"]
        out.append([a.uri for a in store.get_artifacts_by_id(ids)])
    return out


def _check_warm_start_records(metadata, good_model_uri):
    """The good run had no blessed model to start from; the next run was given it (LatestBlessedModelResolver)
    as `base_model` and TOWER_RECS_MODEL_WARM_START=0 made it start cold; each records why."""
    records = []
    for _, uri, _ in _artifacts(metadata, "ModelRun")[-2:]:
        with open(os.path.join(uri, "warm_start.json")) as f:
            records.append(json.load(f))
    cold = {"warm_started": False, "epochs": ModelConfig().epochs, "learning_rate": ModelConfig().learning_rate}
    assert records == [{**cold, "reason": "no base model with a warm-start state"},
                       {**cold, "reason": "cold start forced (warm_start=False)"}]
    assert _trainer_base_models(metadata)[-2:] == [[], [good_model_uri]]
    assert os.path.isfile(os.path.join(good_model_uri, "warm_start", "weights.npz"))     # the next run's start
    assert not os.path.exists(os.path.join(good_model_uri, "Format-Serving", "warm_start"))


@pytest.mark.e2e
def test_worse_model_is_not_blessed_and_not_pushed(tiny_encoder):
    run = runs.good_run(tiny_encoder)
    metadata = os.path.join(run["output"], "metadata", "tower-recs", "metadata.db")
    good_blessing = [b for b in _artifacts(metadata, "ModelBlessing") if b[2].get("blessed") == 1]
    assert good_blessing, "the good run must be blessed"
    good_model_uri = good_blessing[-1][2]["current_model"]
    before = runs.snapshot(run["serving_dir"])

    # A cold start (the flag): warm-started from the good model, one step would not make it worse.
    proc = runs.run_pipeline(run, TRAIN_STEPS=1, MODEL_WARM_START=0)
    assert proc.returncode == 0, proc.stderr[-5000:]
    _check_warm_start_records(metadata, good_model_uri)

    blessing = _artifacts(metadata, "ModelBlessing")[-1]
    assert blessing[2]["blessed"] == 0, blessing
    assert blessing[2]["baseline_model"] == good_model_uri
    assert os.path.exists(os.path.join(blessing[1], "NOT_BLESSED"))
    evaluation = _artifacts(metadata, "ModelEvaluation")[-1]
    with open(os.path.join(evaluation[1], "metrics.json")) as f:
        metrics = json.load(f)
    assert not metrics["blessed"] and metrics["baseline"]["uri"] == good_model_uri
    assert metrics["candidate"]["overall"]["recall@50"] < metrics["baseline"]["overall"]["recall@50"]
    infra = _artifacts(metadata, "InfraBlessing")[-1]
    assert infra[2]["blessed"] == 1 and os.path.exists(os.path.join(infra[1], "INFRA_BLESSED"))

    pushed = _artifacts(metadata, "PushedModel")[-1]
    assert pushed[2].get("pushed") == 0
    assert runs.snapshot(run["serving_dir"]) == before       # the good version is still the latest
    assert sorted(os.listdir(run["serving_dir"])) == run["versions"]
    # The good model stays the latest blessed one: the baseline of the next run.
    blessed = [b for b in _artifacts(metadata, "ModelBlessing") if b[2].get("blessed") == 1]
    assert blessed[-1][2]["current_model"] == good_model_uri

    line = runs.latest_line(run)
    assert line.startswith("Model blessed: no") and "latest pushed model" in line and "report: " in line, line
    report = line.split("report: ")[-1]
    assert os.path.exists(report)
    with open(report, encoding="utf-8") as f:
        page = f.read()
    assert "Model blessed: no" in page and "data:image/png;base64," in page
    assert "MostPopular (train popularity)" in page and "<td>FAIL</td>" in page


@pytest.mark.e2e
def test_untrained_first_model_is_not_blessed_and_nothing_is_pushed(tiny_encoder):
    """`TOWER_RECS_TRAIN_STEPS=1` in a fresh output dir: no baseline exists, MostPopular still stops it."""
    run = runs.good_run(tiny_encoder)
    first = run["untrained"]
    assert first["returncode"] == 0, first["stderr"]
    assert first["versions"] == []                                   # nothing pushed
    metadata = os.path.join(run["output"], "metadata", "tower-recs", "metadata.db")
    blessing = _artifacts(metadata, "ModelBlessing")[0]
    assert blessing[2]["blessed"] == 0 and os.path.exists(os.path.join(blessing[1], "NOT_BLESSED"))
    assert _artifacts(metadata, "PushedModel")[0][2].get("pushed") == 0
    with open(os.path.join(_artifacts(metadata, "ModelEvaluation")[0][1], "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["baseline"] is None and metrics["baselines"]["latest_pushed"] is None
    fails = [r for r in metrics["reasons"] if r.startswith("FAIL")]
    assert fails and all("MostPopular" in r for r in fails), metrics["reasons"]
    metric = metrics["config"]["popularity_metric"]
    assert metrics["candidate"]["overall"][metric] < metrics["baselines"]["most_popular"]["overall"][metric] * (
        1 + metrics["config"]["popularity_margin"])


def test_report_lists_every_gate_and_every_baseline():
    from pipeline.report import gate_rows, model_rows, render_html

    evaluation = {"reasons": ["PASS recall@50 = 0.2000 >= 0.1 (absolute threshold)",
                              "FAIL ndcg@10 = 0.0900 < MostPopular 0.0800 + 25% = 0.1000"],
                  "candidate": {"uri": "c", **_metrics(0.2)}, "baseline": {"uri": "p", **_metrics(0.21)},
                  "baselines": {"most_popular": {"model": "MostPopular", **POPULAR},
                                "latest_pushed": {"uri": "p", **_metrics(0.21)},
                                "best_blessed": {"uri": "b", **_metrics(0.22)},
                                "blessed_window": [{"uri": "b"}, {"uri": "p"}]},
                  "config": {"baseline_metric": "recall@50"}, "data": {}}
    summary = {"evaluation": evaluation, "serving": {"reasons": ["FAIL no assets.extra/tf_serving_warmup_requests"]},
               "blessed": False, "reason": "r"}
    assert gate_rows(summary) == [["evaluator", "PASS", "recall@50 = 0.2000 >= 0.1 (absolute threshold)"],
                                  ["evaluator", "FAIL", "ndcg@10 = 0.0900 < MostPopular 0.0800 + 25% = 0.1000"],
                                  ["serving check", "FAIL", "no assets.extra/tf_serving_warmup_requests"]]
    assert [label for label, _ in model_rows(evaluation)] == [
        "candidate", "MostPopular (train popularity)", "latest pushed", "best of last 2 blessed"]
    page = render_html(summary, {})
    assert page.count("<td>FAIL</td>") == 2 and "<td>0.2200</td>" in page
