"""The training optimizer: Keras's Adam, or Adam that updates only the embedding rows a batch touched.

    optimizer = make_optimizer(cfg, learning_rate)     # cfg.optimizer: "adam" or "lazy_adam"

Keras's Adam, given a sparse gradient (the `tf.IndexedSlices` of an embedding lookup), still decays the
moments of every row of the table and rewrites every row: each step costs O(catalogue + users), so
training slows down as the catalogue grows however small the batch. `LazyAdam` is the algorithm of
tensorflow_addons' `LazyAdam` (which does not support this TensorFlow): the moments and weights of the rows
in the batch are updated, the others left alone, so a step costs O(batch). Dense gradients (the towers'
layers) get Keras's Adam unchanged.
"""
from __future__ import annotations

from typing import Union

import tensorflow as tf

from trainer.model_config import OPTIMIZERS


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse updates touch only the gradient's rows (moments and weights).

        model.compile(optimizer=LazyAdam(0.005))
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._var_key(variable)
        m, v = self._momentums[self._index_dict[key]], self._velocities[self._index_dict[key]]
        rows = gradient.indices   # unique: the optimizer de-duplicates sparse gradients before this
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(name: str, learning_rate: Union[float, tf.keras.optimizers.schedules.LearningRateSchedule]
                   ) -> tf.keras.optimizers.Optimizer:
    """The optimizer `ModelConfig.optimizer` names, at `learning_rate` (a float or a schedule)."""
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "lazy_adam":
        return LazyAdam(learning_rate)
    raise ValueError(f"optimizer={name!r}: must be one of {OPTIMIZERS}")
