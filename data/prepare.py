"""Turn raw interactions + an item catalogue into the data contract the pipeline reads.

Pure functions on pandas DataFrames, plus a CLI for users who bring their own files::

    python -m data.prepare --interactions my_events.csv --items my_items.csv --out data/mine

Layout written by :func:`write_contract` (ids are strings that never look like numbers)::

    <out>/interactions/train/interactions.csv   user_id,item_id,timestamp,rating,history
    <out>/interactions/eval/interactions.csv    same columns
    <out>/items/items.csv                       item_id,title,categories,description

Split protocol (same as docs/anchors.md "Baselines measured on our own protocol"): per user, the
last ``test_fraction`` of that user's interactions by time are eval; every user keeps at least one
train interaction, so a user with a single interaction is train-only.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from schema import contract as features

USER_ID = features.USER_ID
ITEM_ID = features.ITEM_ID
TIMESTAMP = features.TIMESTAMP
RATING = features.RATING
HISTORY = features.HISTORY
TITLE = features.TITLE
CATEGORIES = features.CATEGORIES
DESCRIPTION = features.DESCRIPTION

INTERACTION_COLUMNS = list(features.INTERACTION_COLUMNS)
ITEM_COLUMNS = list(features.ITEM_COLUMNS)

REQUIRED_INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)
REQUIRED_ITEM_COLUMNS = (ITEM_ID, TITLE)

TRAIN_FILE = os.path.join("interactions", "train", "interactions.csv")
EVAL_FILE = os.path.join("interactions", "eval", "interactions.csv")
ITEMS_FILE = os.path.join("items", "items.csv")

# Strings that pandas (and most CSV readers) turn into missing values; an id must not be one.
_NA_STRINGS = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "true", "false", "True",
    "False", "TRUE", "FALSE",
}
_ORDER = "_prepare_order"


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _n_test(n: int, fraction: float) -> int:
    """Eval rows for a user with ``n`` interactions: round(n * fraction), >= 1, leaving >= 1 train."""
    if n <= 1:
        return 0
    k = int(math.floor(n * fraction + 0.5))
    return min(n - 1, max(1, k))


def _chrono_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (user, timestamp, original position); ``_ORDER`` holds the original position."""
    out = df.copy()
    out[_ORDER] = np.arange(len(out))
    return out.sort_values([USER_ID, TIMESTAMP, _ORDER], kind="mergesort")


