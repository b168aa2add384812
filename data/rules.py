"""The row rules of the data contract, written once for the importers and the pipeline's checks.

`data.prepare` / `data.movielens` reject input that breaks them before writing anything, and the
pipeline's AnomalyGate (`pipeline/components/anomaly_gate.py`) rejects a hand-written contract
folder that breaks them, with the same words::

    from data import rules

    rules.id_problem("")        # -> 'is empty or whitespace-only'
    rules.id_problem("u 42")    # -> 'contains whitespace (...)'
    rules.id_problem("u42")     # -> None
    rules.timestamp_in_range(-1)  # -> False: before 1970

Ranges the schema can express (timestamp, rating) are read from the curated schemas the
pipeline's ExampleValidator uses, so they are defined in one place: `schema/*/schema.pbtxt`.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from pipeline import configs
from schema import contract


def _feature(schema_path: str, name: str) -> schema_pb2.Feature:
    schema = schema_pb2.Schema()
    with open(schema_path, encoding="utf-8") as f:
        text_format.Parse(f.read(), schema)
    return next(feature for feature in schema.feature if feature.name == name)


_TIMESTAMP_DOMAIN = _feature(configs.INTERACTIONS_SCHEMA, contract.TIMESTAMP).int_domain
_RATING_DOMAIN = _feature(configs.INTERACTIONS_SCHEMA, contract.RATING).float_domain

TIMESTAMP_MIN: int = _TIMESTAMP_DOMAIN.min
TIMESTAMP_MAX: int = _TIMESTAMP_DOMAIN.max
RATING_MIN: float = _RATING_DOMAIN.min
RATING_MAX: float = _RATING_DOMAIN.max

# Columns that hold ids (history is space-separated ids, so ids may not contain whitespace).
ID_COLUMNS = {"interactions": (contract.USER_ID, contract.ITEM_ID), "items": (contract.ITEM_ID,)}
# Columns that must hold text, not just blanks.
TEXT_COLUMNS = {"items": (contract.TITLE,)}
# Two interactions with the same key are the same event: at most one row per key.
DUPLICATE_KEY: Tuple[str, ...] = (contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP)

# What is wrong, in the words both sides print.
BLANK = "is empty or whitespace-only"
ID_WHITESPACE = "contains whitespace (history is space-separated, so ids may not)"
ID_NUMBER_LIKE = ("looks like a number or a missing value (ids must be strings a CSV reader keeps as text, "
                  "e.g. 'u42' rather than '42')")
TIMESTAMP_OUT_OF_RANGE = (f"is outside {TIMESTAMP_MIN}..{TIMESTAMP_MAX} (Unix seconds from 1970 to 2100; "
                          "a negative value is before 1970)")
RATING_OUT_OF_RANGE = f"is outside {RATING_MIN:g}..{RATING_MAX:g}"
DUPLICATE_ROWS = "duplicated rows"
DUPLICATE_ROWS_DETAIL = "repeat an earlier (" + ", ".join(DUPLICATE_KEY) + ")"

_BLANK = re.compile(r"\s*")
_WHITESPACE = re.compile(r"\s")
# Strings that pandas (and most CSV readers) turn into missing values or booleans.
_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "true", "false", "True",
    "False", "TRUE", "FALSE",
})


def is_blank(value: Optional[str]) -> bool:
    """True for a missing value, '' and whitespace-only strings."""
    return value is None or _BLANK.fullmatch(value) is not None


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


def id_problem(value: Optional[str]) -> Optional[str]:
    """What is wrong with an id (one of BLANK, ID_WHITESPACE, ID_NUMBER_LIKE), or None if it is valid."""
    if is_blank(value):
        return BLANK
    if _WHITESPACE.search(value):
        return ID_WHITESPACE
    if looks_like_number(value):
        return ID_NUMBER_LIKE
    return None


def timestamp_in_range(value: int) -> bool:
    """True if ``value`` (Unix seconds) is inside the schema's timestamp domain."""
    return TIMESTAMP_MIN <= value <= TIMESTAMP_MAX
