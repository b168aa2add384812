"""In-batch softmax retrieval loss: the loss of `tfrs.tasks.Retrieval`, as one plain TF function.

Each query's positive is the candidate in its own row; every other candidate of the batch is a
negative. Same computation as `tfrs.tasks.Retrieval(temperature=..., remove_accidental_hits=...)`
called with `candidate_sampling_probability` and `candidate_ids` (checked against it in
tests/test_retrieval_task.py), without the task's metrics and Python control flow, so a training
step needs no AutoGraph conversion and compiles with XLA.

    loss = in_batch_softmax_loss(query, candidate, temperature=0.1,
                                 candidate_log_probability=tf.gather(item_log_probability, item_ids),
                                 candidate_ids=item_ids)
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf


def in_batch_softmax_loss(query_embeddings: tf.Tensor, candidate_embeddings: tf.Tensor,
                          temperature: Optional[float] = None,
                          candidate_log_probability: Optional[tf.Tensor] = None,
                          candidate_ids: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Sum over the batch of the softmax cross-entropy of each query against all in-batch candidates.

    Args:
      query_embeddings: [B, D] float32 query vectors.
      candidate_embeddings: [C, D] float32, C >= B: row i < B is the candidate query i interacted with; rows
        from B on are extra negatives of every query (e.g. sampled items, `ModelConfig.sampled_negatives`).
      temperature: scores are divided by it (`None`: not scaled).
      candidate_log_probability: [C] log of each candidate's sampling probability; subtracted from
        its scores (logQ correction: popular items are not penalised for being frequent negatives).
      candidate_ids: [C] candidate ids; rows holding a query's positive id other than its own are masked out
        (accidental hits), so an item is never its own negative.

    Returns:
      A float32 scalar, the summed loss (`tfrs.tasks.Retrieval`'s default reduction).
    """
    scores = tf.matmul(query_embeddings, candidate_embeddings, transpose_b=True)      # [B, C]
    if temperature is not None:
        scores /= temperature
    if candidate_log_probability is not None:
        scores -= candidate_log_probability[None, :]
    labels = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1])
    if candidate_ids is not None:
        positive_ids = candidate_ids[:tf.shape(scores)[0]]
        same_item = tf.cast(tf.equal(positive_ids[:, None], candidate_ids[None, :]), tf.float32)
        scores += (same_item - labels) * scores.dtype.min
    return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=scores))
