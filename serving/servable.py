"""One loaded model version and its signatures, called the way TF Serving calls them.

    servable = Servable("tower_recs", 1700000000, "models/tower_recs/1700000000", batching=BatchingOptions())
    outputs = servable.predict("serving_default", {"user_id": ..., "history": ..., "exclude": ..., "k": ...})

Predict follows tensorflow_serving/servables/tensorflow/predict_util.cc: the signature is looked up in the
SavedModel's SignatureDefs (FAILED_PRECONDITION when missing), the request must hold each input unless the
SignatureDef has a default for it (``defaults``, filled in as tensorflow/cc/saved_model/util.cc
``GetInputValues`` does), ``output_filter`` entries must be known and unique.

Shapes: TF Serving feeds tensors to the session without checking them against the signature, so a model may
silently compute on a wrongly shaped input. This server rejects an input whose shape the signature rules out
(INVALID_ARGUMENT naming the input and both shapes), with one exception TF Serving's session also lets
through and the retrieval model relies on: a scalar for a rank-1 input of unknown size (``k`` sent the
pre-batching way; the graph broadcasts it to every row). Under batching TF Serving rejects that scalar
(see serving.batching), and so does this server.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (TF Serving links TF Text ops; models using them must load)
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving import layout
from serving.batching import Batcher, BatchingOptions
from serving.codec import DTYPE_NAMES
from serving.errors import CODE_NAMES, ServingError, clean_tf_message, invalid

DEFAULT_SIGNATURE = "serving_default"


def shape_str(shape) -> str:
    return "[?]" if shape is None else "[" + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


@dataclasses.dataclass
class TensorInfo:
    """A signature input or output: dtype enum and shape (None: unknown rank; -1: unknown dim)."""
    dtype: int
    shape: tuple[int, ...] | None

    @classmethod
    def from_proto(cls, info: meta_graph_pb2.TensorInfo) -> "TensorInfo":
        s = info.tensor_shape
        return cls(info.dtype, None if s.unknown_rank else tuple(d.size for d in s.dim))

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == tf.string.as_datatype_enum else \
            np.dtype(tf.dtypes.as_dtype(self.dtype).as_numpy_dtype)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """The signature allows this shape (or it is a scalar for a [-1] input: see the module docstring)."""
        if self.shape is None or (shape == () and self.shape == (-1,)):
            return True
        return len(shape) == len(self.shape) and all(d < 0 or d == s for d, s in zip(self.shape, shape))

    def describe(self) -> str:
        return f"{DTYPE_NAMES.get(self.dtype, self.dtype)}{shape_str(self.shape)}"


@dataclasses.dataclass
class Signature:
    """A SignatureDef and the restored function that runs it (``call``: a pre-bound flat call)."""
    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    defaults: dict[str, np.ndarray]
    fn: Any
    call: Any = None

    def __post_init__(self):
        self.tf_dtypes = {n: tf.dtypes.as_dtype(i.dtype) for n, i in self.inputs.items()}
        if self.call is None:
            self.call = bind_call(self.fn, self.inputs, self.outputs)

    def describe_inputs(self) -> str:
        return ", ".join(f"{n}: {i.describe()}" for n, i in sorted(self.inputs.items()))


def bind_call(fn, inputs: Mapping[str, Any], outputs: Mapping[str, Any]):
    """{input: tf.Tensor} -> {output: tf.Tensor}, skipping ConcreteFunction.__call__'s per-call work (binding
    kwargs, re-checking every tensor, re-packing outputs: ~0.3-0.5 ms at batch 1 on a busy 2-core box).

    Calls the function's graph with the flat inputs in the FunctionType's order plus the captured variables,
    as ``ConcreteFunction._call_flat`` does when no gradient tape records. Falls back to ``fn(**tensors)`` on a
    TF whose internals differ.
    """
    def public(tensors):
        result = fn(**tensors)
        return result if isinstance(result, Mapping) else {"output_0": result}

    try:
        atomic = fn._inference_function                      # noqa: SLF001 (TF internals, checked below)
        order = list(fn.function_type.parameters)
        captured = list(fn.captured_inputs)
        flat_specs = list(atomic.function_type.flat_outputs)
        out_names = sorted(outputs)                           # tf.nest flattens a dict in sorted key order
        if sorted(order) != sorted(inputs) or len(flat_specs) != len(out_names):
            return public
        call_flat = atomic.call_flat
    except Exception:  # noqa: BLE001 - any TF without these internals uses the public call
        return public

    def fast(tensors):
        return dict(zip(out_names, call_flat(*[tensors[n] for n in order], *captured)))

    return fast


try:  # tf.convert_to_tensor's dispatch costs ~15 us per input; the eager constant path it ends in does not.
    from tensorflow.python.eager import context as _tf_context
    from tensorflow.python.framework.constant_op import convert_to_eager_tensor as _eager

    def _to_tensor(array: np.ndarray, dtype: tf.DType) -> tf.Tensor:
        return _eager(array, _tf_context.context(), dtype)
except ImportError:  # pragma: no cover - other TF layouts
    def _to_tensor(array: np.ndarray, dtype: tf.DType) -> tf.Tensor:
        return tf.convert_to_tensor(array, dtype=dtype)


def explain_shapes(sig: Signature, arrays: Mapping[str, np.ndarray]) -> str:
    """Why a model may have failed on these inputs ("" when their batch sizes agree)."""
    batched = {n: a.shape[0] for n, a in arrays.items() if a.ndim and sig.inputs[n].shape}
    if len(set(batched.values())) > 1:
        return f"Inputs have different batch sizes {dict(sorted(batched.items()))}; the model failed on them: "
    return ""


def read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The 'serve' MetaGraphDef of a SavedModel (signature_def map included, __saved_model_init_op too)."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, layout.SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta in saved_model.meta_graphs:
        if "serve" in meta.meta_info_def.tags:
            return meta
    raise ServingError("NOT_FOUND", f"No MetaGraphDef tagged 'serve' in {path}")


class Servable:
    """One loaded version. ``acquire``/``release`` count in-flight requests; ``wait_idle`` waits for zero."""

    def __init__(self, model_name: str, version: int, path: str, batching: BatchingOptions | None = None):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.meta_graph = read_meta_graph(path)
        self.loaded = tf.saved_model.load(path, tags=["serve"])
        self.signatures: dict[str, Signature] = {}
        for name, sig_def in self.meta_graph.signature_def.items():
            if name not in self.loaded.signatures:
                continue                                     # __saved_model_init_op: metadata only
            self.signatures[name] = Signature(
                name, sig_def.method_name,
                {k: TensorInfo.from_proto(v) for k, v in sig_def.inputs.items()},
                {k: TensorInfo.from_proto(v) for k, v in sig_def.outputs.items()},
                {k: tf.make_ndarray(v) for k, v in sig_def.defaults.items()},
                self.loaded.signatures[name])
        self.batcher = Batcher(self.execute, batching) if batching is not None else None
        self.warmup_records = 0
        self._inflight = 0
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ lifetime
    def acquire(self) -> None:
        with self._cond:
            self._inflight += 1

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    # ------------------------------------------------------------------ Predict
    def signature(self, name: str) -> Signature:
        """The signature for a Predict call (FAILED_PRECONDITION when missing, as predict_util.cc)."""
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError("FAILED_PRECONDITION", f"Serving signature key \"{name or DEFAULT_SIGNATURE}\" not "
                                                      f"found. Signatures: {sorted(self.signatures)}")
        return sig

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Iterable[str] = (),
                deadline: float | None = None) -> tuple[str, dict[str, np.ndarray]]:
        """(signature name, {output: array}) for one request, batched with others when batching is on."""
        sig = self.signature(signature_name)
        return sig.name, self.run(sig, self.bind_inputs(sig, inputs), self.select_outputs(sig, output_filter),
                                  deadline)

    def run(self, sig: Signature, arrays: Mapping[str, np.ndarray], outputs: Iterable[str],
            deadline: float | None = None) -> dict[str, np.ndarray]:
        """Runs bound inputs through the batcher when batching is on, else directly."""
        if self.batcher is not None:
            return self.batcher.submit(sig, arrays, list(outputs), deadline)
        return self.execute(sig, arrays, outputs)

    @staticmethod
    def bind_inputs(sig: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's inputs plus signature defaults, dtype-checked (predict_util.cc + GetInputValues)."""
        given, wanted = set(inputs), set(sig.inputs)
        if given - wanted or (wanted - given - set(sig.defaults)):
            raise invalid(f"input size does not match signature: {len(given)}!={len(wanted)} "
                          f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(wanted))}}}). "
                          f"Sent extra: {{{','.join(sorted(given - wanted))}}}. Missing but required: "
                          f"{{{','.join(sorted(wanted - given - set(sig.defaults)))}}}. "
                          f"Signature '{sig.name}' takes {sig.describe_inputs()}")
        arrays = {}
        for name, info in sig.inputs.items():
            array = inputs[name] if name in inputs else sig.defaults[name]
            if array.dtype != info.numpy_dtype:
                got = "string" if array.dtype == object else array.dtype.name
                raise invalid(f"Input '{name}' has dtype {got}, expected {DTYPE_NAMES.get(info.dtype, info.dtype)} "
                              f"(signature '{sig.name}' takes {sig.describe_inputs()})")
            if not info.accepts_shape(array.shape):
                raise invalid(f"Input '{name}' has shape {shape_str(array.shape)}, expected {shape_str(info.shape)} "
                              f"(signature '{sig.name}' takes {sig.describe_inputs()})")
            arrays[name] = array
        return arrays

    @staticmethod
    def select_outputs(sig: Signature, output_filter: Iterable[str]) -> list[str]:
        """Output aliases to fetch: output_filter (known, no duplicates) or all of them."""
        wanted = list(output_filter or ())
        seen = set()
        for alias in wanted:
            if alias not in sig.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                              f"the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return wanted or sorted(sig.outputs)

    def execute(self, sig: Signature, arrays: Mapping[str, np.ndarray], outputs: Iterable[str]) -> dict[str, np.ndarray]:
        """Runs the signature once on numpy inputs; TF errors become ServingErrors with TF's status code."""
        try:
            tensors = {n: _to_tensor(arrays[n], dtype) for n, dtype in sig.tf_dtypes.items()}
            result = sig.call(tensors)
            return {n: result[n].numpy() for n in outputs}
        except tf.errors.OpError as e:
            raise ServingError(CODE_NAMES.get(e.error_code, "UNKNOWN"),
                               explain_shapes(sig, arrays) + clean_tf_message(e.message)) from None

    def close(self) -> None:
        """Drops the model's objects (called once no request holds the version); the caller collects them."""
        self.loaded = None
        self.signatures = {}
        self.batcher = None             # it refers back to self.execute
