"""tf.Transform preprocessing: id vocabularies and the user's recent history.

The transform graph is saved with the model, so serving maps raw ids exactly as
training did: ids seen in training get their vocabulary index, anything else the
OOV index `vocab_size` (new users, cold items).
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from schema import contract


def _dense_string(value: tf.Tensor | tf.SparseTensor) -> tf.Tensor:
    """[B] strings from a [B, 1] dense or an optional (sparse, maybe empty) column."""
    if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value, default_value="")
        return tf.strings.reduce_join(value, axis=1, separator=" ")
    return tf.reshape(value, [-1])


def history_tokens(history: tf.Tensor) -> tf.RaggedTensor:
    """Space-separated history strings [B] -> the last HISTORY_LENGTH ids, ragged [B, None]."""
    tokens = tf.strings.split(history)
    return tokens[:, -contract.HISTORY_LENGTH:]


def preprocessing_fn(inputs: dict) -> dict:
    """Maps raw interactions to the indices the two-tower model consumes (the Transform component's fn).

    Args:
      inputs: raw interaction features: `user_id`, `item_id` [B, 1] strings and `history` (optional,
        one space-separated string per row).

    Returns:
      `user_index` [B], `item_index` [B] (vocabulary index, OOV = vocabulary size) and `history_index`
      [B, HISTORY_LENGTH] (the last items, left-aligned, -1 padded).
    """
    user_id = _dense_string(inputs[contract.USER_ID])
    item_id = _dense_string(inputs[contract.ITEM_ID])
    user_vocab = tft.vocabulary(user_id, vocab_filename=contract.USER_VOCAB)
    item_vocab = tft.vocabulary(item_id, vocab_filename=contract.ITEM_VOCAB)

    history = history_tokens(_dense_string(inputs[contract.HISTORY]))
    history_index = history.with_flat_values(
        tft.apply_vocabulary(history.flat_values, item_vocab, num_oov_buckets=1))
    return {
        contract.USER_INDEX: tft.apply_vocabulary(user_id, user_vocab, num_oov_buckets=1),
        contract.ITEM_INDEX: tft.apply_vocabulary(item_id, item_vocab, num_oov_buckets=1),
        # Fixed width so the trainer and the serving graph see a dense [B, HISTORY_LENGTH]; -1 pads.
        contract.HISTORY_INDEX: history_index.to_tensor(
            default_value=-1, shape=[None, contract.HISTORY_LENGTH]),
    }
