"""The SASRec-style query tower (`query_tower="sasrec"`): padding, order, training and TF Serving's op set."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline.components import serving_ops
from schema import contract
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig

CFG = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=64, query_tower="sasrec",
                  sequence_blocks=2, sequence_heads=2)


def _model(cfg=CFG, num_users=5, num_items=8, text_dim=6):
    rng = np.random.default_rng(0)
    text_table = np.vstack([rng.normal(size=[num_items, text_dim]), np.zeros([1, text_dim])]).astype(np.float32)
    return TwoTowerModel(cfg, num_users, num_items, text_table, item_counts=np.arange(1, num_items + 1))


def test_sasrec_query_ignores_padding_width_but_not_order():
    model = _model()
    q1 = model.query_embedding(tf.constant([1]), tf.constant([[2, 3, 5, -1]])).numpy()
    q2 = model.query_embedding(tf.constant([1]), tf.constant([[2, 3, 5, -1, -1, -1, -1]])).numpy()
    np.testing.assert_allclose(q1, q2, atol=1e-5)                 # padding width does not matter
    q3 = model.query_embedding(tf.constant([1]), tf.constant([[5, 3, 2, -1]])).numpy()
    assert np.abs(q1 - q3).max() > 1e-3                           # order does (learned positions)
    np.testing.assert_allclose(np.linalg.norm(q1, axis=1), 1.0, atol=1e-5)
    # An empty history and an unknown (OOV) history item both give finite unit vectors.
    q4 = model.query_embedding(tf.constant([5, 1]), tf.constant([[-1, -1], [8, -1]])).numpy()
    assert np.isfinite(q4).all()
    np.testing.assert_allclose(np.linalg.norm(q4, axis=1), 1.0, atol=1e-5)


def test_unknown_query_tower_is_an_error():
    with pytest.raises(ValueError, match="query_tower must be one of"):
        _model(dataclasses.replace(CFG, query_tower="lstm"))


@pytest.mark.slow
def test_sasrec_learns_what_comes_next_in_a_sequence():
    """Item i is always followed by item (i + 1) mod 8; users are random: only the history's order tells."""
    from trainer.train import train_model

    rng = np.random.default_rng(2)
    n, length = 3000, 4
    start = rng.integers(0, 8, size=n)
    history = (start[:, None] + np.arange(length)[None, :]) % 8
    cut = rng.integers(1, length + 1, size=n)                  # histories of 1-4 items, -1 padded
    history = np.where(np.arange(length)[None, :] < cut[:, None], history, -1)
    target = (start + cut) % 8
    pad = -np.ones([n, contract.HISTORY_LENGTH - length], np.int64)
    train = {contract.USER_INDEX: rng.integers(0, 5, size=n), contract.ITEM_INDEX: target,
             contract.HISTORY_INDEX: np.concatenate([history, pad], axis=1)}
    cfg = dataclasses.replace(CFG, epochs=4, id_dropout=0.0, learning_rate=0.01, sequence_dropout=0.0)
    model = train_model(cfg, train, num_users=5, num_items=8, text_table=np.zeros([9, 4], np.float32), verbose=0)
    queries = model.query_embedding(tf.constant(train[contract.USER_INDEX][:500]),
                                    tf.constant(train[contract.HISTORY_INDEX][:500])).numpy()
    candidates = model.candidate_embedding(tf.range(8), model.item_text_embedding(tf.range(8))).numpy()
    accuracy = np.mean((queries @ candidates.T).argmax(axis=1) == target[:500])
    assert accuracy > 0.9, accuracy                            # chance: 1/8


@pytest.mark.slow
def test_sasrec_query_signature_uses_only_ops_stock_tf_serving_runs(tmp_path):
    model = _model()

    class Export(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.int64)])
        def query(self, user_index, history_index):
            return {"embedding": self.model.query_embedding(user_index, history_index)}

    export = Export()
    path = str(tmp_path / "sasrec_query")
    tf.saved_model.save(export, path, signatures={"query_embedding": export.query})
    ops = serving_ops.graph_op_names(path)
    assert {"BatchMatMulV2", "Softmax"} <= ops                       # the attention is in the graph
    allowed = serving_ops.core_op_names() | serving_ops.TF_TEXT_2_12_OPS
    assert not ops - allowed, sorted(ops - allowed)
    reloaded = tf.saved_model.load(path).signatures["query_embedding"]
    history = tf.constant([[2, 3, 5, -1]], tf.int64)
    np.testing.assert_allclose(reloaded(user_index=tf.constant([1], tf.int64), history_index=history)["embedding"],
                               model.query_embedding(tf.constant([1]), history).numpy(), atol=1e-5)


