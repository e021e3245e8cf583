"""The end-to-end demo behind `make demo`: every foundation step once, on real data if present."""

from __future__ import annotations

import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.workspace import HOMEDEPOT, Workspace


def run_demo(ws: Workspace, console: Console, quick: bool = False, synthetic: bool = False,
             seed: int = 0) -> bool:
    """Ingest, produce signals, apply, materialize, build a training set, check consistency,
    and read online features; returns False if the stores disagree."""
    from pipelines.features.consistency import check_consistency
    from pipelines.features.dataset import build_dataset
    from pipelines.features.entities import sample_entities
    from pipelines.features.materialize import materialize
    from pipelines.features.online import OnlineFeatures
    from pipelines.features.produce import build_signals
    from pipelines.features.repo import apply
    from pipelines.signals.spec import SignalContext

    as_of = pd.Timestamp.now(tz="UTC").normalize()
    timings: dict[str, float] = {}

    def step(name: str, fn):
        t0 = time.perf_counter()
        with console.status(f"[bold]{name}[/bold]"):
            result = fn()
        timings[name] = time.perf_counter() - t0
        console.print(f"[green]done[/green] {name} ({timings[name]:.1f}s)")
        return result

    if synthetic:
        from pipelines.ingest.synthetic import generate_synthetic

        step("ingest synthetic", lambda: generate_synthetic(ws.lake, seed=seed, as_of=as_of))
    else:
        from pipelines.ingest.homedepot import ingest_homedepot

        report = step("ingest Home Depot", lambda: ingest_homedepot(
            HOMEDEPOT / "judgments.csv", HOMEDEPOT / "products.csv", ws.lake, as_of))
        console.print(f"  rejected rows: {report.judgments.rejects_by_reason or 'none'}")
    ctx = SignalContext(lake=ws.lake, as_of=as_of, seed=seed, quick=quick, work_dir=ws.cache_dir)
    built = step("signals build", lambda: build_signals(ws, ctx))
    console.print("  " + ", ".join(f"{name}: {r['rows']:,} rows in {r['seconds']:.0f} s" for name, r in built.items()))
    step("apply", lambda: apply(ws))
    step("materialize", lambda: materialize(ws, incremental=False))
    entities = sample_entities(ws, n=10_000, seed=seed)
    out = ws.datasets_dir / "demo"
    result = step("dataset build", lambda: build_dataset(ws, entities, out))
    console.print(f"  {result.lineage['rows']:,} rows -> {result.path}")
    report = step("consistency", lambda: check_consistency(ws, n=500, seed=seed))
    console.print(f"  {report.keys} keys: " + ("[green]consistent[/green]" if report.ok
                                               else f"[red]{len(report.mismatches)} mismatches[/red]"))
    client = OnlineFeatures(ws)
    sample = entities.head(5)
    online = client.get_online_features(list(zip(sample["query_id"], sample["item_id"])))
    table = Table("feature", *(f"pair {i + 1}" for i in range(len(online))),
                  title="retriever_online features (one batched lookup)")
    for name in online.columns:
        table.add_row(name, *(f"{v:.3g}" if isinstance(v, float) else str(v)[:24] for v in online[name]))
    console.print(table)
    return report.ok
