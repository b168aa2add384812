"""Turn raw interactions + an item catalogue into the data contract the pipeline reads.

Pure functions on pandas DataFrames, plus a CLI for users who bring their own files::

    python -m data.prepare --interactions my_events.csv --items my_items.csv --out data/mine

Layout written by :func:`write_contract` (ids are strings that never look like numbers)::

    <out>/interactions/train/interactions.csv   user_id,item_id,timestamp,rating,history
    <out>/interactions/eval/interactions.csv    same columns
    <out>/items/items.csv                       item_id,title,categories,description

Split protocol (same as docs/anchors.md "Baselines measured on our own protocol"): per user, the
last ``test_fraction`` of that user's interactions by time are eval; every user keeps at least one
train interaction, so a user with a single interaction is train-only. Then a seeded
``new_user_fraction`` of users (default 5%, 0 disables) is moved entirely into eval: they have no
train rows, so the evaluator's `new_users` slice measures quality for users the model never saw.

Spans (``--spans N``): the interactions are cut by time into N consecutive ranges of about equal size
and each is written, split as above, as its own span (the catalogue stays one folder)::

    <out>/interactions/span-1/{train,eval}/interactions.csv   the oldest
    ...
    <out>/interactions/span-N/{train,eval}/interactions.csv   the newest (what the pipeline reads)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data import rules, validation
from data.source import Source, read_csv
from schema import contract

USER_ID = contract.USER_ID
ITEM_ID = contract.ITEM_ID
TIMESTAMP = contract.TIMESTAMP
RATING = contract.RATING
HISTORY = contract.HISTORY
TITLE = contract.TITLE
CATEGORIES = contract.CATEGORIES
DESCRIPTION = contract.DESCRIPTION

INTERACTION_COLUMNS = list(contract.INTERACTION_COLUMNS)
ITEM_COLUMNS = list(contract.ITEM_COLUMNS)


# The checks live in data/validation.py; these names stay importable from here.
validate_interactions = validation.validate_interactions
validate_items = validation.validate_items

TRAIN_FILE = os.path.join("interactions", "train", "interactions.csv")
EVAL_FILE = os.path.join("interactions", "eval", "interactions.csv")
ITEMS_FILE = os.path.join("items", "items.csv")


def span_file(span: int, split: str) -> str:
    """Path of one span's split under a data dir, e.g. ``interactions/span-3/train/interactions.csv``."""
    return os.path.join(contract.INTERACTIONS_DIR, contract.SPAN_DIR.format(SPAN=span), split, "interactions.csv")


def spans(data_dir: str) -> List[int]:
    """The span numbers under ``<data_dir>/interactions`` in order ([] for the unspanned layout)."""
    base = os.path.join(data_dir, contract.INTERACTIONS_DIR)
    found = [name[len(contract.SPAN_PREFIX):] for name in (os.listdir(base) if os.path.isdir(base) else [])
             if name.startswith(contract.SPAN_PREFIX)]
    return sorted(int(n) for n in found if n.isdigit())

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


