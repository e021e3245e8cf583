"""No producer reads dev-split judgments: poisoning them changes no signal table.

The split rule lives in pipelines/signals/training.py; this checks every registered producer's
output rather than the rule, so a producer that reads the lake's judgments directly is caught."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from pipelines.features.produce import build_signals
from pipelines.features.repo import load_repo
from pipelines.signals.spec import SignalContext, table_path

from conftest import AS_OF, PLUMBING_PRODUCERS, prepare


def poison_dev_judgments(lake, seed: int = 1) -> int:
    """Every dev judgment becomes 'exact match' and each dev query gains judged pairs; returns rows changed."""
    queries, judgments, items = lake.read("queries"), lake.read("judgments"), lake.read("items")
    dev = set(queries.loc[queries["split"] == "dev", "query_id"])
    is_dev = judgments["query_id"].isin(dev)
    judgments.loc[is_dev, "relevance"] = 3.0
    rng = np.random.default_rng(seed)
    extra = pd.DataFrame({"query_id": sorted(dev)})
    extra["item_id"] = rng.choice(items["item_id"].to_numpy(), size=len(extra))
    extra = extra.merge(judgments[["query_id", "item_id"]], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    extra = extra.assign(judgment_id=[f"poison-{i}" for i in range(len(extra))], relevance=3.0,
                         event_timestamp=judgments["event_timestamp"].iloc[0])
    lake.write("judgments", pd.concat([judgments, extra], ignore_index=True))
    return int(is_dev.sum()) + len(extra)


def test_no_producer_reads_dev_judgments(make_workspace):
    clean = prepare(make_workspace(name="clean"))
    poisoned = make_workspace(name="poisoned")
    shutil.copytree(clean.lake.root, poisoned.lake.root)
    assert poison_dev_judgments(poisoned.lake) > 0
    build_signals(poisoned, SignalContext(lake=poisoned.lake, as_of=AS_OF, seed=0, quick=True),
                  producers=PLUMBING_PRODUCERS)
    for signal in load_repo(clean.repo_dir).signals:
        before = pd.read_parquet(table_path(clean, signal.view))
        after = pd.read_parquet(table_path(poisoned, signal.view))
        pd.testing.assert_frame_equal(before, after, obj=f"signal {signal.name}")
