"""benchmarks.c_session: a SavedModel signature run through TF's C API returns what TF itself returns."""
import numpy as np
import pytest
import tensorflow as tf

from benchmarks.c_session import CApiSignature, signature_tensor_names


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    module = tf.Module()
    module.table = tf.Variable([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def best(query):
        top = tf.math.top_k(tf.matmul(query, module.table, transpose_b=True), k=2).indices
        return {"ids": tf.strings.as_string(top)}

    path = str(tmp_path_factory.mktemp("c_session") / "model")
    tf.saved_model.save(module, path, signatures={"serving_default": best})
    return path, best


def test_the_c_api_session_returns_the_signatures_outputs(export_dir):
    path, best = export_dir
    names = signature_tensor_names(path)
    run = CApiSignature(path, names["inputs"]["query"], names["outputs"]["ids"])
    try:
        for query in ([[1.0, 0.2]], [[0.1, 1.0]], [[-1.0, -2.0], [3.0, 4.0]]):   # a new batch size re-allocates
            query = np.asarray(query, np.float32)
            want = best(tf.constant(query))["ids"].numpy().reshape(-1)
            assert list(run(query)) == list(want)
    finally:
        run.close()


def test_an_unknown_tensor_or_export_is_an_error_naming_it(export_dir, tmp_path):
    path, _ = export_dir
    with pytest.raises(ValueError, match="no_such_op:0"):
        CApiSignature(path, "no_such_op:0", signature_tensor_names(path)["outputs"]["ids"])
    with pytest.raises(RuntimeError, match="loading .*missing"):
        CApiSignature(str(tmp_path / "missing"), "a:0", "b:0")
