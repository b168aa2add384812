"""The server's sampled request log: TF Serving's PredictionLog TFRecords, off the request path.

Two server subprocesses (synthetic model) take real gRPC and REST Predict requests: with sampling rate 1.0
every request is in the log, parseable, with what was sent and answered; with rate 0 there is no log
record. In-process: bounded files (rotation, max_files), a full queue and an unwritable directory drop
and count records without raising, and the shipped LoggingConfig parses.
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from schema import contract
from serving import request_log
from serving.request_log import RequestLogConfig, RequestLogger
from serving.synthetic_model import build_synthetic_model
from serving.testing import ServerProcess, predict_request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tower_recs"


def read_logs(path: str) -> list:
    return [prediction_log_pb2.PredictionLog.FromString(r)
            for f, _ in request_log.log_files(path) for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]


def grpc_request(user: str, history: tuple[str, ...]) -> predict_pb2.PredictRequest:
    return predict_request(MODEL, user, history, k=3)


def send_requests(server: ServerProcess) -> None:
    """Two gRPC and one REST serving_default requests (users user_1, user_2, user_3)."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for user, history in (("user_1", ("item_1",)), ("user_2", ("item_2", "item_3"))):
            assert len(stub.Predict(grpc_request(user, history), timeout=30).outputs[contract.OUTPUT_ITEM_IDS]
                       .string_val) == 3
    body = json.dumps({"instances": [{contract.USER_ID: "user_3", contract.HISTORY: ["", "item_4"],
                                      contract.INPUT_EXCLUDE: [""], contract.INPUT_K: 3}]}).encode()
    req = urllib.request.Request(f"{server.rest_url}/v1/models/{MODEL}:predict", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert len(json.loads(r.read())["predictions"][0][contract.OUTPUT_ITEM_IDS]) == 3


@pytest.mark.e2e
def test_server_logs_sampled_grpc_and_rest_predicts_as_prediction_logs(tmp_path):
    base = str(tmp_path / "models" / MODEL)
    build_synthetic_model(base, 1, num_items=50, seed=0, warmup=1)
    logged, unlogged = tmp_path / "log_all", tmp_path / "log_none"
    servers = [ServerProcess(base, MODEL, log_path=str(tmp_path / f"server_{rate}.log"),
                             extra_args=["--request_log_dir", str(directory), "--request_log_sampling_rate", rate,
                                         "--enable_batching", "false"])
               for directory, rate in ((logged, "1.0"), (unlogged, "0"))]
    with ThreadPoolExecutor(2) as pool:                  # both start at once: half the wait
        list(pool.map(ServerProcess.start, servers))
    try:
        for server in servers:
            send_requests(server)
            # The log is written by a background thread; SIGTERM flushes it and names the last file.
            assert server.terminate() == 0
            assert "Request log closed" in server.log_text()
    finally:
        for server in servers:
            server.stop()
    server = servers[0]

    logs = read_logs(str(logged))
    assert len(logs) == 3, server.log_text()[-2000:]
    users = []
    for entry in logs:
        assert entry.WhichOneof("log_type") == "predict_log"
        request, response = entry.predict_log.request, entry.predict_log.response
        assert request.model_spec.name == MODEL
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == contract.SERVING_DEFAULT
        assert entry.log_metadata.model_spec == response.model_spec
        assert entry.log_metadata.sampling_config.sampling_rate == 1.0
        assert abs(entry.log_metadata.timestamp_secs - time.time()) < 600
        users += [u.decode() for u in tf.make_ndarray(request.inputs[contract.USER_ID]).reshape([-1])]
        assert tf.make_ndarray(response.outputs[contract.OUTPUT_ITEM_IDS]).shape == (1, 3)
    assert sorted(users) == ["user_1", "user_2", "user_3"]      # both gRPC requests and the REST one
    rest = next(e for e in logs if tf.make_ndarray(e.predict_log.request.inputs[contract.USER_ID])[0] == b"user_3")
    assert tf.make_ndarray(rest.predict_log.request.inputs[contract.HISTORY]).tolist() == [[b"", b"item_4"]]
    assert not [f for f in os.listdir(logged) if f.endswith(request_log.IN_PROGRESS)]
    # Sampling rate 0: the same requests leave no record.
    assert read_logs(str(unlogged)) == []


def _arrays_request(logger: RequestLogger, user: str = "user_1") -> None:
    logger.log_arrays_predict(MODEL, 1, contract.SERVING_DEFAULT,
                              {contract.USER_ID: np.array([user.encode()], object)},
                              {contract.OUTPUT_SCORES: np.zeros([1, 3], np.float32)})


def test_files_rotate_at_max_bytes_and_only_max_files_are_kept(tmp_path):
    logger = RequestLogger(RequestLogConfig(prefix=str(tmp_path / MODEL), sampling_rate=1.0, max_file_bytes=300,
                                            max_files=2)).start()
    for i in range(12):
        _arrays_request(logger, f"user_{i}")
    stats = logger.close()
    files = request_log.log_files(str(tmp_path))
    assert stats["written"] == 12 and stats["files_closed"] > 2, stats
    assert len(files) == 2 and stats["files_deleted"] == stats["files_closed"] - 2
    assert all(os.path.getsize(f) < 300 + 200 for f, _ in files)     # closed once past max_file_bytes
    users = [tf.make_ndarray(e.predict_log.request.inputs[contract.USER_ID])[0] for e in read_logs(str(tmp_path))]
    assert users[-1] == b"user_11"                                 # the newest records are kept


def test_unwritable_log_dir_drops_and_counts_records_without_raising(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    logger = RequestLogger(RequestLogConfig(prefix=str(blocker / "logs" / MODEL), sampling_rate=1.0)).start()
    for _ in range(3):
        _arrays_request(logger)                                    # the request path never raises
    stats = logger.close()
    assert stats["sampled"] == 3 and stats["written"] == 0 and stats["dropped_write_error"] == 3, stats


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    logger = RequestLogger(RequestLogConfig(prefix=str(tmp_path / MODEL), sampling_rate=1.0, queue_size=2))
    for _ in range(5):                                             # writer not started: the queue fills
        _arrays_request(logger)
    assert logger.stats()["sampled"] == 2 and logger.stats()["dropped_queue_full"] == 3
    logger.start()
    assert logger.close()["written"] == 2


def test_shipped_logging_config_is_tf_servings_and_kept_out_of_models_config():
    from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

    shipped = {}
    for folder in (os.path.join(ROOT, "serving", "config"), os.path.join(ROOT, "deploy", "k8s", "base", "config")):
        with open(os.path.join(folder, "request_logging.config")) as f:
            shipped[folder] = f.read()
        text_format.Parse(shipped[folder], logging_config_pb2.LoggingConfig())
        with open(os.path.join(folder, "models.config")) as f:
            models = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
        # Stock tensorflow/serving exits at startup on a logging_config ("No request-logger-creator provided").
        assert not any(c.HasField("logging_config") for c in models.model_config_list.config)
    assert len(set(shipped.values())) == 1
    config = RequestLogConfig.from_logging_config(next(iter(shipped.values())))
    assert config.sampling_rate == 0.01 and config.prefix.endswith(MODEL)
    with pytest.raises(ValueError, match="not supported"):
        RequestLogConfig.from_logging_config('log_collector_config { type: "bigquery" filename_prefix: "x" }')


def test_server_flags_build_the_request_log_config(tmp_path):
    from serving.server import parse_args

    assert parse_args(["--model_base_path", "m"]).request_log is None          # off by default
    args = parse_args(["--model_base_path", "m", "--request_log_dir", str(tmp_path),
                       "--request_log_sampling_rate", "0.5"])
    assert args.request_log.sampling_rate == 0.5 and args.request_log.prefix == str(tmp_path / MODEL)
    config_file = os.path.join(ROOT, "serving", "config", "request_logging.config")
    assert parse_args(["--model_base_path", "m", "--request_logging_config_file", config_file]
                      ).request_log.sampling_rate == 0.01
    with pytest.raises(SystemExit):
        parse_args(["--model_base_path", "m", "--request_log_dir", str(tmp_path), "--request_log_sampling_rate", "2"])
