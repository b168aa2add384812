"""Unit tests of the trainer modules: item text, preprocessing_fn, model, export signatures."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from schema import contract
from trainer.item_text import item_text
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig


def test_item_text_joins_and_cleans():
    texts = item_text(tf.constant(["Heat (1995)", " Toy Story ", "Solo"]),
                      tf.constant(["Action|Crime", "(no genres listed)", ""]),
                      tf.constant(["", "Toys  come alive.", ""])).numpy().tolist()
    assert texts == [b"Heat (1995). Action, Crime", b"Toy Story. Toys come alive.", b"Solo"]


def test_model_config_round_trip_and_unknown_key():
    cfg = ModelConfig(embedding_dim=16, hidden_dims=(8, 4))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="embedding_dimm"):
        ModelConfig.from_dict({"embedding_dimm": 3})


def test_preprocessing_fn_maps_ids_and_history(tmp_path):
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from trainer.preprocessing import preprocessing_fn

    rows = [
        {"user_id": ["u1"], "item_id": ["a"], "history": []},
        {"user_id": ["u1"], "item_id": ["b"], "history": ["a"]},
        {"user_id": ["u2"], "item_id": ["a"], "history": [" ".join(f"x{i}" for i in range(25)) + " a b"]},
    ]
    feature_spec = {
        "user_id": tf.io.FixedLenFeature([1], tf.string),
        "item_id": tf.io.FixedLenFeature([1], tf.string),
        "history": tf.io.VarLenFeature(tf.string),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    with tft_beam.Context(temp_dir=str(tmp_path), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn, output_record_batches=False)
    # "a" is the most frequent item: index 0; "b" index 1; the 2-item vocabulary puts OOV at 2.
    assert [r[contract.ITEM_INDEX] for r in transformed] == [0, 1, 0]
    histories = [list(r[contract.HISTORY_INDEX]) for r in transformed]
    assert histories[0] == [-1] * contract.HISTORY_LENGTH
    assert histories[1] == [0] + [-1] * (contract.HISTORY_LENGTH - 1)
    # Only the last HISTORY_LENGTH ids are kept: 18 unknown x-items (OOV=2) then a, b.
    assert histories[2] == [2] * (contract.HISTORY_LENGTH - 2) + [0, 1]


def _tiny_model(cfg=None, num_users=5, num_items=8, text_dim=6):
    cfg = cfg or ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4)
    rng = np.random.default_rng(0)
    text_table = np.vstack([rng.normal(size=[num_items, text_dim]), np.zeros([1, text_dim])]).astype(np.float32)
    return TwoTowerModel(cfg, num_users, num_items, text_table, item_counts=np.arange(1, num_items + 1))


def test_towers_give_unit_vectors_and_ignore_history_padding():
    model = _tiny_model()
    q1 = model.query_embedding(tf.constant([1]), tf.constant([[2, 3, -1, -1]]))
    q2 = model.query_embedding(tf.constant([1]), tf.constant([[2, 3, -1, -1, -1, -1]]))
    np.testing.assert_allclose(q1.numpy(), q2.numpy(), atol=1e-6)  # padding width does not matter
    # With untrained (uniform) recency weights the history is a plain mean: order does not matter either.
    q3 = model.query_embedding(tf.constant([1]), tf.constant([[3, 2, -1, -1]]))
    np.testing.assert_allclose(q1.numpy(), q3.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q1.numpy(), axis=1), 1.0, atol=1e-5)
    c = model.candidate_embedding(tf.constant([0, 8]), model.item_text_embedding(tf.constant([0, 8])))
    assert c.shape == (2, 8)


def test_recency_weights_follow_rank_from_the_end():
    model = _tiny_model()
    model.recency_logits.assign(np.log(np.arange(1, contract.HISTORY_LENGTH + 1)[::-1]).astype(np.float32))
    # Most recent (last valid) item has rank 0 and the largest weight, whatever the padding.
    w = model.history_weights(tf.constant([[5, 6, 7, -1, -1], [5, 6, -1, -1, -1], [-1, -1, -1, -1, -1]],
                                          tf.int64)).numpy()
    n = contract.HISTORY_LENGTH
    np.testing.assert_allclose(w[0, :3], np.array([n - 2, n - 1, n]) / (3 * n - 3), atol=1e-6)
    np.testing.assert_allclose(w[1, :2], np.array([n - 1, n]) / (2 * n - 1), atol=1e-6)
    assert w[0, 3:].sum() == 0 and w[2].sum() == 0


@pytest.mark.parametrize("id_from_text", [False, True])
def test_unknown_item_is_placed_by_its_text_alone(id_from_text):
    """An unknown item is a known item whose id vector is zero, or with `id_from_text` the map's stand-in."""
    model = _tiny_model(ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4,
                                    id_from_text=id_from_text))
    text = model.item_text_embedding(tf.constant([3]))
    unknown = model.candidate_embedding(tf.constant([model.num_items]), text).numpy()
    stand_in = model.text_to_id(model.text_for_id(text)) if id_from_text else tf.zeros([1, 8])
    rows = model.item_embedding.embeddings
    rows.assign(tf.tensor_scatter_nd_update(rows, [[3]], stand_in))
    known_with_that_id = model.candidate_embedding(tf.constant([3]), text).numpy()
    np.testing.assert_allclose(unknown, known_with_that_id, atol=1e-6)
    # A different text places it elsewhere: the vector is the text's, not a constant "unknown" vector.
    other = model.candidate_embedding(tf.constant([model.num_items]), model.item_text_embedding(tf.constant([5])))
    assert np.abs(other.numpy() - unknown).max() > 1e-3