def new_user_split(
    train: pd.DataFrame, test: pd.DataFrame, fraction: float = 0.05, seed: int = 0
) -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """Move ``round(users * fraction)`` seeded users with all their rows from ``train`` to ``test``.

    Returns ``(train, test, new_user_ids)``; ``test`` stays sorted by (user, time) and the new users
    have no train rows. ``fraction`` 0 returns the inputs unchanged.

        train, test, new_users = new_user_split(*chronological_split(df), fraction=0.05, seed=0)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"new_user_fraction must be in [0, 1), got {fraction}")
    users = np.array(sorted(set(train[USER_ID].astype(str)) | set(test[USER_ID].astype(str))))
    n_new = int(round(len(users) * fraction))
    if n_new == 0:
        return train, test, []
    new = sorted(np.random.default_rng(seed).choice(users, size=n_new, replace=False).tolist())
    moved = train[USER_ID].astype(str).isin(new).to_numpy()
    test = pd.concat([test, train[moved]]).sort_values([USER_ID, TIMESTAMP], kind="mergesort")
    return train[~moved].reset_index(drop=True), test.reset_index(drop=True), new


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


def time_spans(timestamps: np.ndarray, n_spans: int) -> np.ndarray:
    """The span (1..n_spans) of each timestamp: consecutive time ranges with about equal row counts.

    Rows with the same timestamp share a span. Raises ValueError when a span would be empty.

        time_spans(np.array([5, 1, 3, 2]), 2)  # -> array([2, 1, 2, 1])
    """
    if n_spans < 1:
        raise ValueError(f"spans must be >= 1, got {n_spans}")
    ordered = np.sort(np.asarray(timestamps))
    # Span k ends at the k-th quantile's timestamp (inclusive), so equal timestamps stay together.
    cuts = ordered[(np.arange(1, n_spans) * len(ordered)) // n_spans - 1] if len(ordered) else ordered[:0]
    span = np.searchsorted(cuts, timestamps, side="left") + 1
    sizes = np.bincount(span, minlength=n_spans + 1)[1:]
    if len(ordered) and (sizes == 0).any():
        raise ValueError(f"cannot cut {len(ordered)} interactions into {n_spans} time spans: "
                         f"span(s) {[int(i) + 1 for i in np.flatnonzero(sizes == 0)]} would be empty "
                         "(too few distinct timestamps); use fewer --spans")
    return span


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------
def add_history(interactions: pd.DataFrame, max_len: int = contract.HISTORY_LENGTH) -> pd.DataFrame:
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
    dedupe: bool = False,
    interactions_source: Source = validation.INTERACTIONS,
    items_source: Source = validation.ITEMS,
    new_user_fraction: float = 0.05,
    seed: int = 0,
    spans: int = 0,
) -> dict:
    """Validate, split chronologically per user, add history and write the contract layout.

    Nothing is written unless both tables pass every rule of `data/rules.py`; a DataError names
    the file (``*_source``; default: the table), column and first rows that break one. Exact copies
    of an earlier row are rejected, or dropped and counted with ``dedupe=True``.

    ``history`` is computed over each user's full timeline before splitting, so eval rows may
    contain earlier eval items (always strictly earlier in time). A seeded ``new_user_fraction`` of
    users (``seed``; 0 disables) has every row in eval (`new_user_split`). Rows are written sorted by
    (user, time). A missing ``rating`` column is written as 1.0. Returns a summary dict with
    the file paths and row counts.

    ``spans`` >= 1 writes ``interactions/span-<n>/{train,eval}/`` instead: the rows cut by time into
    ``spans`` ranges (`time_spans`), each split per user as above (history still spans the whole timeline);
    the summary's ``spans`` lists each span's rows and time range. 0 (default): the unspanned layout.
    """
    inter = validation.validate_interactions(interactions, interactions_source)
    cat = validation.validate_items(items, items_source)
    inter, inter_dropped = validation.drop_duplicates(inter, rules.DUPLICATE_KEY, interactions_source, dedupe)
    cat, items_dropped = validation.drop_duplicates(cat, (ITEM_ID,), items_source, dedupe)
    validation.check_catalogue(inter, cat, interactions_source, items_source)
    inter = inter.reset_index(drop=True)
    cat = cat.reset_index(drop=True)
    with_hist = add_history(inter)
    if spans < 0:
        raise ValueError(f"spans must be >= 0 (0: no spans), got {spans}")
    # Everything is split before anything is written, so a bad --spans writes nothing.
    parts = ([(0, with_hist)] if not spans else
             [(n, with_hist[mask]) for n, mask in _span_masks(with_hist[TIMESTAMP].to_numpy(), spans)])
    written, new_users = [], []
    for span, rows in parts:
        train, test = chronological_split(rows, test_fraction=test_fraction)
        train, test, new = new_user_split(train, test, new_user_fraction, seed)
        new_users += new
        written.append((span, train[INTERACTION_COLUMNS], test[INTERACTION_COLUMNS], rows[TIMESTAMP]))
    paths = {"items": os.path.join(out_dir, ITEMS_FILE)}
    span_rows = []
    for span, train, test, stamps in written:
        train_path = os.path.join(out_dir, span_file(span, "train") if span else TRAIN_FILE)
        eval_path = os.path.join(out_dir, span_file(span, "eval") if span else EVAL_FILE)
        _to_csv(train, train_path)
        _to_csv(test, eval_path)
        paths.setdefault("train", train_path)
        paths.setdefault("eval", eval_path)
        if span:
            span_rows.append({"span": span, "train_rows": len(train), "eval_rows": len(test),
                              "first_timestamp": int(stamps.min()), "last_timestamp": int(stamps.max())})
    _to_csv(cat[ITEM_COLUMNS], paths["items"])
    interacted = set(inter[ITEM_ID])
    return {
        "out_dir": out_dir,
        "paths": paths,
        "spans": span_rows,
        "train_rows": sum(len(w[1]) for w in written),
        "eval_rows": sum(len(w[2]) for w in written),
        "users": int(inter[USER_ID].nunique()),
        "new_users": len(new_users),
        "items": len(cat),
        "items_without_interactions": int((~cat[ITEM_ID].isin(interacted)).sum()),
        "duplicates_dropped": {"interactions": inter_dropped, "items": items_dropped},
        "id_changes": [],
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


def _span_masks(timestamps: np.ndarray, n_spans: int):
    span = time_spans(timestamps, n_spans)
    return [(n, span == n) for n in range(1, n_spans + 1)]


def read_contract(data_dir: str, span: Optional[int] = None) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read ``(train, eval, items)`` written by :func:`write_contract`; ids and text as str.

    ``span``: which span of a spanned layout (see `spans(data_dir)`); None: the unspanned layout.
    """
    train = _read_interactions(os.path.join(data_dir, span_file(span, "train") if span else TRAIN_FILE))
    evals = _read_interactions(os.path.join(data_dir, span_file(span, "eval") if span else EVAL_FILE))
    items = pd.read_csv(
        os.path.join(data_dir, ITEMS_FILE), dtype=str, keep_default_na=False, encoding="utf-8"
    )
    return train, evals, items


