"""The quality benchmark: baselines on hand-made cases, its splits' leakage, and a tiny end-to-end run."""
import argparse
import json
import os

import numpy as np
import pandas as pd
import pytest

from benchmarks import quality
from benchmarks.baselines import EASE, MostPopular, interaction_matrix
from data import prepare
from schema import contract
from trainer.model_config import ModelConfig
from trainer.metrics import retrieval_metrics, top_k_excluding


def test_most_popular_counts_each_user_once():
    X = interaction_matrix([0, 0, 1, 2, 2, 2], [1, 1, 1, 0, 1, 2], num_users=3, num_items=4)
    scores = MostPopular().fit(X).scores(np.arange(2))
    np.testing.assert_array_equal(scores, [[1, 3, 1, 0]] * 2)


def test_ease_matches_closed_form_and_recommends_co_occurring_items():
    # Items 0 and 1 always come together; item 2 goes with 3.
    X = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], np.float32)
    lam = 0.5
    model = EASE(lam).fit(X)
    P = np.linalg.inv(X.T @ X + lam * np.eye(4))
    expected = np.eye(4) - P / np.diag(P)[None, :]
    np.testing.assert_allclose(model.B, expected, atol=1e-5)
    assert np.all(np.diag(model.B) == 0)
    # A new user with only item 0 gets item 1 first; one with item 3 gets item 2 first.
    scores = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32) @ model.B
    assert scores[0].argmax() == 1 and scores[1].argmax() == 2


def test_tft_vocabulary_order():
    ids = pd.Series(["b", "a", "c", "a", "c", "d"])
    # Frequency desc; ties by id desc (c before a; d before b).
    assert quality.tft_vocabulary(ids) == ["c", "a", "d", "b"]


def test_benchmark_splits_do_not_leak(tiny_data):
    interactions, items = quality.load_data(tiny_data, "contract")
    splits = quality.make_splits(interactions, items, cold_fraction=0.1, seed=0)
    cold = set(splits.cold_items)
    assert cold and not cold & set(splits.cold_train[contract.ITEM_ID])
    assert len(splits.train) + len(splits.test) == len(interactions)
    # No test interaction is earlier than any of the same user's train interactions.
    last_train = splits.train.groupby(contract.USER_ID)[contract.TIMESTAMP].max()
    first_test = splits.test.groupby(contract.USER_ID)[contract.TIMESTAMP].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    # Same for the validation split inside train.
    last_fit = splits.fit.groupby(contract.USER_ID)[contract.TIMESTAMP].max()
    first_val = splits.validation.groupby(contract.USER_ID)[contract.TIMESTAMP].min()
    assert (first_val >= last_fit.reindex(first_val.index)).all()
    assert set(map(tuple, splits.validation.to_numpy())) <= set(map(tuple, splits.train.to_numpy()))
    # Queries: history = last train items only; exclusions = the user's train items.
    column = {i: n for n, i in enumerate(items[contract.ITEM_ID])}
    queries = quality.make_queries(splits.cold_train, splits.test, column, {"all": lambda d: d},
                                   exclude_from=splits.train)
    for user, history in zip(queries.users, queries.history):
        assert not set(history) & cold
        assert set(history) <= set(splits.train[splits.train[contract.USER_ID] == user][contract.ITEM_ID])


def test_leak_free_tags_keep_only_what_their_author_wrote_before_validation_and_test():
    fit = pd.DataFrame({contract.USER_ID: ["u1", "u1", "u2"], contract.ITEM_ID: ["m10", "m11", "m10"],
                        contract.TIMESTAMP: [100, 200, 50]})
    items = pd.DataFrame({contract.ITEM_ID: ["m10", "m11", "m12"], contract.TITLE: ["A", "B", "C"],
                          contract.CATEGORIES: ["", "", ""], contract.DESCRIPTION: ["", "", ""]})
    tags = pd.DataFrame({"userId": [1, 1, 2, 3, 1], "movieId": [10, 11, 10, 11, 12],
                         "tag": ["early", "at the cut", "after u2's fit", "no fit rows", "cold item"],
                         "timestamp": [150, 200, 60, 1, 10]})
    out = quality.with_leak_free_tags(items, tags, fit, cold_items=["m12"])
    assert dict(zip(out[contract.ITEM_ID], out[contract.DESCRIPTION])) == {
        "m10": "early", "m11": "at the cut", "m12": ""}
    assert list(items[contract.DESCRIPTION]) == ["", "", ""]      # the input is not changed


