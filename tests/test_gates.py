"""The gates before Pusher: RetrievalEvaluator (ModelBlessing) and ServingCheck (InfraBlessing).

* judge logic of both gates (no TensorFlow);
* the real pipeline: after a good run (shared with tests/test_bad_data.py), a deliberately worse model
  (TRAIN_STEPS=1: one gradient step) is not blessed and not pushed; the good version stays the latest
  pushed and the latest blessed (the next run's baseline).
"""
import json
import os
import sqlite3

import pytest

import gate_pipeline_run as runs
from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig


def _metrics(recall):
    return {"overall": {"recall@50": recall, "ndcg@50": recall / 2, "users": 10}, "slices": {}}


def test_evaluator_judgement():
    from pipeline.components.retrieval_evaluator import judge

    cfg = EvaluationConfig(thresholds={"recall@50": 0.1}, baseline_metric="recall@50", max_relative_drop=0.05)
    blessed, reasons = judge(_metrics(0.2), None, cfg)
    assert blessed and any("no baseline" in r for r in reasons)
    assert not judge(_metrics(0.05), None, cfg)[0]                     # below the absolute bound
    assert judge(_metrics(0.19), _metrics(0.2), cfg)[0]                # within 5% of the baseline
    blessed, reasons = judge(_metrics(0.15), _metrics(0.2), cfg)       # 25% worse than the baseline
    assert not blessed and any(r.startswith("FAIL") and "baseline" in r for r in reasons)
    assert not judge(_metrics(0.2), None, EvaluationConfig(thresholds={"recall@500": 0.1}))[0]


def test_serving_check_judgement():
    from pipeline.components.serving_check import judge

    good = {"ops_not_allowed": [], "signature_problems": [], "warmup": {"file": True, "records": 3, "errors": []},
            "latency_ms": {"p50": 1.0, "p99": 2.0, "mean": 1.0, "calls": 5}, "project_modules": []}
    cfg = ServingCheckConfig(max_p99_ms=100)
    assert judge(good, cfg)[0]
    for bad in ({"ops_not_allowed": ["ScannSearch"]}, {"signature_problems": ["signature 'x' missing"]},
                {"warmup": {"file": True, "records": 3, "errors": ["record 1: boom"]}},
                {"warmup": {"file": False, "records": 0, "errors": []}},
                {"latency_ms": {"p50": 1.0, "p99": 500.0, "mean": 9.0, "calls": 5}},
                {"project_modules": ["trainer"]}, {"error": "probe exited with 1"}):
        blessed, reasons = judge({**good, **bad}, cfg)
        assert not blessed, bad


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


@pytest.mark.e2e
def test_worse_model_is_not_blessed_and_not_pushed(tiny_encoder):
    run = runs.good_run(tiny_encoder)
    metadata = os.path.join(run["output"], "metadata", "tower-recs", "metadata.db")
    good_blessing = [b for b in _artifacts(metadata, "ModelBlessing") if b[2].get("blessed") == 1]
    assert good_blessing, "the good run must be blessed"
    good_model_uri = good_blessing[-1][2]["current_model"]
    before = runs.snapshot(run["serving_dir"])

    proc = runs.run_pipeline(run, TRAIN_STEPS=1)
    assert proc.returncode == 0, proc.stderr[-5000:]

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
    assert line.startswith("Model blessed: no") and "baseline" in line and "report: " in line, line
    report = line.split("report: ")[-1]
    assert os.path.exists(report)
    with open(report, encoding="utf-8") as f:
        page = f.read()
    assert "Model blessed: no" in page and "data:image/png;base64," in page
