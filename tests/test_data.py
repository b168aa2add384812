"""Tests for the data contract: splits, history, sample generator, MovieLens importer, CLIs."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from data import movielens, prepare, rules, sample
from schema import contract

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_interactions(seed=0, n_users=40, n_items=60, n=1500):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    # Coarse timestamps so that ties are common.
    return pd.DataFrame(
        {
            contract.USER_ID: [f"u{u}" for u in users],
            contract.ITEM_ID: [f"i{i}" for i in rng.integers(0, n_items, n)],
            contract.TIMESTAMP: rng.integers(0, 200, n).astype(np.int64),
            contract.RATING: rng.integers(1, 6, n).astype(float),
        }
    ).drop_duplicates(subset=[contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP], ignore_index=True)


def _items(ids, title="A title"):
    return pd.DataFrame({contract.ITEM_ID: list(ids), contract.TITLE: [f"{title} {i}" for i in ids]})


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def test_chronological_split_no_leakage_and_20_percent():
    df = _random_interactions()
    train, test = prepare.chronological_split(df, 0.2)
    assert len(train) + len(test) == len(df)
    for user, g in df.groupby(contract.USER_ID):
        tr = train[train[contract.USER_ID] == user]
        te = test[test[contract.USER_ID] == user]
        assert len(tr) >= 1
        n = len(g)
        assert len(te) == min(n - 1, max(1, int(np.floor(0.2 * n + 0.5)))) if n > 1 else len(te) == 0
        if len(te):
            assert tr[contract.TIMESTAMP].max() <= te[contract.TIMESTAMP].min()
    assert abs(len(test) / len(df) - 0.2) < 0.02


def test_chronological_split_small_users():
    df = pd.DataFrame(
        {
            contract.USER_ID: ["ua", "ub", "ub", "uc", "uc", "uc", "uc", "uc"],
            contract.ITEM_ID: ["i1", "i1", "i2", "i1", "i2", "i3", "i4", "i5"],
            contract.TIMESTAMP: [5, 2, 1, 10, 9, 8, 7, 6],
        }
    )
    train, test = prepare.chronological_split(df)
    assert "ua" not in set(test[contract.USER_ID])  # single interaction: train only
    assert test[test[contract.USER_ID] == "ub"][contract.ITEM_ID].tolist() == ["i1"]
    assert test[test[contract.USER_ID] == "uc"][contract.ITEM_ID].tolist() == ["i1"]  # latest


def test_validation_split_is_chronological_within_train():
    train, _ = prepare.chronological_split(_random_interactions(1))
    fit, val = prepare.validation_split(train, 0.2)
    assert len(fit) + len(val) == len(train)
    for user, v in val.groupby(contract.USER_ID):
        f = fit[fit[contract.USER_ID] == user]
        assert f[contract.TIMESTAMP].max() <= v[contract.TIMESTAMP].min()


def test_cold_item_split():
    df = _random_interactions(2, n_items=100)
    cat = _items([f"i{i}" for i in range(120)])  # 20 items nobody touched
    warm, cold, cold_ids = prepare.cold_item_split(df, cat, fraction=0.1, seed=0)
    interacted = set(df[contract.ITEM_ID])
    assert len(cold_ids) == round(0.1 * len(interacted))
    assert set(cold_ids) <= interacted
    assert set(cold[contract.ITEM_ID]) == set(cold_ids)
    assert not set(warm[contract.ITEM_ID]) & set(cold_ids)
    assert len(warm) + len(cold) == len(df)
    train, _ = prepare.chronological_split(warm)
    assert not set(train[contract.ITEM_ID]) & set(cold_ids)
    assert prepare.cold_item_split(df, cat, seed=0)[2] == cold_ids
    assert prepare.cold_item_split(df, cat, seed=1)[2] != cold_ids


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------
def test_add_history_hand_example():
    df = pd.DataFrame(
        {
            contract.USER_ID: ["ua", "ua", "ub", "ua", "ua", "ua"],
            contract.ITEM_ID: ["i3", "i1", "i9", "i2", "i4", "i5"],
            contract.TIMESTAMP: [30, 10, 5, 20, 30, 40],
        }
    )
    out = prepare.add_history(df, max_len=3)
    assert out[contract.ITEM_ID].tolist() == df[contract.ITEM_ID].tolist()  # input order kept
    h = dict(zip(out[contract.ITEM_ID], out[contract.HISTORY]))
    assert h["i1"] == ""
    assert h["i2"] == "i1"
    assert h["i3"] == "i1 i2"  # tie with i4: neither sees the other
    assert h["i4"] == "i1 i2"
    assert h["i5"] == "i2 i3 i4"  # capped at 3, most recent last, ties in input order
    assert h["i9"] == ""  # other user


def test_add_history_matches_brute_force():
    df = _random_interactions(3, n=600)
    out = prepare.add_history(df, max_len=contract.HISTORY_LENGTH)
    for k, row in enumerate(out.itertuples(index=False)):
        u, t = getattr(row, contract.USER_ID), getattr(row, contract.TIMESTAMP)
        prev = [
            (pt, j, df[contract.ITEM_ID].iloc[j])
            for j, (pu, pt) in enumerate(zip(df[contract.USER_ID], df[contract.TIMESTAMP]))
            if pu == u and pt < t
        ]
        expected = [it for _, _, it in sorted(prev)][-contract.HISTORY_LENGTH:]
        assert getattr(row, contract.HISTORY) == " ".join(expected), k


# ---------------------------------------------------------------------------------------------
# write_contract / read_contract
# ---------------------------------------------------------------------------------------------
def test_write_and_read_contract_roundtrip(tmp_path):
    df = _random_interactions(4)
    cat = _items([f"i{i}" for i in range(70)])
    cat.loc[0, contract.TITLE] = 'Bird, The "Big" (1999)'
    cat.loc[1, contract.TITLE] = "Café Society"
    summary = prepare.write_contract(df, cat, str(tmp_path))
    assert summary["items_without_interactions"] == 70 - df[contract.ITEM_ID].nunique()
    for rel in (prepare.TRAIN_FILE, prepare.EVAL_FILE, prepare.ITEMS_FILE):
        assert (tmp_path / rel).exists()
    train, ev, items = prepare.read_contract(str(tmp_path))
    assert list(train.columns) == list(contract.INTERACTION_COLUMNS)
    assert list(items.columns) == list(contract.ITEM_COLUMNS)
    assert len(train) + len(ev) == len(df) and len(items) == 70
    assert items[contract.TITLE].iloc[0] == 'Bird, The "Big" (1999)'
    assert items[contract.TITLE].iloc[1] == "Café Society"
    # Plain type inference keeps ids as strings.
    raw = pd.read_csv(tmp_path / prepare.TRAIN_FILE)
    assert raw[contract.USER_ID].dtype == object and raw[contract.ITEM_ID].dtype == object
    assert raw[contract.TIMESTAMP].dtype == np.int64
    # Eval history: strictly earlier items, from train and earlier eval rows.
    for user, te in ev.groupby(contract.USER_ID):
        tr = train[train[contract.USER_ID] == user]
        if tr.empty:    # a new user (new_user_fraction): every row is eval
            continue
        assert tr[contract.TIMESTAMP].max() <= te[contract.TIMESTAMP].min()
    full = prepare.add_history(df)
    merged = pd.concat([train, ev])
    key = [contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP]
    assert sorted(map(tuple, merged[key + [contract.HISTORY]].values.tolist())) == sorted(
        map(tuple, full[key + [contract.HISTORY]].values.tolist())
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i, c: (i.drop(columns=[contract.TIMESTAMP]), c), "missing required column"),
        (lambda i, c: (i, c.drop(columns=[contract.TITLE])), "missing required column"),
        (lambda i, c: (i.assign(timestamp=["10", "x", "30"]), c),
         "interactions: column 'timestamp' is not an integer (expected Unix time in whole seconds) in 1 row(s): "
         "row 1 ('x')"),
        (lambda i, c: (i.assign(timestamp=[10, 20.5, 30]), c), "is not an integer"),
        (lambda i, c: (i.assign(timestamp=[10, -86400, 30]), c),
         f"interactions: column 'timestamp' {rules.TIMESTAMP_OUT_OF_RANGE} in 1 row(s): row 1 (-86400)"),
        (lambda i, c: (i.assign(timestamp=[10, 20, rules.TIMESTAMP_MAX + 1]), c), "row 2 (4102444801)"),
        (lambda i, c: (i.assign(rating=[1.0, 11.0, 2.0]), c), f"column 'rating' {rules.RATING_OUT_OF_RANGE}"),
        (lambda i, c: (i.assign(item_id=["i1", "i2", "i99"]), c),
         "interactions: column 'item_id' is not in the items catalogue (items) in 1 row(s): row 2 ('i99')"),
        (lambda i, c: (i, pd.concat([c, c.iloc[[0]]])),
         "items: duplicated rows: exact copies of an earlier row in 1 row(s): row 3 (same as row 0)"),
        (lambda i, c: (i, pd.concat([c, c.iloc[[0]].assign(title="Other")])),
         "items: duplicated rows: rows that repeat an earlier (item_id) with other values in 1 row(s): row 3 "
         "(same (item_id) as row 0)"),
        (lambda i, c: (i, c.assign(title=["x", "  ", "z"])),
         "items: column 'title' is empty or whitespace-only in 1 row(s): row 1 (item_id 'i2')"),
        (lambda i, c: (i.assign(user_id=["u1", "42", "u3"]), c), "column 'user_id' looks like a number"),
        (lambda i, c: (i.assign(user_id=["u1", "u 2", "u3"]), c), "column 'user_id' contains whitespace"),
        (lambda i, c: (i.assign(user_id=["u1", " ", None]), c),
         "interactions: column 'user_id' is empty or whitespace-only in 2 row(s): row 1 (' '), row 2 ('')"),
        (lambda i, c: (i.assign(item_id=["i1", "", "i3"]), c),
         "interactions: column 'item_id' is empty or whitespace-only in 1 row(s): row 1 ('')"),
        (lambda i, c: (i, c.assign(item_id=["i1", "i2", "\t"])), "items: column 'item_id' is empty or whitespace-only"),
        (lambda i, c: (pd.concat([i, i.iloc[[1]]]), c),
         "interactions: duplicated rows: exact copies of an earlier row in 1 row(s): row 3 (same as row 1); "
         "pass --dedupe to drop them"),
        (lambda i, c: (pd.concat([i.assign(rating=[1.0, 2.0, 3.0]), i.iloc[[1]].assign(rating=5.0)]), c),
         f"interactions: {rules.DUPLICATE_ROWS}: rows that {rules.DUPLICATE_ROWS_DETAIL} with other values in 1 "
         "row(s): row 3 (same (user_id, item_id, timestamp) as row 1)"),
    ],
)
def test_write_contract_errors(tmp_path, mutate, message):
    """Every rule of data/rules.py rejects the DataFrame API's input, naming the table, column and rows."""
    inter = pd.DataFrame(
        {contract.USER_ID: ["u1", "u2", "u3"], contract.ITEM_ID: ["i1", "i2", "i3"], contract.TIMESTAMP: [10, 20, 30]}
    )
    cat = _items(["i1", "i2", "i3"])
    bad_i, bad_c = mutate(inter, cat)
    with pytest.raises(ValueError) as e:
        prepare.write_contract(bad_i, bad_c, str(tmp_path / "out"))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_write_contract_dedupe_drops_only_exact_copies(tmp_path):
    inter = pd.DataFrame({contract.USER_ID: ["u1", "u1", "u2", "u1", "u1"], contract.ITEM_ID: ["i1", "i2", "i1", "i1", "i1"],
                          contract.TIMESTAMP: [10, 20, 30, 10, 10]})
    cat = _items(["i1", "i2"])
    summary = prepare.write_contract(inter, pd.concat([cat, cat.iloc[[1]]]), str(tmp_path), dedupe=True)
    assert summary["duplicates_dropped"] == {"interactions": 2, "items": 1}
    assert summary["train_rows"] + summary["eval_rows"] == 3 and summary["items"] == 2
    assert "dropped exact duplicate rows (--dedupe): 2 interaction(s), 1 item(s)" in prepare.summary_text(summary)
    conflicting = inter.assign(rating=[1.0, 2.0, 3.0, 1.0, 4.0])  # row 4: same event, other rating
    with pytest.raises(ValueError, match=r"with other values in 1 row\(s\): row 4 \(same .* as row 0\)"):
        prepare.write_contract(conflicting, cat, str(tmp_path / "conflict"), dedupe=True)


