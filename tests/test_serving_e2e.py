"""End to end: the model the real `tfx` CLI pushed, served by `serving.server` over gRPC and REST.

Uses the session fixture `cli_pipeline_run` (shared with test_pipeline_e2e.py: one pipeline run serves both).
The pushed version dir is copied into this module's own base path, so the hot swap (last test) never changes
the fixture's serving dir that other tests count versions in. The server runs the production configuration
(server-side batching with serving/config/batching_parameters.txt), so requests use the batched contract.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from serving import layout
from serving.testing import ServerProcess
from trainer.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tower_recs"
MAX_K = ModelConfig().max_k


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def served(cli_pipeline_run, tmp_path_factory):
    pushed = cli_pipeline_run["model_base"]
    (version,) = layout.version_dirs(pushed)
    base = str(tmp_path_factory.mktemp("served") / MODEL)
    os.makedirs(base)
    shutil.copytree(os.path.join(pushed, str(version)), os.path.join(base, str(version)))
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
                        extra_args=["--file_system_poll_wait_seconds", "0.5"], ready_timeout_s=240)
    srv.start()
    data = cli_pipeline_run["data"]
    items = _rows(os.path.join(data, "items", "items.csv"))
    ch = grpc.insecure_channel(srv.grpc_target)
    yield {"srv": srv, "base": base, "version": version, "data": data, "items": items,
           "titles": {r["item_id"]: r["title"] for r in items},
           "user": _rows(os.path.join(data, "interactions", "train", "interactions.csv"))[0]["user_id"],
           "pred": prediction_service_pb2_grpc.PredictionServiceStub(ch),
           "models": model_service_pb2_grpc.ModelServiceStub(ch)}
    ch.close()
    srv.stop()


def _request(user_id, k=10, history=(), exclude=(), signature="serving_default"):
    """The batched contract: k per row, history/exclude rows starting with ""."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = signature
    req.inputs["user_id"].CopyFrom(tf.make_tensor_proto([user_id], tf.string))
    req.inputs["history"].CopyFrom(tf.make_tensor_proto(np.array([[""] + list(history)], object), tf.string))
    req.inputs["exclude"].CopyFrom(tf.make_tensor_proto(np.array([[""] + list(exclude)], object), tf.string))
    req.inputs["k"].CopyFrom(tf.make_tensor_proto([k], tf.int32))
    return req


def _predict(s, **kw):
    resp = s["pred"].Predict(_request(**kw), timeout=30)
    ids = [i.decode() for i in tf.make_ndarray(resp.outputs["item_ids"])[0]]
    return ids, tf.make_ndarray(resp.outputs["scores"])[0].tolist(), resp.model_spec.version.value


