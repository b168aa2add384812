"""The `new_users` slice: data.prepare keeps a seeded fraction of users entirely in eval, and the
RetrievalEvaluator reports their quality."""

import pytest

from data import prepare
from data.sample import generate
from schema import contract


def test_new_users_have_every_row_in_eval_and_none_in_train(tmp_path):
    interactions, items = generate(n_users=100, n_items=200, n_interactions=3000, seed=5)
    summary = prepare.write_contract(interactions, items, str(tmp_path), new_user_fraction=0.1, seed=1)
    train, evals, _ = prepare.read_contract(str(tmp_path))
    new = sorted(set(evals[contract.USER_ID]) - set(train[contract.USER_ID]))
    assert summary["new_users"] == len(new) == 10
    assert len(train) + len(evals) == len(interactions)            # nothing lost
    counts = interactions[contract.USER_ID].value_counts()
    assert all((evals[contract.USER_ID] == u).sum() == counts[u] for u in new)
    # Seeded: the same users again; another seed picks others; 0 disables.
    again = prepare.write_contract(interactions, items, str(tmp_path / "again"), new_user_fraction=0.1, seed=1)
    assert again["new_users"] == 10
    _, evals_again, _ = prepare.read_contract(str(tmp_path / "again"))
    assert evals_again.equals(evals)
    prepare.write_contract(interactions, items, str(tmp_path / "other"), new_user_fraction=0.1, seed=2)
    train2, evals2, _ = prepare.read_contract(str(tmp_path / "other"))
    assert sorted(set(evals2[contract.USER_ID]) - set(train2[contract.USER_ID])) != new
    assert prepare.write_contract(interactions, items, str(tmp_path / "off"), new_user_fraction=0)["new_users"] == 0


def test_new_user_fraction_out_of_range_writes_nothing(tmp_path):
    interactions, items = generate(n_users=20, n_items=50, n_interactions=300, seed=5)
    with pytest.raises(ValueError, match="new_user_fraction"):
        prepare.write_contract(interactions, items, str(tmp_path / "out"), new_user_fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_sample_cli_default_holds_out_five_percent(tmp_path, capsys):
    from data import sample

    assert sample.main(["--out", str(tmp_path), "--users", "60", "--items", "100", "--interactions", "1200"]) == 0
    assert "3 users kept entirely in eval" in capsys.readouterr().out
    train, evals, _ = prepare.read_contract(str(tmp_path))
    assert len(set(evals[contract.USER_ID]) - set(train[contract.USER_ID])) == 3


def test_evaluator_new_users_slice():
    """New users (no train rows: empty history and exclusions) form the `new_users` slice."""
    import numpy as np

    from pipeline.components.retrieval_evaluator import EvalData, compute_metrics

    data = EvalData(users=["old", "new"], histories=[["a"], []], exclude=[["a"], []], relevant=[{"b"}, {"c"}],
                    train_counts=[1, 0], cold_items=set(), catalogue_size=3)
    top = np.asarray([["b", "c"], ["b", "a"]], dtype=object)
    metrics = compute_metrics(top, data, [2])
    assert metrics["slices"]["new_users"] == {"recall@2": 0.0, "ndcg@2": 0.0, "users": 1}
    assert metrics["slices"]["light_users"]["users"] == 1 and metrics["overall"]["recall@2"] == 0.5

