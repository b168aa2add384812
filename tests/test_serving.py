"""The local TF Serving stand-in: gRPC, REST, limits, warmup, batching, retries, drain, hot swap, configs.

One server subprocess (free localhost ports, the production batching configuration) serves a small synthetic
SavedModel with the trainer's signatures; the hot-swap test pushes a second version, so it runs last among
the tests that use it. Batching, retries and drain are also tested in-process / on their own server.
"""
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving import layout
from serving.batching import DEFAULT_PARAMETERS_FILE, Batcher, BatchingOptions
from serving.codec import TensorLimits, proto_to_ndarray
from serving.errors import ServingError
from serving.manager import ModelManager
from serving.synthetic_model import build_synthetic_model
from serving.testing import ServerProcess
from trainer.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tower_recs"
MAX_BATCH = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / MODEL)
    build_synthetic_model(base, 1, num_items=50, seed=0)
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
                        extra_args=["--file_system_poll_wait_seconds", "0.5", "--max_batch_size", str(MAX_BATCH),
                                    "--max_tensor_elements", "50000", "--version_labels", "stable=1"])
    srv.base_path = base
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stubs(server):
    ch = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch), model_service_pb2_grpc.ModelServiceStub(ch)
    ch.close()


def make_request(user_ids=("user_1",), history=(("", "item_1"),), exclude=(("", "item_2"),), k=5, **spec):
    """A serving_default request in the batched contract: k per row, rows starting with ""."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = spec.pop("name", MODEL)
    for key, val in spec.items():
        if key == "version":
            req.model_spec.version.value = val
        else:
            setattr(req.model_spec, key, val)
    b = len(user_ids)
    req.inputs["user_id"].CopyFrom(tf.make_tensor_proto(list(user_ids), dtype=tf.string))
    req.inputs["history"].CopyFrom(tf.make_tensor_proto(np.array(history, dtype=object).reshape(b, -1),
                                                        dtype=tf.string))
    req.inputs["exclude"].CopyFrom(tf.make_tensor_proto(np.array(exclude, dtype=object).reshape(b, -1),
                                                        dtype=tf.string))
    ks = k if isinstance(k, (list, tuple)) else [k] * b
    req.inputs["k"].CopyFrom(tf.make_tensor_proto(ks, dtype=tf.int32))
    return req


def rest(server, path, body=None, raw=None, method=None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.rest_url + path, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_http(server, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Sends bytes as they are (headers a urllib client would not send) and parses the reply."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def assert_healthy(stub):
    resp = stub.Predict(make_request(), timeout=30)
    assert tf.make_ndarray(resp.outputs["item_ids"]).shape == (1, 5)


def server_rss_kb(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


# ------------------------------------------------------------------------------------------------ gRPC
def test_grpc_predict_per_row_k_and_typed_outputs(stubs):
    pred, _ = stubs
    resp = pred.Predict(make_request(user_ids=("user_1", "user_2"), history=(("", "item_1"), ("item_3", "item_4")),
                                     exclude=(("", "item_2"), ("", "")), k=[7, 3]), timeout=30)
    # TF Serving writes typed fields (Tensor::AsProtoField), which its example clients read.
    assert len(resp.outputs["scores"].float_val) == 14 and not resp.outputs["scores"].tensor_content
    ids, scores = tf.make_ndarray(resp.outputs["item_ids"]), tf.make_ndarray(resp.outputs["scores"])
    assert ids.shape == (2, 7) and scores.dtype == np.float32
    assert np.all(np.diff(scores[0]) <= 0) and b"item_2" not in ids[0] and b"" not in ids[0]
    assert ids[1, :3].tolist() != [b""] * 3 and ids[1, 3:].tolist() == [b""] * 4     # row 2 asked for 3
    assert np.all(np.isneginf(scores[1, 3:]))
    assert resp.model_spec.name == MODEL and resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "serving_default"
    req = make_request(history=((),), exclude=((),), k=3)
    req.output_filter.append("item_ids")
    assert list(pred.Predict(req, timeout=30).outputs) == ["item_ids"]


def test_grpc_version_and_label_selection(stubs):
    pred, _ = stubs
    assert pred.Predict(make_request(version=1), timeout=30).model_spec.version.value == 1
    assert pred.Predict(make_request(version_label="stable"), timeout=30).model_spec.version.value == 1


def test_grpc_serve_tf_examples(stubs):
    pred, _ = stubs
    ex = tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"user_3"])),
        "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"item_1 item_9"]))}))  # as export.py
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "serve_tf_examples"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([ex.SerializeToString()]))
    ids = tf.make_ndarray(pred.Predict(req, timeout=30).outputs["item_ids"])
    assert ids.shape == (1, 10)
    # the same answer as serving_default with that history (the history is used, not silently dropped)
    same = pred.Predict(make_request(user_ids=("user_3",), history=(("", "item_1", "item_9"),), exclude=(("",),),
                                     k=10), timeout=30)
    assert ids.tolist() == tf.make_ndarray(same.outputs["item_ids"]).tolist()


def test_grpc_metadata_and_status(stubs):
    pred, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    resp = pred.GetModelMetadata(req, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    sigs = sig_map.signature_def
    assert {"serving_default", "serve_tf_examples", "query_embedding", "candidate_embedding"} <= set(sigs)
    assert set(sigs["serving_default"].inputs) == {"user_id", "history", "exclude", "k"}
    assert [d.size for d in sigs["serving_default"].inputs["k"].tensor_shape.dim] == [-1]   # k is batched
    assert resp.model_spec.version.value == 1
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    status = models.GetModelStatus(sreq, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _drop(req, name):
    del req.inputs[name]
    return req


def _add(req, name, proto):
    req.inputs[name].CopyFrom(proto)
    return req


def _declared(dtype, shape, **values):
    """A TensorProto declaring ``shape`` with only the given values (TF fills the rest with the last one)."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in shape:
        proto.tensor_shape.dim.add().size = d
    for field, vals in values.items():
        getattr(proto, field).extend(vals)
    return proto


