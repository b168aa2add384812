"""The local server answers as TF Serving 2.16 does, so clients written for TF Serving work unchanged.

Each case names the TF Serving source file (github.com/tensorflow/serving, tensorflow_serving/...) whose code
the behaviour follows. Where TF Serving's behaviour is not documented, the case follows its code and says so.
The server runs as TF Serving does without flags: no server-side batching (batching rules are tested with
the production configuration in tests/test_serving.py). The model is the synthetic retrieval model plus
signatures that exercise the other APIs: Classify/Regress, a signature input with a default, a scalar input
and a ``*_bytes`` output.

Deliberate differences, each tested where it is visible:
  * shapes: TF Serving feeds tensors without checking them against the signature; the stand-in rejects a
    shape the signature rules out (a scalar for a [-1] input excepted), so it never computes on garbage;
  * limits: the stand-in refuses oversized declared shapes, bodies and JSON depth before allocating;
  * invalid UTF-8 in a string output is written with U+FFFD (TF Serving writes the raw bytes: invalid JSON);
  * MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED;
  * under batching, a failing merged call is re-run request by request (TF Serving fails the whole batch).
"""
import base64
import json
import os
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from serving.synthetic_model import SyntheticRetrieval
from serving.testing import ServerProcess
from schema import contract as F

MODEL = "tower_recs"


class ConformanceModel(SyntheticRetrieval):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})["x"]
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(x)[0], 1])
        return {"classes": classes, "scores": tf.stack([tf.sigmoid(-x), tf.sigmoid(x)], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})["x"]
        return {"outputs": 2.0 * x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.float32, name="scale")])
    def scaled(self, x, scale=tf.constant(2.0)):
        return {"y": x * scale}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="n")])
    def counted(self, n):
        return {"range": tf.range(n)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo(self, text):
        return {"text": text, "raw_bytes": text}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / MODEL)
    m = ConformanceModel(num_items=50, seed=0)
    signatures = {F.SERVING_DEFAULT: m.serve, F.SERVE_TF_EXAMPLES: m.serve_examples,
                  F.QUERY_EMBEDDING: m.query_embedding, F.CANDIDATE_EMBEDDING: m.candidate_embedding,
                  "classify": m.classify, "regress": m.regress, "scaled": m.scaled, "counted": m.counted,
                  "echo": m.echo}
    tf.saved_model.save(m, os.path.join(base, "1"), signatures=signatures)
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
                        extra_args=["--enable_batching", "false", "--version_labels", "stable=1"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def predict_request(signature="serving_default", **inputs):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = signature
    for name, value in inputs.items():
        req.inputs[name].CopyFrom(value if isinstance(value, type(req.inputs[name])) else tf.make_tensor_proto(value))
    return req


def recommend_request(k=5, **spec):
    req = predict_request(user_id=["user_1"], history=np.array([["", "item_1"]], object),
                          exclude=np.array([[""]], object), k=np.array([k], np.int32))
    for key, value in spec.items():
        if key == "version":
            req.model_spec.version.value = value
        else:
            setattr(req.model_spec, key, value)
    return req


def http(server, method, path, body=None) -> tuple[int, str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def rest(server, method, path, body=None) -> tuple[int, dict]:
    status, text = http(server, method, path, body)
    return status, json.loads(text)


def example(x: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
        float_list=tf.train.FloatList(value=[x]))}))


# ---------------------------------------------------------------------------------------------- outputs
def test_grpc_outputs_fill_typed_fields(stubs):
    """servables/tensorflow/predict_util.cc: RunPredict serializes with kAsProtoField (Tensor::AsProtoField),
    so example/mnist_client.py and model_servers/test_util/tensorflow_model_server_test_base.py read
    outputs["scores"].float_val."""
    pred, _ = stubs
    response = pred.Predict(recommend_request(k=5), timeout=30)
    scores, ids = response.outputs["scores"], response.outputs["item_ids"]
    assert len(scores.float_val) == 5 and not scores.tensor_content
    assert list(scores.float_val) == sorted(scores.float_val, reverse=True)
    assert len(ids.string_val) == 5 and [d.size for d in ids.tensor_shape.dim] == [1, 5]


