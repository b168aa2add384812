"""Serving the mean of the weights at the last few epoch ends (stochastic weight averaging).

    average = EpochWeightAverage(last_epochs=3)
    model.fit(dataset, epochs=6, callbacks=[average])   # the model now holds the mean of epochs 4-6's weights

Why: with a constant learning rate the weights at the last step sit at one noisy point near the optimum;
the mean of a few epoch-end points lies closer to its centre (Izmailov et al. 2018, "Averaging Weights
Leads to Wider Optima"). It gives part of what an ensemble of independently trained models gives, at one
model's training time, vector width and serving cost (validation: tuning/avg_s4*_average_last_epochs.json).

Cost: one float32 copy of the trainable weights, read once per averaged epoch; nothing per step, so
the sparse embedding updates stay O(batch). Only trainable weights are averaged (the text basis, the
popularity prior and the optimizer state are not weights the towers learn by gradient).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf


class EpochWeightAverage(tf.keras.callbacks.Callback):
    """Keras callback: at the end of training, sets the trainable weights to their mean over the last
    `last_epochs` epoch ends (all epochs when training runs fewer; 1 leaves the weights as trained).

    Args:
      last_epochs: how many of the last epoch ends to average (>= 1).
    """

    def __init__(self, last_epochs: int):
        super().__init__()
        if last_epochs < 1:
            raise ValueError(f"last_epochs={last_epochs}: must be at least 1")
        self.last_epochs = last_epochs
        self._sums: Optional[list[np.ndarray]] = None
        self.averaged_epochs = 0

    def on_train_begin(self, logs=None):
        self._sums, self.averaged_epochs = None, 0

    def on_epoch_end(self, epoch: int, logs=None):
        if epoch < self.params["epochs"] - self.last_epochs:
            return
        values = [v.numpy() for v in self.model.trainable_weights]
        if self._sums is None:   # owned float32 copies, updated in place: one table-sized copy at a time
            self._sums = [np.array(value, np.float32) for value in values]
        else:
            for total, value in zip(self._sums, values):
                total += value
        self.averaged_epochs += 1

    def on_train_end(self, logs=None):
        if self.averaged_epochs < 2:
            return
        for variable, total in zip(self.model.trainable_weights, self._sums):
            variable.assign((total / self.averaged_epochs).astype(variable.dtype.as_numpy_dtype))
        self._sums = None
