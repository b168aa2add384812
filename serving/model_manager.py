"""Loads SavedModel versions of one model the way TF Serving does, and runs its signatures.

* Version policy ``latest {num_versions}`` (default 1): a poller lists ``<base_path>/<int version>/`` dirs holding a
  ``saved_model.pb``, loads wanted versions that are not loaded yet, replays their
  ``assets.extra/tf_serving_warmup_requests`` and only then makes them visible (one atomic swap of a dict).
  Versions no longer wanted are marked UNLOADING, wait until their in-flight requests finish, then are dropped.
* Every request pins the version it runs on (a reference count), so a swap never cuts a request short.
* Inputs are validated against the signature (names, dtype, rank/shape, batch size) before the model runs,
  and every failure is a :class:`ServingError` carrying a gRPC status code name and a message naming the input.

This module has no network code: ``serving.server`` puts gRPC and REST in front of it.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
import threading
import time
from typing import Any, Iterable, Mapping

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:  # TF Text ops must be registered before a SavedModel that uses them is loaded.
    import tensorflow_text  # noqa: F401,E402
except ImportError:  # pragma: no cover - the project pins it
    tensorflow_text = None

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2  # noqa: E402

log = logging.getLogger("serving.model_manager")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit

# TF Serving's ManagerState names, as GetModelStatus reports them.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"

# tf.errors code (int, same numbering as grpc.StatusCode / google.rpc.Code) -> name.
_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


class ServingError(Exception):
    """A request failure: ``code`` is a gRPC status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code}: {self.message})"


def clean_tf_message(message: str) -> str:
    """Strip graph-execution noise ('Detected at node', '[[{{node ...}}]]', '[Op:...]') from a TF error."""
    keep = []
    for line in message.splitlines():
        s = line.strip()
        if not s or s.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")):
            continue
        keep.append(re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", s))
    return " ".join(keep) or message.strip()


# ---------------------------------------------------------------------------------------------- tensors
def _shape_str(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


_NP_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
              types_pb2.DT_INT64: np.int64, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
              types_pb2.DT_UINT8: np.uint8, types_pb2.DT_BOOL: np.bool_}
_VAL_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
               types_pb2.DT_INT64: "int64_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
               types_pb2.DT_UINT8: "int_val", types_pb2.DT_BOOL: "bool_val"}


def proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """TensorProto -> numpy without TF's generic path for what clients usually send (strings, numbers as
    tensor_content or *_val lists, including TF's one-value-fills-all shorthand); anything else via TF."""
    shape = [d.size for d in proto.tensor_shape.dim]
    n = 1
    for d in shape:
        n *= d
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
        vals = proto.string_val
        if len(vals) == n:
            arr = np.empty(n, dtype=object)
            arr[:] = list(vals)
            return arr.reshape(shape)
    elif proto.dtype in _NP_DTYPES and n >= 0:
        dtype = _NP_DTYPES[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) == n * np.dtype(dtype).itemsize:
                return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        else:
            vals = getattr(proto, _VAL_FIELDS[proto.dtype])
            if len(vals) == n:
                return np.asarray(vals, dtype=dtype).reshape(shape)
            if len(vals) == 1 and n > 1:   # TF's shorthand: one value repeated to the shape
                return np.full(shape, vals[0], dtype=dtype)
    return tf.make_ndarray(proto)


_DT_ENUM = {np.dtype(v): k for k, v in _NP_DTYPES.items()}


