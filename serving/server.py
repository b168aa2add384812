"""A local stand-in for tensorflow_model_server: TF Serving's gRPC and REST APIs for one model.

    python -m serving.server --model_base_path outputs/serving_model/tower_recs --model_name tower_recs \\
        [--port 8500] [--rest_api_port 8501] [--enable_batching true|false] [--batching_parameters_file F]
        [--request_logging_config_file F | --request_log_dir D --request_log_sampling_rate R]

Production runs the stock ``tensorflow/serving:2.16.1`` image (serving/Dockerfile) with the same batching
file: by default this server batches exactly as production does (``--enable_batching`` true,
``serving/config/batching_parameters.txt``). Flags carry TF Serving's names and defaults where TF Serving has
the flag; the others bound what one request may cost (``--max_*``, ``--rest_api_max_*``) before anything is
allocated. SIGTERM drains: new requests get UNAVAILABLE, status reports UNLOADING, in-flight requests finish
(up to ``--drain_timeout_s``), then the process exits, as a Kubernetes rolling update needs.

Modules: ``codec`` (TensorProto <-> numpy, limits), ``rest_json`` (JSON <-> tensors), ``servable`` (one
version's signatures), ``batching``, ``manager`` (version policy, warmup, retries, drain), ``grpc_api``,
``rest_api``, ``examples_api`` (Classify/Regress), ``testing`` (a server subprocess for tests/benchmarks).
Binds 127.0.0.1 unless told otherwise.

Request log (off by default): a sampled log of Predict requests and responses in TF Serving's format
(TFRecord files of PredictionLog, ``serving.request_log``), configured by TF Serving's ``LoggingConfig``
text (``serving/config/request_logging.config``) or by ``--request_log_dir``/``--request_log_sampling_rate``;
``python -m serving.skew`` compares it with the training data.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import ThreadingHTTPServer

import grpc

from serving.batching import DEFAULT_PARAMETERS_FILE, BatchingOptions
from serving.codec import TensorLimits
from serving.grpc_api import add_services
from serving.manager import ModelManager
from serving.request_log import RequestLogConfig, RequestLogger
from serving.rest_api import RestOptions, make_handler

log = logging.getLogger("serving.server")

# tensorflow_serving/model_servers/server.cc: builder.SetMaxMessageSize(tensorflow::kint32max).
GRPC_MAX_MESSAGE_BYTES = 2 ** 31 - 1


def grpc_channel_arguments(text: str) -> list[tuple[str, object]]:
    """TF Serving's --grpc_channel_arguments: "key=value,key=value", integers passed as integers."""
    out = []
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        out.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return out


