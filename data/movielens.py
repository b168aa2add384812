"""MovieLens importer: ml-100k, ml-1m and ml-latest-small into the data contract.

    python -m data.movielens --src ../shared/data/ml-latest-small --out data/ml-latest-small
    python -m data.movielens --src ../shared/data/ml-latest-small --out data/ml-spans --spans 6  # by time

Ids become ``u<userId>`` / ``m<movieId>``; categories are the '|'-separated genres; for
ml-latest-small the movie's tags (``tags.csv``, optional) become its description. All ratings are
kept as interactions (the rating is in the ``rating`` column). MovieLens data has its own licence:
never commit it into the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data import prepare, validation
from data.source import DataError, Source, read_csv
from schema import contract

FORMATS = ("ml-100k", "ml-1m", "ml-latest-small")

# Genre order of ml-100k's u.item flag columns (as in its u.genre).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
_NO_GENRES = "(no genres listed)"
_RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
_MOVIES_COLUMNS = ("movieId", "title", "genres")
_TAGS_COLUMNS = ("movieId", "tag", "timestamp")
# How the MovieLens files name the contract's columns, for error messages.
_LATEST_RATING_FIELDS = {contract.USER_ID: "column 'userId'", contract.ITEM_ID: "column 'movieId'"}
_LATEST_MOVIE_FIELDS = {contract.ITEM_ID: "column 'movieId'"}
_DAT_RATING_FIELDS = {contract.USER_ID: "field 1 (user id)", contract.ITEM_ID: "field 2 (movie id)",
                      contract.RATING: "field 3 (rating)", contract.TIMESTAMP: "field 4 (timestamp)"}
_DAT_MOVIE_FIELDS = {contract.ITEM_ID: "field 1 (movie id)", contract.TITLE: "field 2 (title)"}


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


def sources(path: str, fmt: str) -> Tuple[Source, Source]:
    """The (ratings, movies) files of a MovieLens variant, as read, so errors name file and line."""
    join = functools.partial(os.path.join, path)
    if fmt == "ml-latest-small":
        return (Source("interactions", join("ratings.csv"), fields=_LATEST_RATING_FIELDS),
                Source("items", join("movies.csv"), fields=_LATEST_MOVIE_FIELDS))
    dat = dict(encoding="latin-1", header=False)
    if fmt == "ml-100k":
        return (Source("interactions", join("u.data"), sep="\t", fields=_DAT_RATING_FIELDS, **dat),
                Source("items", join("u.item"), sep="|", quoted=False, fields=_DAT_MOVIE_FIELDS, **dat))
    return (Source("interactions", join("ratings.dat"), sep="::", quoted=False, fields=_DAT_RATING_FIELDS, **dat),
            Source("items", join("movies.dat"), sep="::", quoted=False, fields=_DAT_MOVIE_FIELDS, **dat))


def _interactions(users, movies, ratings, stamps) -> pd.DataFrame:
    """Contract columns; numbers stay text so validation can name the rows that are not numbers."""
    return pd.DataFrame(
        {
            contract.USER_ID: prepare.prefixed(pd.Series(users), "u"),
            contract.ITEM_ID: prepare.prefixed(pd.Series(movies), "m"),
            contract.TIMESTAMP: pd.Series(stamps).str.strip(),
            contract.RATING: pd.Series(ratings).str.strip(),
        }
    )


def _items(ids, titles, categories, descriptions=None) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            contract.ITEM_ID: prepare.prefixed(pd.Series(ids), "m"),
            contract.TITLE: pd.Series(titles).astype(str).str.strip(),
            contract.CATEGORIES: pd.Series(categories).fillna("").astype(str),
            contract.DESCRIPTION: (pd.Series(descriptions).fillna("").astype(str)
                                   if descriptions is not None else pd.Series([""] * n)),
        }
    )


def _read_split(source: Source, n_cols: int) -> pd.DataFrame:
    """Read a headerless file with a literal (possibly multi-char) separator, no quoting."""
    rows = []
    with open(source.path, encoding=source.encoding, newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(source.sep)
            if len(parts) < n_cols:
                raise DataError(f"{source.path}: line {number}: expected {n_cols} fields separated by "
                                f"{source.sep!r}, saw {len(parts)}")
            if len(parts) > n_cols:  # separator inside the title (field 1): rejoin it there
                k = len(parts) - (n_cols - 2)
                parts = [parts[0], source.sep.join(parts[1:k])] + parts[k:]
            rows.append(parts)
    return pd.DataFrame(rows, columns=range(n_cols))


def _load_100k(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    ratings, movies = sources(path, "ml-100k")
    r = read_csv(ratings, names=["user", "movie", "rating", "ts"])
    inter = _interactions(r.user, r.movie, r.rating, r.ts)
    genres = ML100K_GENRES
    genre_file = os.path.join(path, "u.genre")
    if os.path.exists(genre_file):
        g = _read_split(dataclasses.replace(movies, name="genres", path=genre_file), 2)
        genres = [name for name, _ in sorted(zip(g[0], g[1].astype(int)), key=lambda t: t[1])]
    m = _read_split(movies, 5 + len(genres))
    flags = m.iloc[:, 5:5 + len(genres)].to_numpy() == "1"
    cats = ["|".join(gn for gn, on in zip(genres, row) if on) for row in flags]
    items = _items(m[0], m[1], cats)
    return inter, items


def _load_1m(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    ratings, movies = sources(path, "ml-1m")
    r = _read_split(ratings, 4)
    inter = _interactions(r[0], r[1], r[2], r[3])
    m = _read_split(movies, 3)
    items = _items(m[0], m[1], m[2])
    return inter, items


def tag_descriptions(tags: pd.DataFrame) -> pd.Series:
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


def read_tags(path: str) -> Optional[pd.DataFrame]:
    """ml-latest-small's ``tags.csv`` (userId, movieId, tag, timestamp), or None when the directory has none."""
    tags_file = os.path.join(path, "tags.csv")
    if not os.path.exists(tags_file):
        return None
    columns = ("userId",) + _TAGS_COLUMNS
    tags = read_csv(Source("tags", tags_file), required=columns)
    validation.check_columns(tags, columns, Source("tags", tags_file))
    return tags


