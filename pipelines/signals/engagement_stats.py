"""The engagement_stats signal (daily snapshots of simulated engagement on the training queries) and
the gate that keeps engagement only where the teacher says the pair is relevant (gated_engagement).

The data has no clicks, so pipelines.simulation replays BM25 (the "current production" ranker) on
the training split's queries over ClickConfig.days days ending at ctx.as_of. True relevance comes
from the human grades of those same training queries only: dev queries are neither simulated nor
read, so nothing fitted on this table has seen them, and the teacher is never consulted (the
evaluation would become circular).

The log is aggregated per (query, item) into one row per snapshot day for the last SNAPSHOTS days,
wherever the pair was shown in the 30 days up to and including that day; each row is stamped at the
end of its day, so a point-in-time join picks the newest snapshot before its event time.
- impressions / clicks over 7 and 30 days, carts and orders over 30 days;
- ctr_smoothed_30d = (clicks + PRIOR_ALPHA) / (impressions + PRIOR_ALPHA + PRIOR_BETA): a Beta prior
  near the mean slot CTR of the top 10, worth PRIOR_ALPHA + PRIOR_BETA impressions, so a pair seen
  twice is not ranked by 0/2 or 2/2;
- ctr_debiased_30d = sum(clicks * w) / impressions with w = min(1 / examination[position], MAX_IPW):
  inverse propensity weighting (Joachims et al. 2017) estimates P(click | examined), i.e. the
  attractiveness, whatever slot the ranker put the item in. Weights are clipped, trading a little
  bias on slots 9-10 (propensity < 1 / MAX_IPW) for bounded variance, and the ratio is capped at 1.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from feast import FeatureView, Field
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float32, Int64

from pipelines.atomic import write_json
from pipelines.signals.entities import PAIR
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source, table_columns
from pipelines.signals.teacher_labels import teacher_labels_fv
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import BM25Ranker, ClickConfig, simulate

SNAPSHOTS = 14  # daily snapshots written, ending at as_of
SHORT, LONG = 7, 30  # window lengths in days
PRIOR_ALPHA, PRIOR_BETA = 0.7, 9.3  # Beta prior on CTR: mean 7% (simulated top-10 slot CTR), 10 views
MAX_IPW = 10.0  # cap on inverse-propensity weights (propensity floor 0.1)
QUICK_SNAPSHOTS = 7  # quick mode (pipelines.signals.training samples the queries): fewer days


# Engagement per pair as of each day, over trailing windows.
engagement_stats_fv = FeatureView(
    name="engagement_stats",
    entities=PAIR,
    ttl=timedelta(days=7),
    schema=[
        Field(name="impressions_7d", dtype=Int64, description="Times shown in the last 7 days", tags=bounds(0)),
        Field(name="clicks_7d", dtype=Int64, description="Clicks in the last 7 days", tags=bounds(0)),
        Field(name="impressions_30d", dtype=Int64, description="Times shown in the last 30 days", tags=bounds(0)),
        Field(name="clicks_30d", dtype=Int64, description="Clicks in the last 30 days", tags=bounds(0)),
        Field(name="carts_30d", dtype=Int64, description="Add-to-carts in the last 30 days", tags=bounds(0)),
        Field(name="orders_30d", dtype=Int64, description="Orders in the last 30 days", tags=bounds(0)),
        Field(name="ctr_smoothed_30d", dtype=Float32, description="Clicks / impressions, 30 days, Beta prior",
              tags=bounds(0, 1)),
        Field(name="ctr_debiased_30d", dtype=Float32, description="Position-debiased CTR, 30 days (inverse propensity)",
              tags=bounds(0, 1)),
    ],
    source=signal_source("engagement_stats"),
    description=("Simulated engagement with a (query, item) pair over trailing 7- and 30-day windows, one"
                 " snapshot a day; a snapshot older than 7 days (the TTL) reads as null."),
    tags={"signal": "engagement", "grain": "pair"},
)
COLUMNS = table_columns(engagement_stats_fv, PAIR)  # the table, in the order producers write it


def click_config(ctx: SignalContext) -> ClickConfig:
    """Full runs simulate the issue's 60 days; quick runs just enough for their snapshots."""
    return ClickConfig(days=LONG + QUICK_SNAPSHOTS - 1) if ctx.quick else ClickConfig()