class Server:
    """gRPC + REST front ends of one ModelManager.

        server = Server(manager, port=8500, rest_api_port=8501).start()
        ...
        server.shutdown(drain_timeout_s=25)
    """

    def __init__(self, manager: ModelManager, host: str = "127.0.0.1", port: int = 8500, rest_api_port: int = 8501,
                 grpc_max_threads: int = 4 * (os.cpu_count() or 1), grpc_arguments: list | None = None,
                 limits: TensorLimits = TensorLimits(), rest: RestOptions = RestOptions(),
                 rest_api_num_threads: int = 0, request_logger: RequestLogger | None = None):
        self.manager = manager
        self.request_logger = request_logger
        options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES), *(grpc_arguments or [])]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=grpc_max_threads, thread_name_prefix="grpc"),
                                options=options)
        add_services(self.grpc, manager, limits, rest.timeout_s, request_logger)
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"could not bind gRPC to {host}:{port}")
        self.http = None
        if rest_api_port:
            self.http = ThreadingHTTPServer((host, rest_api_port), make_handler(manager, rest, request_logger))
            self.http.daemon_threads = True
        self.rest_api_port = self.http.server_address[1] if self.http else 0
        self.host = host

    def start(self) -> "Server":
        if self.request_logger is not None:
            self.request_logger.start()
        self.grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.host, self.port)
        if self.http:
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.rest_api_port)
        return self

    def shutdown(self, drain_timeout_s: float = 25.0) -> None:
        """Drains the model (new requests UNAVAILABLE, in-flight ones finish), then closes the ports."""
        log.info("Shutting down: draining in-flight requests (up to %.0fs)", drain_timeout_s)
        self.manager.drain(drain_timeout_s)
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        self.grpc.stop(grace=2).wait()
        if self.request_logger is not None:
            self.request_logger.close()       # the queued records, then the open file gets its final name


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _labels(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    limits, rest = TensorLimits(), RestOptions()
    p = argparse.ArgumentParser(description="Local TF Serving stand-in (gRPC + REST) for one model.")
    p.add_argument("--model_base_path", required=True, help="dir holding <version>/saved_model.pb dirs")
    p.add_argument("--model_name", default="tower_recs")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0: no REST)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--num_versions", type=int, default=1, help="version policy latest{num_versions}")
    p.add_argument("--version_labels", default="", help="label=version[,label=version]")
    p.add_argument("--enable_model_warmup", type=_bool, default=True, metavar="true|false")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    p.add_argument("--enable_batching", type=_bool, default=True, metavar="true|false",
                   help="server-side batching as TF Serving does it (default true: what production runs)")
    p.add_argument("--batching_parameters_file", default=None,
                   help=f"BatchingParameters text file (default: {os.path.relpath(DEFAULT_PARAMETERS_FILE)})")
    p.add_argument("--grpc_max_threads", type=int, default=4 * (os.cpu_count() or 1))
    p.add_argument("--grpc_channel_arguments", default="",
                   help="e.g. grpc.max_receive_message_length=67108864 (default limit: 2 GiB, as TF Serving)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=int(rest.timeout_s * 1000))
    p.add_argument("--rest_api_max_body_bytes", type=int, default=rest.max_body_bytes)
    p.add_argument("--rest_api_max_json_depth", type=int, default=rest.max_json_depth)
    p.add_argument("--max_batch_size", type=int, default=limits.max_rows, help="rows per request")
    p.add_argument("--max_tensor_elements", type=int, default=limits.max_elements)
    p.add_argument("--max_tensor_bytes", type=int, default=limits.max_bytes)
    p.add_argument("--max_string_bytes", type=int, default=limits.max_string_bytes)
    p.add_argument("--max_row_elements", type=int, default=limits.max_row_elements,
                   help="elements per batch row of one input (bounds history/exclude widths)")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=1,
                   help="threads inside one op (0: TF's default). 1: batch-1 ops are too small to split")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=1, help="(0: TF's default)")
    p.add_argument("--drain_timeout_s", type=float, default=25.0,
                   help="on SIGTERM, how long in-flight requests may take (below Kubernetes' grace period)")
    p.add_argument("--request_logging_config_file", default=None,
                   help="TF Serving LoggingConfig text (serving/config/request_logging.config): log_collector_config "
                        "{type: \"tfrecord\" filename_prefix} and sampling_config {sampling_rate}")
    p.add_argument("--request_log_dir", default=None,
                   help="write sampled Predict requests to <dir>/<model_name>-*.tfrecord (PredictionLog)")
    p.add_argument("--request_log_sampling_rate", type=float, default=None,
                   help="fraction of requests logged, in [0, 1] (default with --request_log_dir: 0.01)")
    p.add_argument("--request_log_max_file_bytes", type=int, default=64 << 20, help="a log file is closed at this size")
    p.add_argument("--request_log_max_file_age_s", type=float, default=300.0,
                   help="... or this old (readers only see closed files)")
    p.add_argument("--request_log_max_files", type=int, default=100,
                   help="closed log files kept, oldest deleted first (0: all)")
    p.add_argument("--log_level", default="INFO")
    args = p.parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        p.error("--batching_parameters_file is set without setting --enable_batching to true "
                "(TF Serving refuses this too)")
    if args.request_logging_config_file and (args.request_log_dir or args.request_log_sampling_rate is not None):
        p.error("--request_logging_config_file and --request_log_dir/--request_log_sampling_rate are exclusive")
    if args.request_log_sampling_rate is not None and not args.request_log_dir:
        p.error("--request_log_sampling_rate needs --request_log_dir")
    try:
        args.request_log = request_log_config(args)
    except (OSError, ValueError) as e:
        p.error(f"request log: {e}")
    return args


def request_log_config(args: argparse.Namespace) -> RequestLogConfig | None:
    """The request log the flags ask for (None: no logging, the default)."""
    limits = dict(max_file_bytes=args.request_log_max_file_bytes, max_file_age_s=args.request_log_max_file_age_s,
                  max_files=args.request_log_max_files)
    if args.request_logging_config_file:
        with open(args.request_logging_config_file, encoding="utf-8") as f:
            return RequestLogConfig.from_logging_config(f.read(), **limits)
    if args.request_log_dir:
        rate = 0.01 if args.request_log_sampling_rate is None else args.request_log_sampling_rate
        return RequestLogConfig.for_directory(args.request_log_dir, args.model_name, rate, **limits)
    return None


def build(args: argparse.Namespace) -> Server:
    """The manager and front ends the flags describe (started by the caller)."""
    import tensorflow as tf

    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    limits = TensorLimits(max_elements=args.max_tensor_elements, max_bytes=args.max_tensor_bytes,
                          max_string_bytes=args.max_string_bytes, max_row_elements=args.max_row_elements,
                          max_rows=args.max_batch_size)
    batching = (BatchingOptions.from_file(args.batching_parameters_file or DEFAULT_PARAMETERS_FILE)
                if args.enable_batching else None)
    if batching:
        log.info("Server-side batching: %s", dataclasses.asdict(batching))
    manager = ModelManager(args.model_name, args.model_base_path, args.file_system_poll_wait_seconds,
                           args.num_versions, _labels(args.version_labels), args.enable_model_warmup, batching,
                           limits, args.max_num_load_retries, args.load_retry_interval_micros / 1e6)
    rest = RestOptions(args.rest_api_max_body_bytes, args.rest_api_max_json_depth,
                       args.rest_api_timeout_in_ms / 1000, limits)
    manager.start()
    logger = RequestLogger(args.request_log) if args.request_log else None
    return Server(manager, args.host, args.port, args.rest_api_port, args.grpc_max_threads,
                  grpc_channel_arguments(args.grpc_channel_arguments), limits, rest, request_logger=logger)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build(args).start()
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    # Wake up regularly: a signal delivered to another thread (gRPC's, TF's) only runs its Python handler once
    # the main thread executes bytecode, which an untimed wait would never do.
    while not stop.wait(0.5):
        pass
    server.shutdown(args.drain_timeout_s)
    log.info("Server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