def chronological_split(
    interactions: pd.DataFrame, test_fraction: float = 0.2
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last ``test_fraction`` of interactions by time go to test.

    Each user with n >= 2 interactions gets ``min(n-1, max(1, round(n*test_fraction)))`` test rows;
    a user with one interaction is train-only. Ties in timestamp keep the input order. Returns
    ``(train, test)``, each sorted by (user, time), with a fresh RangeIndex.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ordered = _chrono_order(interactions)
    pos = ordered.groupby(USER_ID, sort=False).cumcount().to_numpy()
    sizes = ordered.groupby(USER_ID, sort=False)[USER_ID].transform("size").to_numpy()
    n_test = np.array([_n_test(int(n), test_fraction) for n in range(int(sizes.max(initial=0)) + 1)])
    is_test = pos >= sizes - n_test[sizes] if len(ordered) else np.zeros(0, dtype=bool)
    ordered = ordered.drop(columns=[_ORDER])
    train = ordered[~is_test].reset_index(drop=True)
    test = ordered[is_test].reset_index(drop=True)
    return train, test


def validation_split(
    train: pd.DataFrame, fraction: float = 0.2
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """The same per-user chronological split applied to ``train``, for tuning: ``(fit, validation)``."""
    return chronological_split(train, test_fraction=fraction)


def cold_item_split(
    interactions: pd.DataFrame,
    items: Optional[pd.DataFrame] = None,
    fraction: float = 0.1,
    seed: int = 0,
) -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """Hold out ``fraction`` of the interacted items (seeded) entirely.

    Returns ``(warm_interactions, cold_interactions, cold_item_ids)``: every interaction with a
    cold item is in ``cold_interactions`` and none is in ``warm_interactions``. Only items that
    have interactions (and, if ``items`` is given, are in the catalogue) are candidates; at least
    one item is picked. ``cold_item_ids`` is sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    candidates = pd.Index(interactions[ITEM_ID].astype(str).unique())
    if items is not None:
        candidates = candidates.intersection(pd.Index(items[ITEM_ID].astype(str)))
    candidates = np.array(sorted(candidates))
    if len(candidates) == 0:
        return interactions.copy(), interactions.iloc[0:0].copy(), []
    n_cold = max(1, int(round(len(candidates) * fraction)))
    rng = np.random.default_rng(seed)
    cold = sorted(rng.choice(candidates, size=n_cold, replace=False).tolist())
    is_cold = interactions[ITEM_ID].astype(str).isin(cold).to_numpy()
    warm_df = interactions[~is_cold].reset_index(drop=True)
    cold_df = interactions[is_cold].reset_index(drop=True)
    return warm_df, cold_df, cold


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------
def add_history(interactions: pd.DataFrame, max_len: int = features.HISTORY_LENGTH) -> pd.DataFrame:
    """Add ``history``: the user's items strictly before this row's timestamp, most recent last.

    Earlier items are ordered by (timestamp, input order); items with the *same* timestamp as the
    row are not in its history (no same-time leakage). At most ``max_len`` ids, space-separated;
    empty string for a user's first interaction(s). Returns a copy in the input row order.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    out = interactions.copy()
    if len(out) == 0:
        out[HISTORY] = pd.Series([], dtype=object)
        return out
    ordered = _chrono_order(out)
    users = ordered[USER_ID].to_numpy()
    ts = ordered[TIMESTAMP].to_numpy()
    items = ordered[ITEM_ID].astype(str).to_numpy()
    hist = np.empty(len(ordered), dtype=object)
    # Boundaries of each user's block in the sorted frame.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    for s, e in zip(starts, ends):
        u_ts = ts[s:e]
        u_items = items[s:e]
        # Index of the first row with each row's timestamp: everything before it is strictly earlier.
        first = np.searchsorted(u_ts, u_ts, side="left")
        for j, f in enumerate(first):
            lo = max(0, f - max_len) if max_len else f
            hist[s + j] = " ".join(u_items[lo:f])
    positional = np.empty(len(out), dtype=object)
    positional[ordered[_ORDER].to_numpy()] = hist
    out[HISTORY] = positional
    return out


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def looks_like_number(value: str) -> bool:
    """True if a CSV reader could infer ``value`` as a number, bool or missing value."""
    s = str(value).strip()
    if s in _NA_STRINGS:
        return True
    try:
        float(s)
        return True
    except ValueError:
        return False


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_columns(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} is missing required column(s) {missing}; it has columns {list(df.columns)}"
        )


def _check_ids(series: pd.Series, what: str, column: str) -> pd.Series:
    """Ids as str; reject missing, whitespace-containing and number-like ids."""
    if series.isna().any():
        i = _first_bad(series.isna().to_numpy())
        raise ValueError(f"{what} row {i}: column '{column}' is empty")
    s = series.astype(str)
    bad_ws = s.str.contains(r"\s", regex=True).to_numpy() | (s.str.len() == 0).to_numpy()
    if bad_ws.any():
        i = _first_bad(bad_ws)
        raise ValueError(
            f"{what} row {i}: column '{column}' value {s.iloc[i]!r} is empty or contains "
            "whitespace (history is space-separated, so ids may not contain spaces)"
        )
    uniq = pd.Series(s.unique())
    numeric = uniq.map(looks_like_number).to_numpy()
    if numeric.any():
        v = uniq[numeric].iloc[0]
        i = _first_bad((s == v).to_numpy())
        raise ValueError(
            f"{what} row {i}: column '{column}' value {v!r} looks like a number or missing value; "
            "ids must be non-numeric strings (e.g. prefix them: 'u42', 'i42'; "
            "the data.prepare CLI does this with --prefix-ids)"
        )
    return s


def _check_timestamps(series: pd.Series, what: str) -> pd.Series:
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype(np.int64)
    if pd.api.types.is_bool_dtype(series.dtype):
        raise ValueError(f"{what}: column '{TIMESTAMP}' is boolean, expected integer Unix seconds")
    num = pd.to_numeric(series, errors="coerce")
    bad = num.isna().to_numpy()
    finite = num.fillna(0).to_numpy(dtype=float)
    bad |= ~np.isfinite(finite)
    bad |= np.abs(finite) > 2**62
    bad |= np.floor(finite) != finite
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"{what} row {i}: column '{TIMESTAMP}' value {series.iloc[i]!r} is not an integer "
            "(expected Unix time in whole seconds)"
        )
    return num.astype(np.int64)


