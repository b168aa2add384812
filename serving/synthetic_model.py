"""A small SavedModel with the same signatures as the trainer's export, built from plain TF ops.

Used by the serving tests and the latency benchmark, so neither needs a trained model. The layout it
writes is the Pusher's: ``<base>/<model_name>/<version>/saved_model.pb`` plus
``assets.extra/tf_serving_warmup_requests``.

Signatures (names from ``schema.contract``; top-k through ``trainer.retrieval_index``, as the export):
  serving_default      user_id [B] string, history [B, H] string, exclude [B, E] string, k [B] int32
                       -> item_ids [B, K] string, scores [B, K] float32 (K = max k; "" / -inf past a row's k)
  serve_tf_examples    examples [B] string (tf.Example: user_id, history = one space-separated string)
                       -> item_ids, scores (k = default_k)
  query_embedding      user_id [B], history [B, H] -> embedding [B, D]
  candidate_embedding  item_id, title, categories, description [B] -> embedding [B, D]

    python -m serving.synthetic_model --out outputs/synthetic_model/tower_recs --num_items 10000 --dim 64
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from serving import layout
from schema import contract as F
from trainer.model_config import ModelConfig
from trainer.retrieval_index import build_index


class SyntheticRetrieval(tf.Module):
    """Random user/item embeddings; query = user embedding + mean of history item embeddings."""

    def __init__(self, num_items: int = 50, num_users: int = 20, dim: int = 16, seed: int = 0,
                 max_k: int | None = None, default_k: int | None = None, item_prefix: str = "item_",
                 item_vectors: np.ndarray | None = None, user_vectors: np.ndarray | None = None,
                 cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.default_k = int(default_k if default_k is not None else cfg.default_k)
        rng = np.random.default_rng(seed)
        self.item_id_list = [f"{item_prefix}{i}" for i in range(num_items)]
        self.user_id_list = [f"user_{i}" for i in range(num_users)]
        # Row 0 of each table is the out-of-vocabulary embedding.
        # Given vectors (benchmarks/ann.py: clustered ones) replace the random ones; user row i+1 = user_i.
        users = rng.normal(size=(num_users + 1, dim)).astype(np.float32)
        if user_vectors is not None:
            users[1:] = user_vectors
        self.user_table = tf.Variable(users, trainable=False)
        if item_vectors is None:
            item_vectors = rng.normal(size=(num_items, dim)).astype(np.float32)
        self.text_table = tf.Variable(rng.normal(size=(1024, dim)).astype(np.float32), trainable=False)
        self.user_lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.user_id_list),
                                                tf.range(1, num_users + 1, dtype=tf.int64)), default_value=0)
        # The export's index choice (exact below cfg.ann_min_items items, IVF above).
        if max_k is not None:
            cfg = dataclasses.replace(cfg, max_k=max_k)
        self.index = build_index(self.item_id_list, item_vectors, cfg)

    def _query(self, user_id, history):
        user = tf.gather(self.user_table, self.user_lookup.lookup(user_id))
        idx = self.index.item_position.lookup(history)                              # [B, H], -1 = pad/unknown
        valid = tf.cast(idx >= 0, tf.float32)[..., None]
        hist = self.index.vectors_at(tf.maximum(idx, 0)) * valid  # [B, H, D]
        count = tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
        return user + tf.reduce_sum(hist, axis=1) / count

    def _top_k(self, query, exclude, k):
        ids, scores = self.index(query, exclude, k)
        return {F.OUTPUT_ITEM_IDS: ids, F.OUTPUT_SCORES: scores}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=F.USER_ID),
        tf.TensorSpec([None, None], tf.string, name=F.HISTORY),
        tf.TensorSpec([None, None], tf.string, name=F.INPUT_EXCLUDE),
        tf.TensorSpec([None], tf.int32, name=F.INPUT_K)])
    def serve(self, user_id, history, exclude, k):
        return self._top_k(self._query(user_id, history), exclude, k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        # As trainer/serving_model.py: history is one space-separated string per example.
        parsed = tf.io.parse_example(examples, {
            F.USER_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            F.HISTORY: tf.io.FixedLenFeature([], tf.string, default_value="")})
        history = tf.strings.split(parsed[F.HISTORY]).to_tensor(default_value=F.PAD)
        empty = tf.zeros([tf.shape(examples)[0], 0], tf.string)
        return self._top_k(self._query(parsed[F.USER_ID], history), empty, tf.constant(self.default_k))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.USER_ID),
                                  tf.TensorSpec([None, None], tf.string, name=F.HISTORY)])
    def query_embedding(self, user_id, history):
        return {F.OUTPUT_EMBEDDING: self._query(user_id, history)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.ITEM_ID),
                                  tf.TensorSpec([None], tf.string, name=F.TITLE),
                                  tf.TensorSpec([None], tf.string, name=F.CATEGORIES),
                                  tf.TensorSpec([None], tf.string, name=F.DESCRIPTION)])
    def candidate_embedding(self, item_id, title, categories, description):
        idx = self.index.item_position.lookup(item_id)
        known = self.index.vectors_at(tf.maximum(idx, 0))
        text = tf.strings.join([title, categories, description], separator=" ")
        cold = tf.gather(self.text_table, tf.strings.to_hash_bucket_fast(text, 1024))
        return {F.OUTPUT_EMBEDDING: tf.where((idx >= 0)[:, None], known, cold)}


def warmup_requests(model_name: str, user_ids, item_ids, n: int = 4):
    """PredictionLog records (predict_log) for serving_default, as TF Serving replays them: batched inputs
    (k per row) with history/exclude starting with a PAD column, as trainer/serving_model.py writes them."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    logs = []
    for i in range(n):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = F.SERVING_DEFAULT
        b = 1 + i % 2
        req.inputs[F.USER_ID].CopyFrom(tf.make_tensor_proto([user_ids[(i + j) % len(user_ids)] for j in range(b)]))
        history = np.array([[F.PAD, item_ids[i % len(item_ids)]]] * b, dtype=object)
        req.inputs[F.HISTORY].CopyFrom(tf.make_tensor_proto(history, dtype=tf.string))
        req.inputs[F.INPUT_EXCLUDE].CopyFrom(tf.make_tensor_proto(np.full((b, 1), F.PAD, object), dtype=tf.string))
        req.inputs[F.INPUT_K].CopyFrom(tf.make_tensor_proto([10] * b, dtype=tf.int32))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)))
    return logs


