"""The data `make bench-scale` runs on: the daily retrain's spans hold the old data and exactly the new 1%."""
import os

import pandas as pd

from benchmarks import scaling
from data import prepare
from schema import contract


def test_daily_spans_are_the_old_data_then_only_the_new_one_percent(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "WORK_DIR", str(tmp_path))
    monkeypatch.setitem(scaling.SIZES, "tiny", (200, 400, 8_000))
    scaling.make_data("tiny")
    scaling.make_daily_data("tiny")
    old, daily = scaling.data_dir("tiny"), scaling.daily_dir("tiny")
    for split, rel in (("train", prepare.TRAIN_FILE), ("eval", prepare.EVAL_FILE)):
        with open(os.path.join(old, rel)) as a, open(os.path.join(daily, prepare.span_file(1, split))) as b:
            assert a.read() == b.read()
    train2, eval2, items = prepare.read_contract(daily, span=2)
    new = pd.concat([train2, eval2])
    old_rows = pd.concat(prepare.read_contract(old)[:2])
    assert len(new) and new[contract.ITEM_ID].str.startswith("n").all()
    assert new[contract.TIMESTAMP].min() > old_rows[contract.TIMESTAMP].max()
    assert set(new[contract.USER_ID]) <= set(old_rows[contract.USER_ID])      # existing users
    assert set(new[contract.ITEM_ID]) <= set(items[contract.ITEM_ID])
    assert len(items) == 400 + 4                                               # 1% new items
    # History runs over the whole timeline: a new row's history may hold the user's old items.
    assert new[contract.HISTORY].str.split().map(lambda h: any(not i.startswith("n") for i in h)).any()


def test_epochs_at_scale_reads_the_newest_artifacts_and_rejects_a_zero_epoch_count(tmp_path, capsys):
    """`benchmarks.epochs_at_scale` (the evidence for `max_training_examples`) trains on a bench-scale run's newest
    artifacts (the highest execution id), names a missing component output, and refuses `--epochs 0`."""
    import pytest

    from benchmarks import epochs_at_scale

    for execution in ("3", "12", ".system"):
        os.makedirs(tmp_path / "Transform" / "transform_graph" / execution)
    assert epochs_at_scale.latest_artifact(str(tmp_path), "Transform", "transform_graph") == \
        os.path.join(str(tmp_path), "Transform", "transform_graph", "12")
    os.makedirs(tmp_path / "CatalogEmbedder" / "embeddings")
    with pytest.raises(FileNotFoundError, match="No CatalogEmbedder embeddings artifact"):
        epochs_at_scale.latest_artifact(str(tmp_path), "CatalogEmbedder", "embeddings")
    with pytest.raises(SystemExit):
        epochs_at_scale.main(["--pipeline-root", str(tmp_path), "--epochs", "6", "0", "--tag", "t"])
    assert "--epochs must be at least 1, got [6, 0]" in capsys.readouterr().err