def _clean_text(series: pd.Series) -> pd.Series:
    """Missing -> '', newlines/tabs -> single spaces, stripped (one CSV record per line)."""
    s = series.fillna("").astype(str)
    return s.str.replace(r"[\r\n\t]+", " ", regex=True).str.strip()


def validate_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Checked, normalised copy with the contract columns (no history yet); raises ValueError."""
    what = "interactions"
    _check_columns(interactions, REQUIRED_INTERACTION_COLUMNS, what)
    if len(interactions) == 0:
        raise ValueError("interactions is empty")
    df = interactions.reset_index(drop=True)
    out = pd.DataFrame(
        {
            USER_ID: _check_ids(df[USER_ID], what, USER_ID),
            ITEM_ID: _check_ids(df[ITEM_ID], what, ITEM_ID),
            TIMESTAMP: _check_timestamps(df[TIMESTAMP], what),
        }
    )
    if RATING in df.columns:
        raw = df[RATING]
        num = pd.to_numeric(raw, errors="coerce")
        bad = (num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")).to_numpy()
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"{what} row {i}: column '{RATING}' value {raw.iloc[i]!r} is not a number")
        out[RATING] = num.astype(float)
    else:
        out[RATING] = 1.0  # implicit feedback
    return out


def validate_items(items: pd.DataFrame) -> pd.DataFrame:
    """Checked, normalised copy of the catalogue with the contract columns; raises ValueError."""
    what = "items"
    _check_columns(items, REQUIRED_ITEM_COLUMNS, what)
    if len(items) == 0:
        raise ValueError("items is empty")
    df = items.reset_index(drop=True)
    ids = _check_ids(df[ITEM_ID], what, ITEM_ID)
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = _first_bad(dup)
        first = _first_bad((ids == ids.iloc[i]).to_numpy())
        raise ValueError(
            f"items row {i}: duplicate {ITEM_ID} {ids.iloc[i]!r} (first seen at row {first}); "
            "item ids in the catalogue must be unique"
        )
    title = _clean_text(df[TITLE])
    empty = (title == "").to_numpy()
    if empty.any():
        i = _first_bad(empty)
        raise ValueError(f"items row {i} ({ITEM_ID} {ids.iloc[i]!r}): column '{TITLE}' is empty")
    out = pd.DataFrame({ITEM_ID: ids, TITLE: title})
    for col in (CATEGORIES, DESCRIPTION):
        out[col] = _clean_text(df[col]) if col in df.columns else ""
    return out


def _check_catalogue(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    unknown = ~interactions[ITEM_ID].isin(set(items[ITEM_ID])).to_numpy()
    if unknown.any():
        i = _first_bad(unknown)
        n = int(interactions.loc[unknown, ITEM_ID].nunique())
        raise ValueError(
            f"interactions row {i}: {ITEM_ID} {interactions[ITEM_ID].iloc[i]!r} is not in the items "
            f"catalogue ({n} distinct unknown item id(s)); every interacted item needs a catalogue row"
        )


# --------------------------------------------------------------------------------------------
# Writing / reading
# --------------------------------------------------------------------------------------------
def _to_csv(df: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    df.to_csv(path, index=False, encoding="utf-8", lineterminator="\n")


def write_contract(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    out_dir: str,
    test_fraction: float = 0.2,
) -> dict:
    """Validate, split chronologically per user, add history and write the contract layout.

    ``history`` is computed over each user's full timeline before splitting, so eval rows may
    contain earlier eval items (always strictly earlier in time). Rows are written sorted by
    (user, time). A missing ``rating`` column is written as 1.0. Returns a summary dict with
    the file paths and row counts.
    """
    inter = validate_interactions(interactions)
    cat = validate_items(items)
    _check_catalogue(inter, cat)
    with_hist = add_history(inter)
    train, test = chronological_split(with_hist, test_fraction=test_fraction)
    train = train[INTERACTION_COLUMNS]
    test = test[INTERACTION_COLUMNS]
    paths = {
        "train": os.path.join(out_dir, TRAIN_FILE),
        "eval": os.path.join(out_dir, EVAL_FILE),
        "items": os.path.join(out_dir, ITEMS_FILE),
    }
    _to_csv(train, paths["train"])
    _to_csv(test, paths["eval"])
    _to_csv(cat[ITEM_COLUMNS], paths["items"])
    interacted = set(inter[ITEM_ID])
    return {
        "paths": paths,
        "train_rows": len(train),
        "eval_rows": len(test),
        "users": int(inter[USER_ID].nunique()),
        "items": len(cat),
        "items_without_interactions": int((~cat[ITEM_ID].isin(interacted)).sum()),
    }


def _read_interactions(path: str) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        dtype={USER_ID: str, ITEM_ID: str, HISTORY: str, TIMESTAMP: np.int64, RATING: float},
        keep_default_na=False,
        na_values={RATING: [""]},
        encoding="utf-8",
    )
    if HISTORY in df.columns:
        df[HISTORY] = df[HISTORY].fillna("")
    return df


def read_contract(data_dir: str) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read ``(train, eval, items)`` written by :func:`write_contract`; ids and text as str."""
    train = _read_interactions(os.path.join(data_dir, TRAIN_FILE))
    evals = _read_interactions(os.path.join(data_dir, EVAL_FILE))
    items = pd.read_csv(
        os.path.join(data_dir, ITEMS_FILE), dtype=str, keep_default_na=False, encoding="utf-8"
    )
    return train, evals, items


