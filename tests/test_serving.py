"""The local TF Serving-compatible server: gRPC, REST, errors, warmup, hot swap, and the TF Serving configs.

One server subprocess (free localhost ports) serves a small synthetic SavedModel with the trainer's signatures.
The hot-swap test pushes a second version, so it runs last.
"""
import json
import os
import threading
import time
import urllib.error
import urllib.request

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.server import ServerProcess  # noqa: E402
from serving.synthetic_model import build_synthetic_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tower_recs"
MAX_BATCH = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / MODEL)
    build_synthetic_model(base, 1, num_items=50, seed=0)
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
                        extra_args=["--poll_interval_s", "0.5", "--max_batch_size", str(MAX_BATCH),
                                    "--version_labels", "stable=1"])
    srv.base_path = base
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stubs(server):
    ch = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch), model_service_pb2_grpc.ModelServiceStub(ch)
    ch.close()


def make_request(user_ids=("user_1",), history=(("item_1", ""),), exclude=(("item_2",),), k=5, **spec):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = spec.pop("name", MODEL)
    for key, val in spec.items():
        if key == "version":
            req.model_spec.version.value = val
        else:
            setattr(req.model_spec, key, val)
    req.inputs["user_id"].CopyFrom(tf.make_tensor_proto(list(user_ids), dtype=tf.string))
    req.inputs["history"].CopyFrom(tf.make_tensor_proto(np.array(history, dtype=object).reshape(len(user_ids), -1),
                                                        dtype=tf.string))
    req.inputs["exclude"].CopyFrom(tf.make_tensor_proto(np.array(exclude, dtype=object).reshape(len(user_ids), -1),
                                                        dtype=tf.string))
    req.inputs["k"].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
    return req


def rest(server, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.rest_url + path, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_healthy(stub):
    resp = stub.Predict(make_request(), timeout=10)
    assert tf.make_ndarray(resp.outputs["item_ids"]).shape == (1, 5)


# ------------------------------------------------------------------------------------------------ gRPC
def test_grpc_predict(stubs):
    pred, _ = stubs
    resp = pred.Predict(make_request(user_ids=("user_1", "user_2"), history=(("item_1", ""), ("item_3", "item_4")),
                                     exclude=(("item_2",), ("",)), k=7), timeout=10)
    ids, scores = tf.make_ndarray(resp.outputs["item_ids"]), tf.make_ndarray(resp.outputs["scores"])
    assert ids.shape == (2, 7) and scores.shape == (2, 7) and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert b"item_2" not in ids[0]
    assert resp.model_spec.name == MODEL and resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "serving_default"
    # output_filter and an empty history/exclude width
    req = make_request(history=((),), exclude=((),), k=3)
    req.output_filter.append("item_ids")
    resp = pred.Predict(req, timeout=10)
    assert list(resp.outputs) == ["item_ids"]


def test_grpc_version_and_label_selection(stubs):
    pred, _ = stubs
    assert pred.Predict(make_request(version=1), timeout=10).model_spec.version.value == 1
    assert pred.Predict(make_request(version_label="stable"), timeout=10).model_spec.version.value == 1


def test_grpc_serve_tf_examples(stubs):
    pred, _ = stubs
    ex = tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"user_3"])),
        "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"item_1 item_9"]))}))  # as export.py
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "serve_tf_examples"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([ex.SerializeToString()]))
    resp = pred.Predict(req, timeout=10)
    ids = tf.make_ndarray(resp.outputs["item_ids"])
    assert ids.shape == (1, 10)
    # same answer as serving_default with that history (the history is used, not silently dropped)
    same = pred.Predict(make_request(user_ids=("user_3",), history=(("item_1", "item_9"),), exclude=((),), k=10),
                        timeout=10)
    assert ids.tolist() == tf.make_ndarray(same.outputs["item_ids"]).tolist()


