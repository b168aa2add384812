"""Non-neural retrieval baselines on a user x item interaction matrix: MostPopular and EASE.

Both score every catalogue column; `trainer.metrics.top_k_excluding` then removes seen items.

    >>> X = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32)
    >>> MostPopular().fit(X).scores(np.arange(3)).shape
    (3, 3)
    >>> EASE(lam=1.0).fit(X).B.diagonal().tolist()
    [0.0, 0.0, 0.0]

EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): B = I - P diagMat(1 / diag(P)),
P = (X^T X + lambda I)^-1, scores = X B.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp


def interaction_matrix(users: Sequence[int], items: Sequence[int], num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary CSR matrix [num_users, num_items] (duplicates count once)."""
    data = np.ones(len(users), np.float32)
    matrix = sp.csr_matrix((data, (np.asarray(users), np.asarray(items))), shape=(num_users, num_items))
    matrix.data[:] = 1.0
    return matrix


class MostPopular:
    """Scores every item by its number of training interactions (same ranking for every user)."""

    def fit(self, X) -> "MostPopular":
        self.counts = np.asarray(X.sum(axis=0)).reshape(-1).astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class EASE:
    """Closed-form item-item linear autoencoder with a zero diagonal; `lam` is the L2 weight."""

    def __init__(self, lam: float = 200.0):
        self.lam = float(lam)

    def fit(self, X, gram: Optional[np.ndarray] = None) -> "EASE":
        """`gram` (X^T X, float64) may be passed to reuse it across several lambdas."""
        self.X = sp.csr_matrix(X, dtype=np.float32)
        G = np.array(gram if gram is not None else gram_matrix(self.X), dtype=np.float32, copy=True)
        diagonal = np.diag_indices_from(G)
        G[diagonal] += self.lam
        # G is symmetric positive definite: Cholesky inverse (LAPACK potrf + potri, float32).
        factor, info = scipy.linalg.lapack.spotrf(G, lower=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Gram matrix + lambda I is not positive definite (info={info})")
        P, info = scipy.linalg.lapack.spotri(factor, lower=1, overwrite_c=1)
        P = np.tril(P) + np.tril(P, -1).T
        B = P / (-np.diag(P))[None, :]  # float32: fine for lambda >> 1
        B[diagonal] = 0.0
        self.B = B.astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.X[np.asarray(users)] @ self.B, dtype=np.float32)


def gram_matrix(X) -> np.ndarray:
    X = sp.csr_matrix(X, dtype=np.float64)
    return np.asarray((X.T @ X).todense())
