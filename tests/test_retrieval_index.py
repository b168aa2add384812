"""trainer.retrieval_index.BruteForceIndex: exact per-row top-k with exclusions, checked against numpy."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.retrieval_index import PAD_ID, BruteForceIndex


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(3)
    ids = [f"i{n}" for n in range(30)]
    return BruteForceIndex(ids, rng.normal(size=(30, 8)).astype(np.float32), max_k=20, max_exclude=5), ids, rng


def _numpy_top_k(vectors, query, excluded, k):
    scores = vectors @ query
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in excluded]
    return order[:k], scores[order[:k]]


def test_per_row_k_exclusions_and_padding_match_numpy(index):
    idx, ids, rng = index
    vectors = idx.item_vectors.numpy()
    query = rng.normal(size=(3, 8)).astype(np.float32)
    exclude = np.array([[PAD_ID, "i1", "unknown"], [PAD_ID, PAD_ID, PAD_ID], [PAD_ID] + ids[:2]], dtype=object)
    k = np.array([3, 20, 1], np.int32)
    got_ids, got_scores = (t.numpy() for t in idx(tf.constant(query), tf.constant(exclude), tf.constant(k)))
    assert got_ids.shape == (3, 20) and got_scores.shape == (3, 20)            # max(k) columns
    for row in range(3):
        excluded = {ids.index(e) for e in exclude[row] if e in ids}
        want, want_scores = _numpy_top_k(vectors, query[row], excluded, int(k[row]))
        assert [i.decode() for i in got_ids[row, :k[row]]] == [ids[i] for i in want]
        np.testing.assert_allclose(got_scores[row, :k[row]], want_scores, rtol=1e-5)
        assert set(got_ids[row, k[row]:].tolist()) <= {PAD_ID.encode()}          # padded past its own k
        assert np.all(np.isneginf(got_scores[row, k[row]:]))


def test_scalar_k_applies_to_every_row_and_exhausted_rows_are_padded(index):
    idx, ids, _ = index
    query = tf.ones([2, 8])
    exclude = tf.constant([ids[:27], [PAD_ID] * 27])                       # row 0 keeps 3 items
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 5 item ids"):
        idx(query, exclude, tf.constant(4))
    small = BruteForceIndex(ids, idx.item_vectors.numpy(), max_k=20, max_exclude=30)
    got_ids, got_scores = (t.numpy() for t in small(query, exclude, tf.constant(4)))
    assert got_ids.shape == (2, 4)
    assert got_ids[0, 3] == b"" and np.isneginf(got_scores[0, 3]) and b"" not in got_ids[1]


@pytest.mark.parametrize("k, message", [([0], "at least 1"), ([21], "at most 20")])
def test_k_out_of_range_is_an_error(index, k, message):
    idx, _, _ = index
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        idx(tf.ones([1, 8]), tf.constant([[PAD_ID]]), tf.constant(k))