def test_rest_floats_are_written_as_float32_decimals(server):
    """util/json_tensor.cc WriteDecimal: float32 as "%.6g" when that round-trips, else max_digits10 digits,
    never the double widening (0.2f is 0.2, not 0.20000000298023224)."""
    status, text = http(server, "POST", f"/v1/models/{MODEL}:predict",
                        {"signature_name": "scaled", "inputs": {"x": [0.1, 1.5, 1e-7], "scale": 2.0}})
    assert status == 200, text
    assert json.loads(text) == {"outputs": [0.2, 3.0, 2e-07]}
    assert "0.2000000" not in text and "0.2," in text.replace(" ", "").replace("\n", "")


def test_rest_bytes_outputs_are_base64(server):
    """util/json_tensor.cc IsNamedTensorBytes: a string output whose name ends in "_bytes" is written as
    {"b64": ...}; other strings as text."""
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:predict",
                        {"signature_name": "echo", "instances": ["héllo", {"b64": base64.b64encode(b"\xff\x01").decode()}]})
    assert status == 200, body
    assert body["predictions"][0] == {"text": "héllo", "raw_bytes": {"b64": base64.b64encode("héllo".encode()).decode()}}
    assert body["predictions"][1]["raw_bytes"] == {"b64": "/wE="}
    # Deliberate difference: TF Serving writes the raw bytes (invalid JSON); the stand-in writes U+FFFD.
    assert body["predictions"][1]["text"] == "\ufffd\x01"


# ---------------------------------------------------------------------------------------------- REST requests
def test_rest_b64_instances_for_a_single_string_input(server, stubs):
    """util/json_tensor.cc FillTensorMapFromInstancesList: with one named input, "instances" may hold plain
    values, and {"b64": ...} is a value (IsElementObject excludes it): the documented way to send serialized
    tf.Examples (g3doc/api_rest.md)."""
    pred, _ = stubs
    ex = tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"user_3"])),
        "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"item_1 item_9"]))})).SerializeToString()
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:predict", {
        "signature_name": "serve_tf_examples", "instances": [{"b64": base64.b64encode(ex).decode()}] * 2})
    assert status == 200, body
    grpc_ids = tf.make_ndarray(pred.Predict(predict_request("serve_tf_examples", examples=[ex]),
                                            timeout=30).outputs["item_ids"])
    assert [p["item_ids"] for p in body["predictions"]] == [grpc_ids[0].astype(str).tolist()] * 2


@pytest.mark.parametrize("body, words", [
    # util/json_tensor.cc AddValueToTensor: DT_INT32 takes only val.IsInt(); 5.0 is a double.
    ({"signature_name": "counted", "inputs": {"n": 5.0}}, ["5.0", "is not of expected type: int32"]),
    ({"signature_name": "counted", "inputs": {"n": True}}, ["is not of expected type: int32"]),
    # IsLosslessDecimal: a number a float32 cannot hold.
    ({"signature_name": "scaled", "inputs": {"x": [1e40], "scale": 1.0}}, ["without loss of precision"]),
    # FillSignature: 'signature_name' must be a string.
    ({"signature_name": 7, "inputs": {"n": 1}}, ["'signature_name' key must be a string value"]),
    # http_rest_api_handler.cc GetInfoMap: an unknown signature is INVALID_ARGUMENT (400), not 404.
    ({"signature_name": "nope", "inputs": {"n": 1}}, ['Serving signature name: "nope" not found']),
    # FillTensorMapFromInputsMap: every signature input must be present, defaults are not consulted.
    ({"signature_name": "scaled", "inputs": {"x": [1.0]}}, ["Missing named input: scale"]),
    # FillTensorMapFromInstancesList: row objects need exactly the signature's inputs.
    ({"signature_name": "scaled", "instances": [{"x": 1.0, "scale": 1.0, "extra": 1}]}, ["named input: extra"]),
    # Row format batches every named input, so a scalar input gets shape [1]; TF Serving would feed it and
    # tf.range fails on it; the stand-in rejects the shape first. Both: 400.
    ({"signature_name": "counted", "instances": [{"n": 3}]}, ["'n'", "shape [1]"]),
    ({"instances": []}, ["No values in 'instances' array"]),
    ({"instances": [1], "inputs": {}}, ["only one of 'inputs' or 'instances'"]),
])
def test_rest_strictness_is_tf_servings(server, body, words):
    status, resp = rest(server, "POST", f"/v1/models/{MODEL}:predict", body)
    assert status == 400, resp
    assert all(w in resp["error"] for w in words), resp["error"]


