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
