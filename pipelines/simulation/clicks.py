"""A seeded, vectorized click simulator: what users would do with a ranker's top 10.

The data has no clicks, so engagement is simulated from a model whose every part is stated here.

Traffic. Each query q gets a relative frequency f_q: the lake's `frequency` where present, else a
Zipf-like draw f_q = min(u_q ** (-1 / zipf_exponent), max_frequency) with u_q uniform from a hash of
(seed, query_id). Its searches on each of `days` days are Poisson(searches_per_query_day * f_q /
mean f), so the query set's mean is searches_per_query_day whatever the scale of f.

Ranking. The ranker is called once with every query text (production does not change over the
window) and its top len(examination) items are shown on every search; empty slots show nothing.

Clicks: the position-based model (Craswell et al. 2008, "PBM"). A user examines slot k with
probability examination[k] and clicks an examined item with probability a(q, i), independently per
slot, so P(click) = examination[k] * a(q, i) and a day's clicks in a slot are exactly
Binomial(searches, examination[k] * a). EXAMINATION below is the curve from the issue.

Attractiveness. a(q, i) = sigmoid(logit(r(g)) + popularity_weight * (log p_i - E log p) + noise):
- g is the TRUE relevance: the human grade (1..3) where the relevance lookup has one (the caller
  passes training-split judgments only), else `unjudged_grade`, a low prior. Never the teacher: the
  engagement signal would then echo the teacher, and evaluating against it would be circular.
- r(g) = attract_irrelevant + (attract_exact - attract_irrelevant) * (g - 1) / 2 is the click
  rate of an examined item of an average-popularity item.
- p_i is a per-item popularity, Pareto(popularity_tail) from a hash of (seed, item_id), capped at
  max_popularity; popular items draw clicks whatever their relevance (brand, price, picture), which
  is how clicks land on irrelevant items.
- noise = noise_scale * logit(u) for u uniform from a hash of (seed, query_id, item_id): logistic
  noise, fixed per pair, for everything the grade does not capture.
Draws keyed by hashes, not by row order, give a pair the same attractiveness whatever else is
simulated and whichever ranker shows it: an A/B replay compares rankers, not random streams.

Conversions. After a click, add-to-cart with probability interpolated linearly in g from
cart_irrelevant (g = 1) to cart_exact (g = 3); after a cart, an order likewise from order_irrelevant
to order_exact. Relevant items convert far more often than merely attractive ones.

The log is aggregated per (query, item, position, day) with searches > 0: impressions (= the day's
searches of the query), clicks, carts, orders. Day 0 is the oldest; day `days - 1` ends at as-of.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

EXAMINATION = (0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06)  # P(examine slot 1..10)
EMPTY = ""  # id of an empty slot in a ranker's output

Ranker = Callable[[Sequence[str]], np.ndarray]  # query texts -> (n, >=10) item ids, best first


def _help(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ClickConfig:
    """Every constant of the click model (see the module docstring for how they combine)."""

    days: int = _help(60, "Days of traffic simulated; the last one ends at the as-of time.")
    searches_per_query_day: float = _help(4.0, "Mean searches per query per day over the query set.")
    zipf_exponent: float = _help(1.1, "Pareto tail index of drawn query frequencies (about Zipf s=0.9).")
    max_frequency: float = _help(1000.0, "Cap on a drawn query frequency (the minimum is 1).")
    examination: tuple[float, ...] = _help(EXAMINATION, "P(examine) per slot, top first (PBM).")
    attract_irrelevant: float = _help(0.05, "Click rate when examined at grade 1, average popularity.")
    attract_exact: float = _help(0.65, "Click rate when examined at grade 3, average popularity.")
    unjudged_grade: float = _help(1.2, "Prior grade of pairs without a human grade: a low base rate.")
    popularity_tail: float = _help(1.5, "Pareto tail index of per-item popularity (smaller: longer).")
    max_popularity: float = _help(100.0, "Cap on item popularity (the minimum is 1).")
    popularity_weight: float = _help(0.6, "Logit added per unit of log popularity above its mean.")
    noise_scale: float = _help(0.3, "Scale of the per-pair logistic noise on the attractiveness logit.")
    cart_irrelevant: float = _help(0.02, "P(add to cart | click) at grade 1.")
    cart_exact: float = _help(0.30, "P(add to cart | click) at grade 3.")
    order_irrelevant: float = _help(0.20, "P(order | cart) at grade 1.")
    order_exact: float = _help(0.60, "P(order | cart) at grade 3.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClickLog:
    """A simulation's outcome.

    events: query_id, item_id (categorical), position (1-based, int8), day (int16), impressions,
    clicks, carts, orders (int32); one row per shown (query, item, position, day) with searches.
    slots: what was shown and why: query_id, item_id, position, grade (true relevance used),
    judged (a human grade existed), popularity, attractiveness.
    searches: query_id, searches over all days, for every query simulated, including those the
    ranker showed nothing for (events has no row for them, yet their searches count as traffic)."""

    events: pd.DataFrame
    slots: pd.DataFrame
    config: ClickConfig
    seed: int
    searches: pd.DataFrame | None = None


def unit_hash(keys: Sequence[str], salt: str) -> np.ndarray:
    """A uniform draw in (0, 1) per key from blake2b(salt + key): stable across runs and machines."""
    raw = np.fromiter((int.from_bytes(hashlib.blake2b((salt + k).encode(), digest_size=8).digest(), "big")
                       for k in keys), dtype=np.uint64, count=len(keys))
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53 + 2.0**-54


def query_frequency(queries: pd.DataFrame, config: ClickConfig, seed: int) -> np.ndarray:
    """The lake's frequency where present, else a seeded Zipf-like draw keyed by query_id."""
    ids = queries["query_id"].astype(str).tolist()
    drawn = np.minimum(unit_hash(ids, f"{seed}:frequency:") ** (-1.0 / config.zipf_exponent),
                       config.max_frequency)
    if "frequency" not in queries:
        return drawn
    known = pd.to_numeric(queries["frequency"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.where(np.isnan(known), drawn, np.maximum(known, 0.0))


def item_popularity(item_ids: Sequence[str], config: ClickConfig, seed: int) -> np.ndarray:
    """Seeded long-tailed popularity per item: Pareto(popularity_tail) in [1, max_popularity]."""
    u = unit_hash(list(item_ids), f"{seed}:popularity:")
    return np.minimum(u ** (-1.0 / config.popularity_tail), config.max_popularity)


def attractiveness(grade: np.ndarray, popularity: np.ndarray, noise_u: np.ndarray,
                   config: ClickConfig) -> np.ndarray:
    """P(click | examined) from true grade (1..3), item popularity and a uniform per-pair draw."""
    share = np.clip((grade - 1.0) / 2.0, 0.0, 1.0)
    base = config.attract_irrelevant + (config.attract_exact - config.attract_irrelevant) * share
    mean_log_pop = _mean_log_popularity(config)
    logit = (np.log(base / (1.0 - base))
             + config.popularity_weight * (np.log(popularity) - mean_log_pop)
             + config.noise_scale * np.log(noise_u / (1.0 - noise_u)))
    return 1.0 / (1.0 + np.exp(-logit))


def _mean_log_popularity(config: ClickConfig) -> float:
    """E[log p] for capped Pareto: log p ~ Exponential(tail) capped at log(max_popularity)."""
    cap, tail = np.log(config.max_popularity), config.popularity_tail
    return float((1.0 - np.exp(-tail * cap)) / tail)


def _interp(grade: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * np.clip((grade - 1.0) / 2.0, 0.0, 1.0)


def shown_slots(queries: pd.DataFrame, ranker: Ranker, relevance_lookup: pd.DataFrame | None,
                config: ClickConfig, seed: int) -> pd.DataFrame:
    """The ranker's top slots per query with true grade, popularity and attractiveness."""
    depth = len(config.examination)
    texts = queries["query_text"].astype(str).tolist()
    top = np.asarray(ranker(texts), dtype=object)[:, :depth]  # (n_queries, depth)
    q_index, slot = np.nonzero((top != EMPTY) & pd.notna(top))
    slots = pd.DataFrame({"q": q_index.astype(np.int32),
                          "query_id": queries["query_id"].astype(str).to_numpy()[q_index],
                          "item_id": top[q_index, slot].astype(str),
                          "position": (slot + 1).astype(np.int8)})
    grade = pd.Series(np.nan, index=slots.index)
    if relevance_lookup is not None and len(relevance_lookup):
        known = relevance_lookup.groupby(["query_id", "item_id"], as_index=False)["relevance"].mean()
        grade = slots[["query_id", "item_id"]].merge(known, how="left")["relevance"]
    slots["judged"] = grade.notna().to_numpy()
    slots["grade"] = grade.fillna(config.unjudged_grade).to_numpy(dtype="float64")
    slots["popularity"] = item_popularity(slots["item_id"], config, seed)
    pair_u = unit_hash((slots["query_id"] + "\t" + slots["item_id"]).tolist(), f"{seed}:noise:")
    slots["attractiveness"] = attractiveness(slots["grade"].to_numpy(), slots["popularity"].to_numpy(),
                                             pair_u, config)
    return slots


def _categorical(values: pd.Series, rows: np.ndarray) -> pd.Categorical:
    """values[rows] as a categorical, factorized once over the (few) slots, not the (many) rows."""
    codes, categories = pd.factorize(values)
    return pd.Categorical.from_codes(codes[rows], categories=categories)


def simulate(queries: pd.DataFrame, ranker: Ranker, relevance_lookup: pd.DataFrame | None = None,
             config: ClickConfig = ClickConfig(), seed: int = 0, traffic_seed: int | None = None) -> ClickLog:
    """Simulate `config.days` of searches for `queries` (query_id, query_text, optional frequency)
    ranked by `ranker`, with true grades from `relevance_lookup` (query_id, item_id, relevance).

    `seed` fixes the world (query frequencies, item popularity, every pair's attractiveness);
    `traffic_seed` (default: seed) the searches and clicks drawn in it, so another traffic_seed is
    another stretch of days of the same users: the ranker's engagement labels are future traffic,
    never the days its engagement features were aggregated from."""
    queries = queries.reset_index(drop=True)
    rng = np.random.default_rng(seed if traffic_seed is None else traffic_seed)
    freq = query_frequency(queries, config, seed)
    rate = config.searches_per_query_day * freq / max(freq.mean(), 1e-12)
    searches = rng.poisson(rate[:, None], size=(len(queries), config.days))  # drawn before any
    slots = shown_slots(queries, ranker, relevance_lookup, config, seed)      # ranker-dependent draw
    exam = np.asarray(config.examination)[slots["position"].to_numpy() - 1]
    grade = slots["grade"].to_numpy()
    shown = searches[slots["q"].to_numpy()]  # (n_slots, days)
    clicks = rng.binomial(shown, (exam * slots["attractiveness"].to_numpy())[:, None])
    carts = rng.binomial(clicks, _interp(grade, config.cart_irrelevant, config.cart_exact)[:, None])
    orders = rng.binomial(carts, _interp(grade, config.order_irrelevant, config.order_exact)[:, None])
    row, day = np.nonzero(shown)
    events = pd.DataFrame({
        "query_id": _categorical(slots["query_id"], row),
        "item_id": _categorical(slots["item_id"], row),
        "position": slots["position"].to_numpy()[row],
        "day": day.astype(np.int16),
        "impressions": shown[row, day].astype(np.int32),
        "clicks": clicks[row, day].astype(np.int32),
        "carts": carts[row, day].astype(np.int32),
        "orders": orders[row, day].astype(np.int32),
    })
    totals = pd.DataFrame({"query_id": queries["query_id"].astype(str).to_numpy(),
                           "searches": searches.sum(axis=1).astype(np.int64)})
    return ClickLog(events=events, slots=slots.drop(columns="q"), config=config, seed=seed, searches=totals)