def ndarray_to_proto(arr: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto without TF's generic (slow) path: tensor_content for numbers, string_val for bytes.
    Fills ``proto`` in place when given (e.g. ``response.outputs[name]``: no extra copy)."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    for d in arr.shape:
        proto.tensor_shape.dim.add().size = d
    if arr.dtype == object:
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(arr.ravel().tolist())
        return proto
    proto.dtype = _DT_ENUM.get(arr.dtype) or tf.as_dtype(arr.dtype).as_datatype_enum
    proto.tensor_content = np.ascontiguousarray(arr).tobytes()
    return proto


def _json_to_ndarray(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value (nested lists; strings or {"b64": ...}) -> numpy array of the spec's dtype."""
    dtype = spec.dtype
    if dtype == tf.string:
        def enc(v):
            if isinstance(v, list):
                return [enc(x) for x in v]
            if isinstance(v, str):
                return v.encode("utf-8")
            if isinstance(v, dict) and set(v) == {"b64"}:
                import base64
                return base64.b64decode(v["b64"])
            raise ServingError("INVALID_ARGUMENT",
                               f"Input '{name}': expected string values (dtype string), got {type(v).__name__} {v!r}")
        data = enc(value)
        try:
            arr = np.array(data, dtype=object)
        except ValueError:
            arr = None
        if arr is None or any(isinstance(x, list) for x in arr.ravel()):
            raise ServingError("INVALID_ARGUMENT",
                               f"Input '{name}': rows have different lengths (ragged); pad them to a rectangle "
                               f"of shape {_shape_str(spec.shape)}")
        return arr

    def check(v):
        if isinstance(v, list):
            for x in v:
                check(x)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ServingError("INVALID_ARGUMENT",
                               f"Input '{name}': expected {dtype.name} values, got {type(v).__name__} {v!r}")
        elif dtype.is_integer and isinstance(v, float) and not v.is_integer():
            raise ServingError("INVALID_ARGUMENT", f"Input '{name}': expected {dtype.name} values, got float {v!r}")
    check(value)
    try:
        return np.array(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, OverflowError) as e:
        raise ServingError("INVALID_ARGUMENT", f"Input '{name}': cannot convert to {dtype.name} "
                                               f"of shape {_shape_str(spec.shape)}: {e}") from None


try:  # tf.convert_to_tensor's dispatch costs ~15 us per input; the eager constant path it ends in does not.
    from tensorflow.python.eager import context as _tf_context
    from tensorflow.python.framework.constant_op import convert_to_eager_tensor as _eager

    def _to_tensor(arr: np.ndarray, dtype: tf.DType) -> tf.Tensor:
        return _eager(arr, _tf_context.context(), dtype)
except ImportError:  # pragma: no cover - other TF layouts
    def _to_tensor(arr: np.ndarray, dtype: tf.DType) -> tf.Tensor:
        return tf.convert_to_tensor(arr, dtype=dtype)


# ---------------------------------------------------------------------------------------------- servables
@dataclasses.dataclass
class Signature:
    name: str
    fn: Any                                  # the restored ConcreteFunction
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    call: Any = None                         # {name: tf.Tensor} -> {output: tf.Tensor}, bound once at load

    def describe_inputs(self) -> str:
        return ", ".join(f"{n}: {s.dtype.name}{_shape_str(s.shape)}" for n, s in sorted(self.inputs.items()))

    def __post_init__(self):
        # (name, spec, numpy dtype, dims or None when the rank is unknown) for Servable.validate
        self.checks = [(n, spec, np.dtype(object) if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype),
                        None if spec.shape.rank is None else tuple(spec.shape.as_list()))
                       for n, spec in self.inputs.items()]
        if self.call is None:
            self.call = _bind_call(self.fn, self.inputs, self.outputs)


def _bind_call(fn, inputs: Mapping[str, tf.TensorSpec], outputs: Mapping[str, tf.TensorSpec]):
    """A caller that skips ConcreteFunction.__call__'s per-call work (binding kwargs to the FunctionType,
    checking every tensor against its spec, re-packing outputs: ~0.3-0.5 ms at batch 1 on a busy 2-core box).

    It calls the function's graph with the flat inputs in the FunctionType's order plus the captured
    variables, as ``ConcreteFunction._call_flat`` does when no gradient tape is recording. Inputs were already
    checked by :meth:`Servable.validate`. Falls back to ``fn(**tensors)`` if this TF's internals differ.
    """
    def slow(tensors):
        result = fn(**tensors)
        return result if isinstance(result, Mapping) else {"output_0": result}

    try:
        atomic = fn._inference_function                      # noqa: SLF001 (TF internals, checked below)
        order = list(fn.function_type.parameters)
        captured = list(fn.captured_inputs)
        flat_specs = list(atomic.function_type.flat_outputs)
        out_names = sorted(outputs)                           # tf.nest flattens a dict in sorted key order
        if sorted(order) != sorted(inputs) or len(flat_specs) != len(out_names) or any(
                getattr(spec, "dtype", None) != outputs[n].dtype for spec, n in zip(flat_specs, out_names)):
            return slow
        call_flat = atomic.call_flat
    except Exception:  # noqa: BLE001 - any TF without these internals uses the public call
        return slow

    def fast(tensors):
        return dict(zip(out_names, call_flat(*[tensors[n] for n in order], *captured)))

    return fast


class Servable:
    """One loaded version; ``acquire``/``release`` count in-flight requests."""

    def __init__(self, model_name: str, version: int, path: str, batching: "BatchingOptions | None" = None):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.loaded = tf.saved_model.load(path)
        self.signatures: dict[str, Signature] = {}
        for name, fn in self.loaded.signatures.items():
            _, kwargs = fn.structured_input_signature
            outputs = fn.structured_outputs
            if not isinstance(outputs, Mapping):
                outputs = {"output_0": outputs}
            self.signatures[name] = Signature(name, fn, dict(kwargs), dict(outputs))
        self.signature_defs = self._read_signature_defs(path)
        self._inflight = 0
        self._cond = threading.Condition()
        self.warmup_records = 0
        self.batcher = Batcher(self, batching) if batching and batching.enabled else None

    @staticmethod
    def _read_signature_defs(path: str) -> meta_graph_pb2.MetaGraphDef:
        sm = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            sm.ParseFromString(f.read())
        meta = sm.meta_graphs[0]
        out = meta_graph_pb2.MetaGraphDef()
        for k, v in meta.signature_def.items():
            if not k.startswith("__"):
                out.signature_def[k].CopyFrom(v)
        return out

    def acquire(self) -> None:
        with self._cond:
            self._inflight += 1

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    # ------------------------------------------------------------------ run
    def signature(self, signature_name: str) -> Signature:
        sig = self.signatures.get(signature_name or DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError("NOT_FOUND", f"Serving signature name: \"{signature_name}\" not found in signature def; "
                                            f"available signatures: {sorted(self.signatures)}")
        return sig

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Iterable[str] = (),
            max_batch_size: int = 0) -> dict[str, np.ndarray]:
        sig = self.signature(signature_name)
        self.validate(sig, inputs, max_batch_size, convert=False)
        wanted = list(output_filter or ())
        for o in wanted:
            if o not in sig.outputs:
                raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {o}; "
                                                       f"outputs of '{sig.name}': {sorted(sig.outputs)}")
        if self.batcher is not None:
            result = self.batcher.run(sig, inputs)
        else:
            result = self.execute(sig, inputs)
        names = wanted or list(result)
        return {n: result[n] for n in names}

    @staticmethod
    def execute(sig: Signature, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on validated numpy inputs; TF errors become ServingErrors."""
        try:
            tensors = {n: _to_tensor(arrays[n], spec.dtype) for n, spec in sig.inputs.items()}
            result = sig.call(tensors)
            return {n: t.numpy() for n, t in result.items()}
        except tf.errors.OpError as e:
            raise ServingError(_CODE_NAMES.get(e.error_code, "UNKNOWN"), clean_tf_message(e.message)) from None

    @staticmethod
    def validate(sig: Signature, inputs: Mapping[str, Any], max_batch_size: int,
                 convert: bool = True) -> dict[str, tf.Tensor] | None:
        unknown = sorted(set(inputs) - set(sig.inputs))
        if unknown:
            raise ServingError("INVALID_ARGUMENT", f"Unknown input(s) {unknown} for signature '{sig.name}'; "
                                                   f"expected inputs: {sig.describe_inputs()}")
        missing = sorted(set(sig.inputs) - set(inputs))
        if missing:
            raise ServingError("INVALID_ARGUMENT", f"Missing input(s) {missing} for signature '{sig.name}'; "
                                                   f"expected inputs: {sig.describe_inputs()}")
        tensors = {}
        batch = None
        for name, spec, np_dtype, dims in sig.checks:
            arr = inputs[name]
            if arr.dtype != np_dtype:
                if arr.dtype == object:
                    got = tf.string
                else:
                    try:
                        got = tf.as_dtype(arr.dtype)
                    except TypeError:
                        got = None
                if got != spec.dtype:
                    raise ServingError("INVALID_ARGUMENT", f"Input '{name}' has dtype "
                                                           f"{got.name if got else arr.dtype}, expected {spec.dtype.name}")
            shape = arr.shape
            if dims is None or len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                if not spec.shape.is_compatible_with(shape):
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Input '{name}' has shape {_shape_str(shape)} (rank {arr.ndim}), expected "
                                       f"shape {_shape_str(spec.shape)} (rank {spec.shape.rank})")
            if dims and dims[0] is None:
                b = shape[0]
                if batch is None:
                    batch = (name, b)
                elif b != batch[1]:
                    raise ServingError("INVALID_ARGUMENT", f"Inputs have different batch sizes: '{batch[0]}' has "
                                                           f"{batch[1]}, '{name}' has {b}")
                if max_batch_size and b > max_batch_size:
                    raise ServingError("INVALID_ARGUMENT", f"Input '{name}' has batch size {b}, above "
                                                           f"max_batch_size {max_batch_size}")
            if convert:
                tensors[name] = tf.convert_to_tensor(arr, dtype=spec.dtype)
        return tensors if convert else None


# ---------------------------------------------------------------------------------------------- batching
@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching of concurrent requests into one signature call (what TF Serving's batching does).

    Requests to the same version and signature are merged when their scalar inputs are equal (e.g. the same
    ``k``) and their other non-batch dims agree; string inputs named in ``pad_inputs`` (whose pad value the
    model ignores: ``history`` and ``exclude``, see trainer/features.py) are right-padded with ``pad_value`` to
    the widest request in the batch, as the client pads ragged rows. No batch timeout: a request that finds
    the model idle runs at once; requests arriving while a batch runs queue up and go together in the next
    one (at most ``max_batch_size`` rows; ``max_concurrent_batches`` signature calls in flight per version).
    """
    enabled: bool = True
    max_batch_size: int = 64
    max_concurrent_batches: int = 1
    pad_inputs: tuple[str, ...] = ("history", "exclude")
    pad_value: bytes = b""


class _Pending:
    __slots__ = ("sig", "arrays", "rows", "key", "event", "leader", "done", "result", "error")

    def __init__(self, sig, arrays, rows, key):
        self.sig, self.arrays, self.rows, self.key = sig, arrays, rows, key
        self.event = threading.Event()
        self.leader = self.done = False
        self.result = self.error = None


class Batcher:
    """Leader/follower batching: the thread that finds a free slot runs batches until its own request is
    answered, then hands the slot to the oldest waiting request's thread. No extra threads, no timers."""

    def __init__(self, servable: "Servable", options: BatchingOptions):
        self.servable = servable
        self.opts = options
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._active = 0
        self.calls = 0          # signature calls made (for tests / stats)
        self.rows = 0           # rows they carried

    def _key(self, sig: Signature, arrays: Mapping[str, np.ndarray]):
        key = [sig.name]
        rows = None
        for name, spec in sig.inputs.items():
            arr = arrays[name]
            if spec.shape.rank == 0:
                key.append((name, arr.dtype.str, arr.tobytes() if arr.dtype != object else arr.item()))
            elif spec.shape[0] is not None:
                return None, 0  # fixed batch dim: cannot merge
            else:
                rows = arr.shape[0] if rows is None else rows
                if name in self.opts.pad_inputs and arr.dtype == object and arr.ndim == 2:
                    continue
                key.append((name, arr.shape[1:]))
        for name, spec in sig.outputs.items():
            if spec.shape.rank is None or spec.shape.rank == 0 or spec.shape[0] is not None:
                return None, 0  # outputs without a batch dim cannot be split back
        return (tuple(key), rows) if rows else (None, 0)

    def run(self, sig: Signature, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key, rows = self._key(sig, arrays)
        if key is None:
            return Servable.execute(sig, arrays)
        me = _Pending(sig, arrays, rows, key)
        with self._lock:
            self._queue.append(me)
            if self._active < self.opts.max_concurrent_batches:
                self._active += 1
                me.leader = True
        if not me.leader:
            me.event.wait()
        if me.leader:
            self._lead(me)
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self, me: _Pending) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._active -= 1
                    return
                if me.done:                    # answer our own request now; the next waiter leads
                    nxt = self._queue[0]
                    nxt.leader = True
                    nxt.event.set()
                    return
                batch = self._take()
            self._execute(batch)

    def _take(self) -> list[_Pending]:
        first = self._queue.pop(0)
        batch, rows, rest = [first], first.rows, []
        for p in self._queue:
            if p.key == first.key and rows + p.rows <= self.opts.max_batch_size:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue[:] = rest
        return batch

    def _merge(self, batch: list[_Pending]) -> dict[str, np.ndarray]:
        sig = batch[0].sig
        merged = {}
        for name, spec in sig.inputs.items():
            parts = [p.arrays[name] for p in batch]
            if spec.shape.rank == 0:
                merged[name] = parts[0]
                continue
            if name in self.opts.pad_inputs and parts[0].dtype == object and parts[0].ndim == 2:
                width = max(a.shape[1] for a in parts)
                parts = [a if a.shape[1] == width else
                         np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), self.opts.pad_value, object)],
                                        axis=1) for a in parts]
            merged[name] = np.concatenate(parts, axis=0)
        return merged

    def _execute(self, batch: list[_Pending]) -> None:
        try:
            sig = batch[0].sig
            total = sum(p.rows for p in batch)
            out = None
            if len(batch) > 1:
                try:
                    out = Servable.execute(sig, self._merge(batch))
                    if any(v.ndim == 0 or v.shape[0] != total for v in out.values()):
                        out = None     # outputs do not follow the batch: answer one by one
                except ServingError:
                    out = None         # one request's data may be at fault: answer one by one
            if out is not None:
                self.calls += 1
                self.rows += total
                start = 0
                for p in batch:
                    p.result = {n: v[start:start + p.rows] for n, v in out.items()}
                    start += p.rows
            else:
                for p in batch:
                    try:
                        self.calls += 1
                        self.rows += p.rows
                        p.result = Servable.execute(sig, p.arrays)
                    except ServingError as e:
                        p.error = e
        except BaseException as e:  # noqa: BLE001 - every waiter must be answered
            for p in batch:
                if p.result is None and p.error is None:
                    p.error = e if isinstance(e, ServingError) else ServingError("INTERNAL", f"{type(e).__name__}: {e}")
        finally:
            for p in batch:
                p.done = True
                p.event.set()