def engagement_stats(ctx: SignalContext) -> pd.DataFrame:
    """The engagement_stats table: daily snapshots of 7/30-day engagement per (query, item)."""
    queries = training_queries(ctx)
    cache = ctx.work_dir / "simulation" if ctx.work_dir is not None else None
    ranker = BM25Ranker.for_catalog(ctx.lake.read("items"), cache_dir=cache)
    config = click_config(ctx)
    log = simulate(queries, ranker, training_judgments(ctx, queries), config, seed=ctx.seed)
    snapshots = QUICK_SNAPSHOTS if ctx.quick else SNAPSHOTS
    if cache is not None:  # the resolved settings next to the cached ranking they produced
        write_json(cache / "engagement_config.json", {
            "click_model": config.to_dict(), "seed": ctx.seed, "queries": len(queries),
            "snapshots": snapshots, "prior_alpha": PRIOR_ALPHA, "prior_beta": PRIOR_BETA,
            "max_ipw": MAX_IPW}, indent=2)
    return snapshot_table(log.events, pd.Timestamp(ctx.as_of), config.days, snapshots,
                          np.asarray(config.examination))


def _daily(pair: np.ndarray, day: np.ndarray, values: np.ndarray, n_pairs: int, days: int) -> np.ndarray:
    """Cumulative per-pair sums over days, with a leading zero column: (n_pairs, days + 1)."""
    dense = np.bincount(pair * days + day, weights=values, minlength=n_pairs * days).reshape(n_pairs, days)
    return np.concatenate([np.zeros((n_pairs, 1)), np.cumsum(dense, axis=1)], axis=1)


