"""`make demo` end to end (pipelines.demo.run_demo) on the synthetic lake, quick profile, in a temp
workspace: the real producers (the teacher cascade included), apply, materialize into SQLite, a
point-in-time set, the consistency check, one online lookup, an index and search examples."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from rich.console import Console

from pipelines.demo import run_demo
from pipelines.features.repo import load_repo
from pipelines.workspace import Workspace

from conftest import copy_repo

STEPS = ("ingest synthetic", "signals build", "apply", "materialize", "dataset build", "consistency", "index build",
         "blend", "search examples")


@pytest.mark.slow
def test_demo_runs_every_step_and_the_stores_agree(tmp_path):
    ws = Workspace(root=tmp_path / "ws", repo_dir=copy_repo(tmp_path / "repo"))
    out = io.StringIO()
    assert run_demo(ws, Console(file=out, width=200), quick=True, synthetic=True) is True
    printed = out.getvalue()

    # every step printed as done, in order, then the consistency verdict and the lookup table
    at = [printed.index(f"done {step} (") for step in STEPS]
    assert at == sorted(at), printed
    assert " keys: consistent" in printed and "mismatches" not in printed
    assert "retriever_online features (one batched lookup)" in printed
    # it ends with search: both first stages scored on dev, three dev queries' top 5 side by side, the inspector
    assert "dev queries: bm25 0." in printed and printed.count("(dev; grades 1..3 by human raters") == 3
    assert "then open http://127.0.0.1:3000/" in printed and len(list(ws.indexes_dir.iterdir())) == 1

    # what it wrote: the lake, every registered signal's table, the registry, the online store, the set
    lake = ws.lake
    assert len(lake.read("items")) == 2000 and len(lake.read("queries")) == 500
    signals = [s.name for s in load_repo(ws.repo_dir).signals]
    built = json.loads((ws.cache_dir / "signals_build.json").read_text())
    for name in signals:
        table = pd.read_parquet(ws.features_dir / f"{name}.parquet")
        assert len(table) > 0 and f"{name}: {len(table):,} rows" in printed, name
        assert built["signals"][name]["rows"] == len(table), name
    assert built["quick"] is True
    assert (ws.root / "feature_store.yaml").exists() and (ws.root / "online.db").stat().st_size > 0
    dataset = pd.read_parquet(ws.datasets_dir / "demo" / "dataset.parquet")
    lineage = json.loads((ws.datasets_dir / "demo" / "lineage.json").read_text())
    assert len(dataset) == lineage["rows"] == 10_000 and f"{len(dataset):,} rows ->" in printed
    pair_keyed = [s.name for s in load_repo(ws.repo_dir).signals if s.pair_keyed]  # the user views join no pair row
    assert lineage["feature_service"] == "training" and set(lineage["feature_views"]) >= set(pair_keyed)
    # entity rows are spread over 30 days and pairs drawn from teacher_labels, whose two releases are
    # stamped inside that window: a row sees no label before the first, v1 until the second, then v2
    labels = pd.read_parquet(ws.features_dir / "teacher_labels.parquet")
    v1, v2 = sorted(labels["event_timestamp"].unique())
    names = labels.drop_duplicates("event_timestamp").set_index("event_timestamp")["teacher_version"]
    at = dataset["event_timestamp"]
    expected = pd.Series("none", index=dataset.index).mask(at >= v1, names[v1]).mask(at >= v2, names[v2])
    assert dataset["teacher_version"].fillna("none").tolist() == expected.tolist()
    assert (at < v1).any() and ((at >= v1) & (at < v2)).any() and (at >= v2).any()
