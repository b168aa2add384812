"""A sampled request log in TF Serving's format: TFRecord files of ``tensorflow.serving.PredictionLog``.

TF Serving logs a model's requests when its ModelConfig carries a ``logging_config``
(``tensorflow.serving.LoggingConfig``: ``log_collector_config { type filename_prefix }`` and
``sampling_config { sampling_rate }``). The local server takes the same message from a file, or the two
flags that matter:

    python -m serving.server ... --request_logging_config_file serving/config/request_logging.config
    python -m serving.server ... --request_log_dir outputs/request_log --request_log_sampling_rate 0.05

Each sampled Predict (gRPC or REST) becomes one ``PredictionLog`` with ``predict_log { request response }``
and ``log_metadata`` (the answering servable's model_spec, the sampling config, tags, the request's time),
written to ``<filename_prefix>-<start ns>-<pid>-<n>.tfrecord``. What the request path does is one random
draw and, when sampled, one ``put_nowait`` on a bounded queue: building the protos (REST requests arrive
as arrays) and writing happen on a background thread. A full queue, a full disk or an unwritable directory
drop records and count them (``stats()``, logged at most once a minute); they never fail or slow a request.

Files are bounded: a file is closed after ``max_file_bytes`` or ``max_file_age_s``, and the oldest closed
files are deleted beyond ``max_files``. An open file is named ``*.tfrecord.inprogress`` and renamed when
closed, so readers (``serving.skew``, the pipeline's TrainingServingSkew) only ever see whole files.

    logger = RequestLogger(RequestLogConfig(prefix="outputs/request_log/tower_recs", sampling_rate=1.0))
    logger.start()
    logger.log_grpc_predict(request, response)        # from the gRPC handler
    logger.close()                                    # flush and close the open file
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import queue
import random
import threading
import time
from typing import Mapping, Optional

log = logging.getLogger("serving.request_log")

# The log collector type this server implements (LogCollectorConfig.type): TFRecord files of PredictionLog.
COLLECTOR_TYPE = "tfrecord"
SUFFIX = ".tfrecord"
IN_PROGRESS = ".inprogress"


@dataclasses.dataclass(frozen=True)
class RequestLogConfig:
    """Where and how much to log; ``from_logging_config`` reads TF Serving's LoggingConfig text."""

    prefix: str                        # LogCollectorConfig.filename_prefix: files are <prefix>-...tfrecord
    sampling_rate: float = 0.0         # SamplingConfig.sampling_rate: the fraction of requests logged
    max_file_bytes: int = 64 << 20     # a file is closed at this size ...
    max_file_age_s: float = 300.0      # ... or this old, so readers see recent requests in whole files
    max_files: int = 100               # closed files kept (oldest deleted first); 0: keep all
    queue_size: int = 10_000           # records waiting for the writer; more are dropped and counted

    def __post_init__(self):
        if not 0.0 <= self.sampling_rate <= 1.0:
            raise ValueError(f"request log sampling rate must be in [0, 1], got {self.sampling_rate}")
        if not self.prefix:
            raise ValueError("request log: filename_prefix (or --request_log_dir) must not be empty")
        for name in ("max_file_bytes", "max_file_age_s", "queue_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"request log: {name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_logging_config(cls, text: str, **limits) -> "RequestLogConfig":
        """The config of a ``tensorflow.serving.LoggingConfig`` text proto (TF Serving's ``logging_config``)."""
        from google.protobuf import text_format
        from tensorflow_serving.config import logging_config_pb2

        config = text_format.Parse(text, logging_config_pb2.LoggingConfig())
        collector = config.log_collector_config
        if collector.type != COLLECTOR_TYPE:
            raise ValueError(f"log_collector_config.type {collector.type!r} is not supported; this server writes "
                             f"{COLLECTOR_TYPE!r} (TFRecord files of PredictionLog)")
        return cls(prefix=collector.filename_prefix, sampling_rate=config.sampling_config.sampling_rate, **limits)

    @classmethod
    def for_directory(cls, directory: str, model_name: str, sampling_rate: float, **limits) -> "RequestLogConfig":
        """``<directory>/<model_name>-*.tfrecord`` (the ``--request_log_dir`` flag)."""
        return cls(prefix=os.path.join(directory, model_name), sampling_rate=sampling_rate, **limits)


def log_files(path: str) -> list[tuple[str, float]]:
    """(file, mtime) of the closed log files of a directory, a ``filename_prefix`` or a glob, oldest first.

    Paths may be local or bucket URIs (gs://, s3://: tf.io.gfile).
    """
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        pattern = path.rstrip("/") + "/*" + SUFFIX
    elif glob.has_magic(path) or path.endswith(SUFFIX):
        pattern = path
    else:
        pattern = f"{path}-*{SUFFIX}"
    files = [(f, tf.io.gfile.stat(f).mtime_nsec / 1e9) for f in tf.io.gfile.glob(pattern)]
    return sorted(files, key=lambda item: (item[1], item[0]))


def predict_log_of_arrays(model_name: str, version: int, signature_name: str,
                          inputs: Mapping, outputs: Mapping):
    """A ``PredictionLog`` (predict_log) of a request given as arrays (what REST requests become)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from serving.codec import ndarray_to_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, array in inputs.items():
        ndarray_to_proto(array, request.inputs[name])
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    for name, array in outputs.items():
        ndarray_to_proto(array, response.outputs[name])
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request,
                                                                                       response=response))


class RequestLogger:
    """Samples requests on the request path; a daemon thread turns them into PredictionLog files."""

    def __init__(self, config: RequestLogConfig):
        self.config = config
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._counts = {"sampled": 0, "written": 0, "dropped_queue_full": 0, "dropped_write_error": 0,
                        "files_closed": 0, "files_deleted": 0}
        self._counts_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._writer = None
        self._path = ""
        self._file_bytes = 0
        self._file_opened = 0.0
        self._seq = 0
        self._started_ns = time.time_ns()
        self._last_warning = float("-inf")

    # -- request path ---------------------------------------------------------------------------
    def _offer(self, item) -> None:
        if random.random() >= self.config.sampling_rate:   # rate 0: never; rate 1: always
            return
        try:
            self._queue.put_nowait((int(time.time()), item))
            self._count("sampled")
        except queue.Full:                                  # the writer is behind (slow disk): drop, count
            self._count("dropped_queue_full")
            self._warn("request log: the write queue is full, dropping records")

    def log_grpc_predict(self, request, response) -> None:
        """Samples a gRPC Predict: the request and response protos, as received and sent."""
        self._offer(("proto", request, response))

    def log_arrays_predict(self, model_name: str, version: int, signature_name: str, inputs: Mapping,
                           outputs: Mapping) -> None:
        """Samples a REST predict: its inputs and outputs as arrays (protos are built by the writer)."""
        self._offer(("arrays", model_name, version, signature_name, inputs, outputs))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "RequestLogger":
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        log.info("Request logging: sampling rate %g to %s-*%s", self.config.sampling_rate, self.config.prefix,
                 SUFFIX)
        return self

    def close(self, timeout_s: float = 10.0) -> dict:
        """Writes what is queued (up to timeout_s), closes the open file; returns ``stats()``."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None
        stats = self.stats()
        log.info("Request log closed: %s", stats)
        return stats

    def stats(self) -> dict:
        """Counters: sampled, written, dropped_queue_full, dropped_write_error, files_closed, files_deleted."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    # -- writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                self._write(*item)
            if self._writer is not None and time.monotonic() - self._file_opened >= self.config.max_file_age_s:
                self._rotate()
        self._rotate()

    def _serialize(self, timestamp: int, item) -> bytes:
        from tensorflow_serving.apis import prediction_log_pb2

        if item[0] == "proto":
            _, request, response = item
            entry = prediction_log_pb2.PredictionLog()
            entry.predict_log.request.CopyFrom(request)
            entry.predict_log.response.CopyFrom(response)
        else:
            entry = predict_log_of_arrays(*item[1:])
        # As TF Serving's ServerRequestLogger: which servable answered, how it was sampled, and when.
        metadata = entry.log_metadata
        metadata.model_spec.CopyFrom(entry.predict_log.response.model_spec)
        metadata.sampling_config.sampling_rate = self.config.sampling_rate
        metadata.saved_model_tags.append("serve")
        metadata.timestamp_secs = timestamp
        return entry.SerializeToString()

    def _write(self, timestamp: int, item) -> None:
        try:
            record = self._serialize(timestamp, item)
            if self._writer is None:
                self._open()
            self._writer.write(record)
            self._writer.flush()
            self._file_bytes += len(record) + 16      # TFRecord framing: length, 2 CRCs
            self._count("written")
        except Exception as e:  # noqa: BLE001 - a full disk, a bad path: drop the record, keep serving
            self._count("dropped_write_error")
            self._warn(f"request log: dropped a record ({type(e).__name__}: {e})")
            self._abandon()
            return
        if self._file_bytes >= self.config.max_file_bytes:
            self._rotate()

    def _open(self) -> None:
        import tensorflow as tf

        os.makedirs(os.path.dirname(os.path.abspath(self.config.prefix)), exist_ok=True)
        self._seq += 1
        self._path = f"{self.config.prefix}-{self._started_ns}-{os.getpid()}-{self._seq:06d}{SUFFIX}"
        self._writer = tf.io.TFRecordWriter(self._path + IN_PROGRESS)
        self._file_bytes = 0
        self._file_opened = time.monotonic()

    def _rotate(self) -> None:
        """Closes the open file and gives it its final name; deletes the oldest beyond max_files."""
        if self._writer is None:
            return
        try:
            self._writer.close()
            os.replace(self._path + IN_PROGRESS, self._path)
            self._count("files_closed")
        except Exception as e:  # noqa: BLE001
            self._warn(f"request log: could not close {self._path}: {type(e).__name__}: {e}")
        self._writer = None
        if self.config.max_files:
            for old, _ in log_files(self.config.prefix)[:-self.config.max_files]:
                try:
                    os.remove(old)
                    self._count("files_deleted")
                except OSError:
                    pass

    def _abandon(self) -> None:
        """After a failed write the file may end mid-record: close it as it is and start a new one."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._writer = None

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("%s; counts so far: %s", message, self.stats())
