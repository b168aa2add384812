"""Item catalogue CSVs (the contract's `<data>/items/*.csv`): the one reader every tool uses.

    titles = read_titles("data/sample/items")            # {item_id: title}
    items = read_items("data/sample/items/items.csv")    # {column: [values]} of contract.ITEM_COLUMNS

A catalogue has one row per item, small next to the interactions, so it is read whole with the
standard library: tools like the `recommend` client stay free of TensorFlow and pandas.
"""
from __future__ import annotations

import csv
import glob
import os

from schema import contract


def item_csv_files(path: str) -> list[str]:
    """`[path]` for a CSV file, the sorted `*.csv` files of a directory.

    Raises:
      FileNotFoundError: `path` is neither a file nor a directory holding CSV files.
    """
    files = sorted(glob.glob(os.path.join(path, "*.csv"))) if os.path.isdir(path) else \
        [path] if os.path.isfile(path) else []
    if not files:
        raise FileNotFoundError(f"No item CSV at {path}: expected a .csv file or a directory of them")
    return files


def read_items(path: str) -> dict[str, list[str]]:
    """The catalogue's columns, rows in file order.

    Args:
      path: one CSV file, or a directory of them (`<data>/items` of the contract layout).

    Returns:
      `{column: values}` for each of `contract.ITEM_COLUMNS`; an optional column a file lacks
      reads as "".

    Raises:
      FileNotFoundError: no CSV at `path`.
      ValueError: a file lacks a required column (`contract.REQUIRED_ITEM_COLUMNS`); the message
        names the file and the columns it has.
    """
    columns: dict[str, list[str]] = {name: [] for name in contract.ITEM_COLUMNS}
    for file in item_csv_files(path):
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in contract.REQUIRED_ITEM_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{file}: item CSV lacks required column(s) {missing}; "
                                 f"its columns are {reader.fieldnames}")
            for row in reader:
                for name, values in columns.items():
                    values.append(row.get(name) or "")
    return columns


def read_titles(path: str) -> dict[str, str]:
    """`{item_id: title}` of the catalogue at `path` (a CSV file or a directory of them)."""
    items = read_items(path)
    return dict(zip(items[contract.ITEM_ID], items[contract.TITLE]))
