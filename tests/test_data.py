"""Tests for the data contract: splits, history, sample generator, MovieLens importer, CLIs."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from data import movielens, prepare, sample
from schema import contract as features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_interactions(seed=0, n_users=40, n_items=60, n=1500):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    # Coarse timestamps so that ties are common.
    return pd.DataFrame(
        {
            features.USER_ID: [f"u{u}" for u in users],
            features.ITEM_ID: [f"i{i}" for i in rng.integers(0, n_items, n)],
            features.TIMESTAMP: rng.integers(0, 200, n).astype(np.int64),
            features.RATING: rng.integers(1, 6, n).astype(float),
        }
    )


def _items(ids, title="A title"):
    return pd.DataFrame({features.ITEM_ID: list(ids), features.TITLE: [f"{title} {i}" for i in ids]})


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def test_chronological_split_no_leakage_and_20_percent():
    df = _random_interactions()
    train, test = prepare.chronological_split(df, 0.2)
    assert len(train) + len(test) == len(df)
    for user, g in df.groupby(features.USER_ID):
        tr = train[train[features.USER_ID] == user]
        te = test[test[features.USER_ID] == user]
        assert len(tr) >= 1
        n = len(g)
        assert len(te) == min(n - 1, max(1, int(np.floor(0.2 * n + 0.5)))) if n > 1 else len(te) == 0
        if len(te):
            assert tr[features.TIMESTAMP].max() <= te[features.TIMESTAMP].min()
    assert abs(len(test) / len(df) - 0.2) < 0.02


def test_chronological_split_small_users():
    df = pd.DataFrame(
        {
            features.USER_ID: ["ua", "ub", "ub", "uc", "uc", "uc", "uc", "uc"],
            features.ITEM_ID: ["i1", "i1", "i2", "i1", "i2", "i3", "i4", "i5"],
            features.TIMESTAMP: [5, 2, 1, 10, 9, 8, 7, 6],
        }
    )
    train, test = prepare.chronological_split(df)
    assert "ua" not in set(test[features.USER_ID])  # single interaction: train only
    assert test[test[features.USER_ID] == "ub"][features.ITEM_ID].tolist() == ["i1"]
    assert test[test[features.USER_ID] == "uc"][features.ITEM_ID].tolist() == ["i1"]  # latest


def test_validation_split_is_chronological_within_train():
    train, _ = prepare.chronological_split(_random_interactions(1))
    fit, val = prepare.validation_split(train, 0.2)
    assert len(fit) + len(val) == len(train)
    for user, v in val.groupby(features.USER_ID):
        f = fit[fit[features.USER_ID] == user]
        assert f[features.TIMESTAMP].max() <= v[features.TIMESTAMP].min()


def test_cold_item_split():
    df = _random_interactions(2, n_items=100)
    cat = _items([f"i{i}" for i in range(120)])  # 20 items nobody touched
    warm, cold, cold_ids = prepare.cold_item_split(df, cat, fraction=0.1, seed=0)
    interacted = set(df[features.ITEM_ID])
    assert len(cold_ids) == round(0.1 * len(interacted))
    assert set(cold_ids) <= interacted
    assert set(cold[features.ITEM_ID]) == set(cold_ids)
    assert not set(warm[features.ITEM_ID]) & set(cold_ids)
    assert len(warm) + len(cold) == len(df)
    train, _ = prepare.chronological_split(warm)
    assert not set(train[features.ITEM_ID]) & set(cold_ids)
    assert prepare.cold_item_split(df, cat, seed=0)[2] == cold_ids
    assert prepare.cold_item_split(df, cat, seed=1)[2] != cold_ids


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------
def test_add_history_hand_example():
    df = pd.DataFrame(
        {
            features.USER_ID: ["ua", "ua", "ub", "ua", "ua", "ua"],
            features.ITEM_ID: ["i3", "i1", "i9", "i2", "i4", "i5"],
            features.TIMESTAMP: [30, 10, 5, 20, 30, 40],
        }
    )
    out = prepare.add_history(df, max_len=3)
    assert out[features.ITEM_ID].tolist() == df[features.ITEM_ID].tolist()  # input order kept
    h = dict(zip(out[features.ITEM_ID], out[features.HISTORY]))
    assert h["i1"] == ""
    assert h["i2"] == "i1"
    assert h["i3"] == "i1 i2"  # tie with i4: neither sees the other
    assert h["i4"] == "i1 i2"
    assert h["i5"] == "i2 i3 i4"  # capped at 3, most recent last, ties in input order
    assert h["i9"] == ""  # other user


def test_add_history_matches_brute_force():
    df = _random_interactions(3, n=600)
    out = prepare.add_history(df, max_len=features.HISTORY_LENGTH)
    for k, row in enumerate(out.itertuples(index=False)):
        u, t = getattr(row, features.USER_ID), getattr(row, features.TIMESTAMP)
        prev = [
            (pt, j, df[features.ITEM_ID].iloc[j])
            for j, (pu, pt) in enumerate(zip(df[features.USER_ID], df[features.TIMESTAMP]))
            if pu == u and pt < t
        ]
        expected = [it for _, _, it in sorted(prev)][-features.HISTORY_LENGTH:]
        assert getattr(row, features.HISTORY) == " ".join(expected), k


# ---------------------------------------------------------------------------------------------
# write_contract / read_contract
# ---------------------------------------------------------------------------------------------
def test_write_and_read_contract_roundtrip(tmp_path):
    df = _random_interactions(4)
    cat = _items([f"i{i}" for i in range(70)])
    cat.loc[0, features.TITLE] = 'Bird, The "Big" (1999)'
    cat.loc[1, features.TITLE] = "Café Society"
    summary = prepare.write_contract(df, cat, str(tmp_path))
    assert summary["items_without_interactions"] == 70 - df[features.ITEM_ID].nunique()
    for rel in (prepare.TRAIN_FILE, prepare.EVAL_FILE, prepare.ITEMS_FILE):
        assert (tmp_path / rel).exists()
    train, ev, items = prepare.read_contract(str(tmp_path))
    assert list(train.columns) == list(features.INTERACTION_COLUMNS)
    assert list(items.columns) == list(features.ITEM_COLUMNS)
    assert len(train) + len(ev) == len(df) and len(items) == 70
    assert items[features.TITLE].iloc[0] == 'Bird, The "Big" (1999)'
    assert items[features.TITLE].iloc[1] == "Café Society"
    # Plain type inference keeps ids as strings.
    raw = pd.read_csv(tmp_path / prepare.TRAIN_FILE)
    assert raw[features.USER_ID].dtype == object and raw[features.ITEM_ID].dtype == object
    assert raw[features.TIMESTAMP].dtype == np.int64
    # Eval history: strictly earlier items, from train and earlier eval rows.
    for user, te in ev.groupby(features.USER_ID):
        tr = train[train[features.USER_ID] == user]
        assert tr[features.TIMESTAMP].max() <= te[features.TIMESTAMP].min()
    full = prepare.add_history(df)
    merged = pd.concat([train, ev])
    key = [features.USER_ID, features.ITEM_ID, features.TIMESTAMP]
    assert sorted(map(tuple, merged[key + [features.HISTORY]].values.tolist())) == sorted(
        map(tuple, full[key + [features.HISTORY]].values.tolist())
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i, c: (i.drop(columns=[features.TIMESTAMP]), c), "missing required column"),
        (lambda i, c: (i, c.drop(columns=[features.TITLE])), "missing required column"),
        (lambda i, c: (i.assign(timestamp=["10", "x", "30"]), c), "row 1: column 'timestamp' value 'x'"),
        (lambda i, c: (i.assign(timestamp=[10, 20.5, 30]), c), "is not an integer"),
        (lambda i, c: (i.assign(item_id=["i1", "i2", "i99"]), c), "row 2: item_id 'i99' is not in the items"),
        (lambda i, c: (i, pd.concat([c, c.iloc[[0]]])), "duplicate item_id 'i1'"),
        (lambda i, c: (i, c.assign(title=["x", "  ", "z"])), "items row 1 (item_id 'i2'): column 'title' is empty"),
        (lambda i, c: (i.assign(user_id=["u1", "42", "u3"]), c), "looks like a number"),
        (lambda i, c: (i.assign(user_id=["u1", "u 2", "u3"]), c), "whitespace"),
    ],
)
def test_write_contract_errors(tmp_path, mutate, message):
    inter = pd.DataFrame(
        {features.USER_ID: ["u1", "u2", "u3"], features.ITEM_ID: ["i1", "i2", "i3"], features.TIMESTAMP: [10, 20, 30]}
    )
    cat = _items(["i1", "i2", "i3"])
    bad_i, bad_c = mutate(inter, cat)
    with pytest.raises(ValueError) as e:
        prepare.write_contract(bad_i, bad_c, str(tmp_path))
    assert message in str(e.value)


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
    assert len(items) == 120 and items[features.ITEM_ID].iloc[0] == "i0001"
    inter = pd.concat([train, ev])
    assert inter[features.USER_ID].nunique() == 60
    assert 1800 <= len(inter) <= 2200
    assert 120 - inter[features.ITEM_ID].nunique() == 12  # cold catalogue items
    assert (items[features.TITLE] != "").all() and (items[features.DESCRIPTION] != "").all()


def test_sample_defaults():
    inter, items = sample.generate()
    assert inter[features.USER_ID].nunique() == 300 and len(items) == 600
    assert 600 - inter[features.ITEM_ID].nunique() == 60
    assert 13_500 <= len(inter) <= 16_500
    counts = inter[features.ITEM_ID].value_counts()
    assert counts.iloc[0] > 5 * counts.median()  # long tail


def _words(text):
    stop = {"the", "of", "and", "a", "an", "return", "in", "this", "when", "meets", "nothing",
            "stays", "same", "story", "about", "tale", "journey", "following", "collide", "two"}
    return {w.strip(".,").lower() for w in text.split()} - stop


def test_sample_text_predicts_interactions():
    inter, items = sample.generate(n_users=80, n_items=200, n_interactions=3000, seed=3)
    cats = dict(zip(items[features.ITEM_ID], items[features.CATEGORIES].str.split("|").map(set)))
    text = dict(zip(items[features.ITEM_ID], (items[features.TITLE] + " " + items[features.DESCRIPTION]).map(_words)))
    rng = np.random.default_rng(0)

    def share_rates(pairs):
        pairs = list(pairs)
        return (np.mean([bool(cats[a] & cats[b]) for a, b in pairs]),
                np.mean([bool(text[a] & text[b]) for a, b in pairs]))

    within = []
    for _, g in inter.groupby(features.USER_ID):
        its = g[features.ITEM_ID].tolist()
        within += [tuple(rng.choice(its, 2, replace=False)) for _ in range(10)]
    ids = items[features.ITEM_ID].to_numpy()
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
    assert set(inter[features.USER_ID]) == {"u1", "u2"}
    assert set(inter[features.ITEM_ID]) == {"m10", "m20", "m30"}
    assert inter[features.TIMESTAMP].dtype == np.int64
    t = dict(zip(items[features.ITEM_ID], items[features.TITLE]))
    assert t["m10"] == "Café Society (1995)" and t["m20"] == "Bird, The (1996)"
    c = dict(zip(items[features.ITEM_ID], items[features.CATEGORIES]))
    assert c["m10"] == "Comedy" and c["m20"] == "Drama|Romance"
    if fmt == "ml-latest-small":
        assert c["m30"] == ""
        assert dict(zip(items[features.ITEM_ID], items[features.DESCRIPTION]))["m10"] == "jazz, Paris"
    assert movielens.main(["--src", str(src), "--format", fmt, "--out", str(tmp_path / "out")]) == 0
    train, ev, its = prepare.read_contract(str(tmp_path / "out"))
    assert len(train) + len(ev) == len(inter)
    assert "Café Society (1995)" in set(its[features.TITLE])


def test_movielens_100k_without_genre_file(tmp_path):
    _make_100k(tmp_path / "src", with_genre_file=False)
    _, items = movielens.load_movielens(str(tmp_path / "src"), "ml-100k")
    assert dict(zip(items[features.ITEM_ID], items[features.CATEGORIES]))["m20"] == "Drama|Romance"


def test_movielens_unknown_dir(tmp_path):
    with pytest.raises(ValueError, match="cannot detect"):
        movielens.load_movielens(str(tmp_path), "auto")


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
    assert "prefixed" in run.stderr
    train, ev, items = prepare.read_contract(str(tmp_path / "out"))
    assert set(items[features.ITEM_ID]) == {"i100", "i200", "i300", "i400"}
    assert set(train[features.USER_ID]) == {"u1", "u2"}
    assert ev[ev[features.USER_ID] == "u1"][features.HISTORY].tolist() == ["i100 i200"]
    code = prepare.main(["--interactions", str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv"),
                         "--out", str(tmp_path / "out2"), "--prefix-ids", "never"])
    assert code == 2 and "looks like a number" in capsys.readouterr().err