def test_content_to_id_map_stands_in_for_missing_ids():
    model = _model(dataclasses.replace(CFG, query_tower="mean", id_from_text=True))
    text = model.item_text_embedding(tf.constant([3]))
    stand_in = model.text_to_id(text).numpy()
    assert np.abs(stand_in).sum() > 0
    # An unknown item's id part is the map's output (a zero vector without the map) ...
    np.testing.assert_allclose(model._id_part(tf.constant([model.num_items], tf.int64), text=text).numpy(),
                               stand_in, atol=1e-6)
    # ... and its candidate vector equals a known item's whose id embedding is the stand-in.
    unknown = model.candidate_embedding(tf.constant([model.num_items]), text).numpy()
    weights = model.item_embedding.embeddings.numpy()
    weights[3] = stand_in[0]
    model.item_embedding.embeddings.assign(weights)
    np.testing.assert_allclose(unknown, model.candidate_embedding(tf.constant([3]), text).numpy(), atol=1e-5)
    # The map's loss counts known items only, against their id embeddings.
    loss = model.text_to_id_loss(tf.constant([3, model.num_items], tf.int64),
                                 model.item_text_embedding(tf.constant([3, model.num_items])))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_id_dropout_curriculum_moves_linearly_over_the_run():
    model = _model(dataclasses.replace(CFG, id_dropout=0.3, id_dropout_start=0.9))
    model.compile(tf.keras.optimizers.Adam(0.01))
    model.curriculum_steps = 100
    rates = []
    for step in (0, 50, 100, 200):
        model.optimizer.iterations.assign(step)
        rates.append(float(model.id_dropout_rate()))
    np.testing.assert_allclose(rates, [0.9, 0.6, 0.3, 0.3], atol=1e-6)
    assert float(_model(dataclasses.replace(CFG, id_dropout=0.3)).id_dropout_rate()) == pytest.approx(0.3)
    # The curriculum also runs towards id_dropout 0: at its start (rate 1.0) every id is hidden in training.
    model = _model(dataclasses.replace(CFG, id_dropout=0.0, id_dropout_start=1.0))
    model.compile(tf.keras.optimizers.Adam(0.01))
    model.curriculum_steps = 100
    ids = model._id_part(tf.range(8, dtype=tf.int64), training=True).numpy()
    assert not ids.any() and model._id_part(tf.range(8, dtype=tf.int64)).numpy().any()


def test_last_block_computed_for_the_last_position_only_matches_the_full_block():
    from trainer.sequence_tower import CausalSelfAttention

    layer = CausalSelfAttention(8, blocks=2, heads=2, max_length=6, dropout=0.0)
    tokens = tf.random.stateless_normal([3, 5, 8], seed=[1, 2])
    valid = tf.constant([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]) > 0
    fast = layer(tokens, valid).numpy()
    # Reference: every block over every position, then the last valid position's row.
    count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    position = tf.range(5)[None, :]
    x = tokens + layer.positions(tf.clip_by_value(count[:, None] - 1 - position, 0, 5))
    allowed = tf.logical_and(position[:, :, None] >= position[:, None, :], valid[:, None, :])
    bias = (1.0 - tf.cast(allowed, tf.float32)) * -1e9
    for block in layer.blocks:
        x = block(x, bias)
    full = layer.output_norm(tf.gather(x, count - 1, axis=1, batch_dims=1)).numpy()
    np.testing.assert_allclose(fast, full, atol=1e-5)
    # Causal: changing a token after a sequence's last valid position changes nothing.
    changed = tf.tensor_scatter_nd_update(tokens, [[0, 4]], tf.ones([1, 8]) * 5.0)
    np.testing.assert_allclose(layer(changed, valid).numpy(), fast, atol=1e-6)
