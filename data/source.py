"""Where input rows come from, so every rejection names the file, line and column.

A :class:`Source` describes one input table (a user's CSV file, a MovieLens file, or a DataFrame
passed in code). :func:`read_csv` reads it as strings and turns parser failures (empty file,
wrong field count, unterminated quote, bytes that are not UTF-8) into a :class:`DataError` that
names the file and line; validation code raises ``source.error(...)`` with row positions, which
become file lines only when there is something to report::

    src = Source("interactions", path="events.csv")
    df = read_csv(src, required=("user_id", "item_id", "timestamp"))
    raise src.error("user_id", "is empty or whitespace-only", positions=[3])
    # DataError: events.csv: column 'user_id' is empty or whitespace-only in 1 row(s): line 5 ('')
"""

from __future__ import annotations

import csv
import dataclasses
import re
from typing import List, Mapping, Optional, Sequence

import pandas as pd

MAX_SHOWN = 3


class DataError(ValueError):
    """Input that breaks the data contract; the message names the file (or table), line and column."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One input table: ``name`` says what it holds; ``path`` is its file (None for a DataFrame).

    ``quoted``: CSV quoting (a quoted value may span lines); False for files with one record per
    line and a literal separator (MovieLens ``.dat``, ``u.item``). ``header``: the first record
    names the columns. ``fields``: how the file names a contract column where it differs, e.g.
    ``{"user_id": "column 'userId'"}`` or ``{"user_id": "field 1 (user id)"}``.
    """

    name: str
    path: Optional[str] = None
    sep: str = ","
    encoding: str = "utf-8"
    header: bool = True
    quoted: bool = True
    fields: Optional[Mapping[str, str]] = None

    @property
    def where(self) -> str:
        """The file, or the table's name when the rows did not come from a file."""
        return self.path or self.name

    def field(self, column: str) -> str:
        """How the file names contract ``column``: "column 'userId'", "field 1 (user id)"."""
        return (self.fields or {}).get(column, f"column '{column}'")

    def row_names(self, positions: Sequence[int]) -> List[str]:
        """'line 7' for each data row ``position`` (0-based, as read), or 'row 5' without a file."""
        if not self.path:
            return [f"row {p}" for p in positions]
        lines = self._data_lines()
        # A file the line scan reads differently from pandas still gets a usable position.
        return [f"line {lines[p]}" if p < len(lines) else f"data row {p + 1}" for p in positions]

    def rows(self, positions: Sequence[int], notes: Optional[Sequence[str]] = None) -> str:
        """The first MAX_SHOWN rows, each with an optional note: "line 4 ('x'), line 9 ('y') and 3 more"."""
        positions = list(positions)
        shown = [name + (f" ({notes[k]})" if notes is not None else "")
                 for k, name in enumerate(self.row_names(positions[:MAX_SHOWN]))]
        more = f" and {len(positions) - MAX_SHOWN} more" if len(positions) > MAX_SHOWN else ""
        return ", ".join(shown) + more

    def error(self, column: Optional[str], problem: str, positions: Sequence[int],
              values: Optional[Sequence] = None, notes: Optional[Sequence[str]] = None, hint: str = "") -> DataError:
        """DataError "<file>: column '<c>' <problem> in N row(s): line 4 ('x'), ...[; hint]".

        ``values`` (shown with repr) or ``notes`` (shown as is) describe the first MAX_SHOWN rows.
        """
        if values is not None:
            notes = [repr(v) for v in values]
        subject = f"{self.field(column)} {problem}" if column else problem
        message = f"{self.where}: {subject} in {len(positions)} row(s): {self.rows(positions, notes)}"
        return DataError(message + (f"; {hint}" if hint else ""))

    # -- line numbers (read from the file only when an error is reported) --------------------------
    def _record_lines(self) -> "List[tuple]":
        """(first line, is blank) of every record in the file, header included."""
        out = []
        with open(self.path, encoding=self.encoding, errors="replace", newline="") as f:
            if self.quoted and len(self.sep) == 1:
                reader = csv.reader(f, delimiter=self.sep)
                start = 1
                for record in reader:
                    out.append((start, not record or (len(record) == 1 and not record[0].strip())))
                    start = reader.line_num + 1
            else:
                out = [(n, not line.strip()) for n, line in enumerate(f, 1)]
        return out

    def _data_lines(self) -> List[int]:
        records = [line for line, blank in self._record_lines() if not blank]
        return records[1:] if self.header else records

    def record_line(self, record: int) -> int:
        """First line of the 1-based ``record`` (header and blank lines counted, as pandas counts)."""
        records = self._record_lines()
        return records[record - 1][0] if 0 < record <= len(records) else record


def _undecodable(source: Source) -> str:
    """'line 5, column 'title': byte 0xff' for the first byte that is not valid in the encoding."""
    with open(source.path, "rb") as f:
        header = f.readline()
        f.seek(0)
        for n, line in enumerate(f, 1):
            try:
                line.decode(source.encoding)
            except UnicodeDecodeError as e:
                where = f"line {n}"
                names = next(csv.reader([header.decode(source.encoding, "replace").lstrip("\ufeff")],
                                        delimiter=source.sep)) if source.header and len(source.sep) == 1 else []
                fields = next(csv.reader([line.decode(source.encoding, "replace")], delimiter=source.sep)) \
                    if len(source.sep) == 1 else []
                hit = [k for k, v in enumerate(fields) if "\ufffd" in v]
                if n > 1 and hit and hit[0] < len(names):
                    where += f", column '{names[hit[0]]}'"
                return f"{where}: byte 0x{line[e.start]:02x} (byte {e.start + 1} of the line)"
    return "somewhere"


def _parser_error(source: Source, error: Exception) -> DataError:
    text = str(error)
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if fields:
        expected, record, saw = (int(g) for g in fields.groups())
        return DataError(
            f"{source.where}: line {source.record_line(record)}: expected {expected} fields, saw {saw} "
            f"(a value that contains the separator {source.sep!r} must be in double quotes)")
    quote = re.search(r"EOF inside string starting at row (\d+)", text)
    if quote:
        return DataError(f"{source.where}: line {source.record_line(int(quote.group(1)) + 1)}: a quoted value "
                         "is never closed (unbalanced double quote)")
    return DataError(f"{source.where}: cannot be read as CSV: {text.strip()}")


def read_csv(source: Source, required: Sequence[str] = (), names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """All columns of a CSV file as strings; every failure is a DataError naming the file (and line).

    ``required`` only words the empty-file message (which header was expected); ``names`` are the
    column names of a file without a header row.
    """
    expected = f" (expected a header row with {','.join(required)})" if required else ""
    try:
        df = pd.read_csv(source.path, sep=source.sep, dtype=str, keep_default_na=False, encoding=source.encoding,
                         header=0 if source.header else None, names=names, quoting=csv.QUOTE_MINIMAL
                         if source.quoted else csv.QUOTE_NONE, engine="c" if len(source.sep) == 1 else "python")
    except FileNotFoundError:
        raise DataError(f"{source.where}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{source.where}: is a directory, expected a CSV file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.where}: the file is empty{expected}") from None
    except pd.errors.ParserError as e:
        raise _parser_error(source, e) from None
    except UnicodeDecodeError:
        raise DataError(f"{source.where}: {_undecodable(source)} is not valid {source.encoding.upper()} "
                        f"(save the file as {source.encoding.upper()})") from None
    if len(df) == 0:
        raise DataError(f"{source.where}: no data rows" + (" after the header" if source.header else ""))
    return df
