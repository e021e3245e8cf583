"""How ingest reports bad input: one exception for files it cannot use, a quarantine for rows.

A file that cannot be read at all (missing column, no data) stops the run with an IngestError that
names the file, line and field, so the user can fix the input. A bad row does not stop the run: it is
added to Rejects, which writes it to a CSV next to the lake, so every row read is either written or
accounted for there.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pipelines.atomic import atomic_path

_META = ("line", "field", "reason", "detail")
RAW_RECORD = "raw_record"  # holds the source text of a record that could not be split into columns


class IngestError(Exception):
    """An input file that cannot be ingested at all; str() says where and why."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, field: str | None = None):
        self.file = Path(file)
        self.row = row
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file.name
        if self.row is not None:
            where += f" line {self.row}"
        if self.field is not None:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class RowError(Exception):
    """One bad row: it goes to Rejects under a countable reason code and the run goes on."""

    def __init__(self, field: str | None, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


class Rejects:
    """Rows quarantined from one source file, written as CSV for a person to inspect and fix.

    Columns are line, field, reason (a short code that is counted), detail (the human explanation),
    then the file's own columns with the raw values, then raw_record for records that could not be
    split into those columns.
    """

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        self.rows: list[list[object]] = []
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        row_number: int | None,
        field: str | None,
        reason: str,
        raw_values: Sequence[str] | str,
        detail: str = "",
    ) -> None:
        """Quarantine one record; raw_values is its fields, or its source text if it has no fields."""
        if isinstance(raw_values, str) or len(raw_values) != len(self.columns):
            text = raw_values if isinstance(raw_values, str) else ",".join(raw_values)
            values = [""] * len(self.columns) + [text]
        else:
            values = list(raw_values) + [""]
        self.rows.append([row_number, field or "", reason, detail, *values])
        self.counts[reason] += 1

    def write(self, path: Path) -> Path:
        """Write all rejects (a header-only file if there are none, replacing stale rejects)."""
        # backslashreplace: a rejected row may hold undecodable bytes, kept visible as \udcXX
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
            writer = csv.writer(fh)
            writer.writerow([*_META, *self.columns, RAW_RECORD])
            writer.writerows(self.rows)
        return path