def summary_text(summary: dict) -> str:
    """What was written, plus every change made to the input (dropped duplicates, prefixed ids)."""
    out_dir = summary.get("out_dir") or os.path.dirname(os.path.dirname(os.path.dirname(summary["paths"]["train"])))
    lines = [
        f"wrote {summary['train_rows']} train + {summary['eval_rows']} eval interactions "
        f"({summary['users']} users), {summary['items']} items "
        f"({summary['items_without_interactions']} without interactions) under {out_dir}"
    ]
    for span in summary.get("spans", []):
        lines.append(f"  span-{span['span']}: {span['train_rows']} train + {span['eval_rows']} eval, timestamps "
                     f"{span['first_timestamp']}..{span['last_timestamp']}")
    if summary.get("new_users"):
        lines.append(f"{summary['new_users']} users kept entirely in eval (new_users slice; --new-user-fraction)")
    dropped = summary.get("duplicates_dropped", {})
    if any(dropped.values()):
        lines.append(f"dropped exact duplicate rows (--dedupe): {dropped.get('interactions', 0)} interaction(s), "
                     f"{dropped.get('items', 0)} item(s)")
    lines += list(summary.get("id_changes", []))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
PREFIX_MODES = ("auto", "always", "never")
SPANS_HELP = ("cut the interactions by time into N spans of about equal size, written as "
              "OUT/interactions/span-<1..N>/{train,eval}/ (span-N the newest; the pipeline reads the latest span "
              "or a window of them); each span is split per user as without spans. Default 0: no spans")


def prefixed(ids: pd.Series, prefix: str) -> pd.Series:
    """``prefix`` + id for every non-blank id; blank ids stay blank, so validation still rejects them."""
    text = ids.fillna("").astype(str).str.strip()
    return text.where(text == "", prefix + text)


def _all_numbers(ids: pd.Series) -> bool:
    """True if the column has non-blank ids and every one of them looks like a number."""
    text = ids.fillna("").astype(str).str.strip()
    distinct = pd.Series(text[text != ""].unique())
    return bool(len(distinct)) and bool(distinct.map(rules.looks_like_number).all())