def test_grpc_metadata_and_status(stubs):
    pred, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    resp = pred.GetModelMetadata(req, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    sigs = sig_map.signature_def
    assert set(sigs) == {"serving_default", "serve_tf_examples", "query_embedding", "candidate_embedding"}
    assert set(sigs["serving_default"].inputs) == {"user_id", "history", "exclude", "k"}
    assert set(sigs["serving_default"].outputs) == {"item_ids", "scores"}
    assert resp.model_spec.version.value == 1

    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    status = models.GetModelStatus(sreq, timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    assert status.model_version_status[0].status.error_code == 0


def _drop(req, name):
    del req.inputs[name]
    return req


def _add(req, name, proto):
    req.inputs[name].CopyFrom(proto)
    return req


GRPC_ERRORS = {
    "missing_input": (lambda: _drop(make_request(), "k"), grpc.StatusCode.INVALID_ARGUMENT, ["Missing", "'k'"]),
    "unknown_input": (lambda: _add(make_request(), "foo", tf.make_tensor_proto(["x"])),
                      grpc.StatusCode.INVALID_ARGUMENT, ["Unknown", "'foo'"]),
    "wrong_dtype": (lambda: _add(make_request(), "k", tf.make_tensor_proto("5")),
                    grpc.StatusCode.INVALID_ARGUMENT, ["'k'", "dtype string", "expected int32"]),
    "wrong_rank": (lambda: _add(make_request(), "history", tf.make_tensor_proto(["item_1"])),
                   grpc.StatusCode.INVALID_ARGUMENT, ["'history'", "rank 1", "rank 2"]),
    "k_shape": (lambda: _add(make_request(), "k", tf.make_tensor_proto([5], dtype=tf.int32)),
                grpc.StatusCode.INVALID_ARGUMENT, ["'k'", "shape [1]", "shape []"]),
    "batch_mismatch": (lambda: _add(make_request(user_ids=("user_1", "user_2"), history=(("a",), ("b",)),
                                                 exclude=(("",), ("",))), "exclude",
                                    tf.make_tensor_proto(np.array([[""]], dtype=object), dtype=tf.string)),
                       grpc.StatusCode.INVALID_ARGUMENT, ["batch sizes", "exclude"]),
    "k_above_max": (lambda: make_request(k=1000), grpc.StatusCode.INVALID_ARGUMENT, ["k", "100"]),
    "batch_above_max": (lambda: make_request(user_ids=[f"u{i}" for i in range(MAX_BATCH + 1)],
                                             history=[("",)] * (MAX_BATCH + 1), exclude=[("",)] * (MAX_BATCH + 1)),
                        grpc.StatusCode.INVALID_ARGUMENT, ["batch size 17", f"max_batch_size {MAX_BATCH}"]),
    "unknown_model": (lambda: make_request(name="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    "unknown_version": (lambda: make_request(version=12345), grpc.StatusCode.NOT_FOUND, ["12345"]),
    "unknown_label": (lambda: make_request(version_label="canary"), grpc.StatusCode.NOT_FOUND, ["canary"]),
    "unknown_signature": (lambda: make_request(signature_name="nope_sig"), grpc.StatusCode.NOT_FOUND, ["nope_sig"]),
    "unknown_output_filter": (lambda: (lambda r: (r.output_filter.append("zzz"), r)[1])(make_request()),
                              grpc.StatusCode.INVALID_ARGUMENT, ["zzz"]),
}


@pytest.mark.parametrize("case", sorted(GRPC_ERRORS))
def test_grpc_errors(stubs, case):
    pred, _ = stubs
    build, code, words = GRPC_ERRORS[case]
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(build(), timeout=10)
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details(), (w, err.value.details())
    assert_healthy(pred)


# ------------------------------------------------------------------------------------------------ REST
def test_rest_status_and_metadata(server):
    status, body = rest(server, f"/v1/models/{MODEL}")
    assert status == 200
    assert body["model_version_status"] == [{"version": "1", "state": "AVAILABLE",
                                             "status": {"error_code": "OK", "error_message": ""}}]
    assert rest(server, f"/v1/models/{MODEL}/versions/1")[0] == 200
    status, meta = rest(server, f"/v1/models/{MODEL}/metadata")
    assert status == 200 and meta["model_spec"]["version"] == "1"
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]


def test_rest_row_and_columnar_agree_with_grpc(server, stubs):
    pred, _ = stubs
    g = pred.Predict(make_request(user_ids=("user_1", "user_2"), history=(("item_1", ""), ("item_3", "item_4")),
                                  exclude=(("item_2",), ("",)), k=4), timeout=10)
    g_ids = tf.make_ndarray(g.outputs["item_ids"]).astype(str).tolist()
    g_scores = tf.make_ndarray(g.outputs["scores"])

    status, rows = rest(server, f"/v1/models/{MODEL}:predict", {"instances": [
        {"user_id": "user_1", "history": ["item_1", ""], "exclude": ["item_2"], "k": 4},
        {"user_id": "user_2", "history": ["item_3", "item_4"], "exclude": [""], "k": 4}]})
    assert status == 200, rows
    assert [r["item_ids"] for r in rows["predictions"]] == g_ids
    np.testing.assert_allclose([r["scores"] for r in rows["predictions"]], g_scores, rtol=1e-5)

    status, cols = rest(server, f"/v1/models/{MODEL}/versions/1:predict", {"signature_name": "serving_default", "inputs": {
        "user_id": ["user_1", "user_2"], "history": [["item_1", ""], ["item_3", "item_4"]],
        "exclude": [["item_2"], [""]], "k": 4}})
    assert status == 200, cols
    assert cols["outputs"]["item_ids"] == g_ids
    np.testing.assert_allclose(cols["outputs"]["scores"], g_scores, rtol=1e-5)

    status, emb = rest(server, f"/v1/models/{MODEL}:predict", {"signature_name": "query_embedding", "inputs": {
        "user_id": ["user_1"], "history": [[]]}})
    assert status == 200 and len(emb["outputs"][0]) == 16   # single output: "outputs" is the value itself


GOOD = {"user_id": ["user_1"], "history": [["item_1"]], "exclude": [[""]], "k": 3}
REST_ERRORS = {
    "invalid_json": (f"/v1/models/{MODEL}:predict", b"{not json", 400, ["JSON"]),
    "no_instances_or_inputs": (f"/v1/models/{MODEL}:predict", {"foo": 1}, 400, ["instances", "inputs"]),
    "missing_input": (f"/v1/models/{MODEL}:predict", {"inputs": {k: v for k, v in GOOD.items() if k != "k"}}, 400,
                      ["Missing", "'k'"]),
    "unknown_input": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, foo=["x"])}, 400, ["'foo'"]),
    "wrong_dtype": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, k="3")}, 400, ["'k'", "int32"]),
    "wrong_rank": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, history=["item_1"])}, 400,
                   ["'history'", "rank"]),
    "ragged": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, user_id=["a", "b"],
                                                                history=[["x"], ["y", "z"]], exclude=[[""], [""]])},
               400, ["'history'", "ragged"]),
    "k_above_max": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, k=101)}, 400, ["k", "100"]),
    "batch_above_max": (f"/v1/models/{MODEL}:predict", {"inputs": dict(
        GOOD, user_id=["u"] * 20, history=[[""]] * 20, exclude=[[""]] * 20)}, 400, ["max_batch_size"]),
    "unknown_model": ("/v1/models/nope:predict", {"inputs": GOOD}, 404, ["nope"]),
    "unknown_version": (f"/v1/models/{MODEL}/versions/999:predict", {"inputs": GOOD}, 404, ["999"]),
    "unknown_signature": (f"/v1/models/{MODEL}:predict", {"signature_name": "zz", "inputs": GOOD}, 404, ["zz"]),
    "bad_path": ("/v2/whatever", {"inputs": GOOD}, 404, ["Malformed"]),
}


