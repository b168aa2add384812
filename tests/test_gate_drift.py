"""Five successive 4%-worse models cannot all be blessed: the real RetrievalEvaluator, resolvers over
ML Metadata (SQLite) and Pusher, run five times by LocalDagRunner.

The candidates are SavedModels whose quality is set exactly: an "oracle" serving_default that returns
a user's eval items for the first n eval users and nothing for the rest, so Recall@50 = n / users.
Run i imports the oracle with quality 0.9 * 0.96**i (CsvExampleGen output comes from the cache
after run 0). Compared only with the latest blessed model, each would pass a 5% drop; compared with the
latest pushed and the best recent blessed model, the chain stops at the third.
"""
import json
import os
import time

import numpy as np
import pytest

from pipeline import configs
from pipeline.components.gate_config import EvaluationConfig
from schema import contract

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WIDTH = 100     # >= max(EvaluationConfig.ks)


def save_oracle(path: str, answers: dict, width: int = WIDTH) -> None:
    """A SavedModel at `path` whose serving_default returns `answers[user]` (padded), scores descending."""
    import tensorflow as tf

    class Oracle(tf.Module):
        def __init__(self):
            super().__init__()
            users = sorted(answers)
            rows = [list(answers[u])[:width] + [contract.PAD] * (width - len(answers[u][:width])) for u in users]
            self.rows = tf.constant(np.asarray(rows + [[contract.PAD] * width], dtype=object), tf.string)
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(users, tf.string), tf.range(len(users), dtype=tf.int64)), default_value=len(users))
            self.scores = tf.constant(-np.arange(width, dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string),
                                      tf.TensorSpec([None, None], tf.string), tf.TensorSpec(None, tf.int32)])
        def serve(self, user_id, history, exclude, k):
            ids = tf.gather(self.rows, self.table.lookup(user_id))
            return {contract.OUTPUT_ITEM_IDS: ids,
                    contract.OUTPUT_SCORES: tf.broadcast_to(self.scores, tf.shape(ids))}

    oracle = Oracle()
    tf.saved_model.save(oracle, path, signatures={contract.SERVING_DEFAULT: oracle.serve})


def drift_pipeline(base: str, data_dir: str, model_uri: str, cfg: EvaluationConfig):
    """ExampleGens + Importer(candidate) + the project's baseline resolvers + RetrievalEvaluator + Pusher."""
    from tfx import v1 as tfx

    from pipeline.components.retrieval_evaluator import RetrievalEvaluator
    from pipeline.pipeline import _baseline_resolvers, _interaction_example_gen, _item_example_gen

    interactions = _interaction_example_gen(os.path.join(data_dir, contract.INTERACTIONS_DIR))
    items = _item_example_gen(os.path.join(data_dir, contract.ITEMS_DIR))
    candidate = tfx.dsl.Importer(source_uri=model_uri, artifact_type=tfx.types.standard_artifacts.Model
                                 ).with_id("CandidateImporter")
    resolvers = _baseline_resolvers("mlmd", cfg.baseline_window)
    evaluator = RetrievalEvaluator(model=candidate.outputs["result"], examples=interactions.outputs["examples"],
                                   items=items.outputs["examples"], config=cfg,
                                   **{key: r.outputs["model"] for key, r in resolvers.items()})
    pusher = tfx.components.Pusher(
        model=candidate.outputs["result"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(base, "serving", "tower_recs"))))
    return tfx.dsl.Pipeline(
        pipeline_name="gate-drift", pipeline_root=os.path.join(base, "root"),
        components=[interactions, items, candidate, *resolvers.values(), evaluator, pusher], enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(base, "metadata.db")),
        beam_pipeline_args=configs.BEAM_PIPELINE_ARGS)


def _latest(store, type_name):
    return max(store.get_artifacts_by_type(type_name), key=lambda a: a.id)


def test_five_successive_four_percent_worse_models_cannot_all_be_blessed(tmp_path):
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    from data.prepare import read_contract, write_contract
    from data.sample import generate

    data_dir = str(tmp_path / "data")
    write_contract(*generate(n_users=100, n_items=200, n_interactions=4000, seed=3), data_dir)
    _, evals, _ = read_contract(data_dir)
    relevant = evals.groupby(contract.USER_ID)[contract.ITEM_ID].apply(list)
    # Users whose eval items fit in the top 50 first, so an oracle user's Recall@50 is exactly 1.
    users = sorted(relevant.index, key=lambda u: (len(relevant[u]) > 50, u))
    cfg = EvaluationConfig()     # defaults: 5% drop, window of 5, MostPopular + 25% on ndcg@10

    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(tmp_path / "metadata.db")))
    results = []
    for run in range(5):
        n = int(round(len(users) * 0.9 * 0.96 ** run))
        model_uri = str(tmp_path / f"candidate_{run}")
        save_oracle(os.path.join(model_uri, "Format-Serving"), {u: relevant[u] for u in users[:n]})
        tfx.orchestration.LocalDagRunner().run(drift_pipeline(str(tmp_path), data_dir, model_uri, cfg))
        evaluation = _latest(store, "ModelEvaluation")
        with open(os.path.join(evaluation.uri, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["candidate"]["uri"] == model_uri
        assert metrics["candidate"]["overall"]["recall@50"] == pytest.approx(n / len(users))
        pushed = _latest(store, "PushedModel").custom_properties["pushed"].int_value
        results.append((metrics, pushed))
        # TFX's Pusher names a version by the push time in whole seconds; on an idle machine two cached runs
        # can push within one second and share a directory, which a real (minutes-long) run never does.
        time.sleep(1.1)

    blessed = [m["blessed"] for m, _ in results]
    assert blessed == [True, True, False, False, False], [m["reasons"] for m, _ in results]
    assert [p for _, p in results] == [1, 1, 0, 0, 0]
    assert len(os.listdir(tmp_path / "serving" / "tower_recs")) == 2
    # Run 2 is within 5% of the latest blessed (= pushed) model 1 but not of the best blessed, model 0.
    third = results[2][0]
    baselines = third["baselines"]
    assert baselines["latest_pushed"]["uri"] == str(tmp_path / "candidate_1")
    assert baselines["best_blessed"]["uri"] == str(tmp_path / "candidate_0")
    assert [w["uri"] for w in baselines["blessed_window"]] == [str(tmp_path / f"candidate_{i}") for i in (1, 0)]
    fails = [r for r in third["reasons"] if r.startswith("FAIL")]
    assert len(fails) == 1 and "best of the last 5 blessed models 0.9000" in fails[0], third["reasons"]
    passes = [r for r in third["reasons"] if "latest pushed model" in r]
    assert passes and passes[0].startswith("PASS"), third["reasons"]
    # MostPopular is scored on the same users every run and beaten by the oracle.
    assert all(m["baselines"]["most_popular"]["overall"]["users"] == len(users) for m, _ in results)
