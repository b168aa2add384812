"""The popularity prior of the served score: evidence of how often an item is chosen, added back at serving.

Training with logQ correction takes an item's popularity out of the two-tower scores (a popular item is
not penalised for being a frequent in-batch negative, nor credited for being frequent). Serving ranks by

    score(user, item) = query(user) . candidate(item) + popularity_prior * (log(1 + n_item) - log(1 + n_new))

where `n_item` is the item's interactions in the training data and `n_new` the count a *new* item (one the
model never saw: `make refresh-catalogue`, the `candidate_embedding` signature) is assumed to have: the
`new_item_popularity` quantile of the known items' counts, so a new item ranks as a fairly popular item with
its text would. A catalogue item with no interaction in a whole training window counts 0.

It is one extra dimension, so the index stays a plain dot-product search (exact or IVF) and the
`query_embedding` / `candidate_embedding` signatures keep reproducing the served score:

    prior = PopularityPrior.fit(item_counts, cfg)             # counts per item-vocabulary index
    query = PopularityPrior.query_column(tower_query)          # [B, D] -> [B, D + 1], last column 1
    candidate = tf.concat([tower_candidate, tf.gather(prior.table(), item_index)[:, None]], axis=1)

(`TwoTowerModel.served_query` / `served_candidate` do exactly this.)
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from trainer.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PopularityPrior:
    """The prior's weight, the count a new item is assumed to have and each vocabulary item's count."""

    weight: float
    new_item_count: float
    item_counts: np.ndarray    # [num_items] training interactions per item-vocabulary index

    @classmethod
    def fit(cls, item_counts: np.ndarray, cfg: "ModelConfig") -> "PopularityPrior":
        """From the training data's interactions per vocabulary item and `cfg.popularity_prior` /
        `cfg.new_item_popularity`."""
        counts = np.asarray(item_counts, np.float64)
        known = counts[counts > 0]
        new_item_count = float(np.quantile(known, cfg.new_item_popularity)) if known.size else 0.0
        return cls(float(cfg.popularity_prior), new_item_count, counts)

    def of_count(self, count):
        """The prior of items with `count` training interactions (a number or an array; 0: in the catalogue,
        never chosen)."""
        return self.weight * (np.log1p(count) - np.log1p(self.new_item_count))

    def table(self) -> np.ndarray:
        """float32 [num_items + 1]: each vocabulary item's prior, then 0 for the OOV index (a new item)."""
        return np.append(self.of_count(self.item_counts), 0.0).astype(np.float32)

    @staticmethod
    def query_column(query: tf.Tensor) -> tf.Tensor:
        """[B, D] query vectors -> [B, D + 1], the last column 1 (it multiplies the candidates' prior)."""
        return tf.concat([query, tf.ones_like(query[:, :1])], axis=1)
