"""Run a SavedModel signature through TensorFlow's C API, the way a C++ server runs it.

TF Serving loads a SavedModel into a Session and calls Session::Run from C++. A Python Session callable
reaches the same Session but adds the Python binding's own work per call (about 0.1 ms here, measured on an
identity graph), which a server never pays. This loads the SavedModel with TF_LoadSessionFromSavedModel
(the C API over the loader SavedModelBundle uses) and times one TF_SessionRun per call, reached through
ctypes (a few microseconds): the served graph's cost without Python's.

    run = CApiSignature(export_dir, "serving_default_query:0", "StatefulPartitionedCall:0", threads=1)
    ids = list(run(np.zeros([1, 64], np.float32)))   # the string output's values, as bytes
    run.close()

A call returns the output tensor undecoded (decoding 100 strings through ctypes costs more than the search), so
a timed call covers TF_SessionRun alone; iterating the result decodes it.

`signature_tensor_names(export_dir)` gives the tensor names of a signature's inputs and outputs. One float32
input and one string output: what `benchmarks.ann` needs, not a general client.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

_TF_FLOAT = 1
_TF_TSTRING_BYTES = 24   # sizeof(TF_TString), tensorflow/tsl/platform/ctstring_internal.h
_V = ctypes.c_void_p


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


_SIGNATURES = {
    "TF_NewStatus": (_V, []), "TF_DeleteStatus": (None, [_V]),
    "TF_GetCode": (ctypes.c_int, [_V]), "TF_Message": (ctypes.c_char_p, [_V]),
    "TF_NewGraph": (_V, []), "TF_DeleteGraph": (None, [_V]),
    "TF_NewSessionOptions": (_V, []), "TF_DeleteSessionOptions": (None, [_V]),
    "TF_SetConfig": (None, [_V, ctypes.c_char_p, ctypes.c_size_t, _V]),
    "TF_LoadSessionFromSavedModel": (_V, [_V, _V, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                          _V, _V, _V]),
    "TF_CloseSession": (None, [_V, _V]), "TF_DeleteSession": (None, [_V, _V]),
    "TF_GraphOperationByName": (_V, [_V, ctypes.c_char_p]),
    "TF_AllocateTensor": (_V, [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_size_t]),
    "TF_TensorData": (_V, [_V]), "TF_TensorElementCount": (ctypes.c_int64, [_V]),
    "TF_DeleteTensor": (None, [_V]),
    "TF_StringGetDataPointer": (_V, [_V]), "TF_StringGetSize": (ctypes.c_size_t, [_V]),
    "TF_SessionRun": (None, [_V, _V, ctypes.POINTER(_Output), ctypes.POINTER(_V), ctypes.c_int,
                             ctypes.POINTER(_Output), ctypes.POINTER(_V), ctypes.c_int, _V, ctypes.c_int, _V, _V]),
}


def _c_api() -> ctypes.CDLL:
    """TF's C API from the installed wheel (libtensorflow_cc, which the Python package itself loads)."""
    import tensorflow as tf

    lib = ctypes.CDLL(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def signature_tensor_names(export_dir: str, signature: str = "serving_default") -> dict:
    """{"inputs": {key: tensor name}, "outputs": {key: tensor name}} of one SignatureDef of a SavedModel."""
    from serving.servable import read_meta_graph

    sig = read_meta_graph(export_dir).signature_def[signature]
    return {"inputs": {k: v.name for k, v in sig.inputs.items()},
            "outputs": {k: v.name for k, v in sig.outputs.items()}}


class CApiSignature:
    """One float32 input -> one string output of a SavedModel, run by TF_SessionRun (see the module doc)."""

    def __init__(self, export_dir: str, input_name: str, output_name: str, threads: int = 1):
        import tensorflow as tf

        self._lib = lib = _c_api()
        self._status = lib.TF_NewStatus()
        options = lib.TF_NewSessionOptions()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=threads).SerializeToString()
        lib.TF_SetConfig(options, config, len(config), self._status)
        self._check("TF_SetConfig")
        self._graph = lib.TF_NewGraph()
        tags = (ctypes.c_char_p * 1)(b"serve")
        self._session = lib.TF_LoadSessionFromSavedModel(options, None, export_dir.encode(), tags, 1,
                                                         self._graph, None, self._status)
        lib.TF_DeleteSessionOptions(options)
        self._input_shape = None
        self._input_values = (_V * 1)()
        self._output_values = (_V * 1)()
        try:
            self._check(f"loading {export_dir}")
            self._input = (_Output * 1)(self._operation(input_name))
            self._output = (_Output * 1)(self._operation(output_name))
        except Exception:
            self.close()
            raise

    def __call__(self, values: np.ndarray) -> "StringOutput":
        """The output for `values` (float32, the input's shape), undecoded; raises on a failed run."""
        values = np.ascontiguousarray(values, np.float32)
        if values.shape != self._input_shape:   # one input tensor, reused while the shape stays
            if self._input_values[0]:
                self._lib.TF_DeleteTensor(self._input_values[0])
            dims = (ctypes.c_int64 * values.ndim)(*values.shape)
            self._input_values[0] = self._lib.TF_AllocateTensor(_TF_FLOAT, dims, values.ndim, values.nbytes)
            self._input_shape = values.shape
        ctypes.memmove(self._lib.TF_TensorData(self._input_values[0]), values.ctypes.data, values.nbytes)
        self._lib.TF_SessionRun(self._session, None, self._input, self._input_values, 1,
                                self._output, self._output_values, 1, None, 0, None, self._status)
        self._check("TF_SessionRun")
        return StringOutput(self._lib, self._output_values[0])

    def close(self) -> None:
        lib = self._lib
        if self._input_values[0]:
            lib.TF_DeleteTensor(self._input_values[0])
        if self._session:
            lib.TF_CloseSession(self._session, self._status)
            lib.TF_DeleteSession(self._session, self._status)
        lib.TF_DeleteGraph(self._graph)
        lib.TF_DeleteStatus(self._status)

    def _operation(self, tensor_name: str) -> _Output:
        op_name, _, index = tensor_name.partition(":")
        op = self._lib.TF_GraphOperationByName(self._graph, op_name.encode())
        if not op:
            raise ValueError(f"{tensor_name}: no such tensor in the loaded graph")
        return _Output(op, int(index or 0))

    def _check(self, what: str) -> None:
        if self._lib.TF_GetCode(self._status) != 0:
            raise RuntimeError(f"{what}: {self._lib.TF_Message(self._status).decode()}")


class StringOutput:
    """A string tensor returned by TF_SessionRun, owned here: iterating decodes its values (bytes)."""

    def __init__(self, lib: ctypes.CDLL, tensor: int):
        self._lib, self._tensor = lib, tensor

    def __iter__(self):
        lib, base = self._lib, self._lib.TF_TensorData(self._tensor)
        for i in range(lib.TF_TensorElementCount(self._tensor)):
            element = base + i * _TF_TSTRING_BYTES
            yield ctypes.string_at(lib.TF_StringGetDataPointer(element), lib.TF_StringGetSize(element))

    def __del__(self):
        self._lib.TF_DeleteTensor(self._tensor)