@pytest.mark.parametrize("case", sorted(REST_ERRORS))
def test_rest_errors(server, case):
    path, body, code, words = REST_ERRORS[case]
    status, resp = rest(server, path, raw=body) if isinstance(body, bytes) else rest(server, path, body)
    assert status == code, resp
    assert set(resp) == {"error"}
    for w in words:
        assert w in resp["error"], (w, resp["error"])
    assert rest(server, f"/v1/models/{MODEL}:predict", {"inputs": GOOD})[0] == 200


def test_rest_status_unknown_model(server):
    status, body = rest(server, "/v1/models/nope")
    assert status == 404 and "nope" in body["error"]


def test_warmup_replayed(server):
    log = server.log_text()
    assert "Number of warmup records read: 4" in log
    assert "Successfully loaded servable version {name: tower_recs version: 1}" in log


# ------------------------------------------------------------------------------------------------ hot swap (last)
def test_hot_swap_under_load(server, stubs):
    pred, models = stubs
    versions, errors, stop = [], [], threading.Event()

    def hammer():
        ch = grpc.insecure_channel(server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        while not stop.is_set():
            try:
                versions.append(stub.Predict(make_request(), timeout=10).model_spec.version.value)
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
        ch.close()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        build_synthetic_model(server.base_path, 2, num_items=50, seed=1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.1)
        n_at_swap = len(versions)
        while time.monotonic() < deadline and len(versions) < n_at_swap + 20:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:5]
    assert 1 in versions and versions[-1] == 2
    first_new = versions.index(2)
    assert all(v == 2 for v in versions[first_new + 5:])  # a few old in-flight answers may interleave

    # the old version is unloaded: status END, explicit requests to it are NOT_FOUND
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s.version: s.state for s in models.GetModelStatus(sreq, timeout=10).model_version_status}
        if states.get(1) == get_model_status_pb2.ModelVersionStatus.END:
            break
        time.sleep(0.2)
    assert states == {2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                      1: get_model_status_pb2.ModelVersionStatus.END}
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(make_request(version=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    log = server.log_text()
    assert "Successfully loaded servable version {name: tower_recs version: 2}" in log
    assert log.count("Number of warmup records read: 4") == 2
    assert "Done unloading servable version {name: tower_recs version: 1}" in log
    assert log.index("version: 2} in") < log.index("Unloading servable version {name: tower_recs version: 1}")


# ------------------------------------------------------------------------------------------------ configs
def _mirror_protos():
    """MonitoringConfig / BatchingParameters: the real modules if the pip package has them, else mirrors of
    tensorflow_serving/config/monitoring_config.proto and servables/tensorflow/session_bundle_config.proto."""
    try:
        from tensorflow_serving.config import monitoring_config_pb2
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
        return monitoring_config_pb2.MonitoringConfig, session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    fd = descriptor_pb2.FileDescriptorProto(name="mirror_serving.proto", package="tensorflow.serving",
                                            dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
    prom = fd.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prom.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    mon = fd.message_type.add(name="MonitoringConfig")
    mon.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".tensorflow.serving.PrometheusConfig")
    bp = fd.message_type.add(name="BatchingParameters")
    for num, name in [(1, "max_batch_size"), (2, "batch_timeout_micros"), (3, "num_batch_threads"),
                      (4, "max_enqueued_batches")]:
        bp.field.add(name=name, number=num, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                     type_name=".google.protobuf.Int64Value")
    bp.field.add(name="allowed_batch_sizes", number=5, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    bp.field.add(name="pad_variable_length_inputs", number=6, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    bp.field.add(name="thread_pool_name", number=8, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                 type_name=".google.protobuf.StringValue")
    pool.Add(fd)
    factory = message_factory.MessageFactory(pool)
    return (factory.GetPrototype(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
            factory.GetPrototype(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")))


def _read(name):
    with open(os.path.join(ROOT, "serving", "config", name)) as f:
        return f.read()


def test_tf_serving_configs_parse():
    from tensorflow_serving.config import model_server_config_pb2
    cfg = text_format.Parse(_read("models.config"), model_server_config_pb2.ModelServerConfig())
    (model,) = cfg.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (MODEL, "/models/tower_recs", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1

    monitoring_cls, batching_cls = _mirror_protos()
    mon = text_format.Parse(_read("monitoring.config"), monitoring_cls())
    assert mon.prometheus_config.enable and mon.prometheus_config.path == "/monitoring/prometheus/metrics"
    bp = text_format.Parse(_read("batching_parameters.txt"), batching_cls())
    assert bp.max_batch_size.value == 256 and bp.batch_timeout_micros.value > 0
    assert bp.num_batch_threads.value > 0 and bp.max_enqueued_batches.value > 0
    assert not bp.pad_variable_length_inputs   # would pad history/exclude with a real item id

    docker = _read("../Dockerfile")
    assert "FROM tensorflow/serving:2.16.1" in docker
    for flag in ("--model_config_file=/config/models.config", "--enable_batching",
                 "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config", "--rest_api_port=8501", "docker build",
                 "docker run"):
        assert flag in docker, flag


# ------------------------------------------------------------------------------------------------ batching (in-process)
def test_batcher_merges_concurrent_requests_and_matches_unbatched(tmp_path):
    """Requests arriving while a signature call runs are merged into one call (padding history/exclude with "");
    each gets exactly what it would get alone. A request whose k is different goes in its own call."""
    from serving.model_manager import BatchingOptions, ModelManager, proto_to_ndarray

    base = str(tmp_path / MODEL)
    build_synthetic_model(base, 1, num_items=50, seed=0, warmup=0)
    plain = ModelManager(MODEL, base, batching=BatchingOptions(enabled=False))
    batched = ModelManager(MODEL, base, batching=BatchingOptions(max_batch_size=64))
    plain.poll_once()
    batched.poll_once()
    servable = batched.acquire(MODEL)
    servable.release()
    sig = servable.signatures["serving_default"]
    fast_call, gate = sig.call, threading.Event()

    def slow_first_call(tensors):  # hold the first call until every other request is queued
        gate.wait(10)
        return fast_call(tensors)
    sig.call = slow_first_call

    histories = [["item_1"], ["item_2", "item_3"], [], ["item_4", "", "item_5"], ["nope"], ["item_6"], ["item_7"]]
    excludes = [[], ["item_9"], ["item_10", "item_11"], [], ["item_0"], [], []]
    requests = [{"user_id": np.array([f"user_{i}".encode()], object),
                 "history": np.array([[h.encode() for h in hist]], object).reshape(1, len(hist)),
                 "exclude": np.array([[e.encode() for e in ex]], object).reshape(1, len(ex)),
                 "k": np.array(3 if i == 6 else 5, np.int32)} for i, (hist, ex) in enumerate(zip(histories, excludes))]
    results, errors = [None] * len(requests), []

    def call(i):
        try:
            results[i] = batched.predict(MODEL, requests[i])[2]
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    time.sleep(0.3)                                   # request 0 is running (held by the gate)
    threads += [threading.Thread(target=call, args=(i,)) for i in range(1, len(requests))]
    for t in threads[1:]:
        t.start()
    time.sleep(0.5)                                   # the rest are queued
    sig.call = fast_call
    gate.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert servable.batcher.calls == 3                # [0], [1..5 merged], [6] (k=3)
    for req, got in zip(requests, results):
        want = plain.predict(MODEL, req)[2]
        assert got["item_ids"].tolist() == want["item_ids"].tolist()
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)
        assert got["item_ids"].shape == (1, int(req["k"]))
    # a request that fails inside the model fails alone, also when merged
    with pytest.raises(Exception) as err:
        batched.predict(MODEL, dict(requests[0], k=np.array(1000, np.int32)))
    assert "k must be <=" in str(err.value)
    # proto fast path: tensor_content, *_val lists and the one-value shorthand
    assert proto_to_ndarray(tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3))).tolist() == \
        [[0, 1, 2], [3, 4, 5]]
    assert proto_to_ndarray(tf.make_tensor_proto(7, dtype=tf.int32)).shape == ()
    short = tf.make_tensor_proto(1.5, dtype=tf.float32, shape=[2, 2])
    np.testing.assert_array_equal(proto_to_ndarray(short), tf.make_ndarray(short))
    plain.stop()
    batched.stop()
