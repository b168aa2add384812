"""A local server that speaks TF Serving's gRPC and REST APIs for one model (no tensorflow_model_server here).

    python -m serving.server --model_base_path outputs/serving_model/tower_recs --model_name tower_recs \
        [--port 8500] [--rest_api_port 8501] [--host 127.0.0.1] [--poll_interval_s 2] [--max_batch_size 256] \
        [--enable_batching true|false] [--batching_max_batch_size 64] [--tensorflow_intra_op_parallelism 1]

Speed: signatures are called through a flat, pre-bound call (``model_manager.Signature.call``), TF runs one
thread per op (batch-1 ops are too small to split; 32 gRPC threads give the parallelism), and concurrent
requests are merged into one signature call by ``model_manager.Batcher`` (no batch timeout: an idle model
runs a request at once). See benchmarks/serving_latency.py.

gRPC: ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and ``ModelService`` (GetModelStatus).
REST: ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]``, ``GET .../metadata``, ``POST ...:predict``
(``instances`` row format -> ``predictions``; ``inputs`` columnar format -> ``outputs``).
Errors: gRPC status codes; HTTP 400 (INVALID_ARGUMENT), 404 (NOT_FOUND), 500 otherwise, body ``{"error": ...}``.
Version policy latest{1} with hot swap: see ``serving.model_manager``. Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc  # noqa: E402

from serving.model_manager import (BatchingOptions, ModelManager, ServingError,  # noqa: E402
                                   ndarray_to_proto, proto_to_ndarray)

from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from google.protobuf import json_format  # noqa: E402

log = logging.getLogger("serving.server")

_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 429, "DEADLINE_EXCEEDED": 504}


def _grpc_code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def _version_of(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


# ---------------------------------------------------------------------------------------------- gRPC
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.m = manager

    def Predict(self, request, context):
        try:
            version, label = _version_of(request.model_spec)
            inputs = {k: proto_to_ndarray(v) for k, v in request.inputs.items()}
            v, sig, outputs = self.m.predict(request.model_spec.name, inputs, version, label,
                                             request.model_spec.signature_name, request.output_filter)
        except ServingError as e:
            context.abort(_grpc_code(e.code), e.message)
        except Exception as e:  # never crash the server
            log.exception("Predict failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = request.model_spec.name
        resp.model_spec.version.value = v
        resp.model_spec.signature_name = sig
        for k, arr in outputs.items():
            ndarray_to_proto(arr, resp.outputs[k])
        return resp

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise ServingError("INVALID_ARGUMENT", f"Metadata field(s) {fields} not supported; "
                                                       f"only 'signature_def' is (set metadata_field: 'signature_def')")
            version, label = _version_of(request.model_spec)
            v, meta = self.m.metadata(request.model_spec.name, version, label)
        except ServingError as e:
            context.abort(_grpc_code(e.code), e.message)
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = request.model_spec.name
        resp.model_spec.version.value = v
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, s in meta.signature_def.items():
            sig_map.signature_def[k].CopyFrom(s)
        resp.metadata["signature_def"].Pack(sig_map)
        return resp


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.m = manager

    def GetModelStatus(self, request, context):
        try:
            version, label = _version_of(request.model_spec)
            states = self.m.status(request.model_spec.name, version, label)
        except ServingError as e:
            context.abort(_grpc_code(e.code), e.message)
        resp = get_model_status_pb2.GetModelStatusResponse()
        for v, st in states:
            mv = resp.model_version_status.add()
            mv.version = v
            mv.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
            mv.status.error_code = getattr(grpc.StatusCode, st.error_code, grpc.StatusCode.UNKNOWN).value[0]
            mv.status.error_message = st.error_message
        return resp


# ---------------------------------------------------------------------------------------------- REST
_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                    r"(?P<tail>/metadata|:predict|:[A-Za-z]+)?/?$")


def make_handler(manager: ModelManager):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tower-recs-serving"

        def log_message(self, fmt, *args):  # keep the server log for loads/errors
            log.debug("%s - " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: str, message: str) -> None:
            self._send(_HTTP_STATUS.get(code, 500), {"error": message})

        def _route(self):
            m = _ROUTE.match(self.path.split("?", 1)[0])
            if not m:
                raise ServingError("NOT_FOUND", f"Malformed request: {self.command} {self.path}; expected "
                                                f"/v1/models/<name>[/versions/<v>][/metadata|:predict]")
            version = m.group("version")
            if version is not None and not version.isdigit():
                raise ServingError("INVALID_ARGUMENT", f"Version must be an integer, got '{version}'")
            return m.group("name"), (int(version) if version else None), m.group("label"), m.group("tail")

        def do_GET(self):
            try:
                name, version, label, tail = self._route()
                if tail == "/metadata":
                    v, meta = manager.metadata(name, version, label)
                    sigs = json_format.MessageToDict(
                        get_model_metadata_pb2.SignatureDefMap(signature_def=meta.signature_def),
                        preserving_proto_field_name=True)
                    self._send(200, {"model_spec": {"name": name, "signature_name": "", "version": str(v)},
                                     "metadata": {"signature_def": sigs}})
                elif tail is None:
                    states = manager.status(name, version, label)
                    self._send(200, {"model_version_status": [
                        {"version": str(v), "state": st.state,
                         "status": {"error_code": st.error_code, "error_message": st.error_message}}
                        for v, st in states]})
                else:
                    raise ServingError("NOT_FOUND", f"Malformed request: GET {self.path}")
            except ServingError as e:
                self._error(e.code, e.message)
            except Exception as e:
                log.exception("GET %s failed", self.path)
                self._error("INTERNAL", f"{type(e).__name__}: {e}")

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                name, version, label, tail = self._route()
                if tail != ":predict":
                    raise ServingError("NOT_FOUND" if tail in (None, "/metadata") else "UNIMPLEMENTED",
                                       f"Malformed request: POST {self.path}; only :predict is served")
                try:
                    body = json.loads(raw.decode("utf-8") if raw else "")
                except (ValueError, UnicodeDecodeError) as e:
                    raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None
                self._send(200, manager.predict_json(name, body, version, label))
            except ServingError as e:
                self._error(e.code, e.message)
            except Exception as e:
                log.exception("POST %s failed", self.path)
                self._error("INTERNAL", f"{type(e).__name__}: {e}")

    return Handler


# ---------------------------------------------------------------------------------------------- main
class Server:
    def __init__(self, manager: ModelManager, host: str = "127.0.0.1", port: int = 8500, rest_api_port: int = 8501,
                 grpc_threads: int = 0, grpc_max_message_bytes: int = 64 << 20, max_concurrent_rpcs: int = 0):
        self.manager = manager
        # Enough threads that concurrent requests can queue in the batcher and share one signature call.
        threads = grpc_threads or 32
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                                options=[("grpc.so_reuseport", 0),
                                         ("grpc.max_receive_message_length", grpc_max_message_bytes),
                                         ("grpc.max_send_message_length", grpc_max_message_bytes)],
                                maximum_concurrent_rpcs=max_concurrent_rpcs or None)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager), self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), self.grpc)
        bound = self.grpc.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"could not bind gRPC to {host}:{port}")
        self.port = bound
        self.http = None
        if rest_api_port:
            self.http = ThreadingHTTPServer((host, rest_api_port), make_handler(manager))
            self.http.daemon_threads = True
        self.rest_api_port = self.http.server_address[1] if self.http else 0
        self.host = host

    def start(self) -> None:
        self.grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.host, self.port)
        if self.http:
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.rest_api_port)

    def stop(self) -> None:
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        self.grpc.stop(grace=2).wait()
        self.manager.stop()


def free_port(host: str = "127.0.0.1") -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """Runs ``python -m serving.server`` as a subprocess on free localhost ports (tests, benchmarks).

        with ServerProcess(base_path, log_path="server.log") as srv:
            srv.grpc_target, srv.rest_url
    """

    def __init__(self, model_base_path: str, model_name: str = "tower_recs", log_path: str | None = None,
                 extra_args: list[str] | None = None, ready_timeout_s: float = 120.0):
        self.model_base_path = model_base_path
        self.model_name = model_name
        self.port, self.rest_port = free_port(), free_port()
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.ready_timeout_s = ready_timeout_s
        self.proc = None
        self._log = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log_text(self) -> str:
        if not self.log_path:
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def start(self) -> "ServerProcess":
        import subprocess
        import time
        import urllib.request
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "serving.server", "--model_base_path", self.model_base_path,
               "--model_name", self.model_name, "--port", str(self.port), "--rest_api_port", str(self.rest_port),
               "--host", "127.0.0.1", *self.extra_args]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=root)
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"{self.rest_url}/v1/models/{self.model_name}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if any(v["state"] == "AVAILABLE" for v in json.loads(r.read())["model_version_status"]):
                        return self
            except Exception:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout_s}s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        if self._log not in (None,) and hasattr(self._log, "close"):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _labels(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Local TF Serving-compatible model server (gRPC + REST).")
    p.add_argument("--model_base_path", required=True, help="dir holding <version>/saved_model.pb dirs")
    p.add_argument("--model_name", default="tower_recs")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 = no REST)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--poll_interval_s", "--file_system_poll_wait_seconds", type=float, default=2.0,
                   dest="poll_interval_s")
    p.add_argument("--num_versions", type=int, default=1, help="version policy latest{num_versions}")
    p.add_argument("--max_batch_size", type=int, default=256)
    p.add_argument("--version_labels", default="", help="label=version[,label=version]")
    p.add_argument("--grpc_threads", type=int, default=0, help="gRPC worker threads (0 = 32)")
    p.add_argument("--grpc_max_concurrent_rpcs", type=int, default=0,
                   help="reject RPCs beyond this many in flight with RESOURCE_EXHAUSTED (0 = no limit)")
    p.add_argument("--enable_batching", type=_bool, default=True, metavar="true|false",
                   help="merge concurrent requests into one signature call (default true; see "
                        "serving.model_manager.BatchingOptions)")
    p.add_argument("--batching_max_batch_size", type=int, default=64, help="rows per merged signature call")
    p.add_argument("--batching_max_concurrent", type=int, default=1,
                   help="signature calls in flight per version when batching")
    p.add_argument("--batching_pad_inputs", default="history,exclude",
                   help="string inputs right-padded with '' to merge requests of different widths")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=1,
                   help="threads inside one op (0 = TF default, all cores). 1: batch-1 ops are too small to split")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=1, help="(0 = TF default)")
    p.add_argument("--no_warmup", action="store_true", help="skip assets.extra warmup replay")
    p.add_argument("--log_level", default="INFO")
    a = p.parse_args(argv)

    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import tensorflow as tf
    if a.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(a.tensorflow_intra_op_parallelism)
    if a.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(a.tensorflow_inter_op_parallelism)

    manager = ModelManager(a.model_name, a.model_base_path, poll_interval_s=a.poll_interval_s,
                           num_versions=a.num_versions, max_batch_size=a.max_batch_size,
                           version_labels=_labels(a.version_labels), warmup=not a.no_warmup,
                           batching=BatchingOptions(
                               enabled=a.enable_batching, max_batch_size=a.batching_max_batch_size,
                               max_concurrent_batches=a.batching_max_concurrent,
                               pad_inputs=tuple(filter(None, a.batching_pad_inputs.split(",")))))
    manager.start()
    server = Server(manager, a.host, a.port, a.rest_api_port, a.grpc_threads,
                    max_concurrent_rpcs=a.grpc_max_concurrent_rpcs)
    server.start()

    done = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: done.set())
    done.wait()
    log.info("Shutting down")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