# ---------------------------------------------------------------------------------------------
# data.prepare CLI on users' files: every rejection names the file, line and column
# ---------------------------------------------------------------------------------------------
EVENTS = "user_id,item_id,timestamp,rating\nu0229,i1,10,4\nu0229,i2,20,3\nu0300,i1,15,5\nu0300,i3,25,2\n"
ITEMS = 'item_id,title\ni1,"Hello, World"\ni2,Second\ni3,Third\n'


def _prepare(tmp_path, capsys, events=EVENTS, items=ITEMS, *args):
    """Run `python -m data.prepare` in-process on two files: (exit code, stdout, stderr, out dir, events, items)."""
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    run.mkdir()
    paths = []
    for name, content in (("events.csv", events), ("items.csv", items)):
        path = run / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        paths.append(str(path))
    out = run / "out"
    code = prepare.main(["--interactions", paths[0], "--items", paths[1], "--out", str(out), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out, paths[0], paths[1]


def _rejected(tmp_path, capsys, events=EVENTS, items=ITEMS, *args):
    """The error line of a rejected run, with the file paths replaced by their names; nothing was written."""
    code, out, err, out_dir, events_path, items_path = _prepare(tmp_path, capsys, events, items, *args)
    assert code == 2, (out, err)
    assert not out_dir.exists()
    return err.replace(events_path, "events.csv").replace(items_path, "items.csv").strip()


@pytest.mark.parametrize("events, items, message", [
    # The case: empty / whitespace-only user ids must not become a user 'u' (nor re-prefix 'u0229').
    (EVENTS + ",i1,30,1\n   ,i2,40,1\n", ITEMS,
     "error: events.csv: column 'user_id' is empty or whitespace-only in 2 row(s): line 6 (''), line 7 ('   ')"),
    (EVENTS.replace("u0300,i3,", "u0300,,"), ITEMS,
     "error: events.csv: column 'item_id' is empty or whitespace-only in 1 row(s): line 5 ('')"),
    (EVENTS, ITEMS + " ,Blank id\n",
     "error: items.csv: column 'item_id' is empty or whitespace-only in 1 row(s): line 5 (' ')"),
    (EVENTS, ITEMS.replace("i2,Second", "i2,  "),
     "error: items.csv: column 'title' is empty or whitespace-only in 1 row(s): line 3 (item_id 'i2')"),
    # Parser errors: file and line (a quoted value spanning two lines counts as two lines).
    (EVENTS.replace("u0300,i1,15,5", "u0300,i1,15,5,extra"), ITEMS,
     "error: events.csv: line 4: expected 4 fields, saw 5 (a value that contains the separator ',' must be in "
     "double quotes)"),
    (EVENTS, 'item_id,title\ni1,"Two\nlines"\ni2,Second,oops\ni3,Third\n',
     "error: items.csv: line 4: expected 2 fields, saw 3"),
    (EVENTS, 'item_id,title\ni1,"Never closed\ni2,Second\n',
     "error: items.csv: line 2: a quoted value is never closed (unbalanced double quote)"),
    ("", ITEMS, "error: events.csv: the file is empty (expected a header row with user_id,item_id,timestamp)"),
    ("user_id,item_id,timestamp\n", ITEMS, "error: events.csv: no data rows after the header"),
    (EVENTS, b"item_id,title\ni1,One\ni2,Bad \xff title\ni3,Three\n",
     "error: items.csv: line 3, column 'title': byte 0xff (byte 8 of the line) is not valid UTF-8 (save the file as "
     "UTF-8)"),
    (b"\xff" + EVENTS.encode(), ITEMS, "error: events.csv: line 1: byte 0xff (byte 1 of the line) is not valid UTF-8"),
    (EVENTS.replace("timestamp,", "time,"), ITEMS,
     "error: events.csv: line 1 (header): missing required column(s) ['timestamp']"),
    # Values: negative (pre-1970) timestamps, not-a-number, unknown items, duplicates.
    (EVENTS.replace("u0229,i2,20,", "u0229,i2,-20,"), ITEMS,
     f"error: events.csv: column 'timestamp' {rules.TIMESTAMP_OUT_OF_RANGE} in 1 row(s): line 3 ('-20')"),
    (EVENTS.replace("u0229,i2,20,3", "u0229,i2,20,three"), ITEMS,
     "error: events.csv: column 'rating' is not a number in 1 row(s): line 3 ('three')"),
    (EVENTS.replace("u0300,i3,", "u0300,i9,"), ITEMS,
     "error: events.csv: column 'item_id' is not in the items catalogue (items.csv) in 1 row(s): line 5 ('i9')"),
    (EVENTS + "u0229,i1,10,4\nu0229,i2,20,3\n", ITEMS,
     "error: events.csv: duplicated rows: exact copies of an earlier row in 2 row(s): line 6 (same as line 2), "
     "line 7 (same as line 3); pass --dedupe to drop them"),
    ("user_id,item_id,timestamp\n" + "u1,i1,10\n" * 5, ITEMS,
     "error: events.csv: duplicated rows: exact copies of an earlier row in 4 row(s): line 3 (same as line 2), "
     "line 4 (same as line 2), line 5 (same as line 2) and 1 more"),
    (EVENTS.replace("u0229,i2,20,", "u0229,i2,-20,").replace("\n", "\r\n"), ITEMS,
     f"error: events.csv: column 'timestamp' {rules.TIMESTAMP_OUT_OF_RANGE} in 1 row(s): line 3 ('-20')"),
], ids=["blank-user-id", "blank-item-id", "blank-catalogue-id", "blank-title", "extra-field", "extra-field-after-quoted-newline",
        "unclosed-quote", "empty-file", "header-only", "not-utf8", "not-utf8-header", "missing-column",
        "negative-timestamp", "rating-not-a-number", "unknown-item", "exact-duplicates", "only-repeated-rows",
        "crlf-line-numbers"])
def test_prepare_cli_rejections_name_file_line_and_column(tmp_path, capsys, events, items, message):
    assert _rejected(tmp_path, capsys, events, items).startswith(message)


def test_prepare_cli_missing_file(tmp_path, capsys):
    code = prepare.main(["--interactions", str(tmp_path / "nope.csv"), "--items", str(tmp_path / "nope.csv"),
                         "--out", str(tmp_path / "out")])
    assert code == 2 and "nope.csv: no such file" in capsys.readouterr().err


def test_prepare_cli_dedupe_drops_exact_copies_and_says_how_many(tmp_path, capsys):
    events = EVENTS + "u0229,i1,10,4\nu0229,i1,10,4\n"
    code, out, err, out_dir, _, _ = _prepare(tmp_path, capsys, events, ITEMS + "i3,Third\n", "--dedupe")
    assert code == 0, err
    assert "dropped exact duplicate rows (--dedupe): 2 interaction(s), 1 item(s)" in out
    train, ev, items = prepare.read_contract(str(out_dir))
    assert len(train) + len(ev) == 4 and len(items) == 3
    # Same event with another rating: no exact copy to drop, so it is still rejected.
    message = _rejected(tmp_path, capsys, EVENTS + "u0229,i1,10,1\n", ITEMS, "--dedupe")
    assert "rows that repeat an earlier (user_id, item_id, timestamp) with other values in 1 row(s): line 6 " \
           "(same (user_id, item_id, timestamp) as line 2)" in message


def test_prepare_cli_prefixes_ids_only_when_all_are_numbers(tmp_path, capsys):
    # String ids are used as they are: no prefix, nothing said about ids.
    code, out, err, out_dir, _, _ = _prepare(tmp_path, capsys)
    assert code == 0, err
    assert "prefixed" not in out + err
    train, _, items = prepare.read_contract(str(out_dir))
    assert set(train[contract.USER_ID]) == {"u0229", "u0300"} and set(items[contract.ITEM_ID]) == {"i1", "i2", "i3"}
    # One number among string ids: rejected (never re-prefix 'u0229' to 'uu0229' unasked), pointing at the fix.
    message = _rejected(tmp_path, capsys, EVENTS + "42,i1,30,1\n")
    assert message.startswith("error: events.csv: column 'user_id' looks like a number") and "line 6 ('42')" in message
    assert "--prefix-ids always" in message
    # Asked for: every id is prefixed, and the summary says so.
    code, out, err, out_dir, _, _ = _prepare(tmp_path, capsys, EVENTS + "42,i1,30,1\n", ITEMS, "--prefix-ids", "always")
    assert code == 0, err
    assert "user ids prefixed with 'u' (--prefix-ids always), e.g. 'u0229' -> 'uu0229'" in out
    train, ev, _ = prepare.read_contract(str(out_dir))
    assert set(pd.concat([train, ev])[contract.USER_ID]) == {"uu0229", "uu0300", "u42"}


def test_prepare_cli_numeric_ids_decided_from_non_empty_ids(tmp_path, capsys):
    events = "user_id,item_id,timestamp\n1,100,10\n1,200,20\n2,100,15\n"
    items = "item_id,title\n100,One\n200,Two\n"
    code, out, err, out_dir, _, _ = _prepare(tmp_path, capsys, events, items)
    assert code == 0, err
    assert "user ids prefixed with 'u' (every one looked like a number), e.g. '1' -> 'u1'" in out
    assert "item ids prefixed with 'i' in both files (every one looked like a number), e.g. '100' -> 'i100'" in out
    # A blank id among numbers is not a number that decides anything, and is not turned into the id 'u'.
    message = _rejected(tmp_path, capsys, events + ",100,30\n", items)
    assert message == "error: events.csv: column 'user_id' is empty or whitespace-only in 1 row(s): line 5 ('')"
    message = _rejected(tmp_path, capsys, events, items, "--prefix-ids", "never")
    assert message.startswith("error: events.csv: column 'user_id' looks like a number") and "line 2 ('1')" in message


# ---------------------------------------------------------------------------------------------
# Sample data
# ---------------------------------------------------------------------------------------------
def _read_bytes(d):
    return {rel: open(os.path.join(d, rel), "rb").read()
            for rel in (prepare.TRAIN_FILE, prepare.EVAL_FILE, prepare.ITEMS_FILE)}


def test_sample_deterministic_and_sized(tmp_path):
    args = ["--users", "60", "--items", "120", "--interactions", "2000"]
    assert sample.main(["--out", str(tmp_path / "a")] + args) == 0
    assert sample.main(["--out", str(tmp_path / "b")] + args) == 0
    assert sample.main(["--out", str(tmp_path / "c"), "--seed", "1"] + args) == 0
    a, b, c = (_read_bytes(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert a != c
    train, ev, items = prepare.read_contract(str(tmp_path / "a"))
    assert len(items) == 120 and items[contract.ITEM_ID].iloc[0] == "i0001"
    inter = pd.concat([train, ev])
    assert inter[contract.USER_ID].nunique() == 60
    assert 1800 <= len(inter) <= 2200
    assert 120 - inter[contract.ITEM_ID].nunique() == 12  # cold catalogue items
    assert (items[contract.TITLE] != "").all() and (items[contract.DESCRIPTION] != "").all()


def test_sample_defaults():
    inter, items = sample.generate()
    assert inter[contract.USER_ID].nunique() == 300 and len(items) == 600
    assert 600 - inter[contract.ITEM_ID].nunique() == 60
    assert 13_500 <= len(inter) <= 16_500
    counts = inter[contract.ITEM_ID].value_counts()
    assert counts.iloc[0] > 5 * counts.median()  # long tail


def _words(text):
    stop = {"the", "of", "and", "a", "an", "return", "in", "this", "when", "meets", "nothing",
            "stays", "same", "story", "about", "tale", "journey", "following", "collide", "two"}
    return {w.strip(".,").lower() for w in text.split()} - stop


def test_sample_text_predicts_interactions():
    inter, items = sample.generate(n_users=80, n_items=200, n_interactions=3000, seed=3)
    cats = dict(zip(items[contract.ITEM_ID], items[contract.CATEGORIES].str.split("|").map(set)))
    text = dict(zip(items[contract.ITEM_ID], (items[contract.TITLE] + " " + items[contract.DESCRIPTION]).map(_words)))
    rng = np.random.default_rng(0)

    def share_rates(pairs):
        pairs = list(pairs)
        return (np.mean([bool(cats[a] & cats[b]) for a, b in pairs]),
                np.mean([bool(text[a] & text[b]) for a, b in pairs]))

    within = []
    for _, g in inter.groupby(contract.USER_ID):
        its = g[contract.ITEM_ID].tolist()
        within += [tuple(rng.choice(its, 2, replace=False)) for _ in range(10)]
    ids = items[contract.ITEM_ID].to_numpy()
    chance = [tuple(rng.choice(ids, 2, replace=False)) for _ in range(len(within))]
    cat_u, txt_u = share_rates(within)
    cat_r, txt_r = share_rates(chance)
    assert cat_u > 2.5 * cat_r, (cat_u, cat_r)
    assert txt_u > 1.5 * txt_r, (txt_u, txt_r)


# ---------------------------------------------------------------------------------------------
# MovieLens importer (tiny files written here; no dependency on ../shared)
# ---------------------------------------------------------------------------------------------
def _write(path, text, encoding):
    path.write_bytes(text.encode(encoding))


def _make_100k(d, with_genre_file=True):
    d.mkdir()
    _write(d / "u.data", "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n"
                         "2\t30\t2\t881250952\n1\t30\t1\t881250960\n", "latin-1")
    flags = ["0"] * 19
    f_comedy = list(flags); f_comedy[5] = "1"
    f_drama = list(flags); f_drama[8] = "1"; f_drama[14] = "1"
    lines = [
        ["10", "Café Society (1995)", "01-Jan-1995", "", "http://x"] + f_comedy,
        ["20", "Bird, The (1996)", "01-Jan-1996", "", "http://y"] + f_drama,
        ["30", "Heat (1995)", "01-Jan-1995", "", "http://z"] + flags,
    ]
    _write(d / "u.item", "".join("|".join(l) + "\n" for l in lines), "latin-1")
    if with_genre_file:
        _write(d / "u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(movielens.ML100K_GENRES)) + "\n", "latin-1")


def _make_1m(d):
    d.mkdir()
    _write(d / "ratings.dat", "1::10::4::978300760\n1::20::3::978300761\n2::10::5::978300762\n"
                              "2::30::2::978300763\n", "latin-1")
    _write(d / "movies.dat", "10::Café Society (1995)::Comedy\n20::Bird, The (1996)::Drama|Romance\n"
                             "30::Heat (1995)::Action|Crime|Thriller\n", "latin-1")


def _make_latest(d):
    d.mkdir()
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964982704\n"
                              "2,10,5.0,964982705\n2,30,2.0,964982706\n", "utf-8")
    _write(d / "movies.csv", 'movieId,title,genres\n10,Café Society (1995),Comedy\n'
                             '20,"Bird, The (1996)",Drama|Romance\n30,Heat (1995),(no genres listed)\n', "utf-8")
    _write(d / "tags.csv", "userId,movieId,tag,timestamp\n1,10,jazz,1\n2,10,Paris,2\n2,10,JAZZ,3\n", "utf-8")


@pytest.mark.parametrize("fmt, maker", [("ml-100k", _make_100k), ("ml-1m", _make_1m),
                                        ("ml-latest-small", _make_latest)])
def test_movielens_formats(tmp_path, fmt, maker):
    src = tmp_path / "src"
    maker(src)
    assert movielens.detect_format(str(src)) == fmt
    inter, items = movielens.load_movielens(str(src), "auto")
    assert set(inter[contract.USER_ID]) == {"u1", "u2"}
    assert set(inter[contract.ITEM_ID]) == {"m10", "m20", "m30"}
    assert inter[contract.TIMESTAMP].dtype == np.int64
    t = dict(zip(items[contract.ITEM_ID], items[contract.TITLE]))
    assert t["m10"] == "Café Society (1995)" and t["m20"] == "Bird, The (1996)"
    c = dict(zip(items[contract.ITEM_ID], items[contract.CATEGORIES]))
    assert c["m10"] == "Comedy" and c["m20"] == "Drama|Romance"
    if fmt == "ml-latest-small":
        assert c["m30"] == ""
        assert dict(zip(items[contract.ITEM_ID], items[contract.DESCRIPTION]))["m10"] == "jazz, Paris"
    assert movielens.main(["--src", str(src), "--format", fmt, "--out", str(tmp_path / "out")]) == 0
    train, ev, its = prepare.read_contract(str(tmp_path / "out"))
    assert len(train) + len(ev) == len(inter)
    assert "Café Society (1995)" in set(its[contract.TITLE])


def test_movielens_100k_without_genre_file(tmp_path):
    _make_100k(tmp_path / "src", with_genre_file=False)
    _, items = movielens.load_movielens(str(tmp_path / "src"), "ml-100k")
    assert dict(zip(items[contract.ITEM_ID], items[contract.CATEGORIES]))["m20"] == "Drama|Romance"


def test_movielens_unknown_dir(tmp_path):
    with pytest.raises(ValueError, match="cannot detect"):
        movielens.load_movielens(str(tmp_path), "auto")


def _edit(path, old, new):
    text = path.read_bytes().decode("latin-1")
    assert old in text
    path.write_bytes(text.replace(old, new, 1).encode("latin-1"))


@pytest.mark.parametrize("maker, file, old, new, message", [
    # An empty userId must not become the user 'u'.
    (_make_latest, "ratings.csv", "\n1,20,", "\n,20,",
     "ratings.csv: column 'userId' is empty or whitespace-only in 1 row(s): line 3 ('')"),
    (_make_latest, "movies.csv", "\n30,Heat", "\n ,Heat",
     "movies.csv: column 'movieId' is empty or whitespace-only in 1 row(s): line 4 ('')"),
    (_make_latest, "ratings.csv", "2,10,5.0,964982705", "2,10,5.0,964982705,x",
     "ratings.csv: line 4: expected 4 fields, saw 5"),
    (_make_latest, "ratings.csv", "2,10,5.0,964982705", "1,10,4.0,964982703",
     "ratings.csv: duplicated rows: exact copies of an earlier row in 1 row(s): line 4 (same as line 2)"),
    (_make_1m, "ratings.dat", "1::20::3::978300761", "1::20::3::-5",
     f"ratings.dat: field 4 (timestamp) {rules.TIMESTAMP_OUT_OF_RANGE} in 1 row(s): line 2 ('-5')"),
    (_make_1m, "ratings.dat", "2::10::5::978300762\n", "\n2::10::5\n",
     "ratings.dat: line 4: expected 4 fields separated by '::', saw 3"),
    (_make_1m, "movies.dat", "20::Bird", "::Bird",
     "movies.dat: field 1 (movie id) is empty or whitespace-only in 1 row(s): line 2 ('')"),
    (_make_100k, "u.data", "2\t10\t5\t881250951", "2\t10\t5\tsoon",
     "u.data: field 4 (timestamp) is not an integer (expected Unix time in whole seconds) in 1 row(s): "
     "line 3 ('soon')"),
    (_make_100k, "u.data", "\n2\t30", "\n \t30", "u.data: field 1 (user id) is empty or whitespace-only in 1 row(s): "
     "line 4 ('')"),
], ids=["latest-blank-user", "latest-blank-movie", "latest-extra-field", "latest-duplicate", "1m-negative-timestamp",
        "1m-missing-field", "1m-blank-movie", "100k-bad-timestamp", "100k-blank-user"])
def test_movielens_rejections_name_file_line_and_field(tmp_path, capsys, maker, file, old, new, message):
    src = tmp_path / "src"
    maker(src)
    _edit(src / file, old, new)
    assert movielens.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {src}{os.sep}{message}")
    assert not (tmp_path / "out").exists()


def test_movielens_dedupe(tmp_path, capsys):
    src = tmp_path / "src"
    _make_latest(src)
    _edit(src / "ratings.csv", "2,30,2.0,964982706\n", "2,30,2.0,964982706\n2,30,2.0,964982706\n")
    assert movielens.main(["--src", str(src), "--out", str(tmp_path / "out"), "--dedupe"]) == 0
    assert "dropped exact duplicate rows (--dedupe): 1 interaction(s), 0 item(s)" in capsys.readouterr().out
    train, ev, _ = prepare.read_contract(str(tmp_path / "out"))
    assert len(train) + len(ev) == 4


# ---------------------------------------------------------------------------------------------
# CLIs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [prepare, sample, movielens])
def test_cli_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "usage" in out


def test_prepare_cli_subprocess(tmp_path, capsys):
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp\n1,100,10\n1,200,20\n1,300,30\n2,100,15\n2,300,25\n", encoding="utf-8")
    (tmp_path / "items.csv").write_text(
        'item_id,title\n100,"Hello, World"\n200,Second\n300,Third\n400,Never seen\n', encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=REPO)
    help_run = subprocess.run([sys.executable, "-m", "data.prepare", "--help"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--interactions" in help_run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "data.prepare", "--interactions", str(tmp_path / "events.csv"),
         "--items", str(tmp_path / "items.csv"), "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "prefixed" in run.stdout
    train, ev, items = prepare.read_contract(str(tmp_path / "out"))
    assert set(items[contract.ITEM_ID]) == {"i100", "i200", "i300", "i400"}
    assert set(train[contract.USER_ID]) == {"u1", "u2"}
    assert ev[ev[contract.USER_ID] == "u1"][contract.HISTORY].tolist() == ["i100 i200"]
    code = prepare.main(["--interactions", str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv"),
                         "--out", str(tmp_path / "out2"), "--prefix-ids", "never"])
    assert code == 2 and "looks like a number" in capsys.readouterr().err
