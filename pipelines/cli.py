"""`unisup`: one subcommand per pipeline step. Argument parsing and progress only; the work
lives in plain functions elsewhere in `pipelines`, which the commands call."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.workspace import HOMEDEPOT, ConfigError, Workspace

# Feast flags on-demand views as experimental and ibis/duckdb announce API renames on every call;
# neither is actionable for a user of this CLI.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
ingest_app = typer.Typer(no_args_is_help=True, help="Load raw data into the canonical lake.")
signals_app = typer.Typer(no_args_is_help=True, help="Produce the signal tables behind the views.")
dataset_app = typer.Typer(no_args_is_help=True, help="Point-in-time training sets.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(signals_app, name="signals")
app.add_typer(dataset_app, name="dataset")
console = Console(stderr=True)


def today() -> pd.Timestamp:
    """Default as-of time: midnight UTC today, so a day's reruns stamp identical rows."""
    return pd.Timestamp(datetime.now(UTC).date(), tz="UTC")


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Path | None = typer.Option(None, help="Workspace dir [env UNISUP_WORKSPACE; ./workspace]"),
    online: str | None = typer.Option(None, help="'sqlite' or redis://HOST:PORT/DB [env UNISUP_ONLINE]"),
    repo: Path | None = typer.Option(None, help="Feature repo dir [env UNISUP_REPO; ./feature_repo]"),
) -> None:
    with friendly_errors():
        ctx.obj = Workspace.from_env(workspace, online, repo)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Known bad-input errors become one red line and exit code 2, never a traceback."""
    from pipelines.features.dataset import EntityFileError
    from pipelines.ingest.errors import IngestError
    from pipelines.signals.build import SignalTableError

    try:
        yield
    except (ConfigError, IngestError, EntityFileError, SignalTableError, FileNotFoundError,
            KeyError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _as_of(value: str | None) -> pd.Timestamp:
    return pd.Timestamp(value, tz="UTC") if value else today()


@ingest_app.command("homedepot")
def ingest_homedepot_cmd(
    ctx: typer.Context,
    judgments: Path = typer.Option(HOMEDEPOT / "judgments.csv", help="Home Depot judgments CSV"),
    products: Path | None = typer.Option(HOMEDEPOT / "products.csv", help="Catalog CSV (optional)"),
    encoding: str = typer.Option("auto", help="auto | utf-8 | iso-8859-1"),
    as_of: str | None = typer.Option(None, help="Timestamp for rows without one (default: today)"),
) -> None:
    """Read Home Depot judgments (+ catalog) into the lake; bad rows go to lake/rejects/."""
    from pipelines.ingest.homedepot import ingest_homedepot

    ws: Workspace = ctx.obj
    with friendly_errors(), console.status("ingesting Home Depot files"):
        products = products if products and products.exists() else None
        report = ingest_homedepot(judgments, products, ws.lake, _as_of(as_of), encoding=encoding)
    table = Table("file", "encoding", "read", "written", "rejected", "reasons")
    for f in (report.judgments, report.products):
        if f is not None:
            table.add_row(f.path.name, f.encoding, str(f.rows_read), str(f.rows_written),
                          str(f.rows_rejected), json.dumps(f.rejects_by_reason) if f.rows_rejected else "")
    console.print(table)
    console.print(f"lake: {ws.lake.root}  items={report.items_written} queries={report.queries_written}")


@ingest_app.command("synthetic")
def ingest_synthetic_cmd(
    ctx: typer.Context,
    items: int = typer.Option(2000, help="Catalog size"),
    queries: int = typer.Option(500, help="Distinct queries"),
    seed: int = typer.Option(0, help="Random seed; same seed, same tables"),
    as_of: str | None = typer.Option(None, help="Timestamp stamped on rows (default: today)"),
) -> None:
    """Write a seeded synthetic catalog, queries and graded judgments in the lake's schema."""
    from pipelines.ingest.synthetic import generate_synthetic

    ws: Workspace = ctx.obj
    report = generate_synthetic(ws.lake, n_items=items, n_queries=queries, seed=seed,
                                as_of=_as_of(as_of), progress=True)
    console.print(f"lake: {ws.lake.root}  {report}")


@signals_app.command("build")
def signals_build_cmd(
    ctx: typer.Context,
    quick: bool = typer.Option(False, help="A sample of queries, for tests and CI"),
    only: list[str] | None = typer.Option(None, help="Only these signals (repeatable)"),
    seed: int = typer.Option(0),
    as_of: str | None = typer.Option(None, help="Snapshot time of the run (default: today)"),
) -> None:
    """Run every registered producer and write its table where its feature view reads it."""
    from pipelines.signals.build import build_signals
    from pipelines.signals.spec import SignalContext

    ws: Workspace = ctx.obj
    sctx = SignalContext(lake=ws.lake, as_of=_as_of(as_of), seed=seed, quick=quick,
                         work_dir=ws.root / "cache")
    with friendly_errors(), console.status("producing signals") as status:
        build_signals(ws, sctx, only=only,
                      on_done=lambda name, path, n: status.console.print(f"  {name}: {n:,} rows -> {path}"))


