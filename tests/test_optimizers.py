"""trainer/optimizers.py: LazyAdam (the default) updates only the embedding rows a batch touched."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.model_config import ModelConfig
from trainer.optimizers import LazyAdam, make_optimizer


def _step(optimizer, table, dense, rows):
    """One optimizer step on loss = sum(table[rows]) . w + sum(dense): a sparse and a dense gradient."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, rows) * tf.constant([1.0, -2.0])) + tf.reduce_sum(dense * dense)
    optimizer.apply_gradients(zip(tape.gradient(loss, [table, dense]), [table, dense]))


def _run(optimizer, batches):
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    dense = tf.Variable([0.5, -1.0])
    for rows in batches:
        _step(optimizer, table, dense, tf.constant(rows))
    return table.numpy(), dense.numpy()


def test_the_first_step_equals_adam_on_every_row():
    lazy_table, lazy_dense = _run(LazyAdam(0.1), [[1, 3]])
    adam_table, adam_dense = _run(tf.keras.optimizers.Adam(0.1), [[1, 3]])
    np.testing.assert_allclose(lazy_table, adam_table, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy_dense, adam_dense, rtol=1e-5, atol=1e-6)
    assert not np.allclose(lazy_table[[1, 3]], np.arange(12, dtype=np.float32).reshape(6, 2)[[1, 3]])


def test_rows_outside_the_batch_keep_their_weights():
    after_first, _ = _run(LazyAdam(0.1), [[1, 3]])
    lazy, lazy_dense = _run(LazyAdam(0.1), [[1, 3], [0, 4]])
    adam, adam_dense = _run(tf.keras.optimizers.Adam(0.1), [[1, 3], [0, 4]])
    np.testing.assert_array_equal(lazy[[1, 3]], after_first[[1, 3]])      # not in the second batch: untouched
    assert not np.allclose(adam[[1, 3]], after_first[[1, 3]])             # Adam's momentum moves them again
    np.testing.assert_allclose(lazy[[0, 4]], adam[[0, 4]], rtol=1e-5, atol=1e-6)    # first update of a row: the same
    np.testing.assert_array_equal(lazy[[2, 5]], np.arange(12, dtype=np.float32).reshape(6, 2)[[2, 5]])
    np.testing.assert_allclose(lazy_dense, adam_dense, rtol=1e-5, atol=1e-6)        # dense gradients: Keras's Adam


def test_the_config_names_the_optimizer_and_rejects_unknown_ones():
    assert isinstance(make_optimizer(ModelConfig().optimizer, 0.01), LazyAdam)
    adam = make_optimizer("adam", 0.01)
    assert isinstance(adam, tf.keras.optimizers.Adam) and not isinstance(adam, LazyAdam)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        ModelConfig(optimizer="sgd")
