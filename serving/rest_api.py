"""TF Serving's REST API over a ModelManager (tensorflow_serving/model_servers/http_rest_api_handler.cc).

    httpd = ThreadingHTTPServer(("127.0.0.1", 8501), make_handler(manager, RestOptions()))

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]             model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata    SignatureDefs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict     {"instances": ...} | {"inputs": ...}
    POST ...:classify | ...:regress                               {"examples": [...], "context": {...}}

Paths are matched with TF Serving's (case-insensitive) patterns: anything under /v1/ that does not match is
"Malformed request" (HTTP 400), a path outside /v1/ is 404. Errors are ``{"error": message}`` with the HTTP
status TF Serving maps the gRPC code to. Before the body is read: a missing, negative or non-numeric
Content-Length is 400 and one above ``max_body_bytes`` is 413, so a client cannot make the server allocate
(or wait for) more than that.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from google.protobuf import json_format

from serving import examples_api, rest_json
from serving.codec import TensorLimits
from serving.errors import ServingError, invalid
from serving.grpc_api import status_response
from serving.manager import ModelManager
from serving.request_log import RequestLogger

log = logging.getLogger("serving.rest")

# tensorflow_serving/model_servers/http_rest_api_util.cc
PREDICTION_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
                             r"(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                         re.IGNORECASE)
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class RestOptions:
    """Limits of the REST front end (``--rest_api_*`` flags)."""
    max_body_bytes: int = 32 << 20
    max_json_depth: int = 32
    timeout_s: float = 30.0          # TF Serving's --rest_api_timeout_in_ms default
    limits: TensorLimits = TensorLimits()


def _model_spec(match) -> tuple[str, int | None, str | None]:
    name = urllib.parse.unquote(match.group(1) or "")
    version = int(match.group(2)) if match.group(2) else None
    label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
    return name, version, label


def make_handler(manager: ModelManager, options: RestOptions = RestOptions(),
                 request_logger: RequestLogger | None = None):
    """A BaseHTTPRequestHandler class serving ``manager`` (one instance per connection).

    Predict requests are sampled into ``request_logger`` (``serving.request_log``) when one is given.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tower-recs-serving"

        def log_message(self, fmt, *args):      # the server log is for loads and errors
            log.debug("%s - " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body, indent=1).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status in (400, 411, 413) and self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            """The request body, length-checked before reading (400 malformed, 413 too large)."""
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.close_connection = True
                raise _HttpError(411, "Chunked request bodies are not accepted; send Content-Length")
            text = self.headers.get("Content-Length")
            if text is None:
                return b""
            if not text.strip().isdigit():
                self.close_connection = True      # the rest of the stream cannot be framed
                raise _HttpError(400, f"Malformed Content-Length header: {text!r}")
            length = int(text)
            if length > options.max_body_bytes:
                self.close_connection = True
                raise _HttpError(413, f"Request body of {length} bytes is above the limit of "
                                      f"{options.max_body_bytes} bytes (--rest_api_max_body_bytes)")
            return self.rfile.read(length)

        def _handle(self, method: str) -> None:
            try:
                body = self._body()
            except _HttpError as e:
                self._send(e.status, {"error": e.message})
                return
            path = urllib.parse.urlsplit(self.path).path
            if not API_PATH.fullmatch(path):
                self._send(404, {"error": f"Not found: {method} {path}"})
                return
            try:
                self._send(200, self._dispatch(method, path, body))
            except ServingError as e:
                self._send(e.http_status, {"error": e.message})
            except Exception as e:  # noqa: BLE001 - the server keeps serving
                log.exception("%s %s failed", method, path)
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

        def _dispatch(self, method: str, path: str, body: bytes) -> dict:
            deadline = time.monotonic() + options.timeout_s
            if method == "POST":
                match = PREDICTION_PATH.fullmatch(path)
                if match and match.group(4) in ("predict", "classify", "regress"):
                    return self._post(match.group(4), *_model_spec(match), body, deadline)
            elif method == "GET":
                match = STATUS_PATH.fullmatch(path)
                if match:
                    name, version, label = _model_spec(match)
                    if not name:
                        raise invalid("Missing model name in request.")
                    if match.group(4):
                        return self._metadata(name, version, label)
                    return json_format.MessageToDict(status_response(manager.status(name, version, label)),
                                                     including_default_value_fields=True)
            raise invalid(f"Malformed request: {method} {path}")

        def _post(self, method, name, version, label, body: bytes, deadline: float) -> dict:
            doc = rest_json.loads(body, options.max_json_depth)
            signature_name = rest_json.signature_name(doc)
            servable = manager.acquire(name, version, label)
            try:
                if method == "predict":
                    sig = servable.signatures.get(signature_name or "serving_default")
                    if sig is None:
                        raise invalid(f"Serving signature name: \"{signature_name or 'serving_default'}\" not "
                                      f"found in signature def")
                    fmt, arrays = rest_json.predict_inputs_from_json(doc, sig.inputs, options.limits)
                    _, outputs = servable.predict(sig.name, arrays, (), deadline)
                    if request_logger is not None:
                        request_logger.log_arrays_predict(name, servable.version, sig.name, arrays, outputs)
                    return rest_json.predict_outputs_to_json(outputs, fmt)
                request = _examples_request(method, signature_name, doc)
                if method == "classify":
                    return rest_json.classification_to_json(examples_api.classify(servable, request, deadline)[1])
                return rest_json.regression_to_json(examples_api.regress(servable, request, deadline)[1])
            finally:
                servable.release()

        def _metadata(self, name, version, label) -> dict:
            v, signature_defs = manager.metadata(name, version, label)
            from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

            spec = model_pb2.ModelSpec(name=name)
            spec.version.value = v
            signature_map = get_model_metadata_pb2.SignatureDefMap(signature_def=signature_defs)
            as_dict = dict(including_default_value_fields=True, preserving_proto_field_name=True)
            return {"model_spec": json_format.MessageToDict(spec, **as_dict),
                    "metadata": {"signature_def": json_format.MessageToDict(signature_map, **as_dict)}}

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PUT(self):
            self._handle("PUT")

        def do_DELETE(self):
            self._handle("DELETE")

        def do_PATCH(self):
            self._handle("PATCH")

    return Handler


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _examples_request(method: str, signature_name: str, doc: dict):
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = (classification_pb2.ClassificationRequest() if method == "classify"
               else regression_pb2.RegressionRequest())
    request.model_spec.signature_name = signature_name
    request.input.CopyFrom(rest_json.examples_input_from_json(doc))
    return request
