"""Training/serving skew: the TrainingServingSkew step (LocalDagRunner), the run report and the CLI.

Request logs are written by the server's own RequestLogger: a "clean" log replays training rows (their
users and histories), an "unseen" log carries the same histories for five users that never occur in
training. The unseen one is a skew (L-infinity on user ids) that shows in the report and, with
`action="stop"`, fails the run before anything downstream (here a Pusher) runs; the clean one is not.
The operators' CLI (`python -m serving.skew`) exits 1 on the first, 0 on the second, 2 when it cannot compare.
"""
import json
import os

import numpy as np
import pytest

from pipeline import configs
from pipeline.components.skew_config import SkewConfig
from schema import contract
from serving import skew
from serving.request_log import RequestLogConfig, RequestLogger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 200


def write_log(directory: str, train, users) -> None:
    """REQUESTS logged serving_default requests: training rows' histories (left-padded), the given users."""
    logger = RequestLogger(RequestLogConfig(prefix=os.path.join(directory, "tower_recs"), sampling_rate=1.0)).start()
    rows = train.sample(REQUESTS, random_state=0, replace=True)
    for i, (history, user) in enumerate(zip(rows[contract.HISTORY].fillna(""), users(rows))):
        items = [contract.PAD.encode()] + [h.encode() for h in str(history).split()]
        logger.log_arrays_predict("tower_recs", 1, contract.SERVING_DEFAULT,
                                  {contract.USER_ID: np.array([user.encode()], object),
                                   contract.HISTORY: np.array([items], object)},
                                  {contract.OUTPUT_SCORES: np.zeros([1, 3], np.float32)})
    assert logger.close()["written"] == REQUESTS


