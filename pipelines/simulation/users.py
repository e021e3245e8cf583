"""Simulated users: a seeded population with persistent tastes, browsing in sessions over 60 days.

The pair-level simulator (clicks.py) says how attractive an item is for a query; users add who is
searching. Every impression is logged with user_id, query, item, position, click, order and time,
which is what pCTR / pCVR models (pipelines.engagement) train on and what the user views aggregate.

World (fixed by `seed`):
- items: brand = `brand_of(title)` (Home Depot titles lead with the brand: "Hampton Bay ...");
  category = k-means cluster of an LSA embedding of the titles (TF-IDF -> SVD -> unit norm); a
  simulated price, since the data has none: log price = category level ~ N(log 40, 0.8) + item
  spread ~ N(0, 0.5), both from hashes, so a category has a price range.
- users: activity ~ Pareto(activity_tail) capped at max_activity (heavy users, no single one
  carrying a large share of the traffic), a general click propensity
  ~ N(0, propensity_scale) on the logit, `favorite_categories` categories drawn uniformly,
  `favorite_brands` brands drawn by their share of those categories' items (a user who shops
  lighting favours lighting brands), a price sensitivity ~ |N(0, price_scale)|.

Traffic (fixed by `traffic_seed`): each day Poisson(sessions_per_day) sessions; a session picks a user
by activity, starts at a uniform time of day and holds 1 + Poisson(extra_searches) searches a minute
apart. A search is, with probability topical_share, for a query of one of the user's favourite
categories (a query's category: the most common category of the items the ranker shows for it),
else for any query; either way drawn by the pair simulator's query frequencies. The ranker's top 10
is shown (the same list for everyone, as clicks.py).

Outcome of an impression of item i at slot k for user u, true grade g (clicks.shown_slots):
    P(examine) = EXAMINATION[k]
    logit P(click | examined) = logit a(q, i) + s(g) * taste(u, i)
    taste(u, i) = propensity_u + brand_affinity [brand_i in u's favorites]
                  + category_affinity [category_i in u's favorites] - price_sensitivity_u * z_price_i
    s(g) = taste_on_irrelevant + (1 - taste_on_irrelevant) * (g - 1) / 2
    logit P(order | click) = logit(cart(g) * order(g)) - price_sensitivity_u * z_price_i
a(q, i) is the pair simulator's attractiveness (grade, item popularity, per-pair noise) and cart(g),
order(g) its conversion rates, so users change nothing on average about which pairs are good. s(g)
damps tastes on irrelevant items: relevance dominates, a favourite brand does not make a wrong item
clicked. z_price is the item's log price standardized over the catalog. At grade 3 a favourite brand
multiplies the odds of a click by exactly exp(brand_affinity) (tests/test_simulation_users.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pipelines.simulation.clicks import ClickConfig, Ranker, _help, _interp, shown_slots, unit_hash

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class UserConfig:
    """Every constant of the user model (see the module docstring for how they combine)."""

    users: int = _help(50_000, "Simulated users.")
    days: int = _help(60, "Days of traffic; the last one ends at the as-of time.")
    sessions_per_day: float = _help(13_000.0, "Mean sessions a day over all users (~13M impressions in 60 days).")
    extra_searches: float = _help(0.7, "Mean searches in a session beyond the first (Poisson).")
    activity_tail: float = _help(1.5, "Pareto tail index of user activity (smaller: heavier users).")
    max_activity: float = _help(50.0, "Cap on a user's activity (the minimum is 1): no one user is the traffic.")
    propensity_scale: float = _help(1.0, "Std of a user's click propensity on the logit.")
    favorite_brands: int = _help(3, "Brands a user favours, drawn by their share of the favourite categories.")
    brand_affinity: float = _help(1.0, "Logit added for a favourite brand (odds x e at grade 3).")
    categories: int = _help(48, "Item categories: k-means clusters of the titles' LSA embedding.")
    favorite_categories: int = _help(2, "Categories a user favours, drawn uniformly.")
    topical_share: float = _help(0.7, "Share of a user's searches for queries of a favourite category.")
    category_affinity: float = _help(0.6, "Logit added for a favourite category.")
    price_scale: float = _help(0.4, "Scale of |N(0, s)| price sensitivity per standardized log price.")
    taste_on_irrelevant: float = _help(0.25, "Share of the taste logit applied at grade 1 (all of it at 3).")

    def to_dict(self) -> dict:
        return asdict(self)


def brand_of(titles: pd.Series) -> pd.Series:
    """An item's brand: the title's first word, lower-cased ("Hampton Bay 3-Light ..." -> "hampton").

    The one definition the simulator, the user_brand signal and /search share; "" for an empty title."""
    return titles.astype(str).str.split(n=1).str[0].fillna("").str.lower()


def item_attributes(items: pd.DataFrame, config: UserConfig, seed: int) -> pd.DataFrame:
    """item_id, brand, category (int) and simulated price for every catalog item, seeded."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    titles = items["title"].astype(str)
    tfidf = TfidfVectorizer(min_df=2 if len(items) >= 100 else 1, sublinear_tf=True,
                            dtype=np.float32).fit_transform(titles)
    dims = min(64, tfidf.shape[1] - 1, len(items) - 1)
    embedding = normalize(TruncatedSVD(dims, random_state=seed).fit_transform(tfidf) if dims >= 1 else tfidf)
    k = max(1, min(config.categories, len(items)))
    category = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit_predict(embedding)
    ids = items["item_id"].astype(str).tolist()
    level = _normal(unit_hash([str(c) for c in range(k)], f"{seed}:price-level:"))[category]
    spread = _normal(unit_hash(ids, f"{seed}:price:"))
    return pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(), "brand": brand_of(titles).to_numpy(),
                         "category": category.astype(np.int16),
                         "price": np.round(np.exp(np.log(40.0) + 0.8 * level + 0.5 * spread), 2)})