def test_neighbour_stand_in_is_the_id_of_the_trained_items_with_the_nearest_text():
    """`stand_in_neighbours`: a new item whose text is a trained item's gets (with k = 1) exactly that item's id
    vector as its stand-in, so it is placed like that item; k = 2 mixes in the next nearest by cosine; known items,
    training and an item without text keep the linear map's path."""
    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, stand_in_neighbours=1)
    model = _tiny_model(cfg)
    text = model.item_text_embedding(tf.constant([3, 5]))
    new = tf.constant([model.num_items] * 2)
    np.testing.assert_allclose(model.candidate_embedding(new, text).numpy(),
                               model.candidate_embedding(tf.constant([3, 5]), text).numpy(), atol=1e-6)
    # Training uses the map (an id dropped in training would find itself): a different vector.
    assert np.abs(model.candidate_embedding(new, text, training=True).numpy()
                  - model.candidate_embedding(tf.constant([3, 5]), text).numpy()).max() > 1e-3
    # Two neighbours: the cosine-weighted mean of item 3's id vector and its next nearest item's.
    model2 = _tiny_model(dataclasses.replace(cfg, stand_in_neighbours=2))
    model2.candidate_embedding(new, text)                     # builds the layers
    table = tf.math.l2_normalize(model2.text_table[:model2.num_items], axis=-1).numpy()
    cosine = table @ table[3]
    order = np.argsort(-cosine)[:2]
    weights = np.maximum(cosine[order], 0) / np.maximum(cosine[order], 0).sum()
    rows = model2.item_embedding.embeddings.numpy()
    stand_in = model2.neighbour_stand_in(model2.item_text_embedding(tf.constant([3])), tf.constant([True]),
                                         tf.zeros([1, 8])).numpy()
    np.testing.assert_allclose(stand_in[0], weights @ rows[order], atol=1e-5)
    # A row that is not needed, or has no text (an unknown history item), keeps the fallback.
    fallback = tf.ones([2, 8])
    kept = model2.neighbour_stand_in(tf.concat([text[:1], tf.zeros_like(text[:1])], 0), tf.constant([False, True]),
                                     fallback).numpy()
    np.testing.assert_array_equal(kept, np.ones([2, 8]))
    with pytest.raises(ValueError, match="stand_in_neighbours=-1"):
        ModelConfig(stand_in_neighbours=-1)