def test_rest_ignores_what_tf_serving_ignores(server):
    """util/json_tensor.cc never reads "output_filter" (all outputs are returned) and, in the columnar format,
    looks up only the signature's own inputs (other keys are ignored)."""
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:predict", {
        "signature_name": "echo", "output_filter": ["text"], "inputs": {"text": ["a"], "unused": [1, 2, 3]}})
    assert status == 200, body
    assert set(body["outputs"]) == {"text", "raw_bytes"}


# ---------------------------------------------------------------------------------------------- metadata
def test_metadata_json_prints_default_fields_and_every_signature(server):
    """model_servers/http_rest_api_util.cc ToJsonString(GetModelMetadataResponse): MessageToJsonString with
    always_print_primitive_fields and preserve_proto_field_names, so a scalar's shape is {"dim": [],
    "unknown_rank": false}, dims carry "name": "", "defaults" is printed; servables/tensorflow/
    get_model_metadata_impl.cc copies every SignatureDef, __saved_model_init_op included."""
    status, body = rest(server, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert "__saved_model_init_op" in signatures
    n = signatures["counted"]["inputs"]["n"]
    assert n["tensor_shape"] == {"dim": [], "unknown_rank": False} and n["dtype"] == "DT_INT32"
    assert signatures["serving_default"]["inputs"]["k"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures["counted"]["defaults"] == {}
    assert signatures["scaled"]["defaults"]["scale"]["float_val"] == [2.0]
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_grpc_metadata_requests(stubs):
    """servables/tensorflow/get_model_metadata_impl.cc: metadata_field must be given and be signature_def."""
    pred, _ = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as err:
        pred.GetModelMetadata(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at least one metadata_field" in err.value.details()
    req.metadata_field.append("signature_def")
    req.metadata_field.append("bogus")
    with pytest.raises(grpc.RpcError) as err:
        pred.GetModelMetadata(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bogus is not supported" in err.value.details()


# ---------------------------------------------------------------------------------------------- status codes
GRPC_CODES = {
    # model_servers/server_core.cc GetModelVersionForLabel: an unknown label is INVALID_ARGUMENT.
    "unknown_label": (lambda: recommend_request(version_label="canary"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: canary"),
    # servables/tensorflow/predict_util.cc RunPredict: FAILED_PRECONDITION "Serving signature key ... not found."
    "unknown_signature": (lambda: recommend_request(signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "nope" not found.'),
    # model_servers/server_core.cc ServableRequestFromModelSpec.
    "empty_model_spec": (lambda: recommend_request(name=""), grpc.StatusCode.INVALID_ARGUMENT,
                         "ModelSpec has no name specified."),
    # core/basic_manager.cc (via ServerCore::GetServableHandle): NOT_FOUND for a model or version not served.
    "unknown_model": (lambda: recommend_request(name="nope"), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown_version": (lambda: recommend_request(version=9), grpc.StatusCode.NOT_FOUND,
                        "Servable not found for request: Specific(tower_recs, 9)"),
    # predict_util.cc PreProcessPrediction: each output_filter alias once.
    "duplicate_output_filter": (lambda: (lambda r: (r.output_filter.extend(["scores", "scores"]), r)[1])(
        recommend_request()), grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: scores"),
    "unknown_output_filter": (lambda: (lambda r: (r.output_filter.append("zz"), r)[1])(recommend_request()),
                              grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found in signature: zz"),
    # predict_util.cc VerifyRequestInputsSize.
    "extra_input": (lambda: predict_request("counted", n=np.int32(1), m=np.int32(2)),
                    grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature"),
}


@pytest.mark.parametrize("case", sorted(GRPC_CODES))
def test_grpc_status_codes(stubs, case):
    pred, _ = stubs
    build, code, message = GRPC_CODES[case]
    with pytest.raises(grpc.RpcError) as err:
        pred.Predict(build(), timeout=30)
    assert err.value.code() == code and message in err.value.details(), err.value.details()


def test_grpc_model_status(stubs):
    """model_servers/get_model_status_impl.cc: NOT_FOUND for an unknown version / model, labels resolved."""
    _, models = stubs
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = MODEL
    req.model_spec.version_label = "stable"
    assert [s.version for s in models.GetModelStatus(req, timeout=30).model_version_status] == [1]
    req.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "Could not find version 9" in err.value.details()
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "Could not find any versions of model nope" in \
        err.value.details()


@pytest.mark.parametrize("method, path, status, words", [
    # http_rest_api_handler.cc ProcessModelStatusRequest: "Missing model name in request." (400).
    ("GET", "/v1/models", 400, ["Missing model name in request."]),
    # ProcessRequest starts from InvalidArgument("Malformed request: <method> <path>") and keeps it when no
    # pattern of http_rest_api_util.cc matches the method and path.
    ("GET", f"/v1/models/{MODEL}:predict", 400, [f"Malformed request: GET /v1/models/{MODEL}:predict"]),
    ("GET", f"/v1/models/{MODEL}/version/1", 400, ["Malformed request"]),
    ("POST", f"/v1/models/{MODEL}", 400, ["Malformed request"]),
    ("PUT", f"/v1/models/{MODEL}", 400, ["Malformed request: PUT"]),
    # The patterns are case-insensitive ((?i)), but the method is compared to lowercase names: TF Serving's code
    # answers "Malformed request" for :PREDICT (followed here, undocumented).
    ("POST", f"/v1/models/{MODEL}:PREDICT", 400, ["Malformed request"]),
    ("GET", f"/V1/MODELS/{MODEL}", 200, []),
    # http_server.cc: the REST dispatcher only takes paths matching (?i)/v1/.*; others get net_http's 404.
    ("GET", "/v2/models/x", 404, []),
    # A label in the path: http_rest_api_util.cc kModelStatusApiRegex; unknown -> INVALID_ARGUMENT (400).
    ("GET", f"/v1/models/{MODEL}/labels/stable", 200, []),
    ("GET", f"/v1/models/{MODEL}/labels/canary", 400, ["Unrecognized servable version label: canary"]),
    ("GET", "/v1/models/nope", 404, ["Could not find any versions of model nope"]),
])
def test_rest_paths_and_status_codes(server, method, path, status, words):
    got, text = http(server, method, path, b"{}" if method in ("POST", "PUT") else None)
    assert got == status, text
    for w in words:
        assert w in json.loads(text)["error"], text


# ---------------------------------------------------------------------------------------------- Classify / Regress
def test_classify_and_regress_are_routed(server, stubs):
    """servables/tensorflow/{classifier,regressor}.cc (method-name check off, TF Serving's default) and
    http_rest_api_handler.cc ProcessClassifyRequest/ProcessRegressRequest with util/json_tensor.cc's
    "examples" body and {"results": ...} answers."""
    pred, _ = stubs
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "classify"
    for x in (-2.0, 3.0):
        req.input.example_list.examples.add().CopyFrom(example(x))
    result = pred.Classify(req, timeout=30)
    assert result.model_spec.signature_name == "classify"
    classes = [[(c.label, round(c.score, 4)) for c in row.classes] for row in result.result.classifications]
    assert classes == [[("neg", round(1 / (1 + np.exp(-2)), 4)), ("pos", round(1 / (1 + np.exp(2)), 4))],
                       [("neg", round(1 / (1 + np.exp(3)), 4)), ("pos", round(1 / (1 + np.exp(-3)), 4))]]
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:classify",
                        {"signature_name": "classify", "examples": [{"x": -2.0}, {"x": 3.0}]})
    assert status == 200 and [[c[0] for c in row] for row in body["results"]] == [["neg", "pos"]] * 2

    req = regression_pb2.RegressionRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "regress"
    ctx = req.input.example_list_with_context
    ctx.context.CopyFrom(example(1.0))
    ctx.examples.add().CopyFrom(example(4.0))
    ctx.examples.add()                                  # takes x from the context
    assert [r.value for r in pred.Regress(req, timeout=30).result.regressions] == [8.0, 2.0]
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:regress",
                        {"signature_name": "regress", "context": {"x": 1.0}, "examples": [{"x": 4.0}, {}]})
    assert (status, body) == (200, {"results": [8.0, 2.0]})


def test_classify_on_a_predict_signature_is_invalid_argument(server, stubs):
    """classifier.cc PreProcessClassification: one input named "inputs" is required; serving_default has four."""
    pred, _ = stubs
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = MODEL
    req.input.example_list.examples.add().CopyFrom(example(1.0))
    with pytest.raises(grpc.RpcError) as err:
        pred.Classify(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Expected one input Tensor." in err.value.details()
    status, body = rest(server, "POST", f"/v1/models/{MODEL}:regress", {"examples": [{"x": 1.0}]})
    assert status == 400 and "Expected one input Tensor." in body["error"]
    req.input.Clear()
    req.model_spec.signature_name = "classify"
    with pytest.raises(grpc.RpcError) as err:           # util.cc InputToSerializedExampleTensor
        pred.Classify(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Input is empty." in err.value.details()


# ---------------------------------------------------------------------------------------------- inputs
def test_signature_defaults_fill_missing_inputs(stubs):
    """servables/tensorflow/predict_util.cc VerifyRequestInputsSize allows fewer inputs when the SignatureDef
    has defaults, and tensorflow/cc/saved_model/util.cc GetInputValues feeds the default (a tf.function's
    default argument, saved as SignatureDef.defaults)."""
    pred, _ = stubs
    got = pred.Predict(predict_request("scaled", x=np.array([1.5], np.float32)), timeout=30)
    assert list(got.outputs["y"].float_val) == [3.0]
    got = pred.Predict(predict_request("scaled", x=np.array([1.5], np.float32), scale=np.float32(10)), timeout=30)
    assert list(got.outputs["y"].float_val) == [15.0]


def test_scalar_k_works_unbatched(stubs):
    """TF Serving feeds request tensors to the session without checking them against the SignatureDef shapes
    (predict_util.cc -> Session::Run), and the model broadcasts a scalar k to every row: clients of the
    pre-batching contract keep working while server-side batching is off."""
    pred, _ = stubs
    req = recommend_request()
    req.inputs["k"].CopyFrom(tf.make_tensor_proto(4, tf.int32))
    assert [d.size for d in pred.Predict(req, timeout=30).outputs["item_ids"].tensor_shape.dim] == [1, 4]


def test_grpc_message_limit_is_tf_servings(server):
    """model_servers/server.cc: builder.SetMaxMessageSize(kint32max); a request (and a response) above gRPC's
    4 MB default goes through (the client raises its own receive limit, as it must for TF Serving)."""
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", -1)])
    pred = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    req = predict_request("echo", text=["x" * 50_000] * 100)          # 5 MB of strings
    assert req.ByteSize() > 4 * 2 ** 20
    response = pred.Predict(req, timeout=60)
    assert len(response.outputs["text"].string_val) == 100 and response.ByteSize() > 8 * 2 ** 20
    channel.close()


def test_unimplemented_apis_say_so(stubs):
    pred, models = stubs
    from tensorflow_serving.apis import inference_pb2, model_management_pb2

    with pytest.raises(grpc.RpcError) as err:
        pred.MultiInference(inference_pb2.MultiInferenceRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as err:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rest_error_body_is_tf_servings(server):
    """util/json_tensor.cc MakeJsonFromStatus: errors are {"error": <message>} with Content-Type application/json."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as s:
        s.sendall(b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404") and b"Content-Type: application/json" in head
    assert list(json.loads(body)) == ["error"]
