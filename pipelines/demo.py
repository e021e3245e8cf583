"""The end-to-end demo behind `make demo`: every foundation step once, on real data if present, ending
with search: an index of the catalog, BM25 beside the fused first stage on dev queries, and the
command that opens the inspector page on the workspace."""

from __future__ import annotations

import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.ray_data import RayDataConfig
from pipelines.workspace import HOMEDEPOT, Workspace, masked


def run_demo(ws: Workspace, console: Console, quick: bool = False, synthetic: bool = False,
             seed: int = 0, ray: RayDataConfig | None = None) -> bool:
    """Ingest, produce signals, apply, materialize, build a training set, check consistency, read
    online features, build an index and show search results; returns False if the stores disagree.

    `ray`: the producers' model passes on a Ray Data actor pool (the workspace's engine is Ray)."""
    from pipelines.features.consistency import check_consistency
    from pipelines.features.dataset import build_dataset
    from pipelines.features.entities import sample_entities
    from pipelines.features.materialize import materialize
    from pipelines.features.online import OnlineFeatures
    from pipelines.features.produce import build_signals
    from pipelines.features.repo import apply, ray_session
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
    ctx = SignalContext(lake=ws.lake, as_of=as_of, seed=seed, quick=quick, work_dir=ws.cache_dir, ray=ray)

    def produce() -> dict:
        with ray_session(ws):  # a no-op unless the engine is Ray
            return build_signals(ws, ctx)

    built = step("signals build", produce)
    for name, r in built.items():
        console.print(f"  {name}: {r['rows']:,} rows in {r['seconds']:.0f} s")
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
    from pipelines.index.build import IndexConfig, build_index
    from pipelines.index.fit_blend import fit_blend

    manifest = step("index build", lambda: build_index(ws, IndexConfig(), progress=False))
    step("blend", lambda: fit_blend(ws, ws.indexes_dir / manifest.index_version))
    console.print(f"  {manifest.items:,} items x {manifest.dim} ({manifest.model_version}) -> "
                  f"{ws.indexes_dir / manifest.index_version}")
    step("search examples", lambda: show_search(ws, console, seed))
    console.print(f"Look at search yourself: [bold]unisup --workspace {ws.root} --online {masked(ws.online)} "
                  "serve[/bold], then open http://127.0.0.1:3000/ (the inspector: two configurations side by side)")
    return report.ok


EXAMPLES = 3  # dev queries shown
SHOWN = 5  # rows per list
BEFORE, AFTER = "bm25", "rrf"


def show_search(ws: Workspace, console: Console, seed: int) -> dict[str, float]:
    """BM25 ("before") beside the fused first stage ("after": BM25 + character n-grams + the
    off-the-shelf MiniLM, reciprocal-rank fusion, no labels) on every dev query: NDCG@10 of both, then
    the top 5 of three seeded dev queries with their human grades. Dev queries because they are what
    the project is measured on; nothing here is fitted, so showing their grades tunes nothing."""
    from pipelines.evaluation.judgments import from_lake
    from pipelines.metrics import evaluate
    from pipelines.retrieval.runner import ModelRunner

    dev = from_lake(ws.lake, "dev")
    runner = ModelRunner(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
    runs, _ = runner.runs(dev.queries["query_norm"].tolist(), dev.queries["query_id"].tolist(), [BEFORE, AFTER])
    ndcg = {name: evaluate(run, dev.judgments)["mean"]["ndcg@10"] for name, run in runs.items()}
    console.print(f"  NDCG@10 over {len(dev.queries):,} dev queries: {BEFORE} {ndcg[BEFORE]:.3f}, {AFTER} "
                  f"{ndcg[AFTER]:.3f} ({ndcg[AFTER] / ndcg[BEFORE]:.2f}x); unjudged rows count as 0")
    titles = ws.lake.read("items").set_index("item_id")["title"]
    grades: dict[str, dict[str, float]] = {}
    for qid, item, grade in zip(dev.judgments["query_id"], dev.judgments["item_id"], dev.judgments["relevance"]):
        grades.setdefault(qid, {})[item] = float(grade)
    tops = {qid: [list(runs[name].get(qid, {}))[:SHOWN] for name in (BEFORE, AFTER)] for qid in dev.queries["query_id"]}
    graded = dev.queries["query_id"].map(lambda q: sum(i in grades[q] for top in tops[q] for i in top))
    # queries whose lists are at least half graded read best; which ones among them is the seed's choice
    shown = dev.queries[graded >= min(SHOWN, graded.max())]
    for query in shown.sample(min(EXAMPLES, len(shown)), random_state=seed).itertuples():
        table = Table("#", f"{BEFORE} (before)", "grade", f"{AFTER} (after)", "grade",
                      title=f"“{query.query_text}” (dev; grades 1..3 by human raters, — unjudged)")
        for rank in range(SHOWN):
            cells = []
            for top in tops[query.query_id]:
                item = top[rank] if rank < len(top) else None
                grade = grades[query.query_id].get(item)
                cells += [str(titles.get(item, item))[:60] if item else "", "—" if grade is None else f"{grade:.2f}"]
            table.add_row(str(rank + 1), *cells)
        console.print(table)
    return ndcg
