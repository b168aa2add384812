"""The in-batch softmax loss (trainer/retrieval_task.py) is `tfrs.tasks.Retrieval`'s loss, in eager mode."""
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.retrieval_task import in_batch_softmax_loss

BATCH, DIM, NUM_IDS = 48, 16, 12   # 48 rows over 12 ids: every batch holds accidental hits


def _random_batch(seed: int):
    rng = np.random.default_rng(seed)
    query = tf.math.l2_normalize(tf.constant(rng.normal(size=[BATCH, DIM]), tf.float32), axis=-1)
    candidate = tf.math.l2_normalize(tf.constant(rng.normal(size=[BATCH, DIM]), tf.float32), axis=-1)
    ids = rng.integers(0, NUM_IDS, size=BATCH)
    probability_of_id = rng.dirichlet(np.ones(NUM_IDS)).astype(np.float32)
    # The sampling probability belongs to the item: rows with the same id share it, as in training.
    return query, candidate, tf.constant(ids, tf.int64), tf.constant(probability_of_id[ids])


@pytest.mark.parametrize("temperature,logq,accidental_hits",
                         list(itertools.product([None, 0.1, 0.7], [False, True], [False, True])))
def test_loss_matches_tfrs_retrieval(temperature, logq, accidental_hits):
    query, candidate, ids, probability = _random_batch(seed=1)
    task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=accidental_hits)
    expected = task(query, candidate, candidate_sampling_probability=probability if logq else None,
                    candidate_ids=ids if accidental_hits else None, compute_metrics=False)
    actual = in_batch_softmax_loss(query, candidate, temperature=temperature,
                                   candidate_log_probability=tf.math.log(probability) if logq else None,
                                   candidate_ids=ids if accidental_hits else None)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5)


def test_each_option_changes_the_loss():
    """The parity above is not vacuous: temperature, logQ and accidental hits each move the loss."""
    query, candidate, ids, probability = _random_batch(seed=0)
    plain = in_batch_softmax_loss(query, candidate).numpy()
    assert abs(in_batch_softmax_loss(query, candidate, temperature=0.1).numpy() - plain) > 1.0
    assert abs(in_batch_softmax_loss(query, candidate,
                                     candidate_log_probability=tf.math.log(probability)).numpy() - plain) > 1.0
    assert abs(in_batch_softmax_loss(query, candidate, candidate_ids=ids).numpy() - plain) > 1.0


def test_extra_negatives_join_every_query_s_softmax_and_a_sampled_positive_is_masked():
    """Rows past the batch (`sampled_negatives`) are negatives of every query, logQ-corrected like the others;
    a sampled copy of a query's own positive is an accidental hit, masked out. Checked against numpy."""
    rng = np.random.default_rng(3)
    query = rng.normal(size=[4, DIM]).astype(np.float32)
    candidate = rng.normal(size=[7, DIM]).astype(np.float32)          # 4 positives + 3 sampled items
    ids = np.array([5, 6, 7, 8, 9, 6, 10])                             # sampled item 6 is query 1's positive
    log_probability = np.log(rng.uniform(0.01, 0.5, size=7)).astype(np.float32)
    loss = in_batch_softmax_loss(tf.constant(query), tf.constant(candidate), temperature=0.5,
                                 candidate_log_probability=tf.constant(log_probability),
                                 candidate_ids=tf.constant(ids, tf.int64)).numpy()
    logits = query @ candidate.T / 0.5 - log_probability[None, :]
    expected = 0.0
    for row in range(4):
        keep = (ids != ids[row]) | (np.arange(7) == row)
        expected += np.log(np.exp(logits[row, keep]).sum()) - logits[row, row]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    batch_only = in_batch_softmax_loss(tf.constant(query), tf.constant(candidate[:4]), temperature=0.5,
                                       candidate_log_probability=tf.constant(log_probability[:4]),
                                       candidate_ids=tf.constant(ids[:4], tf.int64)).numpy()
    assert loss > batch_only + 0.1   # the sampled rows did add negatives
