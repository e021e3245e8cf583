"""What a retriever is scored against: a judgment set from a file or from the lake's own split.

A file in the Home Depot judgments layout is read by the ingest reader (pipelines.ingest.homedepot),
so it gets the same validation and the same quarantine of bad rows as ingest, and its queries get
their ids from pipelines.text like every other stage. Each query also gets the frequency bucket the
query_profile view gives it (pipelines.signals.query_profile), so results can be split by traffic; a query
the lake has never seen is "unseen".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.ingest.homedepot import FileReport, read_judgments
from pipelines.lake import Lake
from pipelines.signals.query_profile import frequency_bucket, traffic_frequency
from pipelines.text import normalize_query

UNSEEN = "unseen"  # bucket of a query absent from the lake's queries table
BUCKETS = ("head", "torso", "tail", "unknown", UNSEEN)  # busiest first; the order reports use


@dataclass(frozen=True)
class JudgmentSet:
    """Queries to retrieve for and the judgments that score them.

    queries: query_id, query_text (first raw spelling), query_norm, bucket; one row per query, by id.
    judgments: query_id, item_id, relevance (1..3)."""

    source: str  # the file path, or "lake:<split>"
    queries: pd.DataFrame
    judgments: pd.DataFrame
    file_report: FileReport | None = None  # rows read / written / quarantined, for a file

    def summary(self) -> dict:
        """Sizes and, for a file, its row accounting: what report.json records about the input."""
        out = {"source": self.source, "queries": len(self.queries), "judgments": len(self.judgments),
               "buckets": self.queries["bucket"].value_counts().sort_index().to_dict()}
        if self.file_report is not None:
            f = self.file_report
            out["file"] = {"encoding": f.encoding, "rows_read": f.rows_read, "rows_used": f.rows_written,
                           "rows_rejected": f.rows_rejected, "rejects_by_reason": f.rejects_by_reason,
                           "rejects_path": str(f.rejects_path)}
        return out


def ordered_buckets(names) -> list[str]:
    """The distinct bucket names in BUCKETS order (any other name last, alphabetically)."""
    return sorted(set(names), key=lambda b: (BUCKETS.index(b) if b in BUCKETS else len(BUCKETS), b))


def query_buckets(lake: Lake, query_ids: pd.Series) -> pd.Series:
    """The query_profile bucket (head | torso | tail) of each id, UNSEEN if not in the lake.

    Buckets are computed over all lake queries, as the feature view does, so a query's bucket does
    not depend on which other queries a judgment set holds."""
    queries = lake.read("queries")
    buckets = pd.Series(frequency_bucket(traffic_frequency(queries)).to_numpy(), index=queries["query_id"])
    return query_ids.map(buckets).fillna(UNSEEN).astype(str)


def from_file(path: Path, lake: Lake, rejects_dir: Path, encoding: str = "auto") -> JudgmentSet:
    """A Home Depot-layout judgments file; bad rows quarantined in rejects_dir (see read_judgments)."""
    rows, report = read_judgments(Path(path), rejects_dir, encoding)
    queries = rows.drop_duplicates("query_id")[["query_id", "query_text"]].sort_values("query_id")
    return _judgment_set(str(path), lake, queries, rows, report)


def from_lake(lake: Lake, split: str = "dev") -> JudgmentSet:
    """The lake's judgments of one split's queries (dev: the held-out set nothing is fitted on)."""
    queries = lake.read("queries")
    queries = queries.loc[queries["split"] == split, ["query_id", "query_text"]].sort_values("query_id")
    judgments = lake.read("judgments")
    judgments = judgments[judgments["query_id"].isin(queries["query_id"])]
    if judgments.empty:
        raise FileNotFoundError(f"{lake.path('judgments')} holds no judgments of {split!r} queries")
    return _judgment_set(f"lake:{split}", lake, queries, judgments, None)


def _judgment_set(source: str, lake: Lake, queries: pd.DataFrame, judgments: pd.DataFrame,
                  report: FileReport | None) -> JudgmentSet:
    queries = queries[queries["query_id"].isin(judgments["query_id"])].reset_index(drop=True)
    queries = queries.assign(query_norm=queries["query_text"].map(normalize_query),
                             bucket=query_buckets(lake, queries["query_id"]).to_numpy())
    judgments = judgments[["query_id", "item_id", "relevance"]].astype(
        {"query_id": str, "item_id": str, "relevance": "float64"}).reset_index(drop=True)
    return JudgmentSet(source, queries, judgments, report)
