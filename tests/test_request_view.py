"""The request view TFDV compares: logged PredictionLogs and training interactions become the same rows.

Unit tests (no Beam, no server): serving_default and serve_tf_examples requests, pads dropped, histories cut
to the last HISTORY_LENGTH items as the model does, non-query requests ignored; the skew schema's
comparators come from SkewConfig; SkewConfig rejects bad settings naming the variable.
"""
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from pipeline.components.skew_config import SkewConfig
from schema import contract
from serving import skew


def _log(inputs: dict) -> bytes:
    request = predict_pb2.PredictRequest()
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()


def _example(user: str, history: str) -> bytes:
    feature = {contract.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
               contract.HISTORY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[history.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_logged_requests_become_request_view_rows():
    long_history = [f"i{n}" for n in range(contract.HISTORY_LENGTH + 5)]
    records = [
        _log({contract.USER_ID: ["u1", "u2"], contract.HISTORY: [["", "", "a"], ["", "b", "c"]],
              contract.INPUT_K: np.array([3, 3], np.int32)}),
        _log({contract.USER_ID: ["u3"], contract.HISTORY: [long_history]}),
        _log({contract.INPUT_EXAMPLES: [_example("u4", "d e"), _example("u5", "")]}),
        _log({contract.ITEM_ID: ["x"], contract.TITLE: ["t"]}),          # candidate_embedding: not a query
    ]
    batch = skew.request_view_of_logs(records)
    assert batch.schema.names == list(skew.REQUEST_FEATURES)
    rows = batch.to_pydict()
    assert [u[0] for u in rows[contract.USER_ID]] == [b"u1", b"u2", b"u3", b"u4", b"u5"]
    assert rows[contract.HISTORY][:2] == [[b"a"], [b"b", b"c"]]
    assert rows[contract.HISTORY][2] == [i.encode() for i in long_history[-contract.HISTORY_LENGTH:]]
    assert rows[contract.HISTORY][3:] == [[b"d", b"e"], []]
    assert [n[0] for n in rows[skew.HISTORY_LENGTH]] == [1, 2, contract.HISTORY_LENGTH, 2, 0]


def test_training_interactions_become_the_same_view():
    batch = pa.RecordBatch.from_arrays(
        [pa.array([[b"u1"], [b"u2"], [b"u3"]], pa.list_(pa.binary())),
         pa.array([[b"a b"], None, [b""]], pa.list_(pa.binary()))], names=[contract.USER_ID, contract.HISTORY])
    rows = skew.request_view_of_examples(batch).to_pydict()
    assert rows[contract.USER_ID] == [[b"u1"], [b"u2"], [b"u3"]]
    assert rows[contract.HISTORY] == [[b"a", b"b"], [], []]
    assert rows[skew.HISTORY_LENGTH] == [[2], [0], [0]]


def test_skew_schema_comparators_come_from_the_config():
    schema = skew.skew_schema(SkewConfig(user_id_linf=0.2, history_item_linf=0.0, history_length_jsd=0.3))
    features = {f.name: f for f in schema.feature}
    assert features[contract.USER_ID].skew_comparator.infinity_norm.threshold == pytest.approx(0.2)
    assert not features[contract.HISTORY].HasField("skew_comparator")               # 0: not compared
    assert features[skew.HISTORY_LENGTH].skew_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.3)


@pytest.mark.parametrize("field, value, message", [
    ("action", "halt", "TOWER_RECS_SKEW_ACTION"),
    ("user_id_linf", 1.5, "TOWER_RECS_SKEW_USER_ID_LINF"),
    ("min_requests", 0, "TOWER_RECS_SKEW_MIN_REQUESTS"),
])
def test_bad_skew_settings_name_the_variable(field, value, message):
    with pytest.raises(ValueError, match=message):
        SkewConfig(**{field: value})
