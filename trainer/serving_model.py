"""The served SavedModel: signatures TF Serving calls, with top-k over the whole catalogue.

Signatures (names and shapes in `schema/contract.py`):
  serving_default      user_id [B], history [B, H], exclude [B, E], k [B] -> item_ids [B, K], scores [B, K]
  serve_tf_examples    examples [B] (serialized tf.Example: user_id, history) -> item_ids, scores (default_k)
  query_embedding      user_id [B], history [B, H]                        -> embedding [B, D + 1]
  candidate_embedding  item_id, title, categories, description [B]         -> embedding [B, D + 1]

The embeddings are the towers' D-dim vectors plus one column for the popularity prior (trainer/popularity.py:
1 on the query side, the item's prior on the candidate side), so their dot product is the served score.

Top-k is `trainer.retrieval_index.build_index(...)` over every catalogue item's vector (cold items included):
exact search (a matmul and `tf.math.top_k`) below `ModelConfig.ann_min_items` items, an IVF index built here
at export time above it; plain TF ops that stock TF Serving runs. The evaluator's full-catalogue metrics call
`serving_default`, so they measure whichever index is served. Every serving_default input has
the batch dimension first, so TF Serving's `--enable_batching` can merge requests: K is the largest k in
the batch and each row is padded ("" / -inf) past its own k (a scalar k still works unbatched).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from serving import layout
from schema import contract
from trainer.item_text import ItemTextEncoder, item_text
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig
from trainer.retrieval_index import build_index

_STRING_VECTOR = lambda name: tf.TensorSpec([None], tf.string, name=name)  # noqa: E731
_STRING_MATRIX = lambda name: tf.TensorSpec([None, None], tf.string, name=name)  # noqa: E731


class RecommenderModule(tf.Module):
    """Wraps the trained towers, the transform graph and the catalogue index for serving.

        module = RecommenderModule(model, tft_output, catalogue_ids, candidate_vectors, text_encoder, cfg)
        export_serving_model(module, serving_model_dir, "tower_recs", warmup_user_ids=user_vocab[:20])

    Args:
      model: the trained `TwoTowerModel`.
      tft_output: the Transform output (its graph maps raw ids to indices at serving time).
      item_ids: the N catalogue item ids, cold items included.
      candidate_vectors: [N, D + 1] served candidate vectors of those items (`trainer.train.candidate_vectors`).
      text_encoder: the `ItemTextEncoder` that embeds new items' text (`candidate_embedding`).
      cfg: the model config (`max_k`, `default_k`, `max_exclude`, the `ann_*` index fields).
    """

    def __init__(self, model: TwoTowerModel, tft_output: tft.TFTransformOutput, item_ids: Sequence[str],
                 candidate_vectors: np.ndarray, text_encoder: ItemTextEncoder, cfg: ModelConfig):
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self.text_encoder = text_encoder
        self.default_k = cfg.default_k
        # Built from these vectors on every export, so the index always matches the catalogue served.
        self.index = build_index(item_ids, candidate_vectors, cfg)

    # -- building blocks -------------------------------------------------------------------------
    def _query(self, user_id: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
        joined = tf.strings.reduce_join(history, axis=1, separator=" ")
        raw = {
            contract.USER_ID: tf.reshape(user_id, [-1, 1]),
            contract.HISTORY: tf.sparse.from_dense(tf.reshape(joined, [-1, 1])),
        }
        transformed = self.tft_layer(raw)
        return self.model.served_query(transformed[contract.USER_INDEX], transformed[contract.HISTORY_INDEX])

    def _top_k(self, query: tf.Tensor, exclude: tf.Tensor, k: tf.Tensor) -> dict:
        ids, scores = self.index(query, exclude, k)
        return {contract.OUTPUT_ITEM_IDS: ids, contract.OUTPUT_SCORES: scores}

    # -- signatures ------------------------------------------------------------------------------
    @tf.function(input_signature=[_STRING_VECTOR(contract.USER_ID), _STRING_MATRIX(contract.HISTORY),
                                  _STRING_MATRIX(contract.INPUT_EXCLUDE),
                                  tf.TensorSpec([None], tf.int32, name=contract.INPUT_K)])
    def recommend(self, user_id, history, exclude, k):
        """`serving_default`: top-k of the catalogue for user ids [B] and histories [B, H], without the
        items of `exclude` [B, E] ("" pads): {"item_ids": [B, k] string, "scores": [B, k] float32}."""
        return self._top_k(self._query(user_id, history), exclude, k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_EXAMPLES)])
    def recommend_tf_examples(self, examples):
        """`serve_tf_examples`: the same top-`default_k` for serialized tf.Examples [B] carrying `user_id`
        and `history` (one space-separated string), as TFX's InfraValidator sends them."""
        parsed = tf.io.parse_example(examples, {
            contract.USER_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            contract.HISTORY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        })
        history = tf.strings.split(parsed[contract.HISTORY]).to_tensor(default_value=contract.PAD)
        no_exclusions = tf.zeros([tf.shape(examples)[0], 0], tf.string)
        return self._top_k(self._query(parsed[contract.USER_ID], history), no_exclusions,
                           tf.constant(self.default_k))

    @tf.function(input_signature=[_STRING_VECTOR(contract.USER_ID), _STRING_MATRIX(contract.HISTORY)])
    def embed_query(self, user_id, history):
        """`query_embedding`: {"embedding": [B, D + 1]} of user ids [B] and histories [B, H]."""
        return {contract.OUTPUT_EMBEDDING: self._query(user_id, history)}

    @tf.function(input_signature=[_STRING_VECTOR(contract.ITEM_ID), _STRING_VECTOR(contract.TITLE),
                                  _STRING_VECTOR(contract.CATEGORIES), _STRING_VECTOR(contract.DESCRIPTION)])
    def embed_candidate(self, item_id, title, categories, description):
        """`candidate_embedding`: {"embedding": [B, D + 1]} of items [B] from their id and text; a brand-new
        id is placed by its text alone (and gets a new item's popularity prior)."""
        text_embedding = self.text_encoder(item_text(title, categories, description))
        item_index = self.tft_layer({contract.ITEM_ID: tf.reshape(item_id, [-1, 1])})[contract.ITEM_INDEX]
        return {contract.OUTPUT_EMBEDDING: self.model.served_candidate(item_index, text_embedding)}

    def signatures(self) -> dict:
        """{signature name: tf.function}, as `tf.saved_model.save(..., signatures=...)` takes them."""
        return {
            contract.SERVING_DEFAULT: self.recommend,
            contract.SERVE_TF_EXAMPLES: self.recommend_tf_examples,
            contract.QUERY_EMBEDDING: self.embed_query,
            contract.CANDIDATE_EMBEDDING: self.embed_candidate,
        }