def _normal(u: np.ndarray) -> np.ndarray:
    """Standard normal draws from uniforms (inverse CDF), keeping hash-keyed draws hash-keyed."""
    from scipy.special import ndtri

    return ndtri(u)


@dataclass(frozen=True)
class Population:
    """The users' persistent tastes: activity, click propensity, favourite brands and categories,
    price sensitivity; user i is "u{i:06d}"."""

    user_ids: np.ndarray
    activity: np.ndarray
    propensity: np.ndarray
    brands: np.ndarray  # (users, favorite_brands) brand codes into `brand_names`
    categories: np.ndarray  # (users, favorite_categories) category ids
    price_sensitivity: np.ndarray
    brand_names: np.ndarray

    @classmethod
    def draw(cls, attributes: pd.DataFrame, config: UserConfig, seed: int) -> Population:
        rng = np.random.default_rng([seed, 1])
        brand_codes, names = pd.factorize(attributes["brand"])
        n, k = config.users, int(attributes["category"].max()) + 1
        categories = rng.integers(0, k, size=(n, config.favorite_categories))
        # a favourite brand: the brand of a uniform item of a uniform favourite category
        by_category = np.argsort(attributes["category"].to_numpy(), kind="stable")
        first = np.searchsorted(attributes["category"].to_numpy()[by_category], np.arange(k + 1))
        pick = categories[np.arange(n)[:, None], rng.integers(0, config.favorite_categories,
                                                               (n, config.favorite_brands))]
        size = first[pick + 1] - first[pick]  # every category of a k-means fit holds items
        item = by_category[first[pick] + (rng.random(pick.shape) * size).astype(np.int64)]
        return cls(user_ids=np.array([f"u{i:06d}" for i in range(n)], dtype=object),
                   activity=np.minimum(rng.pareto(config.activity_tail, n) + 1.0, config.max_activity),
                   propensity=rng.normal(0.0, config.propensity_scale, n),
                   brands=brand_codes[item],
                   categories=categories,
                   price_sensitivity=np.abs(rng.normal(0.0, config.price_scale, n)),
                   brand_names=np.asarray(names, dtype=object))

    def favors(self, user: np.ndarray, brand_code: np.ndarray, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each (user, item) impression is of a favourite brand, and of a favourite category."""
        return ((self.brands[user] == brand_code[:, None]).any(axis=1),
                (self.categories[user] == category[:, None]).any(axis=1))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_users(queries: pd.DataFrame, ranker: Ranker, attributes: pd.DataFrame,
                   relevance_lookup: pd.DataFrame | None, as_of: pd.Timestamp, config: UserConfig = UserConfig(),
                   clicks: ClickConfig = ClickConfig(), seed: int = 0, traffic_seed: int | None = None,
                   ) -> pd.DataFrame:
    """The impression log: one row per shown (search, slot) over `config.days` days ending at as_of.

    Columns: user_id, query_id, item_id (categorical), position (1-based, int8), event_timestamp
    (UTC µs), day (int16, 0 = oldest), click, order (int8). `attributes` is item_attributes' frame
    for the catalog; queries and relevance_lookup are what clicks.simulate takes."""
    queries = queries.reset_index(drop=True)
    world = Population.draw(attributes, config, seed)
    slots = shown_slots(queries, ranker, relevance_lookup, clicks, seed)
    slots = slots.sort_values(["q", "position"], kind="stable").reset_index(drop=True)
    attrs = attributes.set_index("item_id")
    item_rows = attrs.index.get_indexer(slots["item_id"])
    if (item_rows < 0).any():
        raise ValueError(f"{int((item_rows < 0).sum())} shown items are not in the item attributes")
    category = attrs["category"].to_numpy()[item_rows]
    rng = np.random.default_rng([seed if traffic_seed is None else traffic_seed, 2])
    search_user, search_query, search_time = _searches(queries, _query_categories(slots["q"], category, len(queries)),
                                                       world, config, clicks, seed, rng)
    # every search shows its query's slots: index slots by query, then expand per search
    first = np.searchsorted(slots["q"].to_numpy(), np.arange(len(queries) + 1))
    per_search = np.diff(first)[search_query]
    row_search = np.repeat(np.arange(len(search_query)), per_search)
    slot = first[search_query][row_search] + (np.arange(len(row_search)) - np.repeat(np.cumsum(per_search)
                                                                                      - per_search, per_search))
    user = search_user[row_search]

    brand_code = pd.Index(world.brand_names).get_indexer(attrs["brand"].to_numpy()[item_rows])
    log_price = np.log(attrs["price"].to_numpy())
    z_price = ((log_price - log_price.mean()) / max(log_price.std(), 1e-9))[item_rows]

    fav_brand, fav_category = world.favors(user, brand_code[slot], category[slot])
    grade = slots["grade"].to_numpy()[slot]
    share = np.clip((grade - 1.0) / 2.0, 0.0, 1.0)
    damp = config.taste_on_irrelevant + (1.0 - config.taste_on_irrelevant) * share
    price = world.price_sensitivity[user] * z_price[slot]
    taste = (world.propensity[user] + config.brand_affinity * fav_brand
             + config.category_affinity * fav_category - price)
    p_click = (np.asarray(clicks.examination)[slots["position"].to_numpy()[slot] - 1]
               * _sigmoid(_logit(slots["attractiveness"].to_numpy()[slot]) + damp * taste))
    click = rng.random(len(slot)) < p_click
    convert = _interp(grade, clicks.cart_irrelevant, clicks.cart_exact) * _interp(
        grade, clicks.order_irrelevant, clicks.order_exact)
    order = click & (rng.random(len(slot)) < _sigmoid(_logit(convert) - price))

    seconds = search_time[row_search]
    start = pd.Timestamp(as_of).tz_convert("UTC") - pd.Timedelta(days=config.days)
    return pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user, categories=world.user_ids),
        "query_id": pd.Categorical(slots["query_id"].to_numpy()[slot]),
        "item_id": pd.Categorical(slots["item_id"].to_numpy()[slot]),
        "position": slots["position"].to_numpy()[slot].astype(np.int8),
        "event_timestamp": start + pd.to_timedelta(seconds, unit="us"),
        "day": (seconds // (SECONDS_PER_DAY * 1_000_000)).astype(np.int16),
        "click": click.astype(np.int8),
        "order": order.astype(np.int8),
    }).astype({"event_timestamp": "datetime64[us, UTC]"})


def _query_categories(slot_query: pd.Series, slot_category: np.ndarray, n_queries: int) -> np.ndarray:
    """Per query, the most common category of its shown items (-1 for a query shown nothing)."""
    counts = pd.crosstab(slot_query.to_numpy(), slot_category)
    out = np.full(n_queries, -1, dtype=np.int64)
    out[counts.index.to_numpy()] = counts.columns.to_numpy()[counts.to_numpy().argmax(axis=1)]
    return out


def _draw_by_weight(pools: np.ndarray, first: np.ndarray, cumulative: np.ndarray, pool: np.ndarray,
                    u: np.ndarray) -> np.ndarray:
    """For each draw, an element of pools[first[p]:first[p + 1]] (p = pool), chosen with probability
    proportional to its weight (cumulative: running weight sums over `pools`), from uniforms u."""
    lo, hi = first[pool], first[pool + 1]
    base = np.where(lo > 0, cumulative[np.maximum(lo - 1, 0)], 0.0)
    target = base + u * (cumulative[hi - 1] - base)
    return pools[np.minimum(np.searchsorted(cumulative, target, side="right"), hi - 1)]


def _searches(queries: pd.DataFrame, query_category: np.ndarray, world: Population, config: UserConfig,
              clicks: ClickConfig, seed: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each search's user, query (row of `queries`) and time in µs since the window's start, sorted by time."""
    from pipelines.simulation.clicks import query_frequency

    sessions_per_day = rng.poisson(config.sessions_per_day, config.days)
    n_sessions = int(sessions_per_day.sum())
    session_day = np.repeat(np.arange(config.days), sessions_per_day)
    session_user = rng.choice(len(world.user_ids), size=n_sessions, p=world.activity / world.activity.sum())
    session_start = rng.random(n_sessions) * (SECONDS_PER_DAY - 3_600)  # the last hour keeps a session in its day
    length = 1 + rng.poisson(config.extra_searches, n_sessions)
    session = np.repeat(np.arange(n_sessions), length)
    offset = np.arange(len(session)) - np.repeat(np.cumsum(length) - length, length)
    seconds = session_day[session] * SECONDS_PER_DAY + session_start[session] + 60.0 * offset
    freq = query_frequency(queries, clicks, seed)
    query = rng.choice(len(queries), size=len(session), p=freq / freq.sum())
    user = session_user[session]
    # topical searches: a favourite category of the user, then one of its queries by frequency
    wanted = world.categories[user, rng.integers(0, world.categories.shape[1], len(user))]
    pools = np.argsort(query_category, kind="stable")
    first = np.searchsorted(query_category[pools], np.arange(world.categories.max() + 2))
    has_queries = first[wanted + 1] > first[wanted]
    topical = (rng.random(len(user)) < config.topical_share) & has_queries
    u = rng.random(len(user))
    query[topical] = _draw_by_weight(pools, first, np.cumsum(freq[pools]), wanted[topical], u[topical])
    order = np.argsort(seconds, kind="stable")
    return user[order], query[order], (seconds[order] * 1_000_000).astype(np.int64)
