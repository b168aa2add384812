"""TensorProto <-> numpy, with a request's size limits checked before anything is allocated.

    limits = TensorLimits(max_elements=1 << 20)
    array = proto_to_ndarray(request.inputs["history"], "history", limits)
    ndarray_to_proto(outputs["scores"], response.outputs["scores"])     # float_val, as TF Serving

Decoding follows TensorFlow's ``Tensor::FromProto`` (tensorflow/core/framework/tensor.cc): values come from
``tensor_content`` (exact byte size) or the typed ``*_val`` field, where no values mean zeros/"" and fewer
values than elements repeat the last one. That shorthand is why the limits are checked on the *declared*
shape: a 50-byte request can declare a [100000, 100000] tensor with one value.

Encoding fills the typed fields (``float_val``, ``string_val``, ...), as TF Serving's Predict does
(``Tensor::AsProtoField`` in tensorflow_serving/servables/tensorflow/predict_util.cc), so clients that read
``outputs["scores"].float_val`` (TF Serving's own examples do) get the values.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid

_NUMERIC = {  # DataType -> (numpy dtype, typed field)
    types_pb2.DT_FLOAT: (np.float32, "float_val"), types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"), types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"), types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"), types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"), types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}
_ENUM_OF = {np.dtype(t): enum for enum, (t, _) in _NUMERIC.items()}
DTYPE_NAMES = {v: k[3:].lower() for k, v in types_pb2.DataType.items()}   # 7 -> "string"


@dataclasses.dataclass(frozen=True)
class TensorLimits:
    """What one request tensor may declare; checked before the server allocates it (``--max_*`` flags).

    ``max_row_elements`` caps the elements of one batch row (every dim after the first): it bounds the
    width of ``history`` and ``exclude`` in the retrieval model. ``max_rows`` caps the batch dimension.
    """
    max_elements: int = 1 << 20
    max_bytes: int = 64 << 20
    max_string_bytes: int = 64 << 10
    max_row_elements: int = 1 << 12
    max_rows: int = 1024


def check_shape(shape: tuple[int, ...], itemsize: int, name: str, limits: TensorLimits) -> None:
    """INVALID_ARGUMENT naming the input and the limit when ``shape`` is negative or too big."""
    if any(d < 0 for d in shape):
        raise invalid(f"Input '{name}' declares a negative dimension: shape {list(shape)}")
    row = 1
    for d in shape[1:]:
        row *= d
        if row > limits.max_row_elements:
            raise invalid(f"Input '{name}' has shape {list(shape)}: more than {limits.max_row_elements} "
                          f"elements per batch row (--max_row_elements)")
    if shape and shape[0] > limits.max_rows:
        raise invalid(f"Input '{name}' has batch size {shape[0]}, above max_batch_size {limits.max_rows} "
                      f"(--max_batch_size)")
    elements = (shape[0] if shape else 1) * row
    if elements > limits.max_elements:
        raise invalid(f"Input '{name}' has shape {list(shape)}, above the limit of {limits.max_elements} "
                      f"elements per tensor (--max_tensor_elements)")
    if elements * itemsize > limits.max_bytes:
        raise invalid(f"Input '{name}' has {elements * itemsize} bytes, above the limit of {limits.max_bytes} "
                      f"bytes per tensor (--max_tensor_bytes)")


def check_strings(values, name: str, limits: TensorLimits) -> None:
    """INVALID_ARGUMENT when one string or all of them together are above the limits."""
    total = 0
    for v in values:
        if len(v) > limits.max_string_bytes:
            raise invalid(f"Input '{name}' holds a string of {len(v)} bytes, above the limit of "
                          f"{limits.max_string_bytes} bytes (--max_string_bytes)")
        total += len(v)
    if total > limits.max_bytes:
        raise invalid(f"Input '{name}' holds {total} bytes of strings, above the limit of {limits.max_bytes} "
                      f"bytes per tensor (--max_tensor_bytes)")


def declared_shape(proto: tensor_pb2.TensorProto, name: str, limits: TensorLimits) -> tuple[int, ...]:
    """The shape a TensorProto declares, checked against the limits before anything is allocated."""
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"Input '{name}' declares an unknown rank; send a concrete shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    itemsize = np.dtype(_NUMERIC[proto.dtype][0]).itemsize if proto.dtype in _NUMERIC else 0
    check_shape(shape, itemsize, name, limits)
    return shape


def proto_to_ndarray(proto: tensor_pb2.TensorProto, name: str = "input",
                     limits: TensorLimits = TensorLimits()) -> np.ndarray:
    """A request TensorProto as numpy (strings as an object array of bytes); INVALID_ARGUMENT when malformed."""
    shape = declared_shape(proto, name, limits)
    n = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == types_pb2.DT_STRING:
        if proto.tensor_content:
            raise invalid(f"Input '{name}': string tensors must use string_val, not tensor_content")
        check_strings(proto.string_val, name, limits)
        return _fill(list(proto.string_val), n, b"", object).reshape(shape)
    if proto.dtype not in _NUMERIC:
        raise invalid(f"Input '{name}' has dtype {DTYPE_NAMES.get(proto.dtype, proto.dtype)}, which this server "
                      f"does not accept")
    dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        if len(proto.tensor_content) != n * np.dtype(dtype).itemsize:
            raise invalid(f"tensor parsing error: {name} (tensor_content holds {len(proto.tensor_content)} bytes, "
                          f"shape {list(shape)} of {DTYPE_NAMES[proto.dtype]} needs {n * np.dtype(dtype).itemsize})")
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    return _fill(getattr(proto, field), n, 0, dtype).reshape(shape)


def _fill(values, n: int, default, dtype) -> np.ndarray:
    """TF's FromProtoField: the first n values; none -> default; fewer -> the last one repeated."""
    out = np.empty(n, dtype=dtype)
    given = min(len(values), n)
    if given:
        out[:given] = values[:given] if dtype is object else np.asarray(values[:given], dtype=dtype)
        out[given:] = values[given - 1]
    else:
        out[:] = default
    return out


def ndarray_to_proto(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto in the typed fields (in place when ``proto`` is given, e.g. response.outputs[k])."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    for d in array.shape:
        proto.tensor_shape.dim.add().size = d
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist())
        return proto
    enum = _ENUM_OF.get(array.dtype)
    if enum is None:
        raise invalid(f"Cannot encode an output of numpy dtype {array.dtype}")
    proto.dtype = enum
    getattr(proto, _NUMERIC[enum][1]).extend(array.ravel().tolist())
    return proto
