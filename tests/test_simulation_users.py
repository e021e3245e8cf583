"""The user simulator: tastes move clicks by the configured amounts, relevance still dominates,
and a seed reproduces the log. References are the click model's formulas, computed here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.simulation import EXAMINATION, fixed_ranker
from pipelines.simulation.users import Population, UserConfig, brand_of, item_attributes, simulate_users
from pipelines.text import normalize_query, query_id

AS_OF = pd.Timestamp("2026-11-01", tz="UTC")
QUERY = "cordless drill"
# Only the brand taste acts: no propensity, category or price terms.
BRAND_ONLY = UserConfig(users=4_000, days=40, sessions_per_day=2_500.0, propensity_scale=0.0, favorite_brands=1,
                        brand_affinity=1.0, category_affinity=0.0, price_scale=0.0, categories=2)


def world(grade: int):
    """Two items of two brands, one query showing the first at slot 1, judged `grade`."""
    qid = query_id(normalize_query(QUERY))
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Acme 18V Cordless Drill", "Zenith 12 in. Saw"]})
    queries = pd.DataFrame({"query_id": [qid], "query_text": [QUERY]})
    judged = pd.DataFrame({"query_id": [qid], "item_id": ["1"], "relevance": [float(grade)]})
    return queries, items, judged, fixed_ranker({qid: ["1"]})


def log_odds_lift(grade: int, config: UserConfig = BRAND_ONLY) -> tuple[float, float, float]:
    """Log-odds of P(click | examined) for users favouring the shown item's brand minus for the others,
    and both click rates given examination."""
    queries, items, judged, ranker = world(grade)
    attributes = item_attributes(items, config, seed=3)
    log = simulate_users(queries, ranker, attributes, judged, AS_OF, config, seed=3)
    population = Population.draw(attributes, config, seed=3)
    acme = list(population.brand_names).index("acme")
    favours = population.brands[:, 0] == acme
    user = log["user_id"].cat.codes.to_numpy()
    rate = [log["click"].to_numpy()[favours[user] == f].mean() / EXAMINATION[0] for f in (True, False)]
    odds = [np.log(r / (1 - r)) for r in rate]
    return odds[0] - odds[1], rate[0], rate[1]


def test_a_favourite_brand_multiplies_the_click_odds_of_a_relevant_item_by_e_to_the_affinity():
    lift, _, _ = log_odds_lift(grade=3)
    assert lift == pytest.approx(BRAND_ONLY.brand_affinity, abs=0.1)


def test_relevance_dominates_taste_on_an_irrelevant_item():
    lift, favoured_irrelevant, _ = log_odds_lift(grade=1)
    assert lift == pytest.approx(BRAND_ONLY.taste_on_irrelevant * BRAND_ONLY.brand_affinity, abs=0.1)
    _, _, unfavoured_relevant = log_odds_lift(grade=3)
    assert favoured_irrelevant < 0.3 * unfavoured_relevant  # the same item, only its grade changed


def test_the_seed_reproduces_the_log_and_another_traffic_seed_changes_it():
    queries, items, judged, ranker = world(3)
    config = UserConfig(users=200, days=10, sessions_per_day=100.0)
    attributes = item_attributes(items, config, seed=1)
    first = simulate_users(queries, ranker, attributes, judged, AS_OF, config, seed=1)
    again = simulate_users(queries, ranker, attributes, judged, AS_OF, config, seed=1)
    other = simulate_users(queries, ranker, attributes, judged, AS_OF, config, seed=1, traffic_seed=2)
    pd.testing.assert_frame_equal(first, again)
    assert not first["user_id"].astype(str).equals(other["user_id"].astype(str))
    assert first["event_timestamp"].between(AS_OF - pd.Timedelta(days=10), AS_OF).all()
    assert (first["day"] == ((first["event_timestamp"] - (AS_OF - pd.Timedelta(days=10))).dt.days)).all()
    assert (first["order"] <= first["click"]).all()


def test_brand_is_the_titles_first_word_lower_cased():
    assert brand_of(pd.Series(["Hampton Bay 3-Light", "BEHR Premium", ""])).tolist() == ["hampton", "behr", ""]