GRPC_ERRORS = {
    "missing_input": (lambda: _drop(make_request(), "k"), grpc.StatusCode.INVALID_ARGUMENT, ["Missing", "k"]),
    "unknown_input": (lambda: _add(make_request(), "foo", tf.make_tensor_proto(["x"])),
                      grpc.StatusCode.INVALID_ARGUMENT, ["Sent extra: {foo}"]),
    "wrong_dtype": (lambda: _add(make_request(), "k", tf.make_tensor_proto(["5"])),
                    grpc.StatusCode.INVALID_ARGUMENT, ["'k'", "dtype string", "expected int32"]),
    "wrong_rank": (lambda: _add(make_request(), "history", tf.make_tensor_proto(["item_1"])),
                   grpc.StatusCode.INVALID_ARGUMENT, ["'history'", "shape [1]", "expected [?, ?]"]),
    # TF Serving's batching needs a batch dim on every input (batching_util.h ComputeTensorBatchSize).
    "scalar_k_under_batching": (lambda: _add(make_request(), "k", tf.make_tensor_proto(5, dtype=tf.int32)),
                                grpc.StatusCode.INVALID_ARGUMENT, ["must have at least one dimension"]),
    "unequal_batch": (lambda: _add(make_request(user_ids=("user_1", "user_2"), history=(("",), ("",)),
                                                exclude=(("",), ("",))), "exclude",
                                   tf.make_tensor_proto(np.array([[""]], dtype=object), dtype=tf.string)),
                      grpc.StatusCode.INVALID_ARGUMENT, ["equal 0th-dimension size"]),
    "k_above_max": (lambda: make_request(k=1000), grpc.StatusCode.INVALID_ARGUMENT, ["k must be at most 100"]),
    "k_zero": (lambda: make_request(k=0), grpc.StatusCode.INVALID_ARGUMENT, ["k must be at least 1"]),
    "unknown_model": (lambda: make_request(name="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    "unknown_version": (lambda: make_request(version=12345), grpc.StatusCode.NOT_FOUND, ["12345"]),
    "unknown_label": (lambda: make_request(version_label="canary"), grpc.StatusCode.INVALID_ARGUMENT, ["canary"]),
    "unknown_signature": (lambda: make_request(signature_name="nope_sig"), grpc.StatusCode.FAILED_PRECONDITION,
                          ["nope_sig"]),
    "unknown_output_filter": (lambda: (lambda r: (r.output_filter.append("zzz"), r)[1])(make_request()),
                              grpc.StatusCode.INVALID_ARGUMENT, ["zzz"]),
    # Limits, checked on the declared shape before anything is allocated (serving.codec.TensorLimits).
    "batch_above_max": (lambda: make_request(user_ids=[f"u{i}" for i in range(MAX_BATCH + 1)],
                                             history=[("",)] * (MAX_BATCH + 1), exclude=[("",)] * (MAX_BATCH + 1)),
                        grpc.StatusCode.INVALID_ARGUMENT, ["batch size 17", f"max_batch_size {MAX_BATCH}"]),
    "declared_shape_bomb": (lambda: _add(make_request(), "history",
                                         _declared(types_pb2.DT_STRING, [1, 10 ** 10], string_val=[b"x"])),
                            grpc.StatusCode.INVALID_ARGUMENT, ["'history'", "elements per batch row"]),
    "declared_rows_bomb": (lambda: _add(make_request(), "k", _declared(types_pb2.DT_INT32, [10 ** 9], int_val=[5])),
                           grpc.StatusCode.INVALID_ARGUMENT, ["'k'", "batch size 1000000000"]),
    "tensor_elements": (lambda: _add(make_request(), "history",
                                     _declared(types_pb2.DT_STRING, [16, 4096], string_val=[b""])),
                        grpc.StatusCode.INVALID_ARGUMENT, ["'history'", "--max_tensor_elements"]),
    "row_width_exclude": (lambda: _add(make_request(), "exclude",
                                       _declared(types_pb2.DT_STRING, [1, 10 ** 6], string_val=[b""])),
                          grpc.StatusCode.INVALID_ARGUMENT, ["'exclude'", "--max_row_elements"]),
    "negative_dim": (lambda: _add(make_request(), "user_id", _declared(types_pb2.DT_STRING, [-3], string_val=[b"u"])),
                     grpc.StatusCode.INVALID_ARGUMENT, ["'user_id'", "negative"]),
    "long_string": (lambda: make_request(user_ids=("u" * 100_000,)), grpc.StatusCode.INVALID_ARGUMENT,
                    ["'user_id'", "100000 bytes", "--max_string_bytes"]),
    "bad_tensor_content": (lambda: _add(make_request(), "k", tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32, tensor_shape=_declared(types_pb2.DT_INT32, [1]).tensor_shape, tensor_content=b"abc")),
                           grpc.StatusCode.INVALID_ARGUMENT, ["tensor parsing error: k"]),
    # max_exclude (ModelConfig) is checked in the graph, so it holds under TF Serving too.
    "exclude_above_max_exclude": (lambda: make_request(exclude=[[""] + [f"item_{i % 50}" for i in range(1001)]]),
                                  grpc.StatusCode.INVALID_ARGUMENT, ["at most 1000 item ids per row"]),
}


@pytest.mark.parametrize("case", sorted(GRPC_ERRORS))
def test_grpc_errors(stubs, case):
    pred, _ = stubs
    build, code, words = GRPC_ERRORS[case]
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(build(), timeout=30)
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details(), (w, err.value.details())
    assert_healthy(pred)


def test_declared_shape_bombs_allocate_nothing(server, stubs):
    """~50-byte requests that declare huge tensors are refused before allocation: RSS does not move."""
    pred, _ = stubs
    assert_healthy(pred)
    before = server_rss_kb(server)
    for shape, values in ([[1, 10 ** 10], {"string_val": [b"x"]}], [[16, 4096], {"string_val": [b"y"]}],
                          [[10 ** 12], {"int_val": [1]}]):
        req = _add(make_request(), "history" if "string_val" in values else "k",
                   _declared(types_pb2.DT_STRING if "string_val" in values else types_pb2.DT_INT32, shape, **values))
        assert req.ByteSize() < 200
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                pred.Predict(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server_rss_kb(server) - before < 50_000, "the server allocated for declared shapes"
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
    g = pred.Predict(make_request(user_ids=("user_1", "user_2"), history=(("", "item_1"), ("item_3", "item_4")),
                                  exclude=(("", "item_2"), ("", "")), k=4), timeout=30)
    g_ids = tf.make_ndarray(g.outputs["item_ids"]).astype(str).tolist()
    g_scores = tf.make_ndarray(g.outputs["scores"])
    status, rows = rest(server, f"/v1/models/{MODEL}:predict", {"instances": [
        {"user_id": "user_1", "history": ["", "item_1"], "exclude": ["", "item_2"], "k": 4},
        {"user_id": "user_2", "history": ["item_3", "item_4"], "exclude": ["", ""], "k": 4}]})
    assert status == 200, rows
    assert [r["item_ids"] for r in rows["predictions"]] == g_ids
    np.testing.assert_allclose([r["scores"] for r in rows["predictions"]], g_scores, rtol=1e-6)
    status, cols = rest(server, f"/v1/models/{MODEL}/versions/1:predict", {"signature_name": "serving_default",
                        "inputs": {"user_id": ["user_1", "user_2"], "history": [["", "item_1"], ["item_3", "item_4"]],
                                   "exclude": [["", "item_2"], ["", ""]], "k": [4, 4]}})
    assert status == 200, cols
    assert cols["outputs"]["item_ids"] == g_ids
    np.testing.assert_allclose(cols["outputs"]["scores"], g_scores, rtol=1e-6)
    status, emb = rest(server, f"/v1/models/{MODEL}:predict", {"signature_name": "query_embedding", "inputs": {
        "user_id": ["user_1"], "history": [[""]]}})
    assert status == 200 and len(emb["outputs"][0]) == 16   # single output: "outputs" is the value itself


GOOD = {"user_id": ["user_1"], "history": [["", "item_1"]], "exclude": [[""]], "k": [3]}
REST_ERRORS = {
    "invalid_json": (f"/v1/models/{MODEL}:predict", b"{not json", 400, ["JSON Parse error"]),
    "empty_body": (f"/v1/models/{MODEL}:predict", b"", 400, ["The document is empty"]),
    "no_instances_or_inputs": (f"/v1/models/{MODEL}:predict", {"foo": 1}, 400, ["Missing 'inputs' or 'instances'"]),
    "missing_input": (f"/v1/models/{MODEL}:predict", {"inputs": {k: v for k, v in GOOD.items() if k != "k"}}, 400,
                      ["Missing named input: k"]),
    "unknown_input_row": (f"/v1/models/{MODEL}:predict", {"instances": [dict(user_id="u", history=[""], exclude=[""],
                                                                              k=3, foo="x")]}, 400,
                          ["does not have named input: foo"]),
    "wrong_dtype": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, k=["3"])}, 400, ["is not of expected type"]),
    "wrong_rank": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, history=["item_1"])}, 400,
                   ["'history'", "expected [?, ?]"]),
    "ragged": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, user_id=["a", "b"], history=[["x"], ["y", "z"]],
                                                                exclude=[[""], [""]], k=[1, 1])},
               400, ["Encountered list at unexpected size"]),
    "k_above_max": (f"/v1/models/{MODEL}:predict", {"inputs": dict(GOOD, k=[101])}, 400, ["k must be at most 100"]),
    "batch_above_max": (f"/v1/models/{MODEL}:predict", {"inputs": dict(
        GOOD, user_id=["u"] * 20, history=[[""]] * 20, exclude=[[""]] * 20, k=[1] * 20)}, 400, ["max_batch_size"]),
    "deep_json": (f"/v1/models/{MODEL}:predict", ("[" * 5000 + "]" * 5000).encode(), 400, ["nested deeper"]),
    "deep_json_in_object": (f"/v1/models/{MODEL}:predict",
                            b'{"inputs": {"k": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}}", 400, ["nested deeper"]),
    "unknown_model": ("/v1/models/nope:predict", {"inputs": GOOD}, 404, ["nope"]),
    "unknown_version": (f"/v1/models/{MODEL}/versions/999:predict", {"inputs": GOOD}, 404, ["999"]),
    "unknown_signature": (f"/v1/models/{MODEL}:predict", {"signature_name": "zz", "inputs": GOOD}, 400, ["zz"]),
    "bad_path": ("/v2/whatever", {"inputs": GOOD}, 404, ["Not found"]),
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


@pytest.mark.parametrize("length, status, words", [
    ("100000000000", 413, ["100000000000 bytes", "--rest_api_max_body_bytes"]),   # nothing is read or allocated
    ("-1", 400, ["Content-Length"]),                                              # used to block on read(-1)
    ("12abc", 400, ["Content-Length"]),
])
def test_rest_content_length_checked_before_reading(server, length, status, words):
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    started = time.monotonic()
    code, body = raw_http(server, head, b'{"inputs": {}}')
    assert code == status and all(w in body["error"] for w in words), body
    assert time.monotonic() - started < 10
    assert rest(server, f"/v1/models/{MODEL}:predict", {"inputs": GOOD})[0] == 200


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
                versions.append(stub.Predict(make_request(), timeout=30).model_spec.version.value)
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
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s.version: s.state for s in models.GetModelStatus(sreq, timeout=30).model_version_status}
        if states.get(1) == get_model_status_pb2.ModelVersionStatus.END:
            break
        time.sleep(0.2)
    assert states == {2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                      1: get_model_status_pb2.ModelVersionStatus.END}
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(make_request(version=1), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    log = server.log_text()
    assert log.count("Number of warmup records read: 4") == 2
    assert log.index("version: 2} in") < log.index("Unloading servable version {name: tower_recs version: 1}")


# ------------------------------------------------------------------------------------------------ configs
def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_tf_serving_configs_parse_and_production_batches_like_the_stand_in():
    from tensorflow_serving.config import model_server_config_pb2

    cfg = text_format.Parse(_read("serving", "config", "models.config"), model_server_config_pb2.ModelServerConfig())
    (model,) = cfg.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (MODEL, "/models/tower_recs", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    options = BatchingOptions.from_file(os.path.join(ROOT, "serving", "config", "batching_parameters.txt"))
    assert options.pad_variable_length_inputs and options.max_batch_size >= MAX_BATCH
    # One setting everywhere: the stand-in's default file is this file, batching is on by default in the
    # stand-in, the Dockerfile and the Kubernetes Deployment.
    assert os.path.samefile(DEFAULT_PARAMETERS_FILE, os.path.join(ROOT, "serving", "config", "batching_parameters.txt"))
    from serving.server import parse_args
    args = parse_args(["--model_base_path", "x"])
    assert args.enable_batching and args.batching_parameters_file is None
    docker = _read("serving", "Dockerfile")
    assert "FROM tensorflow/serving:2.16.1" in docker and re.search(r"ENV ENABLE_BATCHING=true\b", docker)
    for flag in ("--model_config_file=/config/models.config", "--enable_batching=${ENABLE_BATCHING}",
                 "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config", "--rest_api_port=8501"):
        assert flag in docker, flag
    deployment = _read("deploy", "k8s", "base", "deployment.yaml")
    assert re.search(r"name: ENABLE_BATCHING\s+value: \"true\"", deployment)
    # Every limit the server enforces on exclude width covers the model's max_exclude plus the pad column.
    assert TensorLimits().max_row_elements > ModelConfig().max_exclude


def test_layout_lists_versions_as_tf_serving_does(tmp_path):
    for name in ("3", "12", ".tmp-13", "incoming-14", "15"):
        os.makedirs(tmp_path / name)
    for name in ("3", "12", ".tmp-13", "incoming-14"):     # 15 is still being copied: no saved_model.pb yet
        (tmp_path / name / layout.SAVED_MODEL_FILE).write_bytes(b"")
    assert layout.version_dirs(str(tmp_path)) == [3, 12]
    assert layout.latest_version_dir(str(tmp_path)).endswith(os.sep + "12")
    assert layout.version_dirs(str(tmp_path / "missing")) == []
    with pytest.raises(FileNotFoundError, match="No model version"):
        layout.latest_version_dir(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ in-process
@pytest.fixture(scope="module")
def synthetic_base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("inproc") / MODEL)
    build_synthetic_model(base, 1, num_items=50, seed=0, warmup=0)
    return base


def _request(i, history, exclude, k=5):
    return {"user_id": np.array([f"user_{i}".encode()], object),
            "history": np.array([[b""] + [h.encode() for h in history]], object),
            "exclude": np.array([[b""] + [e.encode() for e in exclude]], object),
            "k": np.array([k], np.int32)}


def test_batcher_merges_concurrent_requests_with_two_slots_and_frees_them(synthetic_base):
    """With num_batch_threads 2 under concurrent load: merged calls, the same answers as alone (padding with the
    leading "" changes nothing), and both batch slots free again once idle."""
    plain = ModelManager(MODEL, synthetic_base, warmup=False)
    batched = ModelManager(MODEL, synthetic_base, warmup=False, batching=BatchingOptions(
        max_batch_size=64, num_batch_threads=2, pad_variable_length_inputs=True))
    plain.poll_once()
    batched.poll_once()
    servable = batched.acquire(MODEL)
    servable.release()
    histories = [["item_1"], ["item_2", "item_3"], [], ["item_4", "item_5", "item_6"], ["nope"], ["item_6"]]
    excludes = [[], ["item_9"], ["item_10", "item_11"], [], ["item_0"], []]
    requests = [_request(i, histories[i % 6], excludes[i % 6], k=3 + i % 4) for i in range(120)]
    want = [plain.predict(MODEL, r)[2] for r in requests]
    results, errors = [None] * len(requests), []

    def worker(indices):
        for i in indices:
            try:
                results[i] = batched.predict(MODEL, requests[i])[2]
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(range(t, len(requests), 12),)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    batcher = servable.batcher
    assert batcher.merged_calls > 0 and batcher.calls < len(requests), (batcher.calls, batcher.merged_calls)
    assert batcher.active == 0 and not batcher._queue        # noqa: SLF001 - slots return to zero when idle
    for got, expected, request in zip(results, want, requests):
        k = int(request["k"][0])
        assert got["item_ids"].shape[0] == 1 and got["item_ids"][0, :k].tolist() == expected["item_ids"][0].tolist()
        assert set(got["item_ids"][0, k:].tolist()) <= {b""}        # wider only because of a co-batched bigger k
        np.testing.assert_allclose(got["scores"][0, :k], expected["scores"][0], rtol=1e-5)
    plain.stop()
    batched.stop()


class _FakeSignature:
    name = "sig"


def _arrays(rows, width=1, first=b""):
    column = np.full((rows, width), b"x", object)
    column[:, 0] = first
    return {"a": column, "b": np.arange(rows, dtype=np.int32)}


def test_batcher_tf_serving_rules_bounded_waits_and_isolation():
    """Padding with each request's first element, UNAVAILABLE when the queue is full, DEADLINE_EXCEEDED for a
    request still queued at its deadline, and a failing merged call re-run request by request."""
    gate = threading.Event()
    calls = []

    def run(sig, arrays, outputs):
        calls.append({k: v.copy() for k, v in arrays.items()})
        gate.wait(10)
        if (arrays["b"] < 0).any():
            raise ServingError("INVALID_ARGUMENT", "negative b")
        return {"a": arrays["a"], "b": arrays["b"] * 2}

    batcher = Batcher(run, BatchingOptions(max_batch_size=4, num_batch_threads=1, max_enqueued_batches=2,
                                           pad_variable_length_inputs=True))
    results, errors = {}, {}

    def submit(name, arrays, deadline=None):
        try:
            results[name] = batcher.submit(_FakeSignature(), arrays, ["a", "b"], deadline)
        except ServingError as e:
            errors[name] = e

    first = threading.Thread(target=submit, args=("first", _arrays(1)))
    first.start()
    time.sleep(0.2)                                    # "first" holds the only slot, blocked in run
    waiters = [threading.Thread(target=submit, args=(f"w{i}", _arrays(1, width=1 + i, first=b"")))
               for i in range(3)]
    waiters.append(threading.Thread(target=submit, args=("bad", {"a": np.full((1, 1), b"", object),
                                                                 "b": np.array([-1], np.int32)})))
    waiters.append(threading.Thread(target=submit, args=("late", _arrays(1), time.monotonic() + 1.0)))
    for t in waiters:
        t.start()
    time.sleep(0.3)
    with pytest.raises(ServingError) as full:          # 5 rows queued with max_batch_size 4: 2 batches, the limit
        batcher.submit(_FakeSignature(), _arrays(4), ["a", "b"])
    assert full.value.code == "UNAVAILABLE" and "queue" in full.value.message
    with pytest.raises(ServingError, match="at least one dimension"):
        batcher.submit(_FakeSignature(), {"a": np.array(b"", object), "b": np.array(1, np.int32)}, ["a"])
    time.sleep(1.2)                                    # "late" reaches its deadline while still queued
    gate.set()
    for t in [first] + waiters:
        t.join(30)
    assert errors["late"].code == "DEADLINE_EXCEEDED"
    assert errors["bad"].message == "negative b" and set(errors) == {"late", "bad"}
    merged = [c for c in calls if len(c["b"]) > 1][0]
    assert merged["a"].shape[1] == 3 and set(merged["a"][:, 1:].ravel()) <= {b"", b"x"}  # padded with the first ""
    for i in range(3):                                 # the merged call failed on "bad": each re-ran alone
        assert results[f"w{i}"]["b"].tolist() == [0] and results[f"w{i}"]["a"].shape == (1, 1 + i)
    assert batcher.active == 0


def test_failed_load_is_retried_on_later_polls(tmp_path, monkeypatch):
    """A version that fails to load (a copy in progress) is retried max_num_load_retries times, interval apart;
    the loaded version keeps serving meanwhile; with retries spent it is tried again once its files change."""
    import serving.manager as manager_module

    base = str(tmp_path / MODEL)
    build_synthetic_model(base, 1, num_items=20, seed=0, warmup=0)
    build_synthetic_model(base, 2, num_items=20, seed=1, warmup=0)
    attempts = {1: 0, 2: 0}
    real = manager_module.Servable

    class Flaky(real):
        def __init__(self, name, version, path, batching=None):
            attempts[version] += 1
            if version == 2 and attempts[2] <= 3:
                raise OSError(f"saved_model.pb truncated (attempt {attempts[2]})")
            super().__init__(name, version, path, batching)

    monkeypatch.setattr(manager_module, "Servable", Flaky)
    m = ModelManager(MODEL, base, warmup=False, max_num_load_retries=5, load_retry_interval_s=1.0)
    m.poll_once()
    assert m.loaded_versions() == [1] and attempts[2] == 1
    state = dict(m.status(MODEL))[2]
    assert state.state == "END" and "truncated" in state.error_message
    m.poll_once()                                  # before the retry interval: no new attempt
    assert attempts[2] == 1
    for _ in range(3):
        time.sleep(1.05)
        m.poll_once()
    assert attempts[2] == 4 and m.loaded_versions() == [2]
    assert dict(m.status(MODEL))[2].state == "AVAILABLE"
    # retries spent: wait for new files
    build_synthetic_model(base, 3, num_items=20, seed=2, warmup=0)
    attempts[3] = 0
    monkeypatch.setattr(manager_module, "Servable", type("Broken", (real,), {"__init__": lambda self, *a, **k: (
        attempts.__setitem__(3, attempts[3] + 1), (_ for _ in ()).throw(OSError("broken")))[1]}))
    m.load_retry_interval_s = 0.0
    for _ in range(8):
        m.poll_once()
    assert attempts[3] == 6 and m.loaded_versions() == [2]     # 1 attempt + max_num_load_retries
    os.utime(os.path.join(base, "3", layout.SAVED_MODEL_FILE), (time.time() + 5, time.time() + 5))
    m.poll_once()
    assert attempts[3] == 7
    m.stop()


def test_proto_decoding_follows_tensorflow():
    """TF's FromProto: tensor_content, typed values, no values -> default, fewer -> the last one repeated."""
    assert proto_to_ndarray(tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3))).tolist() == \
        [[0, 1, 2], [3, 4, 5]]
    assert proto_to_ndarray(tf.make_tensor_proto(7, dtype=tf.int32)).shape == ()
    for proto in (tf.make_tensor_proto(1.5, dtype=tf.float32, shape=[2, 2]),
                  _declared(types_pb2.DT_FLOAT, [3], float_val=[1.0, 2.0]),
                  _declared(types_pb2.DT_STRING, [2, 2], string_val=[b"a", b"b"]),
                  _declared(types_pb2.DT_INT32, [2])):
        np.testing.assert_array_equal(proto_to_ndarray(proto), tf.make_ndarray(proto))
    small = TensorLimits(max_bytes=100)
    with pytest.raises(ServingError, match="800 bytes.*--max_tensor_bytes"):
        proto_to_ndarray(_declared(types_pb2.DT_DOUBLE, [100], double_val=[1.0]), "x", small)
    with pytest.raises(ServingError, match="holds 120 bytes of strings.*--max_tensor_bytes"):
        proto_to_ndarray(_declared(types_pb2.DT_STRING, [3], string_val=[b"a" * 40] * 3), "x", small)


