"""SASRec-style query tower: causal self-attention over the user's recent items.

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018): each history item is
one token (here: its id embedding plus its projected BERT text), plus a learned position
embedding; a few pre-norm transformer blocks with a causal mask; the output at the last
(most recent) position is the sequence's summary. `TwoTowerModel` concatenates it with the
user id embedding and feeds its query MLP, so the loss and the export are unchanged.

Only the last position's output is used, so the last block computes its query, attention and
feed-forward for that position alone (exact: under the causal mask no other position feeds it
there); with one block a step costs about two token projections per history item.

Positions are learned per *recency rank* (0 = most recent item), as the mean tower's weights
are: histories are left-aligned and -1 padded, so any padding width gives the same query.
Only MatMul/BatchMatMulV2, Softmax, Mean/Rsqrt (layer norm), GatherV2 and element-wise ops:
all in stock TF Serving 2.16 (checked by `tests/test_sequence_tower.py` with
`pipeline/components/serving_ops.py`).

    encoder = CausalSelfAttention(width=64, blocks=1, heads=2, max_length=20)
    summary = encoder(tokens, valid)          # tokens [B, H, 64], valid [B, H] bool -> [B, 64]
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf


class _Block(tf.keras.layers.Layer):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + FFN(LN(x)), with dropout on both residuals.

    Multi-head attention written with MatMul/Softmax (not `tf.keras.layers.MultiHeadAttention`) so a
    query subset (`last`) can skip the other positions' work."""

    def __init__(self, width: int, heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        if width % heads:
            raise ValueError(f"sequence width {width} is not divisible by sequence_heads={heads}")
        self.width, self.heads = width, heads
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.query = tf.keras.layers.Dense(width, name="query")
        self.key_value = tf.keras.layers.Dense(2 * width, name="key_value")
        self.attention_out = tf.keras.layers.Dense(width, name="attention_out")
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.ffn_in = tf.keras.layers.Dense(width, activation="relu", name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(width, name="ffn_out")
        self.dropout = tf.keras.layers.Dropout(dropout)

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.heads, self.width // self.heads])
        return tf.transpose(x, [0, 2, 1, 3])                                      # [B, heads, H, d]

    def call(self, x: tf.Tensor, mask_bias: tf.Tensor, training: bool = False,
             last: Optional[tf.Tensor] = None) -> tf.Tensor:
        """x [B, H, width], mask_bias [B, H, H] -> [B, H, width]; with `last` ([B] positions) only those
        positions' outputs, [B, 1, width]."""
        normed = self.attention_norm(x)
        key, value = tf.split(self.key_value(normed), 2, axis=-1)
        if last is not None:     # one query row per sequence: the last position's
            x = tf.gather(x, last, axis=1, batch_dims=1)[:, None, :]
            normed = tf.gather(normed, last, axis=1, batch_dims=1)[:, None, :]
            mask_bias = tf.gather(mask_bias, last, axis=1, batch_dims=1)[:, None, :]
        query, key, value = (self._split_heads(t) for t in (self.query(normed), key, value))
        logits = tf.matmul(query, key, transpose_b=True) * (float(self.width // self.heads) ** -0.5)
        attention = tf.nn.softmax(logits + mask_bias[:, None, :, :], axis=-1)     # [B, heads, Q, H]
        mixed = tf.reshape(tf.transpose(tf.matmul(attention, value), [0, 2, 1, 3]), tf.shape(x))
        x = x + self.dropout(self.attention_out(mixed), training=training)
        return x + self.dropout(self.ffn_out(self.ffn_in(self.ffn_norm(x))), training=training)


class CausalSelfAttention(tf.keras.layers.Layer):
    """Tokens [B, H, width] of left-aligned histories -> the last valid position's output [B, width].

    An empty history gives zeros (the caller also masks it out).
    """

    def __init__(self, width: int, blocks: int = 2, heads: int = 2, max_length: int = 20,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.positions = tf.keras.layers.Embedding(max_length, width, name="recency_position")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [_Block(width, heads, dropout, name=f"block_{i}") for i in range(blocks)]
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    def call(self, tokens: tf.Tensor, valid: tf.Tensor, training: bool = False) -> tf.Tensor:
        valid = tf.cast(valid, tf.bool)
        length = tf.shape(tokens)[1]
        count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)                  # [B]
        position = tf.range(length)[None, :]
        rank = tf.clip_by_value(count[:, None] - 1 - position, 0, self.max_length - 1)
        x = self.input_dropout(tokens + self.positions(rank), training=training)
        # Causal: position i sees positions j <= i that hold an item. Large negative (not -inf) so an
        # all-padding row stays finite; its output is never used.
        causal = position[:, :, None] >= position[:, None, :]                   # [1, H, H]
        allowed = tf.logical_and(causal, valid[:, None, :])
        mask_bias = (1.0 - tf.cast(allowed, tf.float32)) * -1e9
        for block in self.blocks[:-1]:
            x = block(x, mask_bias, training=training)
        x = self.blocks[-1](x, mask_bias, training=training, last=tf.maximum(count - 1, 0))     # [B, 1, width]
        return self.output_norm(x[:, 0, :]) * tf.cast(count > 0, tf.float32)[:, None]
