"""Metric code against hand-computed cases."""
import math

import numpy as np
import pytest

from trainer.metrics import retrieval_metrics, top_k_excluding


def test_top_k_is_sorted_and_skips_excluded():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    assert top_k_excluding(scores, [[1], []], k=3).tolist() == [[3, 2, 0], [0, 1, 2]]


def test_recall_and_ndcg_hand_computed():
    top = np.array([[5, 1, 7], [2, 3, 4]])
    # user 0: relevant {1, 9}: one hit at rank 2 -> recall@3 = 1/2, ndcg@3 = (1/log2 3) / (1 + 1/log2 3)
    # user 1: relevant {4}: hit at rank 3 -> recall@1 = 0, recall@3 = 1, ndcg@3 = 1/log2 4 = 0.5
    m = retrieval_metrics(top, [[1, 9], [4]], ks=(1, 3))
    assert m["recall@1"] == 0.0
    assert m["recall@3"] == pytest.approx((0.5 + 1.0) / 2)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg@3"] == pytest.approx((ndcg0 + 0.5) / 2)
    assert m["users"] == 2


def test_users_without_relevant_items_are_skipped():
    m = retrieval_metrics(np.array([[0, 1], [0, 1]]), [[0], []], ks=(2,))
    assert m == {"recall@2": 1.0, "ndcg@2": 1.0, "users": 1}