def write_warmup_requests(export_dir: str, model_name: str, user_ids: Sequence[str], k: int) -> str:
    """TF Serving replays these PredictLogs at load time, before the version takes traffic.

    They take the batched path a client takes: every input has the batch dimension first (with
    `--enable_batching` TF Serving rejects a rank-0 input) and history/exclude start with a PAD column.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, layout.WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pad_column = np.full([1, 1], contract.PAD, object)
    with tf.io.TFRecordWriter(path) as writer:
        for user_id in list(user_ids)[:100]:  # TF Serving reads at most layout.MAX_WARMUP_RECORDS
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=contract.SERVING_DEFAULT))
            request.inputs[contract.USER_ID].CopyFrom(tf.make_tensor_proto([user_id], tf.string))
            request.inputs[contract.HISTORY].CopyFrom(tf.make_tensor_proto(pad_column, tf.string))
            request.inputs[contract.INPUT_EXCLUDE].CopyFrom(tf.make_tensor_proto(pad_column, tf.string))
            request.inputs[contract.INPUT_K].CopyFrom(tf.make_tensor_proto([k], tf.int32))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def export_serving_model(module: RecommenderModule, export_dir: str, model_name: str,
                         warmup_user_ids: Sequence[str]) -> str:
    """Saves `module` with its four signatures and warmup requests to `export_dir`; returns `export_dir`."""
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    write_warmup_requests(export_dir, model_name, warmup_user_ids, module.default_k)
    return export_dir