def skew_pipeline(base: str, data_dir: str, log_dir: str, config: SkewConfig, push: bool = False):
    """InteractionExampleGen + TrainingServingSkew (+ an imported model's Pusher waiting on it, as the
    pipeline's Transform and Trainer do with action="stop")."""
    from tfx import v1 as tfx

    from pipeline.components.skew_check import TrainingServingSkew
    from pipeline.pipeline import _interaction_example_gen

    examples = _interaction_example_gen(os.path.join(data_dir, contract.INTERACTIONS_DIR))
    check = TrainingServingSkew(examples=examples.outputs["examples"], request_log_dir=log_dir,
                                config=config.to_json())
    components = [examples, check]
    if push:
        model = tfx.dsl.Importer(source_uri=os.path.join(base, "model"),
                                 artifact_type=tfx.types.standard_artifacts.Model).with_id("ModelImporter")
        pusher = tfx.components.Pusher(model=model.outputs["result"], push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.join(base, "serving"))))
        pusher.add_upstream_node(check)
        components += [model, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name="skew", pipeline_root=os.path.join(base, "root"), components=components, enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(base, "metadata.db")),
        beam_pipeline_args=configs.BEAM_PIPELINE_ARGS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One pipeline run with the unseen-user log (action warn); the artifacts and both logs."""
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    from data.prepare import read_contract, write_contract
    from data.sample import generate

    base = str(tmp_path_factory.mktemp("skew"))
    data_dir = os.path.join(base, "data")
    write_contract(*generate(n_users=100, n_items=200, n_interactions=3000, seed=3), data_dir)
    train, _, _ = read_contract(data_dir)
    logs = {"clean": os.path.join(base, "clean"), "unseen": os.path.join(base, "unseen")}
    write_log(logs["clean"], train, lambda rows: rows[contract.USER_ID].tolist())
    write_log(logs["unseen"], train, lambda rows: [f"new_user_{i % 5}" for i in range(len(rows))])
    tfx.orchestration.LocalDagRunner().run(skew_pipeline(base, data_dir, logs["unseen"], SkewConfig()))
    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(base, "metadata.db")))
    latest = {t: max(store.get_artifacts_by_type(t), key=lambda a: a.id)
              for t in ("Examples", "ExampleStatistics", "ExampleAnomalies")}
    return dict(base=base, data_dir=data_dir, logs=logs, store=store, **latest)


def test_unseen_users_are_a_skew_anomaly_in_the_run_report(run):
    from tfx.types import standard_artifacts

    from pipeline import report

    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.set_mlmd_artifact(run["ExampleAnomalies"])
    summary = report.skew_summary(anomalies)
    assert summary["status"] == "checked" and summary["skewed"], summary
    assert summary["requests"] == REQUESTS
    user = next(m for m in summary["measurements"] if m["feature"] == contract.USER_ID)
    assert user["comparator"] == "L_INFTY" and user["value"] > user["threshold"] == 0.1
    history = next(m for m in summary["measurements"] if m["feature"] == contract.HISTORY)
    assert history["value"] < history["threshold"]                  # same histories: no skew there
    assert any(a.startswith(f"{contract.USER_ID}:") for a in summary["anomalies"]), summary
    assert os.path.isfile(os.path.join(anomalies.uri, f"Split-{skew.SERVING}", skew.ANOMALIES_FILE))
    page = report.render_html({"blessed": True, "reason": "r", "skew": summary}, {})
    assert "Training/serving skew" in page and "new_user_" in page and "L_INFTY" in page


def test_clean_log_gives_no_anomaly(run, tmp_path, capsys):
    # Through the operators' CLI (`python -m serving.skew` is this main()), against the step's statistics.
    code = skew.main(["--request-log", run["logs"]["clean"], "--statistics", run["ExampleStatistics"].uri,
                      "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "no skew above the thresholds" in out and "anomaly:" not in out, out
    with open(tmp_path / skew.RESULT_FILE) as f:
        result = json.load(f)
    assert result["status"] == "checked" and not result["skewed"] and result["anomalies"] == [], result
    assert {m["feature"] for m in result["measurements"]} == {contract.USER_ID, contract.HISTORY}
    assert all(m["value"] < m["threshold"] for m in result["measurements"])


def test_stop_setting_fails_the_run_before_the_push(run):
    from tfx import v1 as tfx

    os.makedirs(os.path.join(run["base"], "model"), exist_ok=True)
    pipeline = skew_pipeline(run["base"], run["data_dir"], run["logs"]["unseen"], SkewConfig(action="stop"),
                             push=True)
    with pytest.raises(Exception, match="skewed from the training data"):
        tfx.orchestration.LocalDagRunner().run(pipeline)
    assert not os.path.exists(os.path.join(run["base"], "serving"))
    assert not run["store"].get_artifacts_by_type("PushedModel")


def test_stop_setting_makes_training_wait_for_the_skew_check():
    from pipeline import configs
    from pipeline.pipeline import create_pipeline

    def upstream_of(pipeline, component_id):
        node = next(c for c in pipeline.components if c.id == component_id)
        return {c.id for c in node.upstream_nodes}

    for action, waits in (("stop", True), ("warn", False)):
        kwargs = dict(configs.pipeline_kwargs(), skew_config=SkewConfig(action=action), request_log_dir="logs")
        pipeline = create_pipeline(**kwargs)
        for component in ("Transform", "CatalogTrainer"):
            assert ("TrainingServingSkew" in upstream_of(pipeline, component)) == waits, (action, component)
        assert "TrainingServingSkew" in upstream_of(pipeline, "RunReport")


def test_cli_prints_the_skew_and_exits_1(run, capsys):
    # `python -m serving.skew` is this main(); the statistics are the pipeline step's output folder.
    statistics = os.path.dirname(run["ExampleStatistics"].uri)
    assert skew.main(["--request-log", run["logs"]["unseen"], "--statistics", statistics]) == 1
    out = capsys.readouterr().out
    assert "SKEW user_id: L_INFTY" in out and "anomaly: user_id" in out, out


def test_cli_exits_2_when_it_cannot_compare(run, tmp_path, capsys):
    statistics = run["ExampleStatistics"].uri
    assert skew.main(["--request-log", str(tmp_path), "--statistics", statistics]) == 2
    assert "no request log files" in capsys.readouterr().out
    assert skew.main(["--request-log", run["logs"]["clean"], "--statistics", str(tmp_path)]) == 2
    assert "no training statistics" in capsys.readouterr().err