def summary_text(summary: dict) -> str:
    return (
        f"wrote {summary['train_rows']} train + {summary['eval_rows']} eval interactions "
        f"({summary['users']} users), {summary['items']} items "
        f"({summary['items_without_interactions']} without interactions) under "
        f"{os.path.dirname(os.path.dirname(os.path.dirname(summary['paths']['train'])))}"
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def prefix_ids(interactions: pd.DataFrame, items: pd.DataFrame,
               user_prefix: str = "u", item_prefix: str = "i") -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """Prefix a whole id column when any of its ids looks like a number. Returns notes on what changed."""
    inter = interactions.copy()
    cat = items.copy()
    notes = []
    if USER_ID in inter.columns and inter[USER_ID].dropna().astype(str).map(looks_like_number).any():
        inter[USER_ID] = user_prefix + inter[USER_ID].astype(str).str.strip()
        notes.append(f"user ids looked numeric: prefixed with '{user_prefix}'")
    if ITEM_ID in inter.columns and ITEM_ID in cat.columns:
        ids = pd.concat([inter[ITEM_ID], cat[ITEM_ID]]).dropna().astype(str)
        if ids.map(looks_like_number).any():
            inter[ITEM_ID] = item_prefix + inter[ITEM_ID].astype(str).str.strip()
            cat[ITEM_ID] = item_prefix + cat[ITEM_ID].astype(str).str.strip()
            notes.append(f"item ids looked numeric: prefixed with '{item_prefix}' in both files")
    return inter, cat, notes


def _read_raw(path: str, sep: str) -> pd.DataFrame:
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description=(
            "Convert your own interaction + item files into the data contract the pipeline reads: "
            "OUT/interactions/{train,eval}/interactions.csv and OUT/items/items.csv. Per user, the "
            "last --test-fraction of interactions by time become eval; a 'history' column (previous "
            f"items, most recent last, at most {features.HISTORY_LENGTH}) is added."
        ),
        epilog=(
            "Input files are UTF-8 CSV with a header row. Interactions need columns "
            "user_id,item_id,timestamp (integer Unix seconds) and optionally rating; items need "
            "item_id,title and optionally categories ('|'-separated) and description. Every item in "
            "the interactions must be in the items file; items nobody interacted with are kept. "
            "Example: python -m data.prepare --interactions events.csv --items items.csv --out data/mine"
        ),
    )
    parser.add_argument("--interactions", required=True, help="CSV with user_id,item_id,timestamp[,rating]")
    parser.add_argument("--items", required=True, help="CSV with item_id,title[,categories,description]")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="per-user fraction of latest interactions held out for eval (default 0.2)")
    parser.add_argument("--sep", default=",", help="field separator of both input files (default ',')")
    parser.add_argument("--prefix-ids", choices=["auto", "never"], default="auto",
                        help="'auto' (default): if ids look numeric, prefix user ids with 'u' and item ids "
                             "with 'i' so they stay strings; 'never': fail instead")
    args = parser.parse_args(argv)
    try:
        inter = _read_raw(args.interactions, args.sep)
        cat = _read_raw(args.items, args.sep)
        if args.prefix_ids == "auto":
            inter, cat, notes = prefix_ids(inter, cat)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        summary = write_contract(inter, cat, args.out, test_fraction=args.test_fraction)
    except (ValueError, FileNotFoundError, pd.errors.ParserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