def test_index_vectors_scale_items_without_interactions_but_not_new_ones():
    """`unseen_item_scale`: a catalogue item that never had an interaction needs a better text match to rank
    (its vector is scaled); an item added after training (`new_items`, as refresh-catalogue adds them) is not."""
    from trainer.train import candidate_vectors, catalogue_index

    # new_item_scale 1: new items' own scale is the next test's.
    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, unseen_item_scale=0.25,
                      new_item_scale=1.0)
    model = _tiny_model(cfg, num_items=3, text_dim=6)
    vocab, catalogue = ["a", "b", "c"], ["a", "idle", "b", "new", "c"]
    index = catalogue_index(vocab, catalogue)
    text = np.random.default_rng(1).normal(size=[5, 6]).astype(np.float32)
    full = model.candidate_embedding(tf.constant(index), tf.constant(text)).numpy()
    vectors = candidate_vectors(model, index, text, new_items=np.array([c == "new" for c in catalogue]))[:, :-1]
    np.testing.assert_allclose(vectors[[0, 2, 3, 4]], full[[0, 2, 3, 4]], atol=1e-6)
    np.testing.assert_allclose(vectors[1], 0.25 * full[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1, 0.25, 1, 1, 1], atol=1e-5)
    # Without `new_items` (the pipeline's export: every catalogue item was there when it trained) both scale.
    np.testing.assert_allclose(np.linalg.norm(candidate_vectors(model, index, text)[:, :-1], axis=1),
                               [1, 0.25, 1, 0.25, 1], atol=1e-5)
    with pytest.raises(ValueError, match="unseen_item_scale=1.5: must be in"):
        ModelConfig(unseen_item_scale=1.5)


def test_a_new_item_s_query_match_is_shrunk_by_new_item_scale_and_its_prior_is_not():
    """`new_item_scale`: a new item's served vector is its tower vector times the scale, the prior column as it
    was, in the export's `served_candidate` (what refresh-catalogue adds) as in the index; known items and
    catalogue items without interactions (`unseen_item_scale`) are untouched."""
    from trainer.train import candidate_vectors, catalogue_index

    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, unseen_item_scale=0.25,
                      popularity_prior=0.5, new_item_text_popularity=1.0, new_item_scale=1.0)
    vocab, catalogue = ["0", "1", "2"], ["0", "idle", "1", "new", "2"]
    index = catalogue_index(vocab, catalogue)
    text = np.random.default_rng(1).normal(size=[5, 6]).astype(np.float32)
    new_items = np.array([c == "new" for c in catalogue])
    model = _tiny_model(cfg, num_items=3, text_dim=6)
    before = candidate_vectors(model, index, text, new_items=new_items)
    model.cfg = dataclasses.replace(cfg, new_item_scale=0.6)          # a serving setting: the same weights
    after = candidate_vectors(model, index, text, new_items=new_items)
    np.testing.assert_allclose(after[3, :-1], 0.6 * before[3, :-1], atol=1e-6)
    np.testing.assert_allclose(after[[0, 1, 2, 4]], before[[0, 1, 2, 4]], atol=1e-6)
    np.testing.assert_allclose(after[:, -1], before[:, -1], atol=1e-6)
    assert abs(after[3, -1]) > 1e-4                       # the new item's text-read prior, kept at full weight
    served = model.served_candidate(tf.constant([3]), tf.constant(text[3:4])).numpy()
    np.testing.assert_allclose(served[0], after[3], atol=1e-6)
    with pytest.raises(ValueError, match="new_item_scale=-0.5: must be at least 0"):
        ModelConfig(new_item_scale=-0.5)


def test_training_logs_the_retrieval_and_content_to_id_losses_apart():
    """The content-to-id map's squared error grows with the id embeddings it predicts, so on real data the summed
    `loss` can rise while the ranking loss falls (ml-latest-small, 1.5M synthetic); the logs (and TensorBoard)
    show the parts."""
    from trainer.train import train_model

    class EpochLogs(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(dict(logs))

    rng = np.random.default_rng(2)
    users = rng.integers(0, 5, size=1024)
    items = np.where(users < 3, rng.integers(0, 4, size=1024), rng.integers(4, 8, size=1024))
    train = {contract.USER_INDEX: users, contract.ITEM_INDEX: items,
             contract.HISTORY_INDEX: -np.ones([1024, contract.HISTORY_LENGTH], np.int64)}
    text_table = np.vstack([rng.normal(size=[8, 4]), np.zeros([1, 4])]).astype(np.float32)
    runs = {}
    for id_from_text in (True, False):
        cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=64, epochs=4,
                          learning_rate=0.05, id_from_text=id_from_text, average_last_epochs=1)
        logs = EpochLogs()
        model = train_model(cfg, train, num_users=5, num_items=8, text_table=text_table, verbose=0,
                            callbacks=[logs])
        for epoch in logs.epochs:
            parts = epoch["retrieval_loss"] + epoch.get("text_to_id_loss", 0.0)
            assert epoch["loss"] == pytest.approx(parts, rel=1e-4)
            assert ("text_to_id_loss" in epoch) == id_from_text
        runs[id_from_text] = logs.epochs
        assert logs.epochs[-1]["retrieval_loss"] < logs.epochs[0]["retrieval_loss"]
        batch = {name: tf.constant(values[:64]) for name, values in train.items()}
        losses = model.compute_losses(batch)
        assert float(model.compute_loss(batch)) == pytest.approx(float(tf.add_n(list(losses.values()))), rel=1e-6)
    assert runs[True][0]["retrieval_loss"] != runs[False][0]["retrieval_loss"]   # both runs trained, differently


