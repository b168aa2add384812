"""The two-tower retrieval model (TF Recommenders).

Query tower:     user id embedding + recency-weighted mean of the user's recent items -> MLP -> unit vector
                 (`query_tower="sasrec"`: causal self-attention over them instead, `trainer/sequence_tower.py`)
Candidate tower: item id embedding + projected BERT text embedding                    -> MLP -> unit vector

The BERT encoder is frozen by default, so item texts are embedded once per
distinct item (`text_table`, one row per item index) instead of once per
interaction. Item ids are hidden at random in training (`id_dropout`) so the
text path alone can place items nobody has interacted with (cold start).

The history item representation is linear in (id embedding, text embedding), so the
weighted mean over the history is taken on the raw 384-d text rows first and projected
once per query, and `LazyAdam` updates only the batch's embedding rows: a step costs O(batch),
never O(catalogue).

    from trainer.optimizers import LazyAdam

    model = TwoTowerModel(ModelConfig(), num_users=610, num_items=9000,
                          text_table=np.zeros([9001, 384], np.float32),
                          item_counts=np.ones([9000]))
    model.compile(LazyAdam(0.005))   # trainer/optimizers.py: Adam's sparse updates would touch every row
    model.fit(dataset_of_index_features)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from schema import contract
from trainer.model_config import ModelConfig
from trainer.popularity import PopularityPrior
from trainer.retrieval_task import in_batch_softmax_loss
from trainer.sequence_tower import CausalSelfAttention
from trainer.text_basis import principal_directions

QUERY_TOWERS = ("mean", "sasrec")


def compute_policy(cfg: ModelConfig):
    """Keras dtype policy of the dense tower layers: bfloat16 compute with float32 weights, or float32."""
    return tf.keras.mixed_precision.Policy("mixed_bfloat16" if cfg.mixed_precision else "float32")


def _mlp(cfg: ModelConfig, name: str) -> tf.keras.Sequential:
    policy = compute_policy(cfg)
    layers = [tf.keras.layers.Dense(width, activation="relu", dtype=policy) for width in cfg.hidden_dims]
    layers.append(tf.keras.layers.Dense(cfg.embedding_dim, dtype=policy))
    return tf.keras.Sequential(layers, name=name)


def _summed_loss(losses: dict[str, tf.Tensor]) -> tf.Tensor:
    """The loss the optimizer minimises: the sum of its named parts."""
    return tf.add_n(list(losses.values()))


class TwoTowerModel(tf.keras.Model):
    """Retrieval model over index features (`user_index`, `item_index`, `history_index`).

    A plain Keras model with the `tfrs.Model` training interface: `compute_loss(inputs, training)`
    and the `train_step` / `test_step` that call it (rewritten here without AutoGraph), which were
    all `tfrs.Model` provides.
    """

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, text_table: np.ndarray,
                 item_counts: np.ndarray, text_encoder: Optional[tf.keras.layers.Layer] = None,
                 item_texts: Optional[Sequence[str]] = None, text_basis: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg = cfg
        # Fine-tuning (cfg.train_encoder): the candidate side runs the trainable BERT on each batch's item
        # texts (`item_texts`, vocabulary order + "" for OOV); the history side keeps the frozen table, since
        # running BERT on B x HISTORY_LENGTH texts per step would cost 20x more.
        self.text_encoder = text_encoder if cfg.train_encoder else None
        if self.text_encoder is not None:
            if item_texts is None or len(item_texts) != num_items + 1:
                raise ValueError("train_encoder needs item_texts: one text per item index, OOV ('') last")
            self.item_texts = tf.constant(list(item_texts), tf.string)
        self.num_users = num_users     # index num_users is the OOV (unknown user) id
        self.num_items = num_items     # index num_items is the OOV (unknown/cold item) id
        self.user_embedding = tf.keras.layers.Embedding(num_users + 1, cfg.id_embedding_dim, name="user_id")
        self.item_embedding = tf.keras.layers.Embedding(num_items + 1, cfg.id_embedding_dim, name="item_id")
        # Frozen BERT embeddings of each item's text; the OOV row is zeros. With `text_pca_dim` the table
        # is kept as its top principal directions (`text_basis`, frozen, also applied to new items' text).
        text_table = np.asarray(text_table, np.float32)
        self.text_basis = None
        # A given `text_basis` (a warm start's, trainer/warm_start.py) is kept: the copied text projection
        # was learned in that basis, and a basis refit on a changed catalogue may rotate or flip its axes.
        if 0 < cfg.text_pca_dim < text_table.shape[1]:
            if text_basis is not None and tuple(np.shape(text_basis)) == (text_table.shape[1], cfg.text_pca_dim):
                basis = np.asarray(text_basis, np.float32)
            else:
                basis = principal_directions(text_table, cfg.text_pca_dim)
            self.text_basis = tf.Variable(basis, trainable=False, name="text_basis")
            text_table = text_table @ basis
        self.text_table = tf.Variable(text_table, trainable=False, name="text_table")
        # Content-to-id map (cold start): predicts an item's id embedding from its text, trained on the
        # known items of each batch; unknown items use its output where they had a zero id vector.
        self.text_to_id = tf.keras.layers.Dense(cfg.id_embedding_dim, name="text_to_id") \
            if cfg.id_from_text else None
        self.curriculum_steps = 0      # optimizer steps of the id-dropout curriculum (`id_dropout_start`)
        self.text_projection = tf.keras.layers.Dense(cfg.id_embedding_dim, name="text_projection",
                                                     dtype=compute_policy(cfg))
        # One logit per recency rank (0 = most recent); all zeros = plain mean.
        self.recency_logits = tf.Variable(tf.zeros([contract.HISTORY_LENGTH]), name="recency_logits",
                                          trainable=bool(cfg.recency_weighting))
        if cfg.query_tower not in QUERY_TOWERS:
            raise ValueError(f"query_tower must be one of {QUERY_TOWERS}, got {cfg.query_tower!r}")
        # Tokens: item id embedding + projected text per history item.
        self.sequence_encoder = CausalSelfAttention(
            cfg.id_embedding_dim, blocks=cfg.sequence_blocks, heads=cfg.sequence_heads,
            max_length=contract.HISTORY_LENGTH, dropout=cfg.sequence_dropout, name="sequence_encoder",
        ) if cfg.query_tower == "sasrec" else None
        self.query_mlp = _mlp(cfg, "query_mlp")
        self.candidate_mlp = _mlp(cfg, "candidate_mlp")
        probabilities = np.asarray(item_counts, np.float64) / max(float(np.sum(item_counts)), 1.0)
        probabilities = np.append(probabilities, probabilities.min(initial=1.0) if len(probabilities) else 1.0)
        self.item_log_probability = tf.constant(np.log(np.maximum(probabilities, 1e-12)), tf.float32)
        # Serving only: the popularity prior added back to the scores (trainer/popularity.py); a new item's is
        # read from its text (reduced like the table's rows).
        self.popularity = PopularityPrior.fit(item_counts, cfg, text_table[:num_items])
        self.item_prior = tf.constant(self.popularity.table())

    # -- item side -------------------------------------------------------------------------------
    def _id_part(self, item_index: tf.Tensor, training: bool = False,
                 text: Optional[tf.Tensor] = None, neighbours: bool = False) -> tf.Tensor:
        """Id embedding of each item; for unknown items (and ids dropped in training) zero, or with
        `id_from_text` the stand-in mapped from the item's (projected-space) text `text` (with `neighbours`
        and `stand_in_neighbours`, outside training: from its text's nearest trained items)."""
        known = item_index < self.num_items
        if training and max(self.cfg.id_dropout, self.cfg.id_dropout_start) > 0:
            known = tf.logical_and(known, tf.random.uniform(tf.shape(item_index)) >= self.id_dropout_rate())
        vectors = self.item_embedding(tf.minimum(item_index, self.num_items))
        if self.text_to_id is not None and text is not None:
            stand_in = tf.cast(self.text_to_id(text), tf.float32)
            if neighbours and not training and self.cfg.stand_in_neighbours > 0:
                stand_in = self.neighbour_stand_in(text, tf.logical_not(known), stand_in)
            return tf.where(known[..., None], vectors, stand_in)
        return vectors * tf.cast(known, tf.float32)[..., None]

    def neighbour_stand_in(self, text: tf.Tensor, needed: tf.Tensor, fallback: tf.Tensor) -> tf.Tensor:
        """`fallback` [B, id dim] with each `needed` row that has a text [B, T] (reduced space) replaced by the
        cosine-weighted mean id vector of the `stand_in_neighbours` trained items nearest to it.

        Only those rows are scored against the trained items' text (a new-item batch, not the catalogue), and
        a batch without one skips it.
        """
        needed = tf.logical_and(needed, tf.reduce_any(tf.not_equal(text, 0.0), axis=-1))
        rows = tf.where(needed)                                                               # [M, 1]
        k = min(self.cfg.stand_in_neighbours, self.num_items)

        def replace():
            unit = tf.math.l2_normalize(tf.gather_nd(tf.cast(text, tf.float32), rows), axis=-1)     # [M, T]
            trained = tf.math.l2_normalize(self.text_table[:self.num_items], axis=-1)            # [N, T]
            similarity, neighbour = tf.math.top_k(tf.matmul(unit, trained, transpose_b=True), k=k)
            weights = tf.maximum(similarity, 0.0)
            weights /= tf.maximum(tf.reduce_sum(weights, axis=-1, keepdims=True), 1e-9)
            ids = tf.gather(self.item_embedding.embeddings, neighbour)                           # [M, k, id dim]
            return tf.tensor_scatter_nd_update(fallback, rows, tf.einsum("mk,mkd->md", weights, ids))

        if k == 0:
            return fallback
        return tf.cond(tf.shape(rows)[0] > 0, replace, lambda: fallback)

    def id_dropout_rate(self) -> tf.Tensor:
        """`id_dropout`, or with `id_dropout_start >= 0` the linear curriculum from it to `id_dropout`
        over `curriculum_steps` optimizer steps (set by `trainer.train.build_model`)."""
        if self.cfg.id_dropout_start < 0 or not self.curriculum_steps:
            return tf.constant(self.cfg.id_dropout, tf.float32)
        progress = tf.minimum(tf.cast(self.optimizer.iterations, tf.float32) / float(self.curriculum_steps), 1.0)
        return self.cfg.id_dropout_start + (self.cfg.id_dropout - self.cfg.id_dropout_start) * progress

    def text_for_id(self, text_embedding: tf.Tensor) -> Optional[tf.Tensor]:
        """The text input of the `id_from_text` map (PCA-reduced text), or None without the map."""
        if self.text_to_id is None:
            return None
        return tf.cast(self.reduced_text(text_embedding), tf.float32)

    def reduced_text(self, text_embedding: tf.Tensor) -> tf.Tensor:
        """[B, text dim] text rows in the table's space: projected on `text_basis` unless they already are."""
        if self.text_basis is not None and text_embedding.shape[-1] != self.text_basis.shape[1]:
            return tf.matmul(tf.cast(text_embedding, tf.float32), self.text_basis)
        return text_embedding

    def candidate_embedding(self, item_index: tf.Tensor, text_embedding: tf.Tensor,
                            training: bool = False) -> tf.Tensor:
        """Candidate-tower vectors of items.

        Args:
          item_index: [B] item-vocabulary indices; `num_items` (OOV) for items unseen in training.
          text_embedding: [B, text dim] BERT embeddings of their texts (raw or already PCA-reduced).
          training: hides ids at random (`id_dropout`).

        Returns:
          Unit vectors [B, embedding_dim], float32.
        """
        item_index = tf.cast(item_index, tf.int64)
        text_embedding = self.reduced_text(text_embedding)
        projected = tf.cast(self.text_projection(text_embedding), tf.float32)
        id_part = self._id_part(item_index, training, self.text_for_id(text_embedding), neighbours=True)
        vectors = self.candidate_mlp(tf.concat([id_part, projected], axis=-1))
        return tf.math.l2_normalize(tf.cast(vectors, tf.float32), axis=-1)

    def item_text_embedding(self, item_index: tf.Tensor) -> tf.Tensor:
        """The frozen text-table rows of item indices [B] -> [B, text dim] (zeros for unknown items)."""
        return tf.gather(self.text_table, tf.minimum(tf.cast(item_index, tf.int64), self.num_items))

    # -- query side ------------------------------------------------------------------------------
    def history_weights(self, history_index: tf.Tensor) -> tf.Tensor:
        """[B, H] weights summing to 1 over the valid (>= 0) entries (all zero for an empty history).

        Histories are left-aligned, most recent last, -1 padded; the weight depends only on the
        item's recency rank, so any padding width gives the same query.
        """
        valid = tf.cast(history_index >= 0, tf.float32)
        if not self.cfg.recency_weighting:
            return valid / tf.maximum(tf.reduce_sum(valid, axis=1, keepdims=True), 1.0)
        count = tf.reduce_sum(tf.cast(history_index >= 0, tf.int32), axis=1, keepdims=True)
        position = tf.range(tf.shape(history_index)[1])[None, :]
        rank = tf.clip_by_value(count - 1 - position, 0, contract.HISTORY_LENGTH - 1)
        logits = tf.gather(self.recency_logits, rank)
        logits -= tf.reduce_max(logits, axis=1, keepdims=True)
        weights = tf.exp(logits) * valid
        return weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-9)

    def query_embedding(self, user_index: tf.Tensor, history_index: tf.Tensor,
                        training: bool = False) -> tf.Tensor:
        """Query-tower vectors of users.

        Args:
          user_index: [B] user-vocabulary indices; `num_users` (OOV) for new users.
          history_index: [B, H] item indices of the user's recent items, most recent last, -1 padded.
          training: replaces user ids by the OOV id at random (`user_id_dropout`).

        Returns:
          Unit vectors [B, embedding_dim], float32.
        """
        user_index = tf.minimum(tf.cast(user_index, tf.int64), self.num_users)
        if training and self.cfg.user_id_dropout > 0:
            drop = tf.random.uniform(tf.shape(user_index)) < self.cfg.user_id_dropout
            user_index = tf.where(drop, tf.cast(self.num_users, tf.int64), user_index)
        history_index = tf.cast(history_index, tf.int64)
        if self.sequence_encoder is not None:
            history = self.sequence_summary(history_index, training)
        else:
            history = self.history_mean(history_index)
        vectors = self.query_mlp(tf.concat([self.user_embedding(user_index), history], axis=-1))
        return tf.math.l2_normalize(tf.cast(vectors, tf.float32), axis=-1)

    # -- served vectors --------------------------------------------------------------------------
    def served_query(self, user_index: tf.Tensor, history_index: tf.Tensor) -> tf.Tensor:
        """[B, embedding_dim + 1]: `query_embedding` and a column of ones for the candidates' popularity prior."""
        return PopularityPrior.query_column(self.query_embedding(user_index, history_index))

    def served_candidate(self, item_index: tf.Tensor, text_embedding: tf.Tensor,
                         oov_scale: Optional[tf.Tensor] = None) -> tf.Tensor:
        """[B, embedding_dim + 1]: `candidate_embedding` and the item's popularity prior; for OOV, a new item,
        the vector times `new_item_scale` and the prior its text predicts (`PopularityPrior.new_item_prior`).

        Their dot product with `served_query` is the served score (trainer/popularity.py). `oov_scale` [B]
        replaces `new_item_scale` per row (`trainer.train.candidate_vectors`: `unseen_item_scale` for catalogue
        items that had no interaction in training); known items' rows ignore it."""
        item_index = tf.minimum(tf.cast(item_index, tf.int64), self.num_items)
        new = item_index == self.num_items
        prior = tf.where(new, self.popularity.new_item_prior(self.reduced_text(text_embedding)),
                         tf.gather(self.item_prior, item_index))
        vectors = self.candidate_embedding(item_index, text_embedding)
        if oov_scale is not None or self.cfg.new_item_scale != 1.0:
            scale = self.cfg.new_item_scale if oov_scale is None else tf.cast(oov_scale, tf.float32)
            vectors *= tf.where(new, scale, 1.0)[:, None]
        return tf.concat([vectors, prior[:, None]], axis=1)

    def sequence_summary(self, history_index: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[B, id_embedding_dim]: the causal self-attention output at the most recent history item."""
        safe_index = tf.maximum(history_index, 0)
        raw_text = self.item_text_embedding(safe_index)
        text = tf.cast(self.text_projection(raw_text), tf.float32)
        tokens = self._id_part(safe_index, text=self.text_for_id(raw_text)) + text              # [B, H, id dim]
        return self.sequence_encoder(tokens, history_index >= 0, training=training)

    def history_mean(self, history_index: tf.Tensor) -> tf.Tensor:
        """[B, 2 * id_embedding_dim]: the recency-weighted mean of the history's id and projected text."""
        weights = self.history_weights(history_index)[:, None, :]                  # [B, 1, H]
        safe_index = tf.maximum(history_index, 0)
        # Weighted sums as batched matmuls: no [B, H, D] product tensor in the forward or backward pass.
        text_rows = self.item_text_embedding(safe_index)
        id_rows = self._id_part(safe_index, text=self.text_for_id(text_rows))
        id_mean = tf.squeeze(tf.matmul(weights, id_rows), axis=1)
        text_mean = tf.squeeze(tf.matmul(weights, text_rows), axis=1)
        # Dense is affine: mean(W t_i + b) = W mean(t_i) + b, and zero for an empty history.
        has_history = tf.reduce_sum(weights, axis=2)
        text_part = tf.cast(self.text_projection(text_mean), tf.float32) * has_history
        return tf.concat([id_mean, text_part], axis=-1)

    # -- training --------------------------------------------------------------------------------
    # No data-dependent Python control flow below: skipping AutoGraph saves converting ~1,400 Keras/TF
    # library functions on the first trace (that took 20-60 s of the first epoch on 2 busy cores).
    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """The loss of a batch: the sum of `compute_losses`, a float32 scalar (the `tfrs.Model` interface)."""
        return _summed_loss(self.compute_losses(inputs, training))

    @tf.autograph.experimental.do_not_convert
    def compute_losses(self, inputs: dict, training: bool = False) -> dict[str, tf.Tensor]:
        """The parts of a batch's loss, each a summed float32 scalar.

        `retrieval_loss` is the in-batch softmax loss (`trainer/retrieval_task.py`), the one that ranks; with
        `id_from_text`, `text_to_id_loss` is the content-to-id map's squared error, which grows with the id
        embeddings it predicts, so the sum can rise over epochs while the retrieval loss falls: the training
        logs (and TensorBoard) show both.

        Args:
          inputs: index features `user_index` [B], `item_index` [B], `history_index` [B, H].
          training: applies id dropout and, with `train_encoder`, fine-tunes BERT.
        """
        item_index = tf.cast(tf.reshape(inputs[contract.ITEM_INDEX], [-1]), tf.int64)
        history_index = tf.cast(inputs[contract.HISTORY_INDEX], tf.int64)
        if training and self.cfg.target_horizon > 1:
            history_index = self.hide_recent_items(history_index)
        query = self.query_embedding(tf.reshape(inputs[contract.USER_INDEX], [-1]), history_index,
                                     training=training)
        text_embedding = self._candidate_text(item_index, training)
        candidate = self.candidate_embedding(item_index, text_embedding, training)
        candidate_index = item_index
        log_probability = tf.gather(self.item_log_probability, item_index)
        if self.cfg.sampled_negatives > 0:
            # Mixed negatives: vocabulary items drawn uniformly join the in-batch ones, so tail items are
            # negatives too; logQ then uses the mixture's probability of drawing each candidate.
            sampled = tf.random.uniform([self.cfg.sampled_negatives], 0, self.num_items, dtype=tf.int64)
            candidate = tf.concat([candidate, self.candidate_embedding(
                sampled, self._candidate_text(sampled, training), training)], axis=0)
            candidate_index = tf.concat([item_index, sampled], axis=0)
            batch = tf.cast(tf.shape(item_index)[0], tf.float32)
            uniform = float(self.cfg.sampled_negatives) / max(self.num_items, 1)
            log_probability = tf.math.log((batch * tf.exp(tf.gather(self.item_log_probability, candidate_index))
                                           + uniform) / (batch + self.cfg.sampled_negatives))
        losses = {"retrieval_loss": in_batch_softmax_loss(
            query, candidate, temperature=self.cfg.temperature,
            candidate_log_probability=log_probability if self.cfg.logq_correction else None,
            candidate_ids=candidate_index if self.cfg.remove_accidental_hits else None)}
        if self.text_to_id is not None:
            losses["text_to_id_loss"] = self.text_to_id_loss(item_index, text_embedding)
        return losses

    def hide_recent_items(self, history_index: tf.Tensor) -> tf.Tensor:
        """[B, H] histories with each row's d most recent items set to -1, d uniform in 0..target_horizon-1.

        The target then lies 1..target_horizon steps after the history's end (`ModelConfig.target_horizon`)."""
        count = tf.reduce_sum(tf.cast(history_index >= 0, tf.int64), axis=1, keepdims=True)
        hidden = tf.random.uniform(tf.shape(count), 0, self.cfg.target_horizon, dtype=tf.int64)
        position = tf.range(tf.shape(history_index, out_type=tf.int64)[1])[None, :]
        return tf.where(position < count - hidden, history_index, tf.constant(-1, tf.int64))

    def _candidate_text(self, item_index: tf.Tensor, training: bool) -> tf.Tensor:
        """Text embeddings of candidate items: the trainable BERT on their texts (`train_encoder`), else the table."""
        if self.text_encoder is not None:
            return self.text_encoder(tf.gather(self.item_texts, tf.minimum(item_index, self.num_items)),
                                     training=training)
        return self.item_text_embedding(item_index)

    def text_to_id_loss(self, item_index: tf.Tensor, text_embedding: tf.Tensor) -> tf.Tensor:
        """Summed squared error of the content-to-id map on the batch's known items (id side held fixed)."""
        known = tf.cast(item_index < self.num_items, tf.float32)
        target = tf.stop_gradient(self.item_embedding(tf.minimum(item_index, self.num_items)))
        error = tf.reduce_sum(tf.square(tf.cast(self.text_to_id(self.text_for_id(text_embedding)), tf.float32)
                                        - target), axis=-1)
        return tf.reduce_sum(error * known)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, inputs):
        """`tfrs.Model.train_step` without AutoGraph conversion: loss + regularisation, one optimizer step;
        returns {"loss", "regularization_loss", "total_loss"} and the parts of the loss (`compute_losses`)."""
        with tf.GradientTape() as tape:
            losses = self.compute_losses(inputs, training=True)
            loss = _summed_loss(losses)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(value) for value in self.losses])
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return {"loss": loss, **losses, "regularization_loss": regularization_loss, "total_loss": total_loss}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, inputs):
        """`tfrs.Model.test_step`: {"loss", "regularization_loss", "total_loss"} and the loss's parts, one batch."""
        losses = self.compute_losses(inputs, training=False)
        loss = _summed_loss(losses)
        regularization_loss = tf.reduce_sum([tf.reduce_sum(value) for value in self.losses])
        return {"loss": loss, **losses, "regularization_loss": regularization_loss,
                "total_loss": loss + regularization_loss}
