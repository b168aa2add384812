"""Full-catalogue retrieval metrics: Recall@K and NDCG@K with seen items excluded.

Every item in the catalogue is ranked (no sampled negatives). Recall@K is
hits / |user's relevant items| (the protocol in ../shared/docs/anchors.md), and
NDCG@K uses binary relevance with the ideal DCG of min(|relevant|, K) hits.

    >>> scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    >>> top = top_k_excluding(scores, exclude=[[0]], k=2)      # item 0 already seen
    >>> top.tolist()
    [[1, 3]]
    >>> retrieval_metrics(top, relevant=[[3, 2]], ks=(2,))
    {'recall@2': 0.5, 'ndcg@2': 0.38685280723454163, 'users': 1}
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def top_k_excluding(scores: np.ndarray, exclude: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """Indices [U, k] of each row's k best scores, best first, never returning excluded columns.

    Args:
      scores: [U, N] scores of every catalogue item per user.
      exclude: per user, the columns to skip (already seen items).
      k: how many to return (at most N).
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    for row, items in enumerate(exclude):
        items = np.fromiter(items, dtype=np.int64)
        if items.size:
            scores[row, items] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-scores, top, axis=1).argsort(axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def retrieval_metrics(top_items: np.ndarray, relevant: Sequence[Iterable[int]],
                      ks: Sequence[int] = (10, 50, 100)) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users with at least one relevant item.

    Args:
      top_items: [U, >= max(ks)] ranked item columns per user (`top_k_excluding`).
      relevant: per user, the relevant item columns (users with none are skipped).
      ks: cut-offs.

    Returns:
      {"recall@K": .., "ndcg@K": .. for each K, "users": number of users averaged}.
    """
    discounts = 1.0 / np.log2(np.arange(2, top_items.shape[1] + 2))
    recalls = {k: [] for k in ks}
    ndcgs = {k: [] for k in ks}
    for row, items in zip(top_items, relevant):
        items = set(items)
        if not items:
            continue
        hits = np.fromiter((i in items for i in row), dtype=bool, count=len(row))
        for k in ks:
            recalls[k].append(hits[:k].sum() / len(items))
            ideal = discounts[:min(len(items), k)].sum()
            ndcgs[k].append(float((hits[:k] * discounts[:k]).sum() / ideal))
    result: dict[str, float] = {}
    for k in ks:
        result[f"recall@{k}"] = float(np.mean(recalls[k])) if recalls[k] else 0.0
        result[f"ndcg@{k}"] = float(np.mean(ndcgs[k])) if ndcgs[k] else 0.0
    result["users"] = len(recalls[ks[0]]) if ks else 0
    return result