def test_served_weights_are_the_mean_of_the_last_epoch_ends():
    """`average_last_epochs=2` of 3 epochs: the trained model holds the mean of the weights at the end of epochs 2
    and 3, not the last epoch's; with 1 it keeps the last epoch's. 0 is rejected, naming the field."""
    from trainer.train import train_model

    class EpochEnds(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights_at = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights_at.append([v.numpy().copy() for v in self.model.trainable_weights])

    rng = np.random.default_rng(0)
    users = rng.integers(0, 5, size=256)
    train = {contract.USER_INDEX: users, contract.ITEM_INDEX: (users + rng.integers(0, 2, size=256)) % 8,
             contract.HISTORY_INDEX: -np.ones([256, contract.HISTORY_LENGTH], np.int64)}
    trained = {}
    for last in (1, 2):
        cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=32, epochs=3,
                          learning_rate=0.05, average_last_epochs=last)
        epoch_ends = EpochEnds()
        model = train_model(cfg, train, num_users=5, num_items=8, text_table=np.zeros([9, 4], np.float32),
                            verbose=0, callbacks=[epoch_ends])
        trained[last] = [v.numpy() for v in model.trainable_weights]
        epoch2, epoch3 = epoch_ends.weights_at[1], epoch_ends.weights_at[2]
        expected = epoch3 if last == 1 else [(a + b) / 2 for a, b in zip(epoch2, epoch3)]
        for served, want in zip(trained[last], expected):
            np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)
    # Same seed, same trajectory: the average moved the weights away from the last epoch's.
    assert max(np.abs(a - b).max() for a, b in zip(trained[1], trained[2])) > 1e-3
    with pytest.raises(ValueError, match="average_last_epochs=0: must be at least 1"):
        ModelConfig(average_last_epochs=0)


def test_large_data_trains_fewer_epochs_within_max_training_examples():
    """`epochs` passes over small data; over data whose `epochs` passes would show the model more than
    `max_training_examples` examples, as many whole passes as fit (at least 1). Explicit steps ignore the bound;
    a negative bound is rejected, naming the field."""
    from trainer.train import epochs_for, train_model

    assert epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 90_000) == 6
    assert epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 1_133_341) == 3
    assert epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 3_800_000) == 1
    assert epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 5_000_000) == 1
    assert epochs_for(ModelConfig(epochs=6, max_training_examples=0), 5_000_000) == 6

    rng = np.random.default_rng(0)
    users = rng.integers(0, 5, size=256)
    train = {contract.USER_INDEX: users, contract.ITEM_INDEX: (users + rng.integers(0, 2, size=256)) % 8,
             contract.HISTORY_INDEX: -np.ones([256, contract.HISTORY_LENGTH], np.int64)}
    trained = {}
    for bound, steps in ((0, 0), (600, 0), (600, 24)):
        cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=32, epochs=3,
                          max_training_examples=bound)
        model = train_model(cfg, train, num_users=5, num_items=8, text_table=np.zeros([9, 4], np.float32),
                            steps=steps, verbose=0)
        trained[bound, steps] = (model.history.params["epochs"], model.history.params["steps"])
    assert trained == {(0, 0): (3, 8), (600, 0): (2, 8), (600, 24): (3, 8)}
    with pytest.raises(ValueError, match="max_training_examples=-1: must be at least 0"):
        ModelConfig(max_training_examples=-1)


