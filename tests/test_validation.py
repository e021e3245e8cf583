"""Producer output is checked against its view before it is written (pipelines.features.validate).

Each rule: a producer returning a frame that breaks it stops `signals build` with the signal, column,
count and first bad row named, and the signal's table is not written (an earlier one stays byte for
byte). Real producers where they are cheap (profiles, the synthetic teacher), a frame built from the
view's own declarations otherwise; the registry's ranges are checked for gaps and through `feast apply`.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.produce import SignalTableError, build_signals
from pipelines.features.repo import apply, feature_store, load_repo
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.signals.engagement_stats import engagement_stats_fv
from pipelines.signals.item_profile import item_profile
from pipelines.signals.query_profile import query_profile
from pipelines.signals.retrieval_prior import retrieval_prior_fv
from pipelines.signals.spec import SignalContext, declared_bounds, table_path
from pipelines.signals.synthetic import teacher_labels as synthetic_teacher_labels
from pipelines.workspace import DEFAULT_REPO, Workspace

from conftest import AS_OF

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signals" / "title_overlap.py"
NUMERIC = ("Int32", "Int64", "Float32", "Float64")
PROBABILITY = re.compile(r"grade_p\d|(^|_)p_|prob|ctr|ratio|confidence|popularity")


@pytest.fixture
def ws(make_workspace) -> Workspace:
    ws = make_workspace()
    generate_synthetic(ws.lake, n_items=120, n_queries=30, seed=0, as_of=AS_OF)
    return ws


def ctx(ws: Workspace) -> SignalContext:
    return SignalContext(lake=ws.lake, as_of=AS_OF, seed=0, quick=True)


def declared_frame(view) -> Callable[[SignalContext], pd.DataFrame]:
    """A producer of a valid table for any pair view, from its declarations: each feature at its
    lower bound."""
    def produce(c: SignalContext) -> pd.DataFrame:
        pairs = synthetic_teacher_labels(c)[["query_id", "item_id"]].drop_duplicates().head(50)
        df = pairs.reset_index(drop=True).assign(event_timestamp=c.as_of, created_timestamp=c.as_of)
        for f in view.features:
            df[f.name] = declared_bounds(f)[0]
        return df
    return produce


GOOD = {  # a valid producer per signal
    "teacher_labels": synthetic_teacher_labels,
    "engagement_stats": declared_frame(engagement_stats_fv),
    "retrieval_prior": declared_frame(retrieval_prior_fv),
    "item_profile": item_profile,
    "query_profile": query_profile,
}


def poke(df: pd.DataFrame, column: str, rows: list[int] | None, value) -> pd.DataFrame:
    """`column` set to `value` at positional `rows` (pandas infers its new dtype), or, with rows
    None, replaced by value(column)."""
    if rows is None:
        return df.assign(**{column: value(df[column])})
    values = df[column].to_list()
    for r in rows:
        values[r] = value
    return df.assign(**{column: pd.Series(values, index=df.index)})


EVERY_ROW = None
# rule: (signal, column, rows broken, the bad value there, what the message says about those rows)
RULES = {
    "probability above 1": ("teacher_labels", "grade_p2", [17, 3, 40], 1.5, "outside [0, 1]"),
    "grade 4": ("teacher_labels", "expected_grade", [9], 4.0, "outside [0, 3]"),
    "human grade 0.5": ("teacher_labels", "human_grade", [2, 5], 0.5, "outside [1, 3]"),
    "negative count": ("engagement_stats", "clicks_30d", [5, 6], -1, "outside [0, inf)"),
    "rank 0": ("retrieval_prior", "rank_bm25", [0], 0, "outside [1, 101]"),
    "NaN key": ("teacher_labels", "query_id", [8, 4], np.nan, "null (NaN or None)"),
    "None key": ("item_profile", "item_id", [7], None, "null (NaN or None)"),
    "empty key": ("teacher_labels", "item_id", [11], "", "empty"),
    "integer key": ("query_profile", "query_id", [1], 12345, "not strings"),
    "naive timestamp": ("teacher_labels", "event_timestamp", EVERY_ROW, lambda col: col.dt.tz_localize(None),
                        "naive (no time zone"),
    "garbage timestamp": ("query_profile", "created_timestamp", [2], "yesterday", "not timestamps"),
    "epoch number as timestamp": ("item_profile", "event_timestamp", EVERY_ROW, lambda col: 0, "not timestamps"),
    "fractional integer": ("teacher_labels", "teacher_stage", [6], 1.5, "not whole numbers"),
    "text in a number": ("item_profile", "popularity", [3], "high", "not numbers"),
    "number in a string": ("item_profile", "title", [4], 42, "not strings"),
    "infinity": ("retrieval_prior", "fusion_score", [1], np.inf, "infinite"),
}


def build(ws: Workspace, signal: str, producer) -> dict:
    return build_signals(ws, ctx(ws), only=[signal], producers={signal: producer})


@pytest.mark.parametrize("rule", list(RULES))
def test_violation_stops_the_build_and_keeps_the_previous_table(ws, rule):
    signal, column, rows, value, what = RULES[rule]
    good = GOOD[signal]
    build(ws, signal, good)
    path = table_path(ws, load_repo(ws.repo_dir).signal(signal).view)
    before, listing = path.read_bytes(), sorted(p.name for p in path.parent.iterdir())

    bad = poke(good(ctx(ws)), column, rows, value)
    with pytest.raises(SignalTableError) as err:
        build(ws, signal, lambda _c: bad)
    message = str(err.value)
    count, first = (len(bad), 0) if rows is EVERY_ROW else (len(rows), min(rows))
    assert message.startswith(f"signal {signal!r}, column {column!r}: {count:,} row{'s' if count > 1 else ''} ")
    assert f" {what}" in message and f"e.g. row {first}: {{" in message
    for key in ("query_id", "item_id"):  # the example row shows its keys
        if key in bad.columns and isinstance(bad[key].iloc[first], str):
            assert f"{key}: {bad[key].iloc[first]!r}" in message
    assert path.read_bytes() == before  # nothing written, and no temporary left behind
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def test_first_build_that_fails_writes_no_file(ws):
    bad = poke(synthetic_teacher_labels(ctx(ws)), "grade_p2", [0], -0.1)
    with pytest.raises(SignalTableError, match=r"column 'grade_p2': 1 row outside \[0, 1\], e.g. row 0"):
        build(ws, "teacher_labels", lambda _c: bad)
    assert not ws.features_dir.exists() or not any(ws.features_dir.iterdir())


def test_good_frames_pass_with_null_features_and_other_zones(ws):
    """Null features stay null (missing stays missing); aware stamps in any zone are stored as UTC."""
    good = synthetic_teacher_labels(ctx(ws))
    df = poke(good, "grade_p1", [0, 1], np.nan)
    df["event_timestamp"] = df["event_timestamp"].dt.tz_convert("America/New_York")
    report = build(ws, "teacher_labels", lambda _c: df)
    assert report["teacher_labels"]["rows"] == len(df)
    table = pd.read_parquet(report["teacher_labels"]["path"])
    assert table["grade_p1"].isna().sum() == 2 and table["human_grade"].isna().any()
    assert str(table["event_timestamp"].dt.tz) == "UTC"
    assert set(table["event_timestamp"]) == set(good["event_timestamp"])
    for signal in ("item_profile", "query_profile", "engagement_stats", "retrieval_prior"):
        assert build(ws, signal, GOOD[signal])[signal]["rows"] > 0


def declared_views() -> list:
    spec = importlib.util.spec_from_file_location("title_overlap_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return [*load_repo(DEFAULT_REPO).views, example.title_overlap_fv]


def test_every_numeric_feature_declares_a_range_and_probabilities_stay_in_0_1():
    forgotten, loose = [], []
    for view in declared_views():
        for f in view.features:
            if str(f.dtype) not in NUMERIC:
                continue
            bounds = declared_bounds(f)
            if bounds is None:
                forgotten.append(f"{view.name}.{f.name}")
            elif PROBABILITY.search(f.name) and not (0 <= bounds[0] and bounds[1] <= 1):
                loose.append(f"{view.name}.{f.name} {bounds}")
    assert not forgotten, f"numeric features without a declared range: {forgotten}"
    assert not loose, f"probabilities declared outside [0, 1]: {loose}"


def test_ranges_survive_feast_apply(ws):
    contents = apply(ws)
    store = feature_store(ws)
    for view in contents.views:
        registered = {f.name: f.tags for f in store.get_feature_view(view.name).features}
        assert registered == {f.name: f.tags for f in view.features}
    assert registered and any(registered.values())


BAD_SIGNAL = '''\
"""A new signal whose producer has a bug: one click probability above 1."""
from datetime import timedelta

import pandas as pd
from feast import FeatureView, Field
from feast.types import Float32

from pipelines.signals.entities import PAIR
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source

click_model_fv = FeatureView(
    name="click_model", entities=PAIR, ttl=timedelta(days=30),
    schema=[Field(name="p_click", dtype=Float32, description="P(click | shown)", tags=bounds(0, 1))],
    source=signal_source("click_model"), description="Click probability (a test's buggy signal).",
)


def produce(ctx: SignalContext) -> pd.DataFrame:
    return pd.DataFrame({"query_id": ["q1", "q2", "q3"], "item_id": ["i1", "i2", "i3"],
                         "event_timestamp": ctx.as_of, "created_timestamp": ctx.as_of,
                         "p_click": [0.25, 1.7, 0.5]})


SIGNAL = Signal(click_model_fv, producer=produce)
'''


def test_cli_reports_a_violation_in_one_line(ws):
    (ws.repo_dir / "click_model.py").write_text(BAD_SIGNAL)
    with open(ws.repo_dir / "signals.py", "a") as f:
        f.write("from click_model import SIGNAL as click_model\n")
    args = ["--workspace", str(ws.root), "--repo", str(ws.repo_dir), "signals", "build", "--only", "click_model"]
    result = CliRunner().invoke(app, args)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert ("error: signal 'click_model', column 'p_click': 1 row outside [0, 1], "
            "e.g. row 1: {query_id: 'q2', item_id: 'i2', p_click: 1.7}") in output
    assert "Traceback" not in result.output and not isinstance(result.exception, SignalTableError)
    assert not (ws.features_dir / "click_model.parquet").exists()