def test_an_ensemble_variant_scores_the_mean_of_its_members_trained_with_their_own_seeds(monkeypatch):
    """`ENSEMBLES`: the benchmark-only "n models averaged" variant trains n members, seeds cfg.seed + i * stride,
    and scores the mean of their scores; any other model is trained once."""
    trained = []

    def fake_two_tower_scores(cfg, data, catalogue_ids, text_vectors, verbose=2, new_items=None):
        trained.append(cfg.seed)
        return np.full([2, 3], float(cfg.seed)), None, 1.5

    monkeypatch.setattr(quality, "two_tower_scores", fake_two_tower_scores)
    name = "TwoTower-BERT-2-seed-ensemble"
    scores, seconds = quality.learned_scores(name, ModelConfig(seed=7), None, [], np.zeros([3, 4]))
    stride = quality.ENSEMBLE_SEED_STRIDE
    assert trained == [7, 7 + stride] and seconds == 3.0
    np.testing.assert_allclose(scores, np.full([2, 3], (7 + 7 + stride) / 2))
    trained.clear()
    scores, seconds = quality.learned_scores(quality.DEFAULT_MODEL, ModelConfig(seed=7), None, [], np.zeros([3, 4]))
    assert trained == [7] and seconds == 1.5 and np.all(scores == 7.0)
    assert name in quality.learned_models(ModelConfig(), np.zeros([3, 4]), [name])


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tiny_data, tiny_encoder, tmp_path):
    preprocess, encoder = tiny_encoder
    out = str(tmp_path / "results")
    quality.main(["--data", tiny_data, "--format", "contract", "--out", out, "--quick", "--seeds", "2",
                  "--variants", "TwoTower-BERT-sasrec-tower", "--variant-seeds", "1",
                  "--preprocess", preprocess, "--encoder", encoder])
    for name in ("quality.md", "quality.json", "quality_recall.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    report = json.load(open(os.path.join(out, "quality.json")))
    for slice_name in ("all", "cold", "warm", "mixed"):
        assert set(report["results"][slice_name]) == set(quality.MODELS) | {"TwoTower-BERT-sasrec-tower"}
        assert report["results"][slice_name]["TwoTower-BERT-sasrec-tower"]["seeds"] == 1
        for name, result in report["results"][slice_name].items():
            if name not in quality.MODELS:
                continue
            assert len(result["curve"]) == quality.CURVE_K
            assert 0.0 <= result["recall@10"] <= result["recall@50"] <= result["recall@100"] <= 1.0
            assert result["seeds"] == (1 if name in quality.BASELINES else 2)
            assert len(result["per_seed"]["recall@50"]) == result["seeds"]
    # The paired bootstrap of the default model vs EASE and vs ID-only, with intervals around the difference.
    paired = report["paired_bootstrap"]
    assert set(paired) == {"TwoTower-BERT vs EASE", "TwoTower-BERT vs TwoTower-ID",
                           "TwoTower-BERT vs TwoTower-BERT-sasrec-tower"}
    for by_metric in paired["TwoTower-BERT vs EASE"].values():
        for r in by_metric.values():
            assert r["difference_ci95"][0] <= r["difference"] <= r["difference_ci95"][1]
    table = open(os.path.join(out, "quality.md")).read()
    assert all(model in table for model in quality.MODELS)
    # `mixed` scores every test interaction of the cold scenario: each user with a cold or a warm one.
    users = {s: report["results"][s]["EASE"]["users"] for s in ("cold", "warm", "mixed")}
    assert users["mixed"] >= max(users["cold"], users["warm"]) and users["mixed"] > 0
    assert "mixed" in paired["TwoTower-BERT vs EASE"]
    # ID-only models cannot place items they never saw in training: below the BERT model on the cold slice.
    cold = report["results"]["cold"]
    assert cold["TwoTower-ID"]["users"] > 0
    assert any(name.startswith("text_embeddings_") for name in os.listdir(out))   # cached for reruns


def test_benchmark_config_uses_the_pipeline_override_mechanism(monkeypatch):
    monkeypatch.setenv("TOWER_RECS_MODEL_TEMPERATURE", "0.2")          # as for a tfx CLI run
    args = argparse.Namespace(quick=True, preprocess=None, encoder="enc/", set=["hidden_dims=[8]", "epochs=5"])
    cfg = quality.model_config(args)
    assert (cfg.temperature, cfg.hidden_dims, cfg.epochs, cfg.batch_size, cfg.encoder_handle) == \
        (0.2, (8,), 5, 128, "enc/")                                    # env, --set over --quick, --quick, --encoder
    args.set = ["epochs=five"]
    with pytest.raises(ValueError, match=r"--set epochs='five': expected an int \(ModelConfig.epochs\)"):
        quality.model_config(args)


def test_per_user_metrics_average_to_the_trainer_metrics():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 150)).astype(np.float32)
    relevant = [rng.choice(150, size=rng.integers(0, 6), replace=False) for _ in range(40)]
    exclude = [rng.choice(150, size=5, replace=False) for _ in range(40)]
    queries = quality.Queries(users=[str(i) for i in range(40)], history=[[]] * 40, exclude=exclude,
                              relevant={"all": relevant})
    result = quality.evaluate(scores, queries, "all")
    expected = retrieval_metrics(top_k_excluding(scores, exclude, quality.CURVE_K), relevant, ks=quality.KS)
    assert result["users"] == expected["users"] == sum(len(r) > 0 for r in relevant)
    for metric in quality.METRICS:
        assert result[metric] == pytest.approx(expected[metric])
        assert result["per_user"][metric].mean() == pytest.approx(expected[metric])