# ---------------------------------------------------------------------------------------------- manager
@dataclasses.dataclass
class VersionState:
    state: str
    error_code: str = "OK"
    error_message: str = ""


class ModelManager:
    def __init__(self, model_name: str, base_path: str, poll_interval_s: float = 2.0, num_versions: int = 1,
                 max_batch_size: int = 256, version_labels: Mapping[str, int] | None = None,
                 warmup: bool = True, batching: BatchingOptions | None = None):
        self.model_name = model_name
        self.batching = batching
        self.base_path = os.path.abspath(base_path)
        self.poll_interval_s = poll_interval_s
        self.num_versions = max(1, num_versions)
        self.max_batch_size = max_batch_size
        self.version_labels = dict(version_labels or {})
        self.warmup = warmup
        self._serving: dict[int, Servable] = {}   # replaced, never mutated: readers need no lock
        self._latest: Servable | None = None
        self._states: dict[int, VersionState] = {}
        self._failed: dict[int, float] = {}        # version -> mtime of the dir that failed to load
        self._lock = threading.Lock()               # guards acquire vs. swap
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_empty = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # the poller must never die
                log.exception("Version poll of %s failed", self.base_path)

    def available_versions(self) -> list[int]:
        try:
            names = os.listdir(self.base_path)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if n.isdigit() and (os.path.isfile(os.path.join(self.base_path, n, "saved_model.pb"))):
                out.append(int(n))
        return sorted(out)

    def poll_once(self) -> None:
        with self._poll_lock:
            on_disk = self.available_versions()
            if not on_disk:
                if not self._warned_empty:
                    log.warning("No versions of servable %s found under base path %s", self.model_name, self.base_path)
                    self._warned_empty = True
            else:
                self._warned_empty = False
            candidates = [v for v in reversed(on_disk) if not self._is_failed(v)]
            wanted = set(candidates[: self.num_versions])
            for v in sorted(wanted - set(self._serving), reverse=True):
                self._load(v)
            # Unload only when something wanted is serving (never leave the model with no version).
            if wanted & set(self._serving):
                for v in sorted(set(self._serving) - wanted):
                    self._unload(v)

    def _is_failed(self, v: int) -> bool:
        if v not in self._failed:
            return False
        try:
            mtime = os.stat(os.path.join(self.base_path, str(v))).st_mtime
        except OSError:
            return True
        if mtime != self._failed[v]:
            del self._failed[v]   # the dir changed: try again
            return False
        return True

    def _load(self, version: int) -> None:
        path = os.path.join(self.base_path, str(version))
        self._states[version] = VersionState(LOADING)
        log.info("Loading servable: {name: %s version: %d} from %s", self.model_name, version, path)
        t0 = time.perf_counter()
        try:
            servable = Servable(self.model_name, version, path, self.batching)
            if self.warmup:
                self._replay_warmup(servable)
        except Exception as e:  # keep serving what we have
            msg = clean_tf_message(getattr(e, "message", None) or str(e))
            log.error("Failed to load servable: {name: %s version: %d}: %s", self.model_name, version, msg)
            self._states[version] = VersionState(END, "UNKNOWN", msg)
            try:
                self._failed[version] = os.stat(path).st_mtime
            except OSError:
                self._failed[version] = 0.0
            return
        with self._lock:
            serving = dict(self._serving)
            serving[version] = servable
            self._serving = serving
            self._latest = serving[max(serving)]
        self._states[version] = VersionState(AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs (warmup records: %d, "
                 "signatures: %s)", self.model_name, version, time.perf_counter() - t0, servable.warmup_records,
                 sorted(servable.signatures))

    def _unload(self, version: int) -> None:
        with self._lock:
            serving = dict(self._serving)
            servable = serving.pop(version)
            self._serving = serving
            self._latest = serving[max(serving)] if serving else None
        self._states[version] = VersionState(UNLOADING)
        log.info("Unloading servable version {name: %s version: %d}", self.model_name, version)
        if not servable.wait_idle():
            log.warning("Version %d still had in-flight requests after 60s; unloading anyway", version)
        servable.loaded = None
        servable.signatures = {}
        del servable
        gc.collect()
        self._states[version] = VersionState(END)
        log.info("Done unloading servable version {name: %s version: %d}", self.model_name, version)

    def _replay_warmup(self, servable: Servable) -> None:
        path = os.path.join(servable.path, WARMUP_PATH)
        if not os.path.isfile(path):
            log.info("No warmup data file found at %s", path)
            return
        from tensorflow_serving.apis import prediction_log_pb2

        n = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
            plog = prediction_log_pb2.PredictionLog.FromString(record)
            if plog.WhichOneof("log_type") != "predict_log":
                raise ServingError("UNIMPLEMENTED", f"Warmup record {n}: only predict_log is supported, got "
                                                    f"{plog.WhichOneof('log_type')}")
            req = plog.predict_log.request
            inputs = {k: proto_to_ndarray(v) for k, v in req.inputs.items()}
            try:
                servable.run(req.model_spec.signature_name, inputs, req.output_filter, self.max_batch_size)
            except ServingError as e:
                raise ServingError(e.code, f"Warmup record {n} failed: {e.message}") from None
            n += 1
        servable.warmup_records = n
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                 servable.path, n)

    # ------------------------------------------------------------------ requests
    def _check_name(self, name: str) -> None:
        if name != self.model_name:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name}); "
                                            f"this server serves '{self.model_name}'")

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Pin a version for one request; call ``release()`` on it after."""
        self._check_name(name)
        if label:
            if label not in self.version_labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label}; "
                                                f"known labels: {sorted(self.version_labels)}")
            version = self.version_labels[label]
        with self._lock:
            if version is None:
                servable = self._latest
                if servable is None:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name}); "
                                                    f"no version is loaded from {self.base_path}")
            else:
                servable = self._serving.get(int(version))
                if servable is None:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version}); "
                                                    f"loaded versions: {sorted(self._serving)}")
            servable.acquire()
        return servable

    def predict(self, name: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                label: str | None = None, signature_name: str = "", output_filter: Iterable[str] = ()):
        """Returns (version, signature name, {output: ndarray})."""
        servable = self.acquire(name, version, label)
        try:
            sig = signature_name or DEFAULT_SIGNATURE
            return servable.version, sig, servable.run(sig, inputs, output_filter, self.max_batch_size)
        finally:
            servable.release()

    def predict_json(self, name: str, body: Any, version: int | None = None, label: str | None = None):
        """REST :predict body -> response dict (TF Serving's 'predictions' / 'outputs' shapes)."""
        if not isinstance(body, dict):
            raise ServingError("INVALID_ARGUMENT", "Request body must be a JSON object with 'instances' or 'inputs'")
        has_rows, has_cols = "instances" in body, "inputs" in body
        if has_rows == has_cols:
            raise ServingError("INVALID_ARGUMENT", "JSON object must have exactly one of 'instances' (row format) "
                                                   "or 'inputs' (columnar format)")
        sig_name = body.get("signature_name") or DEFAULT_SIGNATURE
        servable = self.acquire(name, version, label)
        try:
            sig = servable.signatures.get(sig_name)
            if sig is None:
                raise ServingError("NOT_FOUND", f"Serving signature name: \"{sig_name}\" not found in signature def; "
                                                f"available signatures: {sorted(servable.signatures)}")
            raw = self._rows_to_columns(sig, body["instances"]) if has_rows else self._columns(sig, body["inputs"])
            unknown = sorted(set(raw) - set(sig.inputs))
            if unknown:
                raise ServingError("INVALID_ARGUMENT", f"Unknown input(s) {unknown} for signature '{sig.name}'; "
                                                       f"expected inputs: {sig.describe_inputs()}")
            arrays = {n: _json_to_ndarray(n, v, sig.inputs[n]) for n, v in raw.items()}
            out = servable.run(sig_name, arrays, body.get("output_filter") or (), self.max_batch_size)
        finally:
            servable.release()
        jsonable = {k: _to_json(v) for k, v in out.items()}
        if has_cols:
            return {"outputs": next(iter(jsonable.values())) if len(jsonable) == 1 else jsonable}
        n = len(next(iter(jsonable.values()))) if jsonable else 0
        if len(jsonable) == 1:
            return {"predictions": next(iter(jsonable.values()))}
        return {"predictions": [{k: v[i] for k, v in jsonable.items()} for i in range(n)]}

    @staticmethod
    def _columns(sig: Signature, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, dict):
            return inputs
        if len(sig.inputs) == 1:
            return {next(iter(sig.inputs)): inputs}
        raise ServingError("INVALID_ARGUMENT", f"'inputs' must be an object keyed by input name when the signature "
                                               f"has several inputs ({sig.describe_inputs()})")

    @staticmethod
    def _rows_to_columns(sig: Signature, instances: Any) -> dict[str, Any]:
        if not isinstance(instances, list) or not instances:
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
        if not all(isinstance(r, dict) for r in instances):
            if len(sig.inputs) == 1 and not any(isinstance(r, dict) for r in instances):
                return {next(iter(sig.inputs)): instances}
            raise ServingError("INVALID_ARGUMENT", f"Each element of 'instances' must be an object keyed by input "
                                                   f"name ({sig.describe_inputs()})")
        keys = set(instances[0])
        cols: dict[str, Any] = {}
        for i, row in enumerate(instances):
            if set(row) != keys:
                raise ServingError("INVALID_ARGUMENT", f"instances[{i}] has inputs {sorted(row)}, but instances[0] has "
                                                       f"{sorted(keys)}: every instance needs the same named inputs")
        for k in keys:
            vals = [row[k] for row in instances]
            spec = sig.inputs.get(k)
            if spec is not None and spec.shape.rank == 0:
                # A scalar input (e.g. k) cannot be batched: accept it per row when every row agrees.
                if any(v != vals[0] for v in vals):
                    raise ServingError("INVALID_ARGUMENT", f"Input '{k}' is a scalar, but instances give different "
                                                           f"values: {sorted(set(map(str, vals)))}")
                cols[k] = vals[0]
            else:
                cols[k] = vals
        return cols

    # ------------------------------------------------------------------ status / metadata
    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionState]]:
        self._check_name(name)
        if label:
            if label not in self.version_labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label}")
            version = self.version_labels[label]
        states = dict(self._states)
        if version is not None:
            if int(version) not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [(int(version), states[int(version)])]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)

    def metadata(self, name: str, version: int | None = None, label: str | None = None):
        """Returns (version, MetaGraphDef holding the signature_def map)."""
        servable = self.acquire(name, version, label)
        try:
            return servable.version, servable.signature_defs
        finally:
            servable.release()

    def loaded_versions(self) -> list[int]:
        return sorted(self._serving)


def _to_json(arr: np.ndarray):
    if arr.dtype == object:
        def dec(x):
            try:
                return x.decode("utf-8")
            except UnicodeDecodeError:
                import base64
                return {"b64": base64.b64encode(x).decode("ascii")}
        return np.vectorize(dec, otypes=[object])(arr).tolist() if arr.size else arr.tolist()
    return arr.tolist()
