"""Simulated A/B test: the click simulator replayed with ranker A and ranker B on the same traffic.

Both arms run pipelines.simulation.simulate with the same queries, click model and seed (common
random numbers): every query gets the same searches on the same days in both arms (the simulator
draws traffic before it looks at a ranking) and every (query, item) pair the same attractiveness
(hash-keyed draws), so the two arms differ only in what their rankers show. True relevance is the
split's human grades (dev by default: queries nothing was fitted on; reading their grades to simulate
users is evaluation, not fitting); unjudged items get the click model's low prior grade.

Per arm, over all searches of the test (an impression is one search, i.e. one result page shown):
- ctr: clicks per search (all ten slots; a search may yield several clicks);
- orders_per_search: orders per search;
- irrelevant_share: share of shown item impressions whose human grade is < 2 (metrics.RELEVANT);
  unjudged items are not counted as irrelevant, as in irrelevant@10; judged_share says how much of
  what was shown has a grade at all.
Confidence intervals: 95% percentile intervals from a paired bootstrap over queries (the independent
unit of traffic): each resample draws queries with replacement, recomputes both arms' ratios on that
draw and their difference B - A, so the interval of the difference keeps the pairing that common
random numbers buy. Click noise is inside each query's counts, so it is in the intervals too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.evaluation.judgments import from_lake
from pipelines.evaluation.models import Models
from pipelines.metrics import RELEVANT
from pipelines.modeling.registry import BASE_VERSION
from pipelines.simulation import ClickConfig, ClickLog, Ranker, simulate
from pipelines.workspace import Workspace

RATIOS = {  # metric: (numerator, denominator) of per-query totals
    "ctr": ("clicks", "searches"),
    "orders_per_search": ("orders", "searches"),
    "irrelevant_share": ("irrelevant", "shown"),
    "judged_share": ("judged", "shown"),
}
LEVEL = 0.95


@dataclass(frozen=True)
class ABConfig:
    """One simulated A/B test; ab.json records it as resolved."""

    a: str = field(default="bm25", metadata={"help": "Model shown to arm A (names as in `unisup eval`)"})
    b: str = field(default=BASE_VERSION, metadata={"help": "Model shown to arm B"})
    split: str = field(default="dev", metadata={"help": "Lake split whose judged queries form the traffic"})
    impressions: int = field(default=100_000, metadata={"help": "Expected searches per arm over the test"})
    days: int = field(default=14, metadata={"help": "Length of the test in simulated days"})
    seed: int = field(default=0, metadata={"help": "Seed of traffic, clicks and the bootstrap"})
    resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of queries"})

    def click_config(self, n_queries: int) -> ClickConfig:
        """The simulator's settings with traffic scaled so the test expects `impressions` searches."""
        return ClickConfig(days=self.days, searches_per_query_day=self.impressions / (self.days * max(n_queries, 1)))


def query_totals(log: ClickLog) -> pd.DataFrame:
    """Per query: searches, clicks, carts, orders, shown / irrelevant / judged item impressions.

    Every shown slot of a query is on screen for each of its searches, so a slot's impressions over
    the test are the query's searches."""
    totals = log.searches.set_index("query_id")[["searches"]].astype("float64")
    events = log.events.groupby("query_id", observed=True)[["clicks", "carts", "orders"]].sum()
    slots = log.slots.assign(irrelevant=log.slots["judged"] & (log.slots["grade"] < RELEVANT))
    per_slot = slots.groupby("query_id").agg(shown=("item_id", "size"), irrelevant=("irrelevant", "sum"),
                                             judged=("judged", "sum"))
    totals = totals.join(events.astype("float64")).join(per_slot.astype("float64")).fillna(0.0)
    for col in ("shown", "irrelevant", "judged"):
        totals[col] *= totals["searches"]
    return totals


def _interval(values: np.ndarray) -> list[float]:
    """Percentile interval; undefined (NaN) when a resample's ratio is (e.g. an arm with 0 in a
    denominator), rather than an interval over the resamples that happen to be defined."""
    if not np.isfinite(values).all():
        return [float("nan"), float("nan")]
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def compare(a: pd.DataFrame, b: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> dict:
    """Each RATIOS metric per arm and B - A, with paired bootstrap intervals over queries.

    a, b: query_totals of the two arms, over the same queries and the same searches."""
    b = b.reindex(a.index)
    if not np.array_equal(a["searches"].to_numpy(), b["searches"].to_numpy()):
        raise ValueError("the arms saw different traffic: simulate both with the same queries and seed")
    n = len(a)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for metric, (num, den) in RATIOS.items():
            arms = {"a": a, "b": b}
            point = {arm: float(t[num].sum() / t[den].sum()) for arm, t in arms.items()}
            boot = {arm: (weights @ t[num].to_numpy()) / (weights @ t[den].to_numpy()) for arm, t in arms.items()}
            diff = boot["b"] - boot["a"]
            out[metric] = {
                "a": point["a"], "a_ci": _interval(boot["a"]),
                "b": point["b"], "b_ci": _interval(boot["b"]),
                "diff": point["b"] - point["a"], "diff_ci": _interval(diff),
                "relative": point["b"] / point["a"] - 1.0 if point["a"] else float("nan"),
                "relative_ci": _interval(boot["b"] / boot["a"] - 1.0),
            }
    return out


def ab_test(queries: pd.DataFrame, ranker_a: Ranker, ranker_b: Ranker, truth: pd.DataFrame,
            click_config: ClickConfig, seed: int = 0, resamples: int = 2000) -> dict:
    """Simulate both arms on the same traffic and compare them (see the module docstring).

    queries: query_id, query_text[, frequency]; truth: query_id, item_id, relevance (human grades)."""
    totals = {arm: query_totals(simulate(queries, ranker, truth, click_config, seed=seed))
              for arm, ranker in (("a", ranker_a), ("b", ranker_b))}
    return {
        "queries": len(queries),
        "searches": int(totals["a"]["searches"].sum()),
        "totals": {arm: {k: float(v) for k, v in t.sum().items()} for arm, t in totals.items()},
        "metrics": compare(totals["a"], totals["b"], resamples, seed),
        "ci": f"{LEVEL:.0%} percentile intervals, paired bootstrap over queries ({resamples} resamples)",
    }


def default_out(ws: Workspace, config: ABConfig) -> Path:
    """WORKSPACE/reports/ab-A-vs-B-SPLIT: reruns of the same comparison replace the old report."""
    return ws.root / "reports" / f"ab-{config.a}-vs-{config.b}-{config.split}"


def run_ab(ws: Workspace, config: ABConfig, out: Path | None = None) -> dict:
    """The A/B test on the lake split's judged queries; writes ab.json and ab.md, returns the report."""
    from pipelines.evaluation.report import write_ab_report

    out = Path(out) if out is not None else default_out(ws, config)
    models = Models(ws)
    models.check([config.a, config.b])
    jset = from_lake(ws.lake, config.split)
    lake_queries = ws.lake.read("queries")[["query_id", "frequency"]]
    queries = jset.queries[["query_id", "query_text"]].merge(lake_queries, on="query_id", how="left")
    result = ab_test(queries, models.ranker(config.a), models.ranker(config.b), jset.judgments,
                     config.click_config(len(queries)), config.seed, config.resamples)
    report = {"created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
              "config": asdict(config), "click_model": config.click_config(len(queries)).to_dict(), **result}
    write_ab_report(report, out)
    return report