@app.command("apply")
def apply_cmd(ctx: typer.Context) -> None:
    """Register the feature repo's entities, views and services in the workspace registry."""
    from pipelines.features.repo import apply

    ws: Workspace = ctx.obj
    with friendly_errors(), console.status("feast apply"):
        contents = apply(ws)
    console.print(f"applied {len(contents.views)} views, {len(contents.on_demand_views)} on-demand, "
                  f"services {[s.name for s in contents.services]} -> {ws.root / 'registry.db'}")


@app.command("materialize")
def materialize_cmd(
    ctx: typer.Context,
    full: bool = typer.Option(False, "--full", help="Reload each view's whole TTL window"),
    end: str | None = typer.Option(None, help="Up to this time (default: now)"),
) -> None:
    """Load the latest feature values into the online store (incremental by default)."""
    from pipelines.features.materialize import materialize

    ws: Workspace = ctx.obj
    end_ts = pd.Timestamp(end, tz="UTC").to_pydatetime() if end else None
    with friendly_errors():
        report = materialize(ws, incremental=not full, end=end_ts)
    console.print(f"materialized {report.views} up to {report.end:%Y-%m-%d %H:%M:%S} "
                  f"into {ws.online} in {report.seconds:.1f}s")


@dataset_app.command("build")
def dataset_build_cmd(
    ctx: typer.Context,
    entities: Path = typer.Option(..., help="Entity rows: parquet/CSV with query_id, item_id, event_timestamp"),
    out: Path = typer.Option(..., help="Output dir for dataset.parquet and lineage.json"),
    service: str = typer.Option("training", help="FeatureService to read"),
    engine: str = typer.Option("duckdb", help="duckdb (fast, same semantics) | feast (plain SDK)"),
) -> None:
    """Point-in-time join of a FeatureService onto entity rows, with lineage."""
    from pipelines.features.dataset import build_dataset

    ws: Workspace = ctx.obj
    with friendly_errors(), console.status(f"building point-in-time set from {service!r}"):
        result = build_dataset(ws, entities, out, service=service, engine=engine)
    nulls = {k: v for k, v in result.lineage["null_rate"].items() if v > 0}
    console.print(f"{result.lineage['rows']:,} rows -> {result.path}; lineage -> {out / 'lineage.json'}")
    console.print(f"features with nulls (missing/expired, rows kept): {nulls}")


@dataset_app.command("entities")
def dataset_entities_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., help="Output parquet of entity rows"),
    n: int = typer.Option(10_000, help="Rows"),
    seed: int = typer.Option(0),
    days: int = typer.Option(30, help="Event times spread over the last DAYS days"),
) -> None:
    """Sample entity rows (pairs from the signal tables, event times in a window) for a demo set."""
    from pipelines.features.entities import sample_entities

    ws: Workspace = ctx.obj
    with friendly_errors():
        df = sample_entities(ws, n=n, seed=seed, days=days)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    console.print(f"{len(df):,} entity rows -> {out}")


@app.command("consistency")
def consistency_cmd(
    ctx: typer.Context,
    n: int = typer.Option(1000, help="Keys to sample"),
    seed: int = typer.Option(0),
    service: str = typer.Option("training", help="FeatureService whose features are compared"),
) -> None:
    """Compare offline (as of now) and online values for sampled keys; exit 1 on any mismatch."""
    from pipelines.features.consistency import check_consistency

    ws: Workspace = ctx.obj
    with friendly_errors(), console.status("comparing offline and online stores"):
        report = check_consistency(ws, n=n, seed=seed, service=service)
    if report.ok:
        console.print(f"[green]consistent[/green]: {report.keys} keys x {len(report.features)} features")
        return
    table = Table("query_id", "item_id", "feature", "offline", "online", title="mismatches")
    for row in report.mismatches.head(50).itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    console.print(f"[red]{len(report.mismatches)} mismatches[/red] over {report.keys} keys")
    raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    quick: bool = typer.Option(False, help="Sampled signals (fast)"),
    synthetic: bool = typer.Option(False, help="Use synthetic data even if Home Depot data is present"),
) -> None:
    """End to end: ingest -> signals -> apply -> materialize -> training set -> consistency -> lookup."""
    from pipelines.demo import run_demo

    with friendly_errors():
        ok = run_demo(ctx.obj, console, quick=quick, synthetic=synthetic or not HOMEDEPOT.exists())
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    sys.exit(app())
