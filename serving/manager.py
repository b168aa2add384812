"""Loads the versions of one model from its base path the way TF Serving does, and serves them.

    manager = ModelManager("tower_recs", "outputs/serving_model/tower_recs", batching=BatchingOptions())
    manager.start()                                    # first poll, then one every poll_interval_s
    version, signature, outputs = manager.predict("tower_recs", inputs)
    manager.drain(timeout_s=25)                        # SIGTERM: refuse new requests, finish the running ones

* Version policy ``latest {num_versions}`` over the integer dirs of ``serving.layout``: a wanted version is
  loaded, its warmup requests replayed, and only then made visible (one swap of a dict). A version is
  unloaded once a wanted one serves (availability preserving) and after its in-flight requests finished.
* A version that fails to load (e.g. caught mid-copy) is tried again on later polls, at most
  ``max_num_load_retries`` times ``load_retry_interval_s`` apart (TF Serving's flags and defaults), then again
  whenever its directory changes; the loaded version keeps serving meanwhile, and with none loaded yet the
  newest version that loads serves (TF Serving's latest{1} would serve nothing until the newest loads).
* States are TF Serving's (START, LOADING, AVAILABLE, UNLOADING, END) as GetModelStatus reports them.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf

from serving import layout
from serving.batching import BatchingOptions
from serving.codec import TensorLimits, proto_to_ndarray
from serving.errors import ServingError, clean_tf_message, invalid
from serving.servable import Servable

log = logging.getLogger("serving.manager")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass
class VersionState:
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass
class _Failure:
    attempts: int
    next_try: float          # time.monotonic()
    fingerprint: tuple       # the directory as it was when it failed


class ModelManager:
    """Version policy, loading with warmup and retries, request routing and graceful drain for one model."""

    def __init__(self, model_name: str, base_path: str, poll_interval_s: float = 1.0, num_versions: int = 1,
                 version_labels: Mapping[str, int] | None = None, warmup: bool = True,
                 batching: BatchingOptions | None = None, limits: TensorLimits = TensorLimits(),
                 max_num_load_retries: int = 5, load_retry_interval_s: float = 60.0):
        self.model_name = model_name
        self.base_path = os.path.abspath(base_path)
        self.poll_interval_s = poll_interval_s
        self.num_versions = max(1, num_versions)
        self.version_labels = dict(version_labels or {})
        self.warmup = warmup
        self.batching = batching
        self.limits = limits
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._serving: dict[int, Servable] = {}       # replaced, never mutated: readers need no lock
        self._latest: Servable | None = None
        self._states: dict[int, VersionState] = {}
        self._failures: dict[int, _Failure] = {}
        self._lock = threading.Lock()                  # guards acquire vs. swap, and _states
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = False
        self._thread: threading.Thread | None = None
        self._unloaders: list[threading.Thread] = []
        self._warned_empty = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Refuses new requests (UNAVAILABLE), marks versions UNLOADING, waits up to timeout_s for in-flight ones.

        Returns True when every request finished in time. A Kubernetes rolling update sends SIGTERM, then
        waits terminationGracePeriodSeconds: the server calls this in between.
        """
        self.stop()
        with self._lock:
            self._draining = True
            servables = list(self._serving.values())
            for s in servables:
                self._states[s.version] = VersionState(UNLOADING)
        deadline = time.monotonic() + timeout_s
        idle = all(s.wait_idle(max(0.0, deadline - time.monotonic())) for s in servables)
        with self._lock:
            for s in servables:
                self._states[s.version] = VersionState(END)
            self._serving, self._latest = {}, None
        log.info("Drained model %s: %s", self.model_name, "all requests finished" if idle else
                 f"requests still running after {timeout_s:.0f}s")
        return idle

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # the poller must never die
                log.exception("Version poll of %s failed", self.base_path)

    def poll_once(self) -> None:
        """One poll of the base path: load wanted versions, unload the others (see the module docstring)."""
        with self._poll_lock:
            if self._draining:
                return
            on_disk = layout.version_dirs(self.base_path)
            if not on_disk and not self._warned_empty:
                log.warning("No versions of servable %s found under base path %s", self.model_name, self.base_path)
            self._warned_empty = not on_disk
            wanted = []
            for v in reversed(on_disk):           # newest first; a version that fails gives way to an older one
                if len(wanted) == self.num_versions:
                    break
                if v in self._serving or (self._may_load(v) and self._load(v)):
                    wanted.append(v)
            if set(self._serving) & set(wanted):   # never leave the model without a version
                for v in sorted(set(self._serving) - set(wanted)):
                    self._unload(v)

    def _fingerprint(self, version: int) -> tuple:
        path = os.path.join(self.base_path, str(version))
        try:
            pb = os.stat(os.path.join(path, layout.SAVED_MODEL_FILE))
            return os.stat(path).st_mtime_ns, pb.st_mtime_ns, pb.st_size
        except OSError:
            return ()

    def _may_load(self, version: int) -> bool:
        """False while a failed version waits for its next retry (or, retries spent, for its dir to change)."""
        failure = self._failures.get(version)
        if failure is None or version in self._serving:
            return True
        if self._fingerprint(version) != failure.fingerprint:
            del self._failures[version]          # new files: a fresh series of attempts
            return True
        return failure.attempts <= self.max_num_load_retries and time.monotonic() >= failure.next_try

    def _set_state(self, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[version] = state

    def _load(self, version: int) -> bool:
        path = os.path.join(self.base_path, str(version))
        self._set_state(version, VersionState(LOADING))
        log.info("Loading servable: {name: %s version: %d} from %s", self.model_name, version, path)
        started = time.perf_counter()
        try:
            servable = Servable(self.model_name, version, path, self.batching)
            if self.warmup:
                self._replay_warmup(servable)
        except Exception as e:  # keep serving what we have
            failure = self._failures.get(version) or _Failure(0, 0.0, self._fingerprint(version))
            failure.attempts += 1
            failure.next_try = time.monotonic() + self.load_retry_interval_s
            self._failures[version] = failure
            message = e.message if isinstance(e, ServingError) else clean_tf_message(str(e))
            code = e.code if isinstance(e, ServingError) else "UNKNOWN"
            retry = (f"retry {failure.attempts} of {self.max_num_load_retries} in {self.load_retry_interval_s:g}s"
                     if failure.attempts <= self.max_num_load_retries else "retries spent; waiting for the "
                                                                          "directory to change")
            log.error("Failed to load servable: {name: %s version: %d} (%s): %s", self.model_name, version, retry,
                      message)
            self._set_state(version, VersionState(END, code, message))
            return False
        self._failures.pop(version, None)
        with self._lock:
            serving = dict(self._serving)
            serving[version] = servable
            self._serving = serving
            self._latest = serving[max(serving)]
            self._states[version] = VersionState(AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs (warmup records: %d, "
                 "signatures: %s)", self.model_name, version, time.perf_counter() - started,
                 servable.warmup_records, sorted(servable.signatures))
        return True

    def _unload(self, version: int) -> None:
        """Hides the version now; closes it in the background once its in-flight requests are done."""
        with self._lock:
            serving = dict(self._serving)
            servable = serving.pop(version)
            self._serving = serving
            self._latest = serving[max(serving)] if serving else None
            self._states[version] = VersionState(UNLOADING)
        log.info("Unloading servable version {name: %s version: %d}", self.model_name, version)

        def finish():
            while not servable.wait_idle(60):
                log.warning("Version %d still has %d in-flight requests; waiting", version, servable.inflight)
            servable.close()
            gc.collect()                # a loaded SavedModel is a large cyclic graph: free it now, not later
            self._set_state(version, VersionState(END))
            log.info("Done unloading servable version {name: %s version: %d}", self.model_name, version)

        thread = threading.Thread(target=finish, name=f"unload-{version}", daemon=True)
        self._unloaders = [t for t in self._unloaders if t.is_alive()] + [thread]
        thread.start()

    def _replay_warmup(self, servable: Servable) -> None:
        """Replays assets.extra/tf_serving_warmup_requests as TF Serving does (saved_model_warmup_util.cc)."""
        path = os.path.join(servable.path, layout.WARMUP_FILE)
        if not os.path.isfile(path):
            log.info("No warmup data file found at %s", path)
            return
        from tensorflow_serving.apis import prediction_log_pb2

        n = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            if n >= layout.MAX_WARMUP_RECORDS:
                raise ServingError("INVALID_ARGUMENT", f"Number of warmup records exceeds the maximum "
                                                       f"({layout.MAX_WARMUP_RECORDS}) at {path}")
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            if log_entry.WhichOneof("log_type") != "predict_log":
                raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: "
                                                    f"{log_entry.WhichOneof('log_type')}")
            request = log_entry.predict_log.request
            inputs = {k: proto_to_ndarray(v, k, self.limits) for k, v in request.inputs.items()}
            try:
                servable.predict(request.model_spec.signature_name, inputs, request.output_filter)
            except ServingError as e:
                raise ServingError(e.code, f"Warmup record {n} failed: {e.message}") from None
            n += 1
        servable.warmup_records = n
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                 servable.path, n)

    # ------------------------------------------------------------------ requests
    def _version_for(self, name: str, version: int | None, label: str | None) -> int | None:
        if not name:
            raise invalid("ModelSpec has no name specified.")
        if label:
            if label not in self.version_labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            return self.version_labels[label]
        return version

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Pins a version for one request (TF Serving's ServableHandle); call ``release()`` on it after."""
        version = self._version_for(name, version, label)
        with self._lock:
            if self._draining:
                raise ServingError("UNAVAILABLE", "Server is shutting down; retry on another replica")
            if name != self.model_name:
                servable = None
            elif version is None:
                servable = self._latest
            else:
                servable = self._serving.get(int(version))
            if servable is None:
                request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
                raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")
            servable.acquire()
        return servable

    def predict(self, name: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                label: str | None = None, signature_name: str = "", output_filter: Iterable[str] = (),
                deadline: float | None = None) -> tuple[int, str, dict[str, np.ndarray]]:
        """(version, signature name, {output: array})."""
        servable = self.acquire(name, version, label)
        try:
            signature, outputs = servable.predict(signature_name, inputs, output_filter, deadline)
            return servable.version, signature, outputs
        finally:
            servable.release()

    # ------------------------------------------------------------------ status / metadata
    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionState]]:
        """(version, state) pairs, newest first (tensorflow_serving/model_servers/get_model_status_impl.cc)."""
        if name:
            version = self._version_for(name, version, label)
        with self._lock:
            states = dict(self._states) if name == self.model_name else {}
        if version is not None:
            if int(version) not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [(int(version), states[int(version)])]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)

    def metadata(self, name: str, version: int | None = None, label: str | None = None):
        """(version, {signature name: SignatureDef}) of every SignatureDef, __saved_model_init_op included."""
        servable = self.acquire(name, version, label)
        try:
            return servable.version, servable.meta_graph.signature_def
        finally:
            servable.release()

    def loaded_versions(self) -> list[int]:
        return sorted(self._serving)
