"""The canonical lake: queries, items and judgments as parquet, one schema for every source.

Ingest (Home Depot files or the synthetic generator) writes these tables; signal producers,
training and evaluation read them. Timestamps are UTC microseconds everywhere, the unit
Feast's offline store and parquet agree on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import write_parquet

TS = pa.timestamp("us", tz="UTC")

ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("event_timestamp", TS),  # when the item entered the catalog
    ]
)
QUERIES = pa.schema(
    [
        ("query_id", pa.string()),
        ("query_text", pa.string()),  # first raw spelling seen
        ("query_norm", pa.string()),
        ("split", pa.string()),  # 'train' | 'dev' (pipelines.text.query_split)
        ("frequency", pa.int64()),  # relative daily traffic; null where the source has none
        ("event_timestamp", TS),
    ]
)
JUDGMENTS = pa.schema(
    [
        ("judgment_id", pa.string()),
        ("query_id", pa.string()),
        ("item_id", pa.string()),
        ("relevance", pa.float32()),  # Home Depot: mean of three raters, 1..3
        ("event_timestamp", TS),
    ]
)
TABLES: dict[str, pa.Schema] = {"items": ITEMS, "queries": QUERIES, "judgments": JUDGMENTS}
RELEVANCE_MIN, RELEVANCE_MAX = 1.0, 3.0


@dataclass(frozen=True)
class Lake:
    """A directory holding the canonical tables, plus a rejects/ folder for quarantined rows."""

    root: Path

    def path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    @property
    def rejects_dir(self) -> Path:
        return self.root / "rejects"

    def exists(self) -> bool:
        return all(self.path(t).exists() for t in TABLES)

    def write(self, table: str, df: pd.DataFrame) -> Path:
        """Write one table with its canonical schema (casts, column order, UTC µs)."""
        return write_parquet(to_arrow(df, TABLES[table]), self.path(table))

    def read(self, table: str) -> pd.DataFrame:
        if not self.path(table).exists():
            raise FileNotFoundError(f"{self.path(table)} is missing: run `unisup ingest` first")
        return pq.read_table(self.path(table)).to_pandas()


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Cast a frame to a schema, converting any timestamp column to UTC microseconds."""
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} required by the schema")
    cols = {}
    for field in schema:
        col = df[field.name]
        if pa.types.is_timestamp(field.type):
            col = utc_micros(col)
        cols[field.name] = col
    return pa.Table.from_pandas(pd.DataFrame(cols), schema=schema, preserve_index=False)


def utc_micros(col: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC with microsecond resolution (naive values are taken as UTC)."""
    ts = pd.to_datetime(col, utc=True)
    return ts.astype("datetime64[us, UTC]")
