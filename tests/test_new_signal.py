"""The README's worked example: a platform team adds a signal with one file and one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from pipelines.features.dataset import build_dataset
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.produce import build_signals
from pipelines.features.repo import apply, feature_store
from pipelines.signals.spec import SignalContext

from conftest import AS_OF, prepare

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signals" / "title_overlap.py"
REGISTRATION = "from title_overlap import SIGNAL as title_overlap\n"


def test_new_signal_flows_through_every_step(make_workspace, online):
    ws = prepare(make_workspace(online=online))
    shutil.copy(EXAMPLE, ws.repo_dir / "title_overlap.py")                   # the one new file
    with open(ws.repo_dir / "signals.py", "a") as f:                         # the one registration line
        f.write(REGISTRATION)

    rows = build_signals(ws, SignalContext(lake=ws.lake, as_of=AS_OF), only=["title_overlap"])
    assert rows["title_overlap"]["rows"] > 0
    apply(ws)
    store = feature_store(ws)
    training = {p.name for p in store.get_feature_service("training").feature_view_projections}
    online_fs = store.get_feature_service("retriever_online").feature_view_projections
    assert "title_overlap" in training
    assert [p.features[0].name for p in online_fs if p.name == "title_overlap"] == ["overlap_ratio"]

    materialize(ws, incremental=False, end=(AS_OF + pd.Timedelta(hours=1)).to_pydatetime())
    table = pd.read_parquet(ws.features_dir / "title_overlap.parquet")
    sample = table.head(10)
    pairs = list(zip(sample["query_id"], sample["item_id"]))
    out = OnlineFeatures(ws).get_online_features(pairs)
    assert out["overlap_ratio"].tolist() == sample["overlap_ratio"].tolist()

    entities = sample[["query_id", "item_id"]].assign(event_timestamp=AS_OF)
    df = pd.read_parquet(build_dataset(ws, entities, ws.root / "ds").path)
    assert df["title_has_query"].tolist() == sample["title_has_query"].tolist()


def test_unregistered_file_is_not_a_signal(make_workspace):
    ws = make_workspace()
    shutil.copy(EXAMPLE, ws.repo_dir / "title_overlap.py")
    from pipelines.features.repo import load_repo

    assert "title_overlap" not in [s.name for s in load_repo(ws.repo_dir).signals]