def test_training_histories_hide_up_to_target_horizon_minus_one_of_their_most_recent_items():
    """`target_horizon=3`: in training each history loses its d most recent items, d drawn uniformly from 0-2 per
    example (the rest of the row kept in place); evaluation and serving see the whole history; 0 is rejected."""
    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, target_horizon=3,
                      user_id_dropout=0.0)
    model = _tiny_model(cfg)
    rows = np.array([[5, 6, 7, -1, -1], [4, -1, -1, -1, -1], [-1, -1, -1, -1, -1]], np.int64)
    history = np.tile(rows, [2000, 1])
    hidden = model.hide_recent_items(tf.constant(history)).numpy()
    kept = (hidden >= 0).sum(axis=1)
    assert np.all(hidden[kept[:, None] > np.arange(5)] == history[kept[:, None] > np.arange(5)])  # a prefix
    assert np.all(hidden[kept[:, None] <= np.arange(5)] == -1)
    three, one, empty = kept[0::3], kept[1::3], kept[2::3]
    np.testing.assert_allclose(np.bincount(3 - three, minlength=3) / 2000, [1 / 3] * 3, atol=0.05)
    np.testing.assert_allclose(np.mean(one == 0), 2 / 3, atol=0.05)   # d = 1 or 2 empties a 1-item history
    assert np.all(empty == 0)
    # Only the training loss hides items: with no other training-time randomness it differs from the eval loss.
    batch = {contract.USER_INDEX: tf.constant([0, 1, 2]), contract.ITEM_INDEX: tf.constant([1, 2, 3]),
             contract.HISTORY_INDEX: tf.constant(rows)}
    eval_loss = float(model.compute_loss(batch, training=False))
    assert float(model.compute_loss(batch, training=False)) == eval_loss
    assert any(abs(float(model.compute_loss(batch, training=True)) - eval_loss) > 1e-6 for _ in range(10))
    plain = _tiny_model(dataclasses.replace(cfg, target_horizon=1))
    assert float(plain.compute_loss(batch, training=True)) == pytest.approx(float(plain.compute_loss(batch)))
    with pytest.raises(ValueError, match="target_horizon=0: must be at least 1"):
        ModelConfig(target_horizon=0)


@pytest.mark.slow
@pytest.mark.parametrize("sampled_negatives", [0, 16])
def test_training_learns_user_item_affinity(sampled_negatives):
    """Users 0-2 only ever see items 0-3, users 3-4 items 4-7: after training each group scores its own items higher
    (also with uniformly sampled extra negatives, `sampled_negatives`)."""
    from trainer.train import train_model

    rng = np.random.default_rng(1)
    users = rng.integers(0, 5, size=2000)
    items = np.where(users < 3, rng.integers(0, 4, size=2000), rng.integers(4, 8, size=2000))
    train = {contract.USER_INDEX: users, contract.ITEM_INDEX: items,
             contract.HISTORY_INDEX: -np.ones([2000, contract.HISTORY_LENGTH], np.int64)}
    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=64, epochs=3,
                      id_dropout=0.0, user_id_dropout=0.0, learning_rate=0.02, sampled_negatives=sampled_negatives)
    text_table = np.zeros([9, 4], np.float32)
    model = train_model(cfg, train, num_users=5, num_items=8, text_table=text_table, verbose=0)
    q = model.query_embedding(tf.constant([0, 4]), -tf.ones([2, 1], tf.int64)).numpy()
    c = model.candidate_embedding(tf.range(8), model.item_text_embedding(tf.range(8))).numpy()
    scores = q @ c.T
    assert scores[0, :4].mean() > scores[0, 4:].mean() + 0.2
    assert scores[1, 4:].mean() > scores[1, :4].mean() + 0.2


def test_text_pca_keeps_raw_and_table_text_paths_consistent():
    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, text_pca_dim=3)
    rng = np.random.default_rng(0)
    raw = np.vstack([rng.normal(size=[8, 6]), np.zeros([1, 6])]).astype(np.float32)
    model = TwoTowerModel(cfg, 5, 8, raw, item_counts=np.arange(1, 9))
    assert tuple(model.text_table.shape) == (9, 3)
    # The serving path (raw encoder output) and the training path (reduced table row) agree.
    from_raw = model.candidate_embedding(tf.constant([2, 8]), tf.constant(raw[[2, 8]])).numpy()
    from_table = model.candidate_embedding(tf.constant([2, 8]), model.item_text_embedding(tf.constant([2, 8]))).numpy()
    np.testing.assert_allclose(from_raw, from_table, atol=1e-5)


