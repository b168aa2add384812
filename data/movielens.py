"""MovieLens importer: ml-100k, ml-1m and ml-latest-small into the data contract.

    python -m data.movielens --src ../shared/data/ml-latest-small --out data/ml-latest-small

Ids become ``u<userId>`` / ``m<movieId>``; categories are the '|'-separated genres; for
ml-latest-small the movie's tags (``tags.csv``, optional) become its description. All ratings are
kept as interactions (the rating is in the ``rating`` column). MovieLens data has its own licence:
never commit it into the project.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data import prepare
from schema import contract as features

FORMATS = ("ml-100k", "ml-1m", "ml-latest-small")

# Genre order of ml-100k's u.item flag columns (as in its u.genre).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
_NO_GENRES = "(no genres listed)"


def detect_format(path: str) -> str:
    """Guess the MovieLens variant from the files in ``path``."""
    if os.path.exists(os.path.join(path, "u.data")):
        return "ml-100k"
    if os.path.exists(os.path.join(path, "ratings.dat")):
        return "ml-1m"
    if os.path.exists(os.path.join(path, "ratings.csv")):
        return "ml-latest-small"
    raise ValueError(
        f"cannot detect the MovieLens format of {path!r}: expected u.data (ml-100k), "
        "ratings.dat (ml-1m) or ratings.csv (ml-latest-small)"
    )


def _interactions(users, movies, ratings, stamps) -> pd.DataFrame:
    return pd.DataFrame(
        {
            features.USER_ID: "u" + pd.Series(users).astype(str).str.strip(),
            features.ITEM_ID: "m" + pd.Series(movies).astype(str).str.strip(),
            features.TIMESTAMP: pd.Series(stamps).astype(np.int64),
            features.RATING: pd.Series(ratings).astype(float),
        }
    )


def _items(ids, titles, categories, descriptions=None) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            features.ITEM_ID: "m" + pd.Series(ids).astype(str).str.strip(),
            features.TITLE: pd.Series(titles).astype(str).str.strip(),
            features.CATEGORIES: pd.Series(categories).fillna("").astype(str),
            features.DESCRIPTION: (pd.Series(descriptions).fillna("").astype(str)
                                   if descriptions is not None else pd.Series([""] * n)),
        }
    )


def _read_split(path: str, sep: str, n_cols: int, encoding: str) -> pd.DataFrame:
    """Read a headerless file with a literal (possibly multi-char) separator, no quoting."""
    rows = []
    with open(path, encoding=encoding, newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) < n_cols:
                raise ValueError(f"{path}: line {len(rows) + 1} has {len(parts)} fields, expected {n_cols}")
            if len(parts) > n_cols:  # separator inside the title (field 1): rejoin it there
                k = len(parts) - (n_cols - 2)
                parts = [parts[0], sep.join(parts[1:k])] + parts[k:]
            rows.append(parts)
    return pd.DataFrame(rows)


def _load_100k(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    r = pd.read_csv(os.path.join(path, "u.data"), sep="\t", header=None,
                    names=["user", "movie", "rating", "ts"], dtype=str)
    inter = _interactions(r.user, r.movie, r.rating, r.ts)
    genres = ML100K_GENRES
    genre_file = os.path.join(path, "u.genre")
    if os.path.exists(genre_file):
        g = _read_split(genre_file, "|", 2, "latin-1")
        g = g[g[0].str.len() > 0]
        genres = [name for name, _ in sorted(zip(g[0], g[1].astype(int)), key=lambda t: t[1])]
    m = _read_split(os.path.join(path, "u.item"), "|", 5 + len(genres), "latin-1")
    flags = m.iloc[:, 5:5 + len(genres)].to_numpy() == "1"
    cats = ["|".join(gn for gn, on in zip(genres, row) if on) for row in flags]
    items = _items(m[0], m[1], cats)
    return inter, items


def _load_1m(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    r = _read_split(os.path.join(path, "ratings.dat"), "::", 4, "latin-1")
    inter = _interactions(r[0], r[1], r[2], r[3])
    m = _read_split(os.path.join(path, "movies.dat"), "::", 3, "latin-1")
    items = _items(m[0], m[1], m[2])
    return inter, items


def _tag_descriptions(tags: pd.DataFrame) -> pd.Series:
    """movieId -> 'tag1, tag2, ...' (distinct case-insensitively, in order of first use)."""
    t = tags.copy()
    t["tag"] = t["tag"].fillna("").astype(str).str.strip()
    t = t[t["tag"] != ""]
    t["_ts"] = pd.to_numeric(t["timestamp"], errors="coerce").fillna(0)
    t["_pos"] = np.arange(len(t))
    t = t.sort_values(["movieId", "_ts", "_pos"], kind="mergesort")
    t["_key"] = t["tag"].str.lower()
    t = t.drop_duplicates(["movieId", "_key"], keep="first")
    return t.groupby("movieId", sort=False)["tag"].agg(", ".join)


def _load_latest(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    r = pd.read_csv(os.path.join(path, "ratings.csv"), dtype=str, keep_default_na=False)
    inter = _interactions(r.userId, r.movieId, r.rating, r.timestamp)
    m = pd.read_csv(os.path.join(path, "movies.csv"), dtype=str, keep_default_na=False)
    cats = m.genres.where(m.genres != _NO_GENRES, "")
    desc = None
    tags_file = os.path.join(path, "tags.csv")
    if os.path.exists(tags_file):
        tags = pd.read_csv(tags_file, dtype=str, keep_default_na=False)
        desc = m.movieId.map(_tag_descriptions(tags)).fillna("")
    items = _items(m.movieId, m.title, cats, desc)
    return inter, items


def load_movielens(path: str, format: str = "auto") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Load a MovieLens directory into ``(interactions, items)`` contract DataFrames (no history).

    ``format``: 'auto' (detect from the files), 'ml-100k', 'ml-1m' or 'ml-latest-small'.
    """
    if not os.path.isdir(path):
        raise ValueError(f"MovieLens directory {path!r} does not exist")
    fmt = detect_format(path) if format == "auto" else format
    loaders = {"ml-100k": _load_100k, "ml-1m": _load_1m, "ml-latest-small": _load_latest}
    if fmt not in loaders:
        raise ValueError(f"unknown MovieLens format {format!r}; use one of auto, {', '.join(FORMATS)}")
    return loaders[fmt](path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.movielens",
        description=(
            "Import a MovieLens dataset (ml-100k, ml-1m or ml-latest-small, unzipped) into the "
            "data-contract layout: OUT/interactions/{train,eval}/interactions.csv, OUT/items/items.csv. "
            "Ids become u<userId>/m<movieId>; per user the last --test-fraction of ratings by time are eval."
        ),
        epilog="MovieLens is research/non-commercial data: do not commit it or the converted files.",
    )
    parser.add_argument("--src", required=True, help="directory with the unzipped MovieLens files")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                        help="dataset variant (default: detect from the files)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="per-user fraction of latest interactions held out for eval (default 0.2)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        inter, items = load_movielens(args.src, args.format)
        summary = prepare.write_contract(inter, items, args.out, test_fraction=args.test_fraction)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{prepare.summary_text(summary)} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