def snapshot_table(events: pd.DataFrame, as_of: pd.Timestamp, days: int, snapshots: int,
                   examination: np.ndarray) -> pd.DataFrame:
    """One row per (pair, snapshot day) over the last `snapshots` of `days` days, where the pair has
    impressions in the LONG-day window ending that day (day `days - 1` ends at as_of)."""
    if events.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    qcat, icat = events["query_id"].astype("category"), events["item_id"].astype("category")
    n_items = len(icat.cat.categories)
    codes = qcat.cat.codes.to_numpy(np.int64) * n_items + icat.cat.codes.to_numpy(np.int64)
    pair, uniques = pd.factorize(codes)
    day = events["day"].to_numpy(np.int64)
    weight = np.minimum(1.0 / examination[events["position"].to_numpy(np.int64) - 1], MAX_IPW)
    cum = {name: _daily(pair, day, values, len(uniques), days) for name, values in (
        ("impressions", events["impressions"].to_numpy(np.float64)),
        ("clicks", events["clicks"].to_numpy(np.float64)),
        ("carts", events["carts"].to_numpy(np.float64)),
        ("orders", events["orders"].to_numpy(np.float64)),
        ("ipw", events["clicks"].to_numpy(np.float64) * weight))}
    query_ids = qcat.cat.categories.to_numpy(object)[uniques // n_items]
    item_ids = icat.cat.categories.to_numpy(object)[uniques % n_items]
    frames = []
    for end in range(max(days - snapshots, 0), days):  # `end` is the snapshot's last day, inclusive
        def window(name: str, length: int, end: int = end) -> np.ndarray:
            return cum[name][:, end + 1] - cum[name][:, max(end + 1 - length, 0)]

        imp30 = window("impressions", LONG)
        keep = imp30 > 0
        clk30 = window("clicks", LONG)
        stamp = as_of - pd.Timedelta(days=days - 1 - end)
        frames.append(pd.DataFrame({
            "query_id": query_ids[keep], "item_id": item_ids[keep],
            "event_timestamp": stamp, "created_timestamp": stamp,
            "impressions_7d": window("impressions", SHORT)[keep].astype(np.int64),
            "clicks_7d": window("clicks", SHORT)[keep].astype(np.int64),
            "impressions_30d": imp30[keep].astype(np.int64),
            "clicks_30d": clk30[keep].astype(np.int64),
            "carts_30d": window("carts", LONG)[keep].astype(np.int64),
            "orders_30d": window("orders", LONG)[keep].astype(np.int64),
            "ctr_smoothed_30d": ((clk30[keep] + PRIOR_ALPHA) / (imp30[keep] + PRIOR_ALPHA + PRIOR_BETA)
                                 ).astype(np.float32),
            "ctr_debiased_30d": np.minimum(window("ipw", LONG)[keep] / imp30[keep], 1.0).astype(np.float32),
        }))
    return pd.concat(frames, ignore_index=True)[COLUMNS]

# --- the gate -----------------------------------------------------------------------------------
# "Relevant" means what the metrics mean by it (human relevance >= 2, i.e. teacher grade 2 or 3),
# and the gate asks the calibrated teacher exactly that: P(grade >= 2) = grade_p2 + grade_p3.
# The threshold is not 0.5: 84% of Home Depot's judged pairs are relevant, so a calibrated
# P(relevant) sits above 0.5 for almost every judged pair, irrelevant ones included. Measured on
# the training queries' 47,263 judged pairs (teacher v2, 2026-11-27), the share of pairs passing:
#
#     rule                     judged relevant   judged irrelevant   all 1.5M candidates
#     P(relevant) >= 0.5             100.0%             99.9%               93.2%
#     expected grade >= 1.5           99.9%             99.3%               80.0%
#     P(relevant) >= 0.7              85.4%             44.3%               28.4%
#     expected grade >= 2.0           54.7%             13.2%               11.0%
#
# 0.7 keeps most relevant engagement and removes over half of it on irrelevant pairs (Youden's
# J 0.41, the best of these with expected grade >= 2.0, which drops half the relevant clicks).

RELEVANT_PROBABILITY = 0.7  # teacher P(grade >= 2) at or above which a pair counts as relevant
GATE_INPUTS = ("grade_p2", "grade_p3")  # the teacher_labels features the gate reads


def gated_engagement(inputs: pd.DataFrame) -> pd.DataFrame:
    """The one gate, which the gated_engagement view runs for training sets and online reads alike:
    keep 30-day clicks, orders and debiased CTR where grade_p2 + grade_p3 >= RELEVANT_PROBABILITY.

    Missing stays missing: a pair the teacher never labelled (every pair of a query the producers
    have not seen) has is_relevant null, not 0, and null gated engagement, since whether its
    engagement counts is unknown; a labelled pair without engagement keeps null engagement, so
    "no data" stays distinguishable from "gated out" (0). Plain numpy: it runs inside every
    online lookup."""
    p_relevant = sum(inputs[c].to_numpy(dtype="float64", na_value=np.nan) for c in GATE_INPUTS)
    labelled = ~np.isnan(p_relevant)
    relevant = p_relevant >= RELEVANT_PROBABILITY  # NaN compares False; `labelled` tells the two apart
    # a float so that "unknown" survives every path: Feast's online conversion turns a nullable
    # integer's NA into -2**63
    out = {"is_relevant": np.where(labelled, relevant, np.nan).astype("float32")}
    for src, dst in (("clicks_30d", "gated_clicks_30d"), ("orders_30d", "gated_orders_30d"),
                     ("ctr_debiased_30d", "gated_ctr_30d")):
        value = inputs[src].to_numpy(dtype="float64", na_value=np.nan)
        gated = np.where(relevant | np.isnan(value), value, 0.0)
        out[dst] = np.where(labelled, gated, np.nan).astype("float32")
    return pd.DataFrame(out, index=inputs.index)


# Engagement counted only where the teacher says relevant; Feast runs gated_engagement above for
# training sets and online reads alike.
gated_engagement_fv = OnDemandFeatureView(
    name="gated_engagement",
    sources=[
        teacher_labels_fv[list(GATE_INPUTS)],
        engagement_stats_fv[["clicks_30d", "orders_30d", "ctr_debiased_30d"]],
    ],
    # Field descriptions stay off: Feast 0.67 compares them with the inferred (empty) ones.
    schema=[
        Field(name="is_relevant", dtype=Float32),
        Field(name="gated_clicks_30d", dtype=Float32),
        Field(name="gated_orders_30d", dtype=Float32),
        Field(name="gated_ctr_30d", dtype=Float32),
    ],
    mode="pandas",
    udf=gated_engagement,
    # Feast re-creates UDFs from this text at read time; importing keeps the one definition.
    udf_string="from pipelines.signals.engagement_stats import gated_engagement",
    description=(
        "Engagement kept only where the teacher labels the pair relevant: is_relevant (1.0 if"
        " P(grade >= 2) = grade_p2 + grade_p3 >= 0.7, 0.0 if not, null if the teacher never labelled the"
        " pair), gated_clicks_30d, gated_orders_30d, gated_ctr_30d (null where relevance is unknown)."
    ),
)

SIGNAL = Signal(engagement_stats_fv, producer=engagement_stats,
                online_features=("clicks_30d", "ctr_debiased_30d", "is_relevant", "gated_ctr_30d"),
                derived=(gated_engagement_fv,),
                ranker_features=("impressions_30d", "clicks_30d", "orders_30d", "ctr_smoothed_30d", "ctr_debiased_30d",
                                 "is_relevant", "gated_clicks_30d", "gated_orders_30d", "gated_ctr_30d"))
