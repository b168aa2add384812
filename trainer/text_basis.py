"""The text PCA basis: top principal directions of the frozen item-text table, in bounded memory.

`TwoTowerModel` keeps each item's 384-d BERT row as its projection on `text_pca_dim` directions. The
directions are the right singular vectors of the table, which are the top eigenvectors of its
d x d Gram matrix; accumulating that matrix over row chunks costs O(chunk x d) memory instead of a full
SVD's copies of the [items, d] table (3 GB at 300k items)::

    basis = principal_directions(text_table, dim=64)      # float32 [384, 64], strongest first
    projected = text_table @ basis

Like the SVD it replaces, the table is not centred (zero rows, the OOV row and items without text, add
nothing to the Gram matrix). Each direction's sign is fixed so its largest-magnitude entry is positive
(scikit-learn's `svd_flip` rule), so the same table always gives the same basis.
"""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 65536


def principal_directions(table: np.ndarray, dim: int, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """float32 [d, dim]: the top `dim` right singular vectors of `table` [N, d] as columns.

    Args:
      table: the item-text rows (any float dtype; read in chunks, never copied whole).
      dim: number of directions, 1..d.
      chunk_rows: rows per Gram-matrix update (memory is chunk_rows x d float64).
    """
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"table must be [items, d], got shape {table.shape}")
    d = table.shape[1]
    if not 1 <= dim <= d:
        raise ValueError(f"dim must be in [1, {d}], got {dim}")
    # float64 accumulation: the Gram matrix squares the table's condition number.
    gram = np.zeros([d, d], np.float64)
    for start in range(0, table.shape[0], chunk_rows):
        chunk = table[start:start + chunk_rows].astype(np.float64)
        gram += chunk.T @ chunk
    _, vectors = np.linalg.eigh(gram)                  # ascending eigenvalues
    top = vectors[:, ::-1][:, :dim]
    strongest = np.argmax(np.abs(top), axis=0)
    top = top * np.sign(top[strongest, np.arange(dim)])
    return top.astype(np.float32)
