"""User views are point-in-time correct: an impression at time t sees its user's windows up to the
end of the day before, never its own day's events or later ones. References: brute-force window
sums over the impression log, and Feast's own get_historical_features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.features.dataset import feast_historical
from pipelines.features.pit import historical_features
from pipelines.features.produce import build_signals
from pipelines.features.repo import apply, feature_store
from pipelines.signals.spec import SignalContext
from pipelines.signals.user_stats import QUICK_USERS, impression_log, user_stats_table, window_changes

from conftest import AS_OF

DAYS = QUICK_USERS.days


def brute_force(events: pd.DataFrame, key: str, day: int, length: int) -> pd.Series:
    """Per key, the sum of `value` over days day - length + 1 .. day."""
    inside = events[(events["day"] <= day) & (events["day"] > day - length)]
    return inside.groupby(key)["value"].sum()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 19), st.integers(0, 3)), min_size=1, max_size=40),
       st.sampled_from([1, 3, 7]))
def test_window_changes_equal_brute_force_window_sums_on_every_day(events, length):
    frame = pd.DataFrame(events, columns=["key", "day", "value"])
    changes = window_changes(frame, ["key"], {"total": ("value", length)}, days=20)
    for day in range(20):
        # the newest change at or before `day` per key holds that day's window sum
        latest = changes[changes["day"] <= day].groupby("key").last()["total"]
        expected = brute_force(frame, "key", day, length)
        for key in "abc":
            assert latest.get(key, 0) == expected.get(key, 0), (key, day)


@pytest.fixture
def users_ws(make_workspace):
    """A prepared workspace whose user_stats table is built from the impression log with one planted
    burst of PLANTED clicks for the busiest user on day PLANT_DAY."""
    from conftest import PLUMBING_PRODUCERS, prepare

    ws = prepare(make_workspace())
    ctx = SignalContext(lake=ws.lake, as_of=AS_OF, seed=0, quick=True)
    log = impression_log(ctx)
    user = log["user_id"].value_counts().index[0]
    template = log[log["user_id"] == user].iloc[:1]
    planted = template.loc[template.index.repeat(PLANTED)].assign(
        day=np.int16(PLANT_DAY), click=np.int8(1),
        event_timestamp=AS_OF - pd.Timedelta(days=DAYS - PLANT_DAY) + pd.Timedelta(hours=12))
    planted_log = pd.concat([log, planted], ignore_index=True)
    build_signals(ws, ctx, only=["user_stats"],
                  producers={**PLUMBING_PRODUCERS, "user_stats": lambda c: user_stats_table(planted_log, AS_OF, DAYS)})
    apply(ws)
    return ws, planted_log, str(user)


PLANT_DAY, PLANTED = 20, 50


def day_start(day: int) -> pd.Timestamp:
    return AS_OF - pd.Timedelta(days=DAYS - day)


def test_an_impression_sees_its_users_30_day_clicks_up_to_the_day_before(users_ws):
    ws, log, _ = users_ws
    store = feature_store(ws)
    service = store.get_feature_service("engagement")
    sample = log[log["day"] >= 5].sample(300, random_state=0)
    entities = pd.DataFrame({"user_id": sample["user_id"].astype(str).to_numpy(),
                             "brand": sample["brand"].astype(str).to_numpy(),
                             "event_timestamp": sample["event_timestamp"].to_numpy()})
    ours = historical_features(store, service, entities)
    feast = feast_historical(store, service, entities)
    pd.testing.assert_series_equal(ours["user_clicks_30d"].astype("float64"),
                                   feast["user_clicks_30d"].astype("float64"), check_names=False)
    clicks = log.assign(value=log["click"].astype(int), user=log["user_id"].astype(str))
    for row, day in zip(ours.itertuples(), sample["day"].to_numpy()):
        expected = brute_force(clicks, "user", int(day) - 1, 30).get(row.user_id, 0)
        assert (0 if pd.isna(row.user_clicks_30d) else row.user_clicks_30d) == expected


def test_a_planted_event_is_not_seen_before_its_day_ends(users_ws):
    ws, _, user = users_ws
    store = feature_store(ws)
    service = store.get_feature_service("engagement")
    at = [day_start(PLANT_DAY) + pd.Timedelta(hours=23), day_start(PLANT_DAY + 1) + pd.Timedelta(minutes=1)]
    entities = pd.DataFrame({"user_id": [user, user], "brand": ["", ""], "event_timestamp": at})
    seen = historical_features(store, service, entities)["user_clicks_30d"].to_numpy()
    before = feast_historical(store, service, entities)["user_clicks_30d"].to_numpy()
    assert seen[1] - seen[0] >= PLANTED  # the burst shows from the next day on...
    assert (seen == before).all()  # ...as Feast says too