def build_synthetic_model(base_path: str, version: int | None = None, *, num_items: int = 50, num_users: int = 20,
                          dim: int = 16, seed: int = 0, model_name: str = "tower_recs", warmup: int = 4,
                          item_prefix: str = "item_", max_k: int | None = None, **vectors_and_cfg) -> str:
    """Write one version ``<base_path>/<version>`` (default: now, unix seconds) and return its path.

    The SavedModel is first written to a hidden temp dir and renamed, so a polling server never sees a
    half-written version. ``vectors_and_cfg``: ``item_vectors``, ``user_vectors``, ``cfg`` of
    `SyntheticRetrieval`.
    """
    version = int(version if version is not None else time.time())
    module = SyntheticRetrieval(num_items=num_items, num_users=num_users, dim=dim, seed=seed,
                                item_prefix=item_prefix, max_k=max_k, **vectors_and_cfg)
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}-{os.getpid()}")
    os.makedirs(base_path, exist_ok=True)
    signatures = {
        F.SERVING_DEFAULT: module.serve.get_concrete_function(),
        F.SERVE_TF_EXAMPLES: module.serve_examples.get_concrete_function(),
        F.QUERY_EMBEDDING: module.query_embedding.get_concrete_function(),
        F.CANDIDATE_EMBEDDING: module.candidate_embedding.get_concrete_function(),
    }
    tf.saved_model.save(module, tmp, signatures=signatures)
    if warmup:
        warmup_path = os.path.join(tmp, layout.WARMUP_FILE)
        os.makedirs(os.path.dirname(warmup_path), exist_ok=True)
        with tf.io.TFRecordWriter(warmup_path) as w:
            for log in warmup_requests(model_name, module.user_id_list, module.item_id_list, warmup):
                w.write(log.SerializeToString())
    os.rename(tmp, final)
    return final


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="model base path, e.g. outputs/serving_model/tower_recs")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--num_items", type=int, default=10_000)
    p.add_argument("--num_users", type=int, default=1_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(build_synthetic_model(a.out, a.version, num_items=a.num_items, num_users=a.num_users, dim=a.dim, seed=a.seed))


if __name__ == "__main__":
    main()