def _load_latest(path: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    ratings, movies = sources(path, "ml-latest-small")
    r = read_csv(ratings, required=_RATINGS_COLUMNS)
    validation.check_columns(r, _RATINGS_COLUMNS, ratings)
    inter = _interactions(r.userId, r.movieId, r.rating, r.timestamp)
    m = read_csv(movies, required=_MOVIES_COLUMNS)
    validation.check_columns(m, _MOVIES_COLUMNS, movies)
    cats = m.genres.where(m.genres != _NO_GENRES, "")
    desc = None
    tags_file = os.path.join(path, "tags.csv")
    if os.path.exists(tags_file):
        tags_source = Source("tags", tags_file)
        tags = read_csv(tags_source, required=_TAGS_COLUMNS)
        validation.check_columns(tags, _TAGS_COLUMNS, tags_source)
        desc = m.movieId.map(tag_descriptions(tags)).fillna("")
    items = _items(m.movieId, m.title, cats, desc)
    return inter, items


def load_movielens(path: str, format: str = "auto") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Load a MovieLens directory into ``(interactions, items)`` contract DataFrames (no history).

    ``format``: 'auto' (detect from the files), 'ml-100k', 'ml-1m' or 'ml-latest-small'. The rows are
    checked with the rules of `data.prepare`; a DataError names the MovieLens file, line and column.
    """
    if not os.path.isdir(path):
        raise ValueError(f"MovieLens directory {path!r} does not exist")
    fmt = detect_format(path) if format == "auto" else format
    loaders = {"ml-100k": _load_100k, "ml-1m": _load_1m, "ml-latest-small": _load_latest}
    if fmt not in loaders:
        raise ValueError(f"unknown MovieLens format {format!r}; use one of auto, {', '.join(FORMATS)}")
    inter, items = loaders[fmt](path)
    ratings, movies = sources(path, fmt)
    return validation.validate_interactions(inter, ratings), validation.validate_items(items, movies)


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
    parser.add_argument("--dedupe", action="store_true",
                        help="drop rows that exactly repeat an earlier row (and report how many) instead of failing")
    parser.add_argument("--spans", type=int, default=0, help=prepare.SPANS_HELP)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        inter, items = load_movielens(args.src, args.format)
        ratings, movies = sources(args.src, detect_format(args.src) if args.format == "auto" else args.format)
        summary = prepare.write_contract(inter, items, args.out, test_fraction=args.test_fraction,
                                         dedupe=args.dedupe, spans=args.spans,
                                         interactions_source=ratings, items_source=movies)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{prepare.summary_text(summary)} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