def _encoder_training_run(tiny_encoder, train_encoder: bool):
    from trainer.item_text import ItemTextEncoder
    from trainer.train import train_model

    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=8, epochs=1,
                      train_encoder=train_encoder, text_seq_length=16, learning_rate=0.05)
    encoder = ItemTextEncoder(*tiny_encoder, seq_length=16, trainable=train_encoder)
    texts = ["space galaxy voyage", "cowboy stagecoach", "love wedding", "haunted scream", ""]
    table = encoder(tf.constant(texts)).numpy()
    before = [v.numpy().copy() for v in encoder.encoder.weights]
    rng = np.random.default_rng(3)
    train = {contract.USER_INDEX: rng.integers(0, 3, 32), contract.ITEM_INDEX: rng.integers(0, 4, 32),
             contract.HISTORY_INDEX: -np.ones([32, contract.HISTORY_LENGTH], np.int64)}
    train_model(cfg, train, num_users=3, num_items=4, text_table=table, steps=3, verbose=0,
                text_encoder=encoder, item_texts=texts)
    return max(float(np.abs(a - b.numpy()).max()) for a, b in zip(before, encoder.encoder.weights))


@pytest.mark.slow
def test_encoder_is_frozen_by_default_and_fine_tuned_on_request(tiny_encoder):
    assert _encoder_training_run(tiny_encoder, train_encoder=False) == 0.0
    assert _encoder_training_run(tiny_encoder, train_encoder=True) > 0.0


def test_model_loss_is_tfrs_retrieval_on_its_own_embeddings():
    """compute_loss hands the config's temperature, the items' sampling probabilities (logQ) and their ids
    (accidental hits) to the loss: the same number as `tfrs.tasks.Retrieval` on the model's embeddings."""
    import tensorflow_recommenders as tfrs

    model = _tiny_model()
    rng = np.random.default_rng(3)
    inputs = {contract.USER_INDEX: tf.constant(rng.integers(0, 5, size=16)),
              contract.ITEM_INDEX: tf.constant(rng.integers(0, 8, size=16)),     # 16 rows, 8 items: repeats
              contract.HISTORY_INDEX: tf.constant(rng.integers(-1, 8, size=[16, 4]))}
    item_index = inputs[contract.ITEM_INDEX]
    query = model.query_embedding(inputs[contract.USER_INDEX], inputs[contract.HISTORY_INDEX])
    candidate = model.candidate_embedding(item_index, model.item_text_embedding(item_index))
    task = tfrs.tasks.Retrieval(temperature=model.cfg.temperature, remove_accidental_hits=True)
    expected = task(query, candidate, candidate_ids=item_index, compute_metrics=False,
                    candidate_sampling_probability=tf.exp(tf.gather(model.item_log_probability, item_index)))
    # plus, with the default `id_from_text`, the content-to-id map's error on the batch's known items
    assert model.cfg.id_from_text
    stand_in = model.text_to_id(model.text_for_id(model.item_text_embedding(item_index)))
    expected += tf.reduce_sum(tf.square(stand_in - model.item_embedding(item_index)))
    np.testing.assert_allclose(model.compute_loss(inputs).numpy(), expected.numpy(), rtol=1e-5)


