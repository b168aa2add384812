"""Warm start (trainer/warm_start.py): rows of shared ids carried exactly, new ids fresh, the cold flag, and
the pipeline's wiring (the Trainer's base model is the latest blessed model, from TFX's stock strategy)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from trainer import warm_start
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig

CFG = ModelConfig(embedding_dim=8, id_embedding_dim=8, hidden_dims=(16,), batch_size=4, text_pca_dim=4)
TEXT_DIM = 6


def _model(num_users, num_items, seed, cfg=CFG, text_basis=None):
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    text_table = np.vstack([rng.normal(size=[num_items, TEXT_DIM]), np.zeros([1, TEXT_DIM])]).astype(np.float32)
    model = TwoTowerModel(cfg, num_users, num_items, text_table, item_counts=np.ones(num_items),
                          text_basis=text_basis)
    warm_start.build_variables(model)
    return model


@pytest.fixture
def saved(tmp_path):
    """A 'trained' old model (random weights) saved with its vocabularies, as the Trainer saves it."""
    old = _model(num_users=3, num_items=4, seed=1)
    directory = str(tmp_path / "warm_start")
    warm_start.save_state(old, ["u1", "u2", "u3"], ["a", "b", "c", "d"], directory)
    return old, warm_start.load_state(directory)


def test_shared_ids_keep_their_rows_exactly_and_new_ids_get_fresh_rows(saved):
    old, state = saved
    users, items = ["u3", "u9", "u1"], ["d", "x", "a", "y", "b"]          # reordered, two new items, one new user
    new = _model(num_users=3, num_items=5, seed=2, text_basis=warm_start.text_basis(state))
    fresh_items, fresh_users = new.item_embedding.embeddings.numpy(), new.user_embedding.embeddings.numpy()

    record = warm_start.apply(new, state, users, items)

    old_items, new_items = old.item_embedding.embeddings.numpy(), new.item_embedding.embeddings.numpy()
    for new_row, old_row in ((0, 3), (2, 0), (4, 1)):                     # d, a, b
        np.testing.assert_array_equal(new_items[new_row], old_items[old_row])
    for new_row in (1, 3):                                                # x, y: the new model's own initial rows
        np.testing.assert_array_equal(new_items[new_row], fresh_items[new_row])
        assert not any(np.array_equal(new_items[new_row], row) for row in old_items)
    np.testing.assert_array_equal(new_items[-1], old_items[-1])          # OOV row carried
    old_users, new_users = old.user_embedding.embeddings.numpy(), new.user_embedding.embeddings.numpy()
    np.testing.assert_array_equal(new_users[[0, 2, 3]], old_users[[2, 0, 3]])   # u3, u1, OOV
    np.testing.assert_array_equal(new_users[1], fresh_users[1])          # u9
    # The towers' dense weights and the recency logits are copied; the PCA text basis was kept.
    for a, b in zip(old.query_mlp.weights + old.candidate_mlp.weights + old.text_projection.weights,
                    new.query_mlp.weights + new.candidate_mlp.weights + new.text_projection.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(new.text_basis.numpy(), old.text_basis.numpy())
    assert record == {"warm_started": True, "base_model": state.source, "users_carried": 2, "users_new": 1,
                      "items_carried": 3, "items_new": 2, "weights_copied": len(warm_start.named_variables(new)) - 1,
                      "weights_skipped": [], "text_basis_kept": True}


def test_weights_of_another_shape_are_left_fresh(saved):
    _, state = saved
    new = _model(num_users=3, num_items=4, seed=2, cfg=dataclasses.replace(CFG, hidden_dims=(32,)),
                 text_basis=warm_start.text_basis(state))
    before = new.query_mlp.weights[0].numpy()
    record = warm_start.apply(new, state, ["u1"], ["a"])
    np.testing.assert_array_equal(new.query_mlp.weights[0].numpy(), before)
    assert "query_mlp/0" in record["weights_skipped"] and "candidate_mlp/0" in record["weights_skipped"]


def test_when_a_warm_start_is_refused(saved):
    _, state = saved
    assert warm_start.usable(CFG, state, ["u1"], ["zz"])[0]
    assert warm_start.usable(dataclasses.replace(CFG, warm_start=False), state, ["u1"], ["a"]) == (
        False, "cold start forced (warm_start=False)")
    assert warm_start.usable(CFG, None, ["u1"], ["a"]) == (False, "no base model with a warm-start state")
    assert "id_embedding_dim changed (8 -> 16)" in warm_start.usable(
        dataclasses.replace(CFG, id_embedding_dim=16), state, ["u1"], ["a"])[1]
    assert "shares no user or item id" in warm_start.usable(CFG, state, ["v"], ["zz"])[1]


def test_missing_state_and_cold_flag_from_the_environment(tmp_path):
    from pipeline import overrides

    assert warm_start.load_state(str(tmp_path / "nothing")) is None
    cfg = overrides.from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_WARM_START": "0",
                                                      "TOWER_RECS_MODEL_WARM_START_EPOCHS": "3"})
    assert cfg.warm_start is False and cfg.warm_start_epochs == 3
    warm = warm_start.training_config(ModelConfig(epochs=6, warm_start_epochs=2, warm_start_learning_rate=0.002))
    assert (warm.epochs, warm.learning_rate) == (2, 0.002)
    with pytest.raises(ValueError, match="warm_start_epochs=0"):
        ModelConfig(warm_start_epochs=0)
    with pytest.raises(ValueError, match="warm_start_learning_rate=0"):
        ModelConfig(warm_start_learning_rate=0)


def test_state_lives_beside_the_serving_export_not_in_it():
    assert warm_start.state_dir_of("gs://b/pipeline-root/CatalogTrainer/model/7/Format-Serving") == \
        "gs://b/pipeline-root/CatalogTrainer/model/7/warm_start"


def test_pipeline_trainer_base_model_is_the_latest_blessed_model(tmp_path):
    """One LatestBlessedModelResolver (TFX's stock strategy) feeds the Trainer's `base_model` in both
    baseline modes; on KFP it is also the evaluator's baseline (the same node, not a second one)."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline.pipeline import create_pipeline

    for mode in ("mlmd", "kfp"):
        kwargs = dict(configs.pipeline_kwargs(), pipeline_root=str(tmp_path), baseline_resolution=mode,
                      metadata_connection_config=None)
        pipeline = create_pipeline(**kwargs)
        nodes = {c.id: c for c in pipeline.components}
        resolver = nodes["LatestBlessedModelResolver"]
        assert resolver.exec_properties["resolver_class"] is tfx.dsl.experimental.LatestBlessedModelStrategy
        trainer = nodes["CatalogTrainer"]
        assert trainer.inputs["base_model"].producer_component_id == "LatestBlessedModelResolver"
        assert sum(c.id == "LatestBlessedModelResolver" for c in pipeline.components) == 1
        evaluator_inputs = {key: ch.producer_component_id for key, ch in nodes["RetrievalEvaluator"].inputs.items()}
        assert (evaluator_inputs["blessed_models"] == "LatestBlessedModelResolver") == (mode == "kfp")


@pytest.mark.e2e
@pytest.mark.slow
def test_next_pipeline_run_warm_starts_from_the_blessed_model(tiny_encoder):
    """After the shared good run (tests/gate_pipeline_run.py), the next real pipeline run's Trainer starts from
    the latest blessed model: every id of the unchanged data is carried, none is new."""
    import json
    import os

    import gate_pipeline_run as runs
    from test_gates import _artifacts, _trainer_base_models

    run = runs.good_run(tiny_encoder)
    metadata = os.path.join(run["output"], "metadata", "tower-recs", "metadata.db")
    blessed = [b for b in _artifacts(metadata, "ModelBlessing") if b[2].get("blessed") == 1]
    base_uri = blessed[-1][2]["current_model"]

    proc = runs.run_pipeline(run, TRAIN_STEPS=2)
    assert proc.returncode == 0, proc.stderr[-5000:]

    assert _trainer_base_models(metadata)[-1] == [base_uri]
    with open(os.path.join(_artifacts(metadata, "ModelRun")[-1][1], "warm_start.json")) as f:
        record = json.load(f)
    with open(os.path.join(base_uri, "warm_start", "vocabularies.json")) as f:
        vocabularies = json.load(f)
    assert record["warm_started"] is True and record["base_model"] == os.path.join(base_uri, "warm_start")
    assert (record["users_carried"], record["users_new"]) == (len(vocabularies["users"]), 0)
    assert (record["items_carried"], record["items_new"]) == (len(vocabularies["items"]), 0)
    assert record["weights_skipped"] == []
    assert (record["epochs"], record["learning_rate"]) == (ModelConfig().warm_start_epochs,
                                                           ModelConfig().warm_start_learning_rate)
    assert "Warm start: {" in proc.stderr and "'warm_started': True" in proc.stderr
