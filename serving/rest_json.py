"""JSON <-> tensors for the REST API, with TF Serving's rules (tensorflow_serving/util/json_tensor.cc).

    fmt, arrays = predict_inputs_from_json(doc, signature_def.inputs, limits)
    body = predict_outputs_to_json(outputs, fmt)          # {"predictions": ...} or {"outputs": ...}

* Request: ``instances`` (row format: a list, one entry per batch row; objects keyed by input name, or plain
  values when the signature has one input, where ``{"b64": ...}`` is a value) or ``inputs`` (columnar: an
  object keyed by input name, or one value for a one-input signature). Every value is typed as the
  signature's input: int32 takes only JSON integers (5.0 is rejected), float only numbers that fit without
  loss, string takes strings or ``{"b64": "..."}``. Lists must be rectangular.
* Response: float32 as its shortest decimal form (0.1, not 0.10000000149011612), NaN/Infinity as
  TF Serving writes them; strings as UTF-8 text, except outputs whose name ends in ``_bytes`` ({"b64": ...}).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import numpy as np
from tensorflow.core.framework import types_pb2

from serving.codec import DTYPE_NAMES, TensorLimits, check_shape, check_strings
from serving.errors import invalid

ROW, COLUMNAR = "row", "columnar"

_INT_RANGES = {types_pb2.DT_INT32: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_INT16: (-2 ** 31, 2 ** 31 - 1),
               types_pb2.DT_INT8: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_UINT8: (-2 ** 31, 2 ** 31 - 1),
               types_pb2.DT_INT64: (-2 ** 63, 2 ** 63 - 1), types_pb2.DT_UINT32: (0, 2 ** 32 - 1),
               types_pb2.DT_UINT64: (0, 2 ** 64 - 1)}
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32, types_pb2.DT_UINT64: np.uint64,
          types_pb2.DT_BOOL: np.bool_}
# Largest integer a float type holds exactly (IsLosslessDecimal).
_EXACT_INT = {types_pb2.DT_FLOAT: 2 ** 24 - 1, types_pb2.DT_DOUBLE: 2 ** 53 - 1}
_FLOAT_MAX = {types_pb2.DT_FLOAT: float(np.finfo(np.float32).max), types_pb2.DT_DOUBLE: float(np.finfo(np.float64).max)}


def loads(raw: bytes, max_depth: int) -> dict:
    """Parses a request body: INVALID_ARGUMENT ("JSON Parse error: ...") unless it is a JSON object."""
    if not raw.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise invalid(f"JSON Parse error: Invalid encoding in string at offset: {e.start}") from None
    except RecursionError:
        raise invalid(f"JSON Parse error: nested deeper than {max_depth} levels (--rest_max_json_depth)") from None
    except ValueError as e:
        raise invalid(f"JSON Parse error: {e}") from None
    if _depth(doc, max_depth) > max_depth:
        raise invalid(f"JSON Parse error: nested deeper than {max_depth} levels (--rest_max_json_depth)")
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_text(doc)} Is not object")
    return doc


def _depth(doc: Any, limit: int) -> int:
    """Nesting depth of lists/objects, stopping once above ``limit`` (iterative: no recursion)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _text(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def signature_name(doc: Mapping) -> str:
    """The optional "signature_name" (must be a string: FillSignature in json_tensor.cc)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_text(doc)} not formatted correctly. 'signature_name' key must be a string "
                      f"value.")
    return name


# ---------------------------------------------------------------------------------------------- request
def predict_inputs_from_json(doc: Mapping, inputs: Mapping[str, Any], limits: TensorLimits
                             ) -> tuple[str, dict[str, np.ndarray]]:
    """(ROW | COLUMNAR, {input name: array}) from a :predict body; ``inputs`` maps names to TensorInfo."""
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows and has_cols:
        raise invalid(f"JSON Value: {_text(doc)} Not formatted correctly expecting only one of 'inputs' or "
                      f"'instances' keys to exist ")
    if has_rows:
        return ROW, _rows(doc["instances"], inputs, limits)
    if has_cols:
        return COLUMNAR, _columns(doc["inputs"], inputs, limits)
    raise invalid("Missing 'inputs' or 'instances' key")


def _rows(instances: Any, inputs: Mapping[str, Any], limits: TensorLimits) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    if len(instances) > limits.max_rows:
        raise invalid(f"'instances' has {len(instances)} rows, above max_batch_size {limits.max_rows} "
                      f"(--max_batch_size)")
    objects = isinstance(instances[0], dict) and not is_b64(instances[0])
    if not objects and len(inputs) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")
    names = sorted(inputs)
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, row in enumerate(instances):
        if objects:
            if not isinstance(row, dict) or is_b64(row):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            for key, value in row.items():
                if key not in inputs:
                    raise invalid(f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                                  f"INVALID_ARGUMENT: JSON object: does not have named input: {key}")
                columns[key].append(_element(value, key, inputs[key].dtype, i, columns[key], limits))
            if set(row) != set(names):
                raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {_text(row)} keys "
                              f"must be equal to: {','.join(names)}")
        else:
            if isinstance(row, dict) and not is_b64(row):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            name = names[0]
            columns[name].append(_element(row, name, inputs[name].dtype, i, columns[name], limits))
    arrays = {}
    for name, parts in columns.items():
        arrays[name] = np.stack(parts)
        check_shape(arrays[name].shape, arrays[name].dtype.itemsize if arrays[name].dtype != object else 0, name,
                    limits)
    return arrays


def _element(value: Any, name: str, dtype: int, index: int, previous: list, limits: TensorLimits) -> np.ndarray:
    try:
        array = to_array(value, dtype, name, limits)
    except Exception as e:
        raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. Error: "
                      f"INVALID_ARGUMENT: {getattr(e, 'message', e)}") from None
    if previous and previous[0].shape != array.shape:
        if previous[0].size != array.size:
            raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. Error: "
                          f"INVALID_ARGUMENT: Expecting tensor size: {previous[0].size} but got: {array.size}")
        raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. Error: "
                      f"INVALID_ARGUMENT: Expecting shape {list(previous[0].shape)} but got: {list(array.shape)}")
    return array


def _columns(value: Any, inputs: Mapping[str, Any], limits: TensorLimits) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or is_b64(value):
        if len(inputs) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        (name,) = inputs
        return {name: to_array(value, inputs[name].dtype, name, limits)}
    arrays = {}
    for name in sorted(inputs):        # other keys are ignored, as FillTensorMapFromInputsMap does
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], inputs[name].dtype, name, limits)
    return arrays


def to_array(value: Any, dtype: int, name: str, limits: TensorLimits) -> np.ndarray:
    """One JSON value (scalar or nested lists) as an array of the signature's dtype (FillTensorProto)."""
    shape, probe = [], value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    if dtype == types_pb2.DT_STRING:
        check_strings(flat, name, limits)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    elif dtype in _NUMPY:
        array = np.asarray(flat, dtype=_NUMPY[dtype])
    else:
        raise ValueError(f"Conversion of JSON Value: {_text(value)} to type: {DTYPE_NAMES.get(dtype, dtype)}")
    array = array.reshape(shape)
    check_shape(tuple(shape), array.dtype.itemsize if array.dtype != object else 0, name, limits)
    return array


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(f"JSON Value: {_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                          f"Expected at level: {rank}")
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                      f"{shape[level]}")
    for v in value:
        _fill(v, level + 1, shape, dtype, out)


def _type_error(value: Any, dtype: int):
    return invalid(f"JSON Value: {_text(value)} Type: {_json_type(value)} is not of expected type: "
                   f"{DTYPE_NAMES.get(dtype, dtype)}")


def _leaf(value: Any, dtype: int):
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not is_b64(value):
                raise invalid(f"JSON Value: {_text(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in _EXACT_INT:
        if isinstance(value, int) and abs(value) > _EXACT_INT[dtype] or \
                isinstance(value, float) and np.isfinite(value) and abs(value) > _FLOAT_MAX[dtype]:
            raise invalid(f"Cannot convert JSON value: {_text(value)} to {DTYPE_NAMES[dtype]} without loss of "
                          f"precision.")
        return value
    low, high = _INT_RANGES.get(dtype, (None, None))
    if low is None:
        raise ValueError(f"Conversion of JSON Value: {_text(value)} to type: {DTYPE_NAMES.get(dtype, dtype)}")
    if not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, dtype)
    return value


# ---------------------------------------------------------------------------------------------- response
def _float_text(value: float, dtype) -> float:
    """The float TF Serving writes (WriteDecimal): %.6g when it round-trips, else max_digits10 digits."""
    if not np.isfinite(value):
        return float(value)
    short = "%.6g" % value
    if dtype(float(short)) == value:
        return float(short)
    return float("%.9g" % value if dtype is np.float32 else "%.17g" % value)


def _json_values(name: str, array: np.ndarray):
    if array.dtype == object:
        if name.endswith("_bytes"):
            convert = lambda v: {"b64": base64.b64encode(v).decode("ascii")}  # noqa: E731
        else:
            convert = lambda v: v.decode("utf-8", "replace")  # noqa: E731
    elif array.dtype in (np.float32, np.float64):
        dtype = array.dtype.type
        convert = lambda v: _float_text(v, dtype)  # noqa: E731
    else:
        return array.tolist()
    flat = [convert(v) for v in array.ravel().tolist()] if array.dtype == object else \
        [convert(v) for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]


def predict_outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> dict:
    """TF Serving's response body for the request format (MakeJsonFromTensors)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    values = {name: _json_values(name, array) for name, array in outputs.items()}
    if fmt == COLUMNAR:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = None
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(batch)]}


# ---------------------------------------------------------------------------------------------- classify / regress
def examples_input_from_json(doc: Mapping):
    """A tensorflow.serving.Input from a :classify/:regress body ("examples" [+ "context"], json_tensor.cc)."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import input_pb2

    model_input = input_pb2.Input()
    context = doc.get("context")
    if "examples" not in doc:
        raise invalid(f"JSON Value: {_text(doc)} When method is classify, key 'examples' is expected and was not "
                      f"found")
    if not isinstance(doc["examples"], list):
        raise invalid(f"JSON Value: {_text(doc)} Expecting 'examples' value to be an list/array")
    if not doc["examples"]:
        raise invalid(f"JSON Value: {_text(doc)} 'examples' value is an empty array")
    if context is not None:
        _example_from_json(context, model_input.example_list_with_context.context, example_pb2)
        target = model_input.example_list_with_context.examples
    else:
        target = model_input.example_list.examples
    for value in doc["examples"]:
        _example_from_json(value, target.add(), example_pb2)
    return model_input


def _example_from_json(value: Any, example, example_pb2) -> None:
    """JSON object -> tf.Example features (MakeExampleFromJsonObject: ints, floats, strings, b64)."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for v in content if isinstance(content, list) else [content]:
            if isinstance(v, (bool, int)):
                kind, item = "int64_list", int(v)
            elif isinstance(v, float):
                kind, item = "float_list", v
            elif isinstance(v, str):
                kind, item = "bytes_list", v.encode("utf-8")
            elif is_b64(v):
                kind, item = "bytes_list", base64.b64decode(v["b64"])
            else:
                raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
            if feature.WhichOneof("kind") not in (None, kind):
                raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                              f"{feature.WhichOneof('kind').split('_')[0]}")
            getattr(feature, kind).value.append(item)


def classification_to_json(result) -> dict:
    return {"results": [[[c.label, _float_text(c.score, np.float32)] for c in row.classes]
                        for row in result.classifications]}


def regression_to_json(result) -> dict:
    return {"results": [_float_text(r.value, np.float32) for r in result.regressions]}