def test_a_new_item_s_popularity_prior_is_read_from_its_text():
    """`new_item_text_popularity`: a new item's assumed log(1 + n) moves from the quantile by that weight times a
    ridge regression of the known items' log(1 + n) on their text, so a title like the popular items' starts
    higher; known items keep their counts, and the served candidate carries the same prior."""
    from trainer.popularity import popularity_from_text
    from trainer.train import candidate_vectors, catalogue_index

    rng = np.random.default_rng(0)
    # Text dimension 0 carries popularity: items 0-19 are popular (n = 50), 20-39 rare (n = 1).
    text = rng.normal(scale=0.1, size=[41, 6]).astype(np.float32)
    text[:20, 0] += 1.0
    text[40] = 0.0                              # the OOV row
    counts = np.array([50] * 20 + [1] * 20)
    mean, coef = popularity_from_text(text[:40], counts, chunk_rows=7)   # chunked sums = one pass
    fitted = np.log1p(counts).mean() + (text[:40] - mean) @ coef
    assert np.corrcoef(fitted, np.log1p(counts))[0, 1] > 0.9
    np.testing.assert_allclose(mean, text[:40].mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="needs at least 2 items with interactions, got 1"):
        popularity_from_text(text[:3], np.array([5, 0, 0]))

    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), popularity_prior=0.5,
                      new_item_popularity=0.5, new_item_text_popularity=2.0, text_pca_dim=0)
    model = TwoTowerModel(cfg, 5, 40, text, item_counts=counts)
    vocab = [str(i) for i in range(40)]
    new_text = np.array([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], text[3]], np.float32)
    vectors = candidate_vectors(model, catalogue_index(vocab, ["popular-like", "rare-like", "3"]), new_text,
                                new_items=np.array([True, True, False]))
    expected_new = 0.5 * 2.0 * (new_text[:2] - mean) @ coef
    np.testing.assert_allclose(vectors[:2, -1], expected_new, atol=1e-5)
    assert vectors[0, -1] > 0 > vectors[1, -1]                  # popular-looking text above, rare-looking below
    np.testing.assert_allclose(vectors[2, -1], 0.5 * (np.log1p(50) - np.log1p(np.median(counts))), atol=1e-6)
    # 0 (the default) reads no text: every new item gets the quantile's prior, 0.
    flat = TwoTowerModel(dataclasses.replace(cfg, new_item_text_popularity=0.0), 5, 40, text, item_counts=counts)
    assert np.all(candidate_vectors(flat, catalogue_index(vocab, ["a", "b"]), new_text[:2],
                                    new_items=np.array([True, True]))[:, -1] == 0.0)


def test_served_scores_add_a_popularity_prior_that_ranks_new_items_as_popular_ones():
    """`popularity_prior`: the served score is the towers' dot product plus prior * (log(1 + n) - log(1 + n_new)),
    n the item's training interactions, n_new the `new_item_popularity` quantile of them; a new item gets 0, a
    catalogue item that never had an interaction the prior of n = 0. One extra dimension, so the index is unchanged."""
    from trainer.train import candidate_vectors, catalogue_index

    cfg = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, popularity_prior=0.5,
                      new_item_popularity=0.5, new_item_text_popularity=0.0)   # text: the test below
    model = TwoTowerModel(cfg, 5, 3, np.eye(4, 6, dtype=np.float32), item_counts=np.array([1, 3, 99]))
    vocab, catalogue = ["a", "b", "c"], ["a", "idle", "b", "new", "c"]
    text = np.random.default_rng(1).normal(size=[5, 6]).astype(np.float32)
    vectors = candidate_vectors(model, catalogue_index(vocab, catalogue), text,
                                new_items=np.array([c == "new" for c in catalogue]))
    assert vectors.shape == (5, cfg.embedding_dim + 1)
    median = np.log1p(3.0)   # the 0.5 quantile of the counts 1, 3, 99
    np.testing.assert_allclose(vectors[:, -1], 0.5 * (np.log1p([1.0, 0.0, 3.0, 3.0, 99.0]) - median), atol=1e-6)
    assert vectors[3, -1] == 0.0   # the new item ranks as an item with the median count would
    query = model.served_query(tf.constant([1]), tf.constant([[0, 2, -1]])).numpy()
    np.testing.assert_allclose(query[0, -1], 1.0)
    tower_scores = model.query_embedding(tf.constant([1]), tf.constant([[0, 2, -1]])).numpy() @ vectors[:, :-1].T
    np.testing.assert_allclose(query @ vectors.T, tower_scores + vectors[:, -1], atol=1e-6)
    # 0 switches the prior off: the served score is the towers' dot product.
    off = TwoTowerModel(dataclasses.replace(cfg, popularity_prior=0.0), 5, 3, np.eye(4, 6, dtype=np.float32),
                        item_counts=np.array([1, 3, 99]))
    assert np.all(candidate_vectors(off, catalogue_index(vocab, catalogue), text)[:, -1] == 0.0)
    for bad, message in ((dict(popularity_prior=-0.1), "popularity_prior=-0.1: must be at least 0"),
                         (dict(new_item_popularity=1.5), "new_item_popularity=1.5: must be a quantile in"),
                         (dict(new_item_text_popularity=-1.0), "new_item_text_popularity=-1.0: must be at least 0")):
        with pytest.raises(ValueError, match=message):
            ModelConfig(**bad)
