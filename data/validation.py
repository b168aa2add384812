"""Checks of raw interactions and items against the data contract (`data/rules.py`).

Each check either returns clean columns or raises a :class:`~data.source.DataError` that names
the file (or table), column and first offending rows. Row positions are kept in the index, so
a message still points at the right line after duplicates were dropped::

    src = Source("interactions", path="events.csv")
    inter = validate_interactions(raw, src)            # ids, timestamps, ratings
    inter, dropped = drop_duplicates(inter, rules.DUPLICATE_KEY, src, dedupe=True)

All checks are column-wise (pandas), except the id rule, which runs once per distinct id.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data import rules
from data.source import MAX_SHOWN, DataError, Source
from schema import contract

USER_ID = contract.USER_ID
ITEM_ID = contract.ITEM_ID
TIMESTAMP = contract.TIMESTAMP
RATING = contract.RATING
TITLE = contract.TITLE
CATEGORIES = contract.CATEGORIES
DESCRIPTION = contract.DESCRIPTION

REQUIRED_INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)
REQUIRED_ITEM_COLUMNS = (ITEM_ID, TITLE)

INTERACTIONS = Source("interactions")
ITEMS = Source("items")

NUMBER_LIKE_HINT = ("python -m data.prepare --prefix-ids always prefixes every id ('42' -> 'u42'); "
                    "--prefix-ids auto does so only when all ids of a column are numbers")


def _error(source: Source, column: Optional[str], problem: str, mask: pd.Series, values: Optional[pd.Series] = None,
           notes: Optional[Sequence[str]] = None, hint: str = "") -> DataError:
    """source.error for the rows where ``mask`` holds, showing ``values`` (default: the column's) of the first few."""
    positions = mask.index[mask.to_numpy()].tolist()
    shown = None if notes is not None else (values[mask].head(MAX_SHOWN).tolist() if values is not None else None)
    return source.error(column, problem, positions, values=shown, notes=notes, hint=hint)


def check_columns(df: pd.DataFrame, required: Iterable[str], source: Source) -> None:
    """The frame has the required columns and at least one row."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source.where} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        header = "line 1 (header): " if source.path and source.header else ""
        raise DataError(f"{source.where}: {header}missing required column(s) {missing}; "
                        f"it has columns {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{source.where}: no data rows")


def check_known_columns(df: pd.DataFrame, known: Sequence[str], source: Source) -> None:
    """The frame has no column outside ``known`` (a misspelt optional column would otherwise be dropped)."""
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        header = "line 1 (header): " if source.path and source.header else ""
        raise DataError(f"{source.where}: {header}unknown column(s) {unknown}; expected only {list(known)}")


def check_ids(series: pd.Series, column: str, source: Source) -> pd.Series:
    """Ids as str; rejects the rows of the first broken id rule (blank, whitespace, number-like)."""
    ids = series.fillna("").astype(str)
    distinct = pd.Series(ids.unique())
    problems = distinct.map(rules.id_problem)
    if problems.notna().any():
        bad = ids.isin(distinct[problems.notna()])
        problem = problems[distinct == ids[bad].iloc[0]].iloc[0]
        rows = ids.isin(distinct[problems == problem])
        hint = NUMBER_LIKE_HINT if problem == rules.ID_NUMBER_LIKE else ""
        raise _error(source, column, problem, rows, ids, hint=hint)
    return ids


def check_timestamps(series: pd.Series, source: Source) -> pd.Series:
    """Whole Unix seconds inside the schema's range, as int64."""
    if pd.api.types.is_bool_dtype(series.dtype):
        raise DataError(f"{source.where}: {source.field(TIMESTAMP)} is boolean, expected integer Unix seconds")
    if pd.api.types.is_integer_dtype(series.dtype):
        seconds = series.astype(np.int64)
    else:
        number = pd.to_numeric(series, errors="coerce")
        finite = number.fillna(0).to_numpy(dtype=float)
        bad = number.isna().to_numpy() | ~np.isfinite(finite) | (np.abs(finite) > 2**62) | (np.floor(finite) != finite)
        if bad.any():
            raise _error(source, TIMESTAMP, "is not an integer (expected Unix time in whole seconds)",
                         pd.Series(bad, index=series.index), series)
        seconds = number.astype(np.int64)
    outside = (seconds < rules.TIMESTAMP_MIN) | (seconds > rules.TIMESTAMP_MAX)
    if outside.any():
        raise _error(source, TIMESTAMP, rules.TIMESTAMP_OUT_OF_RANGE, outside, series)
    return seconds


def check_ratings(series: pd.Series, source: Source) -> pd.Series:
    """Optional numbers (blank: missing) inside the schema's range, as float."""
    number = pd.to_numeric(series, errors="coerce")
    given = series.notna() & (series.astype(str).str.strip() != "")
    bad = number.isna() & given
    if bad.any():
        raise _error(source, RATING, "is not a number", bad, series)
    outside = (number < rules.RATING_MIN) | (number > rules.RATING_MAX)
    if outside.any():
        raise _error(source, RATING, rules.RATING_OUT_OF_RANGE, outside, series)
    return number.astype(float)


def clean_text(series: pd.Series) -> pd.Series:
    """Missing -> '', newlines/tabs -> single spaces, stripped (one CSV record per line)."""
    s = series.fillna("").astype(str)
    return s.str.replace(r"[\r\n\t]+", " ", regex=True).str.strip()


def validate_interactions(interactions: pd.DataFrame, source: Source = INTERACTIONS) -> pd.DataFrame:
    """Checked, normalised copy with user_id, item_id, timestamp, rating (1.0 when the column is absent)."""
    check_columns(interactions, REQUIRED_INTERACTION_COLUMNS, source)
    df = interactions.reset_index(drop=True)
    out = pd.DataFrame({
        USER_ID: check_ids(df[USER_ID], USER_ID, source),
        ITEM_ID: check_ids(df[ITEM_ID], ITEM_ID, source),
        TIMESTAMP: check_timestamps(df[TIMESTAMP], source),
    })
    out[RATING] = check_ratings(df[RATING], source) if RATING in df.columns else 1.0  # 1.0: implicit feedback
    return out


def validate_items(items: pd.DataFrame, source: Source = ITEMS) -> pd.DataFrame:
    """Checked, normalised copy of the catalogue with item_id, title, categories, description."""
    check_columns(items, REQUIRED_ITEM_COLUMNS, source)
    df = items.reset_index(drop=True)
    ids = check_ids(df[ITEM_ID], ITEM_ID, source)
    title = clean_text(df[TITLE])
    blank = title == ""
    if blank.any():
        notes = [f"{ITEM_ID} {v!r}" for v in ids[blank].head(MAX_SHOWN)]
        raise _error(source, TITLE, rules.BLANK, blank, notes=notes)
    out = pd.DataFrame({ITEM_ID: ids, TITLE: title})
    for col in (CATEGORIES, DESCRIPTION):
        out[col] = clean_text(df[col]) if col in df.columns else ""
    return out


def _first_rows(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Per row, the position of the first row with the same values in ``columns``."""
    group = df.groupby(list(columns), sort=False, dropna=False).ngroup()
    return pd.Series(df.index, index=df.index).groupby(group).transform("min")


def drop_duplicates(df: pd.DataFrame, key: Sequence[str], source: Source,
                    dedupe: bool = False) -> Tuple[pd.DataFrame, int]:
    """Rejects (or, with ``dedupe``, drops) exact copies of an earlier row; always rejects rows that repeat
    an earlier row's ``key`` with other values. Returns the rows kept and how many were dropped."""
    exact = df.duplicated(keep="first")
    if exact.any() and not dedupe:
        first = _first_rows(df, list(df.columns))[exact].head(MAX_SHOWN)
        notes = [f"same as {name}" for name in source.row_names(first.tolist())]
        raise _error(source, None, f"{rules.DUPLICATE_ROWS}: exact copies of an earlier row", exact, notes=notes,
                     hint="pass --dedupe to drop them")
    kept = df[~exact]
    repeated = kept.duplicated(subset=list(key), keep="first")
    if repeated.any():
        first = _first_rows(kept, key)[repeated].head(MAX_SHOWN)
        notes = [f"same ({', '.join(key)}) as {name}" for name in source.row_names(first.tolist())]
        raise _error(source, None, f"{rules.DUPLICATE_ROWS}: rows that repeat an earlier ({', '.join(key)}) "
                     "with other values", repeated, notes=notes, hint="keep one row per "
                     + ("event" if len(key) > 1 else key[0]))
    return kept, int(exact.sum())


def check_catalogue(interactions: pd.DataFrame, items: pd.DataFrame,
                    source: Source = INTERACTIONS, items_source: Source = ITEMS) -> None:
    """Every interacted item has a catalogue row."""
    unknown = ~interactions[ITEM_ID].isin(set(items[ITEM_ID]))
    if unknown.any():
        n = int(interactions.loc[unknown, ITEM_ID].nunique())
        raise _error(source, ITEM_ID, f"is not in the items catalogue ({items_source.where})", unknown,
                     interactions[ITEM_ID], hint=f"{n} distinct unknown item id(s); every interacted item needs "
                     "a catalogue row")