# ------------------------------------------------------------------------------------------------ drain (own server)
def test_sigterm_drains_in_flight_requests(tmp_path):
    """SIGTERM: the running request finishes, new ones get UNAVAILABLE, status shows UNLOADING, exit code 0."""
    base = str(tmp_path / MODEL)
    # Exact search over 200k items (~1 s per 1024-row request): the IVF index would answer too fast to be
    # caught in flight.
    build_synthetic_model(base, 1, num_items=200_000, dim=16, seed=0, warmup=0,
                          cfg=ModelConfig(ann_min_items=1_000_000))
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path / "server.log"),
                        extra_args=["--enable_batching", "false", "--max_batch_size", "1024"]).start()
    try:
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        big = make_request(user_ids=[f"user_{i % 20}" for i in range(1024)], history=[["", "item_1"]] * 1024,
                           exclude=[[""]] * 1024, k=10)
        started = time.monotonic()
        stub.Predict(big, timeout=120)
        assert time.monotonic() - started > 0.5, "the in-flight request must outlast the signal"
        outcome = {}

        def in_flight():
            try:
                outcome["version"] = stub.Predict(big, timeout=120).model_spec.version.value
            except grpc.RpcError as e:
                outcome["error"] = e.code()

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.2)
        srv.proc.send_signal(15)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(make_request(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        sreq = get_model_status_pb2.GetModelStatusRequest()
        sreq.model_spec.name = MODEL
        states = [s.state for s in models.GetModelStatus(sreq, timeout=30).model_version_status]
        assert states == [get_model_status_pb2.ModelVersionStatus.UNLOADING]
        thread.join(120)
        assert outcome == {"version": 1}
        assert srv.proc.wait(60) == 0
        channel.close()
    finally:
        srv.stop()
    assert "Drained model tower_recs: all requests finished" in srv.log_text()