def _rest(s, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(s["srv"].rest_url + path, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_model_status_available(served):
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    status = served["models"].GetModelStatus(sreq, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(served["version"], get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    code, body = _rest(served, f"/v1/models/{MODEL}")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    assert "Number of warmup records read:" in served["srv"].log_text()


def test_top_k_for_known_user_grpc_and_rest(served):
    catalogue = set(served["titles"])
    ids, scores, version = _predict(served, user_id=served["user"], k=10)
    assert version == served["version"]
    assert len(ids) == 10 and len(set(ids)) == 10 and set(ids) <= catalogue
    assert scores == sorted(scores, reverse=True)
    code, body = _rest(served, f"/v1/models/{MODEL}:predict", {"inputs": {
        "user_id": [served["user"]], "history": [[""]], "exclude": [[""]], "k": [10]}})
    assert code == 200, body
    assert body["outputs"]["item_ids"][0] == ids
    np.testing.assert_allclose(body["outputs"]["scores"][0], scores, rtol=1e-5, atol=1e-6)


def test_exclude_removes_items(served):
    ids, scores, _ = _predict(served, user_id=served["user"], k=10)
    dropped = ids[:3]
    ids2, scores2, _ = _predict(served, user_id=served["user"], k=7, exclude=dropped)
    assert not set(dropped) & set(ids2)
    assert ids2 == ids[3:]          # the rest keep their order and scores
    np.testing.assert_allclose(scores2, scores[3:], rtol=1e-5, atol=1e-6)


def test_k_above_max_is_invalid_argument(served):
    with pytest.raises(grpc.RpcError) as err:
        served["pred"].Predict(_request(served["user"], k=MAX_K + 1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "k must be at most" in err.value.details() and str(MAX_K) in err.value.details()
    code, body = _rest(served, f"/v1/models/{MODEL}:predict", {"inputs": {
        "user_id": [served["user"]], "history": [[""]], "exclude": [[""]], "k": [MAX_K + 1]}})
    assert code == 400 and "k must be at most" in body["error"]
    assert _predict(served, user_id=served["user"], k=3)[0]   # still serving


def test_serve_tf_examples_and_embedding_signatures(served):
    item_ids = [r["item_id"] for r in served["items"][:3]]
    # serve_tf_examples: history is one space-separated string feature (trainer/serving_model.py).
    ex = tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[served["user"].encode()])),
        "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[" ".join(item_ids[:2]).encode()]))}))
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "serve_tf_examples"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([ex.SerializeToString()] * 2))
    resp = served["pred"].Predict(req, timeout=30)
    ids = tf.make_ndarray(resp.outputs["item_ids"])
    assert ids.shape == (2, ModelConfig().default_k)
    assert {i.decode() for i in ids.ravel()} <= set(served["titles"])

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "candidate_embedding"
    known = served["items"][:3]
    new_items = [  # brand-new ids: one with a new title, one with a known item's text, one with the new title again
        {"item_id": "an-item-never-seen", "title": "A New Title", "categories": "", "description": ""},
        {**known[0], "item_id": "a-copy-never-seen"},
        {"item_id": "another-never-seen", "title": "A New Title", "categories": "", "description": ""}]
    for col in ("item_id", "title", "categories", "description"):
        req.inputs[col].CopyFrom(tf.make_tensor_proto([r[col] for r in known + new_items], tf.string))
    emb = tf.make_ndarray(served["pred"].Predict(req, timeout=30).outputs["embedding"])
    assert emb.shape == (6, ModelConfig().embedding_dim + 1) and np.all(np.isfinite(emb))
    # The last column is the popularity prior (trainer/popularity.py): a known item's from its interactions, a
    # brand-new item's from its text alone (`new_item_text_popularity`): same text, same prior, whatever the id;
    # another text, another prior; a known item's text on a new id gets the text's prior, not the item's count's.
    # Known items' priors are relative to a new item's assumed count, by default (`new_item_popularity` 1.0) the
    # most-chosen item's: none is above 0, and items chosen less often are below.
    assert ModelConfig().new_item_popularity == 1.0
    assert np.all(emb[:3, -1] <= 0.0) and np.any(emb[:3, -1] < 0.0)
    assert emb[5, -1] == emb[3, -1] and emb[4, -1] != emb[3, -1] and emb[4, -1] != emb[0, -1]

    code, body = _rest(served, f"/v1/models/{MODEL}:predict", {"signature_name": "query_embedding", "inputs": {
        "user_id": [served["user"]], "history": [[""] + item_ids[:2]]}})
    assert code == 200 and len(body["outputs"][0]) == ModelConfig().embedding_dim + 1
    assert body["outputs"][0][-1] == 1.0   # the query's weight of the candidates' popularity prior


def _recommend_cli(args):
    script = os.path.join(os.path.dirname(sys.executable), "recommend")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "serving.client"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT)
    out = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "item_id", "score"]
    return [line.split(None, 3) for line in lines[1:]]


def test_recommend_cli_grpc_and_rest(served):
    items_csv = os.path.join(served["data"], "items", "items.csv")
    common = ["--user", served["user"], "--k", "5", "--items", items_csv]
    g = _recommend_cli(common + ["--target", served["srv"].grpc_target])
    r = _recommend_cli(common + ["--rest", "--rest_url", served["srv"].rest_url])
    assert len(g) == 5 and [row[0] for row in g] == ["1", "2", "3", "4", "5"]
    assert g == r
    assert all(len(row) == 4 and row[3] == served["titles"][row[1]].strip() for row in g)
    assert [row[1] for row in g] == _predict(served, user_id=served["user"], k=5)[0]


def test_hot_swap_real_model_under_load(served):
    """Copy the version to a higher number (as the Pusher would: write elsewhere, then rename)."""
    old, new = served["version"], served["version"] + 1
    versions, errors, stop = [], [], threading.Event()

    def hammer():
        ch = grpc.insecure_channel(served["srv"].grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        while not stop.is_set():
            try:
                versions.append(stub.Predict(_request(served["user"], k=5), timeout=30).model_spec.version.value)
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
        ch.close()

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.3)
        tmp = os.path.join(served["base"], f".tmp-{new}")
        shutil.copytree(os.path.join(served["base"], str(old)), tmp)
        os.rename(tmp, os.path.join(served["base"], str(new)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not versions or versions[-1] != new):
            time.sleep(0.1)
        n = len(versions)
        while time.monotonic() < deadline and len(versions) < n + 10:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[:5]
    assert old in versions and versions[-1] == new, (versions[:3], versions[-3:], served["srv"].log_text()[-2000:])
    first_new = versions.index(new)
    assert all(v == new for v in versions[first_new + 5:])
    ids, _, version = _predict(served, user_id=served["user"], k=5)
    assert version == new and len(ids) == 5
