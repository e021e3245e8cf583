"""Feature views: the three supervision signals per (query, item) pair, plus item and query profiles.

Views are general on purpose: the retriever, the later multi-task ranker and the ad models all
read them. Producers live in pipelines/signals/; these are declarations only.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float32, Int64, String

from data_sources import (
    engagement_stats_source,
    item_profile_source,
    query_profile_source,
    retrieval_prior_source,
    teacher_labels_source,
)
from entities import PAIR, item, query

# Calibrated graded relevance (0..3) from the teacher cascade; human grades kept apart.
teacher_labels_fv = FeatureView(
    name="teacher_labels",
    entities=PAIR,
    ttl=timedelta(days=365),
    schema=[
        Field(name="grade_p0", dtype=Float32, description="P(grade = 0, irrelevant)"),
        Field(name="grade_p1", dtype=Float32, description="P(grade = 1, partly relevant)"),
        Field(name="grade_p2", dtype=Float32, description="P(grade = 2, relevant)"),
        Field(name="grade_p3", dtype=Float32, description="P(grade = 3, exact match)"),
        Field(name="expected_grade", dtype=Float32, description="Sum of grade x probability, 0..3"),
        Field(name="confidence", dtype=Float32, description="Max grade probability"),
        Field(name="teacher_stage", dtype=Int64, description="Cascade stage that labelled the pair"),
        Field(name="teacher_version", dtype=String, description="Teacher release that wrote the row"),
        Field(name="human_grade", dtype=Float32, description="Human relevance 1..3 where judged, else null"),
    ],
    source=teacher_labels_source,
    description="Graded relevance from the cross-encoder teacher cascade, calibrated.",
    tags={"signal": "teacher", "grain": "pair"},
)

# Agreement of retrieval channels: per-channel rank (101 = not retrieved), fused score, count.
retrieval_prior_fv = FeatureView(
    name="retrieval_prior",
    entities=PAIR,
    ttl=timedelta(days=365),
    schema=[
        Field(name="rank_bm25", dtype=Int64, description="BM25 rank, 1..100; 101 = absent"),
        Field(name="rank_dense", dtype=Int64, description="Dense (MiniLM + FAISS) rank; 101 = absent"),
        Field(name="rank_char", dtype=Int64, description="Character n-gram rank; 101 = absent"),
        Field(name="fusion_score", dtype=Float32, description="Reciprocal-rank fusion of the channels"),
        Field(name="agreement", dtype=Int64, description="Number of channels holding the item"),
    ],
    source=retrieval_prior_source,
    description="How strongly several retrieval channels agree on a pair.",
    tags={"signal": "prior", "grain": "pair"},
)

# Engagement per pair as of each day, over trailing windows.
engagement_stats_fv = FeatureView(
    name="engagement_stats",
    entities=PAIR,
    ttl=timedelta(days=7),
    schema=[
        Field(name="impressions_7d", dtype=Int64, description="Times shown, last 7 days"),
        Field(name="clicks_7d", dtype=Int64, description="Clicks, last 7 days"),
        Field(name="impressions_30d", dtype=Int64, description="Times shown, last 30 days"),
        Field(name="clicks_30d", dtype=Int64, description="Clicks, last 30 days"),
        Field(name="carts_30d", dtype=Int64, description="Add-to-carts, last 30 days"),
        Field(name="orders_30d", dtype=Int64, description="Orders, last 30 days"),
        Field(name="ctr_smoothed_30d", dtype=Float32, description="Beta-smoothed CTR, last 30 days"),
        Field(name="ctr_debiased_30d", dtype=Float32, description="Inverse-propensity CTR, last 30 days"),
    ],
    source=engagement_stats_source,
    description="Daily engagement aggregates per pair; stale after a week without a new day.",
    tags={"signal": "engagement", "grain": "pair"},
)

# Item attributes used by every reader (titles for display, popularity as a prior).
item_profile_fv = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="title", dtype=String, description="Catalog title"),
        Field(name="title_tokens", dtype=Int64, description="Whitespace tokens in the title"),
        Field(name="popularity", dtype=Float32, description="Share of traffic the item drew, 0..1"),
    ],
    source=item_profile_source,
    description="Catalog attributes of an item.",
    tags={"grain": "item"},
)

# Query attributes (traffic decides head/torso/tail buckets in evaluation).
query_profile_fv = FeatureView(
    name="query_profile",
    entities=[query],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="query_text", dtype=String, description="Query as first seen"),
        Field(name="query_tokens", dtype=Int64, description="Tokens in the normalized query"),
        Field(name="frequency", dtype=Int64, description="Relative daily traffic"),
        Field(name="frequency_bucket", dtype=String, description="head | torso | tail"),
    ],
    source=query_profile_source,
    description="Attributes of a query.",
    tags={"grain": "query"},
)
