"""The two-tower retrieval model (TF Recommenders).

Query tower:     user id embedding + mean of the user's recent items -> MLP -> unit vector
Candidate tower: item id embedding + projected BERT text embedding   -> MLP -> unit vector

The BERT encoder is frozen by default, so item texts are embedded once per
distinct item (`text_table`, one row per item index) instead of once per
interaction. Item ids are hidden at random in training (`id_dropout`) so the
text path alone can place items nobody has interacted with (cold start).

    model = TwoTowerModel(ModelConfig(), num_users=610, num_items=9000,
                          text_table=np.zeros([9001, 384], np.float32),
                          item_counts=np.ones([9000]))
    model.compile(tf.keras.optimizers.Adagrad(0.05))
    model.fit(dataset_of_index_features)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features
from trainer.model_config import ModelConfig


def _mlp(cfg: ModelConfig, name: str) -> tf.keras.Sequential:
    layers = [tf.keras.layers.Dense(width, activation="relu") for width in cfg.hidden_dims]
    layers.append(tf.keras.layers.Dense(cfg.embedding_dim))
    return tf.keras.Sequential(layers, name=name)


class TwoTowerModel(tfrs.Model):
    """Retrieval model over index features (`user_index`, `item_index`, `history_index`)."""

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, text_table: np.ndarray,
                 item_counts: np.ndarray):
        super().__init__()
        self.cfg = cfg
        self.num_users = num_users     # index num_users is the OOV (unknown user) id
        self.num_items = num_items     # index num_items is the OOV (unknown/cold item) id
        self.user_embedding = tf.keras.layers.Embedding(num_users + 1, cfg.id_embedding_dim, name="user_id")
        self.item_embedding = tf.keras.layers.Embedding(num_items + 1, cfg.id_embedding_dim, name="item_id")
        # Frozen BERT embeddings of each item's text; the OOV row is zeros.
        self.text_table = tf.Variable(text_table.astype(np.float32), trainable=False, name="text_table")
        self.text_projection = tf.keras.layers.Dense(cfg.id_embedding_dim, name="text_projection")
        self.query_mlp = _mlp(cfg, "query_mlp")
        self.candidate_mlp = _mlp(cfg, "candidate_mlp")
        probabilities = np.asarray(item_counts, np.float64) / max(float(np.sum(item_counts)), 1.0)
        probabilities = np.append(probabilities, probabilities.min(initial=1.0) if len(probabilities) else 1.0)
        self.item_log_probability = tf.constant(np.log(np.maximum(probabilities, 1e-12)), tf.float32)
        self.task = tfrs.tasks.Retrieval(temperature=cfg.temperature,
                                         remove_accidental_hits=cfg.remove_accidental_hits)

    # -- item side -------------------------------------------------------------------------------
    def _item_inputs(self, item_index: tf.Tensor, projected_text: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[..., 2 * id_embedding_dim]: the id part (zero for unknown items) and the projected text part."""
        item_index = tf.cast(item_index, tf.int64)
        known = tf.cast(item_index < self.num_items, tf.float32)
        if training and self.cfg.id_dropout > 0:
            keep = tf.random.uniform(tf.shape(item_index)) >= self.cfg.id_dropout
            known *= tf.cast(keep, tf.float32)
        id_part = self.item_embedding(tf.minimum(item_index, self.num_items)) * known[..., None]
        return tf.concat([id_part, projected_text], axis=-1)

    def candidate_embedding(self, item_index: tf.Tensor, text_embedding: tf.Tensor,
                            training: bool = False) -> tf.Tensor:
        """Unit vectors [B, embedding_dim] for items given their index and BERT text embedding."""
        return self._candidate(item_index, self.text_projection(text_embedding), training)

    def _candidate(self, item_index: tf.Tensor, projected_text: tf.Tensor, training: bool = False) -> tf.Tensor:
        vectors = self.candidate_mlp(self._item_inputs(item_index, projected_text, training))
        return tf.math.l2_normalize(vectors, axis=-1)

    def item_text_embedding(self, item_index: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.text_table, tf.minimum(tf.cast(item_index, tf.int64), self.num_items))

    def _projected_text(self, item_index: tf.Tensor, projected_table: tf.Tensor | None) -> tf.Tensor:
        if projected_table is None:  # few items (serving): gather, then project
            return self.text_projection(self.item_text_embedding(item_index))
        return tf.gather(projected_table, tf.minimum(tf.cast(item_index, tf.int64), self.num_items))

    # -- query side ------------------------------------------------------------------------------
    def query_embedding(self, user_index: tf.Tensor, history_index: tf.Tensor, training: bool = False,
                        projected_table: tf.Tensor | None = None) -> tf.Tensor:
        """Unit vectors [B, embedding_dim] from the user's id and up to HISTORY_LENGTH recent items (-1 pads)."""
        user_index = tf.minimum(tf.cast(user_index, tf.int64), self.num_users)
        if training and self.cfg.user_id_dropout > 0:
            drop = tf.random.uniform(tf.shape(user_index)) < self.cfg.user_id_dropout
            user_index = tf.where(drop, tf.cast(self.num_users, tf.int64), user_index)
        history_index = tf.cast(history_index, tf.int64)
        valid = tf.cast(history_index >= 0, tf.float32)[..., None]
        history_index = tf.maximum(history_index, 0)
        history = self._item_inputs(history_index, self._projected_text(history_index, projected_table)) * valid
        history_mean = tf.reduce_sum(history, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
        vectors = self.query_mlp(tf.concat([self.user_embedding(user_index), history_mean], axis=-1))
        return tf.math.l2_normalize(vectors, axis=-1)

    # -- training --------------------------------------------------------------------------------
    def compute_loss(self, inputs: dict, training: bool = False) -> tf.Tensor:
        item_index = tf.cast(tf.reshape(inputs[features.ITEM_INDEX], [-1]), tf.int64)
        # Project every item's text once per step: cheaper than projecting B x (HISTORY_LENGTH + 1) rows.
        projected_table = self.text_projection(self.text_table)
        query = self.query_embedding(tf.reshape(inputs[features.USER_INDEX], [-1]),
                                     inputs[features.HISTORY_INDEX], training=training,
                                     projected_table=projected_table)
        candidate = self._candidate(item_index, self._projected_text(item_index, projected_table), training)
        sampling_probability = None
        if self.cfg.logq_correction:
            sampling_probability = tf.exp(tf.gather(self.item_log_probability, item_index))
        return self.task(query, candidate,
                         candidate_sampling_probability=sampling_probability,
                         candidate_ids=item_index if self.cfg.remove_accidental_hits else None,
                         compute_metrics=False)