def prefix_ids(interactions: pd.DataFrame, items: pd.DataFrame, mode: str = "auto",
               user_prefix: str = "u", item_prefix: str = "i") -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """Prefix id columns so ids stay strings; returns the changed frames and one line per change.

    ``mode``: 'auto' prefixes a column only when *all* its non-blank ids look like numbers (item
    ids: over both files), so an id the caller already uses as a string is never changed; 'always'
    prefixes every id; 'never' changes nothing. Blank ids are left blank (and rejected later).
    """
    if mode not in PREFIX_MODES:
        raise ValueError(f"prefix mode must be one of {PREFIX_MODES}, got {mode!r}")
    inter, cat, changes = interactions.copy(), items.copy(), []
    if mode == "never" or USER_ID not in inter.columns or ITEM_ID not in inter.columns or ITEM_ID not in cat.columns:
        return inter, cat, changes  # missing columns are reported by validation
    why = "--prefix-ids always" if mode == "always" else "every one looked like a number"
    if mode == "always" or _all_numbers(inter[USER_ID]):
        before = inter[USER_ID].astype(str).str.strip().iloc[0]
        inter[USER_ID] = prefixed(inter[USER_ID], user_prefix)
        changes.append(f"user ids prefixed with '{user_prefix}' ({why}), e.g. {before!r} -> {inter[USER_ID].iloc[0]!r}")
    if mode == "always" or _all_numbers(pd.concat([inter[ITEM_ID], cat[ITEM_ID]])):
        before = cat[ITEM_ID].astype(str).str.strip().iloc[0]
        inter[ITEM_ID] = prefixed(inter[ITEM_ID], item_prefix)
        cat[ITEM_ID] = prefixed(cat[ITEM_ID], item_prefix)
        changes.append(f"item ids prefixed with '{item_prefix}' in both files ({why}), "
                       f"e.g. {before!r} -> {cat[ITEM_ID].iloc[0]!r}")
    return inter, cat, changes


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description=(
            "Convert your own interaction + item files into the data contract the pipeline reads: "
            "OUT/interactions/{train,eval}/interactions.csv and OUT/items/items.csv. Per user, the "
            "last --test-fraction of interactions by time become eval; a 'history' column (previous "
            f"items, most recent last, at most {contract.HISTORY_LENGTH}) is added."
        ),
        epilog=(
            "Input files are UTF-8 CSV with a header row. Interactions need columns "
            "user_id,item_id,timestamp (integer Unix seconds, 1970 to 2100) and optionally rating; items need "
            "item_id,title and optionally categories ('|'-separated) and description. Ids may not be empty, "
            "contain whitespace or look like numbers. Every item in the interactions must be in the items "
            "file; items nobody interacted with are kept. Anything that breaks a rule is reported with its "
            "file, line and column, and nothing is written. "
            "Example: python -m data.prepare --interactions events.csv --items items.csv --out data/mine"
        ),
    )
    parser.add_argument("--interactions", required=True, help="CSV with user_id,item_id,timestamp[,rating]")
    parser.add_argument("--items", required=True, help="CSV with item_id,title[,categories,description]")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="per-user fraction of latest interactions held out for eval (default 0.2)")
    parser.add_argument("--new-user-fraction", type=float, default=0.05,
                        help="seeded fraction of users kept entirely in eval, for the new_users slice "
                             "(default 0.05; 0 disables)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new-user choice (default 0)")
    parser.add_argument("--spans", type=int, default=0, help=SPANS_HELP)
    parser.add_argument("--sep", default=",", help="field separator of both input files (default ',')")
    parser.add_argument("--prefix-ids", choices=PREFIX_MODES, default="auto",
                        help="'auto' (default): when every user id (or every item id) is a number, write them "
                             "as u<id> (i<id>) so they stay strings, and say so; ids that are already strings are "
                             "never changed. 'always': prefix every id. 'never': fail on number-like ids instead")
    parser.add_argument("--dedupe", action="store_true",
                        help="drop rows that exactly repeat an earlier row (and report how many) instead of failing")
    args = parser.parse_args(argv)
    sources = (Source("interactions", path=args.interactions, sep=args.sep),
               Source("items", path=args.items, sep=args.sep))
    try:
        inter = read_csv(sources[0], required=validation.REQUIRED_INTERACTION_COLUMNS)
        cat = read_csv(sources[1], required=validation.REQUIRED_ITEM_COLUMNS)
        inter, cat, changes = prefix_ids(inter, cat, args.prefix_ids)
        summary = write_contract(inter, cat, args.out, test_fraction=args.test_fraction, dedupe=args.dedupe,
                                 new_user_fraction=args.new_user_fraction, seed=args.seed, spans=args.spans,
                                 interactions_source=sources[0], items_source=sources[1])
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["id_changes"] = changes
    print(summary_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