def test_paired_bootstrap_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(1)
    base = rng.uniform(size=600)
    better = quality.paired_bootstrap(base + 0.05 + rng.normal(0, 0.02, 600), base)
    assert better["difference"] == pytest.approx(0.05, abs=0.005) and better["difference_ci95"][0] > 0
    noise = quality.paired_bootstrap(base + rng.normal(0, 0.3, 600), base)
    assert noise["difference_ci95"][0] < 0 < noise["difference_ci95"][1]
    mean, half = quality.mean_ci([0.25, 0.26, 0.24, 0.25, 0.25])
    assert mean == pytest.approx(0.25) and 0.005 < half < 0.02   # t(4) = 2.78 x 0.0071 / sqrt(5)


def _poison_test_rows(interactions: pd.DataFrame) -> pd.DataFrame:
    """The same interactions with every test-split row's item replaced by an id in no catalogue.

    The split is by user and time only, so train/fit/validation are unchanged; anything that reads a
    test row crashes (an unknown catalogue column) or changes (vocabularies, counts)."""
    ordered = prepare._chrono_order(interactions)
    _, test = prepare.chronological_split(interactions)
    keys = set(zip(test[contract.USER_ID], test[contract.TIMESTAMP], test[contract.ITEM_ID]))
    poisoned = interactions.copy()
    hit = [k in keys for k in zip(poisoned[contract.USER_ID], poisoned[contract.TIMESTAMP],
                                  poisoned[contract.ITEM_ID])]
    poisoned.loc[hit, contract.ITEM_ID] = [f"poison-{i}" for i in range(sum(hit))]
    assert sum(hit) == len(test) and len(ordered) == len(poisoned)
    return poisoned


@pytest.mark.slow
def test_tuning_never_reads_the_test_split(tiny_data, tiny_encoder, tmp_path, monkeypatch):
    preprocess, encoder = tiny_encoder
    interactions, items = quality.load_data(tiny_data, "contract")
    poisoned = _poison_test_rows(interactions)
    outputs = {}
    for name, frame in (("clean", interactions), ("poisoned", poisoned)):
        monkeypatch.setattr(quality, "load_data", lambda *a, frame=frame, **k: (frame, items))
        out = str(tmp_path / name)
        quality.main(["--data", tiny_data, "--format", "contract", "--out", out, "--cache-dir", str(tmp_path),
                      "--quick", "--preprocess", preprocess, "--encoder", encoder, "--tune", "--tune-cold",
                      "--grid", "temperature", "0.1", "0.2"])
        outputs[name] = json.load(open(os.path.join(out, "tuning", "temperature.json")))
        assert os.path.exists(os.path.join(out, "tuning", "README.md"))
    clean, dirty = outputs["clean"], outputs["poisoned"]
    assert [r["value"] for r in clean["runs"]] == [0.1, 0.2] and clean["chosen"] in (0.1, 0.2)
    assert clean["protocol"]["fit_interactions"] > 0 and clean["runs"][0]["cold_validation"]["cold"]["users"] > 0
    for a, b in zip(clean["runs"], dirty["runs"]):
        assert a["curve"] == b["curve"] and a["cold_validation"] == b["cold_validation"]
    # The poison is live: the test-set benchmark does read those rows and fails on them.
    with pytest.raises(KeyError, match="poison-"):
        quality.main(["--data", tiny_data, "--format", "contract", "--out", str(tmp_path / "bench"),
                      "--cache-dir", str(tmp_path), "--quick", "--seeds", "1",
                      "--preprocess", preprocess, "--encoder", encoder])


def test_a_field_that_only_moves_new_items_is_chosen_on_the_cold_and_warm_slices():
    """`new_item_popularity` leaves the all-items validation metrics unchanged: `choose` then takes the best warm
    R@50 among the values whose cold R@100 reaches `COLD_OVER_WARM` of the warm one, and None when none does."""
    def run(value, warm_r50, cold_r100, warm_r100, all_r50=0.3):
        return {"value": value, "final": {"recall@50": all_r50, "ndcg@10": 0.1},
                "cold_validation": {"cold": {"recall@100": cold_r100}, "warm": {"recall@50": warm_r50,
                                                                               "recall@100": warm_r100}}}

    runs = [run(0.5, 0.33, 0.05, 0.45), run(0.9, 0.31, 0.19, 0.42), run(0.95, 0.29, 0.24, 0.40)]
    assert quality.choose("new_item_popularity", runs) == 0.95   # 0.9 has the better warm R@50 but 0.45x cold
    runs[1]["cold_validation"]["cold"]["recall@100"] = 0.21     # now 0.9 clears 0.5x too, with the better warm
    assert quality.choose("new_item_popularity", runs) == 0.9
    assert quality.choose("new_item_popularity", [run(0.5, 0.33, 0.05, 0.45), run(0.75, 0.32, 0.1, 0.44)]) is None
    # Different all-items metrics: the usual rule (best R@50), whatever the slices say.
    assert quality.choose("popularity_prior", [run(0.0, 0.28, 0.22, 0.39, all_r50=0.314),
                                               run(0.08, 0.31, 0.19, 0.42, all_r50=0.322)]) == 0.08
