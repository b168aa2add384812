"""The popularity prior of the served score: evidence of how often an item is chosen, added back at serving.

Training with logQ correction takes an item's popularity out of the two-tower scores (a popular item is
not penalised for being a frequent in-batch negative, nor credited for being frequent). Serving ranks by

    score(user, item) = query(user) . candidate(item) + popularity_prior * (log(1 + n_item) - log(1 + n_new))

where `n_item` is the item's interactions in the training data and `n_new` the count a *new* item (one the
model never saw: `make refresh-catalogue`, the `candidate_embedding` signature) is assumed to have. A catalogue
item with no interaction in a whole training window counts 0. A new item's count is read from its text:

    log(1 + n_new) = log(1 + n_q) + new_item_text_popularity * (popularity_from_text(text) - mean)

`n_q` is the `new_item_popularity` quantile of the known items' counts; `popularity_from_text` a ridge
regression of log(1 + n) on the known items' (PCA-reduced) text, `mean` its mean over them. A title that reads
like the popular items starts higher than one that reads like the rarely chosen ones; 0 gives every new item
`n_q`. (On ml-latest-small the text explains under a fifth of the variance of log(1 + n) across items.)

It is one extra dimension, so the index stays a plain dot-product search (exact or IVF) and the
`query_embedding` / `candidate_embedding` signatures keep reproducing the served score:

    prior = PopularityPrior.fit(item_counts, cfg, item_text)  # per item-vocabulary index
    query = PopularityPrior.query_column(tower_query)          # [B, D] -> [B, D + 1], last column 1
    known = tf.gather(prior.table(), item_index)               # the OOV index's entry is 0 ...
    new = prior.new_item_prior(text)                           # ... a new item's comes from its text

(`TwoTowerModel.served_query` / `served_candidate` do exactly this.)
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from trainer.text_basis import CHUNK_ROWS

if TYPE_CHECKING:
    from trainer.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PopularityPrior:
    """The prior's weight, the count a new item is assumed to have and each vocabulary item's count."""

    weight: float
    new_item_count: float
    item_counts: np.ndarray    # [num_items] training interactions per item-vocabulary index
    # log(1 + n) from text, centred on the known items: new_item_text_popularity * (text - text_mean) . text_coef
    text_mean: np.ndarray | None = None
    text_coef: np.ndarray | None = None

    @classmethod
    def fit(cls, item_counts: np.ndarray, cfg: "ModelConfig",
            item_text: np.ndarray | None = None) -> "PopularityPrior":
        """From the training data's interactions per vocabulary item, their text rows `item_text`
        [num_items, T] (optional: without it a new item's text is not read) and `cfg.popularity_prior` /
        `cfg.new_item_popularity` / `cfg.new_item_text_popularity`."""
        counts = np.asarray(item_counts, np.float64)
        known = counts[counts > 0]
        new_item_count = float(np.quantile(known, cfg.new_item_popularity)) if known.size else 0.0
        text_mean = text_coef = None
        if cfg.new_item_text_popularity > 0 and item_text is not None and known.size > 1:
            text_mean, text_coef = popularity_from_text(item_text, counts)
            text_coef = text_coef * cfg.new_item_text_popularity
        return cls(float(cfg.popularity_prior), new_item_count, counts, text_mean, text_coef)

    def of_count(self, count):
        """The prior of items with `count` training interactions (a number or an array; 0: in the catalogue,
        never chosen)."""
        return self.weight * (np.log1p(count) - np.log1p(self.new_item_count))

    def table(self) -> np.ndarray:
        """float32 [num_items + 1]: each vocabulary item's prior, then 0 for the OOV index (a new item's own prior
        comes from its text: `new_item_prior`)."""
        return np.append(self.of_count(self.item_counts), 0.0).astype(np.float32)

    def new_item_prior(self, text: tf.Tensor) -> tf.Tensor:
        """[B] float32 prior of new items from their text rows [B, T] (the space `fit` saw): 0 for an item
        whose text predicts the known items' mean popularity, or without a text model."""
        if self.text_coef is None or self.weight == 0:
            return tf.zeros(tf.shape(text)[:1], tf.float32)
        centred = tf.cast(text, tf.float32) - tf.constant(self.text_mean, tf.float32)
        return self.weight * tf.linalg.matvec(centred, tf.constant(self.text_coef, tf.float32))

    @staticmethod
    def query_column(query: tf.Tensor) -> tf.Tensor:
        """[B, D] query vectors -> [B, D + 1], the last column 1 (it multiplies the candidates' prior)."""
        return tf.concat([query, tf.ones_like(query[:, :1])], axis=1)


RIDGE_ALPHAS = tuple(10.0 ** np.arange(-3, 4))   # relative to the mean eigenvalue of the centred Gram matrix


def popularity_from_text(item_text: np.ndarray, item_counts: np.ndarray,
                         chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(mean [T], coef [T]) of a ridge regression of log(1 + n) on the text rows of the items with n > 0:
    log(1 + n) ~ mean log(1 + n) + (text - mean) . coef.

    The normal equations are accumulated over `chunk_rows`-row chunks (memory O(chunk x T), not the table's),
    and the ridge strength is the one of `RIDGE_ALPHAS` with the best generalised cross-validation score,
    computed from the same sums; the same table and counts always give the same coefficients.
    """
    counts = np.asarray(item_counts, np.float64)
    dims = item_text.shape[1]
    gram, moment, total, target, target_sq, n = np.zeros([dims, dims]), np.zeros(dims), np.zeros(dims), 0.0, 0.0, 0
    for start in range(0, len(counts), chunk_rows):
        chosen = counts[start:start + chunk_rows] > 0
        rows = np.asarray(item_text[start:start + chunk_rows], np.float64)[chosen]
        y = np.log1p(counts[start:start + chunk_rows][chosen])
        gram += rows.T @ rows
        moment += rows.T @ y
        total += rows.sum(axis=0)
        target += y.sum()
        target_sq += y @ y
        n += len(y)
    if n < 2:
        raise ValueError(f"popularity_from_text needs at least 2 items with interactions, got {n}")
    mean, y_mean = total / n, target / n
    gram -= n * np.outer(mean, mean)                       # centred: the intercept is not penalised
    moment -= n * mean * y_mean
    eigenvalues, vectors = np.linalg.eigh(gram)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projected = vectors.T @ moment
    best = None
    for alpha in np.asarray(RIDGE_ALPHAS) * max(eigenvalues.mean(), 1e-12):
        shrink = 1.0 / (eigenvalues + alpha)
        residual = (target_sq - n * y_mean ** 2) - projected @ (projected * shrink * (2 - eigenvalues * shrink))
        gcv = n * max(residual, 0.0) / max(n - 1 - np.sum(eigenvalues * shrink), 1.0) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, vectors @ (projected * shrink))
    return mean.astype(np.float32), best[1].astype(np.float32)
