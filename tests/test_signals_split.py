"""No producer reads dev-split judgments: poisoning them changes no signal table.

The split rule lives in pipelines/signals/training.py; this checks every registered producer's
output rather than the rule, so a producer that reads the lake's judgments directly is caught."""

from __future__ import annotations

import shutil

import pandas as pd

from pipelines.features.produce import build_signals
from pipelines.features.repo import load_repo
from pipelines.signals.spec import SignalContext, table_path

from conftest import AS_OF, PLUMBING_PRODUCERS, poison_dev_judgments, prepare


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
