"""Offline sources: one parquet table per signal under the workspace's features/ folder.

Paths are relative to the workspace (the Feast repo_path), so the same declarations serve a
demo workspace, a test's temp dir and production.
"""

from feast import FileSource


def signal_source(name: str) -> FileSource:
    """The parquet table a signal's producer writes; every table carries both timestamps."""
    return FileSource(
        name=f"{name}_source",
        path=f"features/{name}.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description=f"Table written by the {name} producer (pipelines/signals).",
    )


# Graded relevance from the cross-encoder teacher cascade, per (query, item).
teacher_labels_source = signal_source("teacher_labels")

# How strongly the retrieval channels agree on a pair.
retrieval_prior_source = signal_source("retrieval_prior")

# Daily engagement aggregates per pair (impressions, clicks, carts, orders, CTRs).
engagement_stats_source = signal_source("engagement_stats")

# Item attributes (title, popularity).
item_profile_source = signal_source("item_profile")

# Query attributes (text, traffic).
query_profile_source = signal_source("query_profile")
