"""`unisup`: one subcommand per pipeline step. Argument parsing and progress only; the work
lives in plain functions elsewhere in `pipelines`, which the commands call."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines import atomic
from pipelines.engagement.config import EngagementConfig
from pipelines.evaluation.ab import ABConfig
from pipelines.evaluation.offline import EvalConfig
from pipelines.index.build import IndexConfig
from pipelines.preranking.config import PrerankDataConfig, PrerankTrainConfig
from pipelines.ranking.config import RankerDataConfig, RankerTrainConfig
from pipelines.ray_data import RayDataConfig
from pipelines.settings import Settings
from pipelines.training.config import DataConfig, TargetConfig, TrainConfig
from pipelines.workspace import HOMEDEPOT, PROJECT_ROOT, ConfigError, Workspace, masked
from pipelines.workspace_lock import WorkspaceBusy, writer_lock

MODEL_NAMES = ("bm25 | char | rrf | rrf:VERSION | an encoder version | "  # pipelines.evaluation.models
               "search:RANKER[@relevance|@engagement|@lambdamart]")

# Feast flags on-demand views as experimental and ibis/duckdb announce API renames on every call;
# neither is actionable for a user of this CLI.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")

PIPELINE_ORDER = ("ingest", "signals", "apply", "materialize", "dataset", "train", "index", "rank", "prerank",
                  "engagement",
                  "serve", "ui", "eval", "ab", "consistency", "demo")


class PipelineOrder(typer.core.TyperGroup):
    """`unisup --help` lists the commands in the order a deployment runs them (PIPELINE_ORDER); typer
    alone lists plain commands before groups, each in registration order."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(cls=PipelineOrder, add_completion=False, no_args_is_help=True, help=__doc__)
ingest_app = typer.Typer(no_args_is_help=True, help="Load raw data into the canonical lake.")
signals_app = typer.Typer(no_args_is_help=True, help="Produce the signal tables behind the views.")
dataset_app = typer.Typer(no_args_is_help=True, help="Point-in-time training sets.")
rank_app = typer.Typer(no_args_is_help=True, help="The ranking stage: multi-task ranker + value model.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(signals_app, name="signals")
app.add_typer(dataset_app, name="dataset")
app.add_typer(rank_app, name="rank")
prerank_app = typer.Typer(no_args_is_help=True, help="Pre-ranking: a light model on all candidates, a strong one on "
                                                      "the hard ones.")
app.add_typer(prerank_app, name="prerank")
engagement_app = typer.Typer(no_args_is_help=True, help="Calibrated pCTR / pCVR over users, queries and items.")
app.add_typer(engagement_app, name="engagement")
console = Console(stderr=True)


def setting(name: str) -> Any:
    """A global option for one field of the settings model: its help from there, None = not given."""
    info = Settings.model_fields[name]
    return typer.Option(None, help=f"{info.description} (env UNISUP_{name.upper()})")


def option(config: type, name: str, *flags: str) -> Any:
    """A command option whose default and help come from a config dataclass field, stated once there."""
    spec = next(f for f in fields(config) if f.name == name)
    default = spec.default if spec.default is not MISSING else spec.default_factory()
    return typer.Option(default, *flags, help=spec.metadata.get("help", ""))


def today() -> pd.Timestamp:
    """Default as-of time: midnight UTC today, so a day's reruns stamp identical rows."""
    return pd.Timestamp(datetime.now(UTC).date(), tz="UTC")


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Path | None = setting("workspace"),
    online: str | None = setting("online"),
    repo: Path | None = setting("repo"),
    threads: int | None = setting("threads"),
) -> None:
    with friendly_errors():
        ctx.obj = Settings.load(workspace=workspace, online=online, repo=repo, threads=threads)


@contextmanager
def friendly_errors(online: str | None = None) -> Iterator[None]:
    """Known bad-input errors become one red line and exit code 2, never a traceback. With `online`
    (a command that reads or writes the online store), so do the store's errors (refused, wrong
    password, TLS), naming its URL with the password masked."""
    from redis.exceptions import RedisClusterException, RedisError

    from pipelines.features.dataset import EntityFileError
    from pipelines.features.produce import SignalTableError
    from pipelines.features.repo import UnknownSignal
    from pipelines.ingest.errors import IngestError

    store_errors = (RedisError, RedisClusterException) if online else ()
    try:
        yield
    except (ConfigError, IngestError, EntityFileError, SignalTableError, UnknownSignal, WorkspaceBusy,
            FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except store_errors as exc:
        console.print(f"[red]error:[/red] online store {escape(masked(online))}: {type(exc).__name__}: "
                      f"{escape(str(exc))}")
        raise typer.Exit(2) from None


def writing(ctx: typer.Context) -> Workspace:
    """The workspace of a command that writes it, held as its one writer until the command ends
    (pipelines.workspace_lock); a second writer fails at once, naming the holder."""
    ws = ctx.obj.as_workspace()
    with friendly_errors():
        ctx.with_resource(writer_lock(ws.root, shlex.join(["unisup", *sys.argv[1:]])))
    return ws


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

    ws = writing(ctx)
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

    ws = writing(ctx)
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
    engine: str | None = typer.Option(None, help="duckdb | ray: with ray, model passes (catalog and query "
                                                 "encoding, the teacher's cross-encoder) run on a Ray Data actor "
                                                 "pool (ray_* settings), same tables (default: the offline setting)"),
) -> None:
    """Run every registered producer and write its table where its feature view reads it."""
    from pipelines.features.produce import build_signals
    from pipelines.features.repo import ray_session
    from pipelines.signals.spec import SignalContext

    ws = writing(ctx)
    with friendly_errors():
        ws = with_engine(ws, engine)
    sctx = SignalContext(lake=ws.lake, as_of=_as_of(as_of), seed=seed, quick=quick,
                         work_dir=ws.cache_dir, ray=producer_pool(ctx, ws))
    with friendly_errors(), ray_session(ws), console.status("producing signals") as status:
        build_signals(ws, sctx, only=only, on_done=lambda name, path, n, s: status.console.print(
            f"  {name}: {n:,} rows in {s:.0f} s -> {path}"))
    console.print(f"rows and seconds per signal -> {ws.cache_dir / 'signals_build.json'}")


@signals_app.command("report")
def signals_report_cmd(
    ctx: typer.Context,
    quick: bool = typer.Option(False, help="The quick teacher profile (as built with --quick)"),
    seed: int = typer.Option(0),
    out: Path | None = typer.Option(None, help="JSON output [workspace/reports/teacher.json]"),
) -> None:
    """Teacher quality, calibration and cost on the dev split (stage 1, stage 2 everywhere, cascade)."""
    import torch

    from pipelines.evaluation.teacher_report import print_report, report_markdown, teacher_report

    ws = writing(ctx)
    out = out or ws.root / "reports" / "teacher.json"
    torch.set_num_threads(ctx.obj.threads)
    with friendly_errors():
        report = teacher_report(ws.lake, ws.cache_dir, quick=quick, seed=seed)
    atomic.write_json(out, report, indent=2, default=str)
    atomic.write_text(out.with_suffix(".md"), report_markdown(report))
    print_report(report, Console(width=180))
    console.print(f"report -> {out}, {out.with_suffix('.md').name}")


ENGINE_HELP = "duckdb | ray: Feast's offline store and batch engine for this command (default: the offline setting)"


def with_engine(ws: Workspace, engine: str | None) -> Workspace:
    """The workspace on the --engine of apply / materialize / dataset build: 'ray' keeps a cluster
    address from the offline setting, else a local Ray; None keeps the setting."""
    if engine is None or engine == ws.offline or (engine == "ray" and ws.offline.startswith("ray")):
        return ws
    if engine not in ("duckdb", "ray"):
        raise ConfigError(f"--engine {engine!r}: expected duckdb or ray")
    return replace(ws, offline=engine)


def producer_pool(ctx: typer.Context, ws: Workspace) -> RayDataConfig | None:
    """Where producers run their model passes: on a Ray Data actor pool of the ray_* settings when the
    workspace's engine is Ray (the command holds a ray_session), else in-process (None)."""
    return ctx.obj.ray_data if ws.offline.startswith("ray") else None


@app.command("apply")
def apply_cmd(ctx: typer.Context, engine: str | None = typer.Option(None, help=ENGINE_HELP)) -> None:
    """Register the feature repo's entities, views and services in the workspace registry."""
    from pipelines.features.repo import apply

    ws = writing(ctx)
    with friendly_errors():
        ws = with_engine(ws, engine)
    with friendly_errors(ws.online), console.status("feast apply"):
        contents = apply(ws)
    console.print(f"applied {len(contents.views)} views, {len(contents.on_demand_views)} on-demand, "
                  f"services {[s.name for s in contents.services]} -> {ws.root / 'registry.db'}")


@app.command("materialize")
def materialize_cmd(
    ctx: typer.Context,
    full: bool = typer.Option(False, "--full", help="Reload each view's whole TTL window"),
    end: str | None = typer.Option(None, help="Up to this time (default: now)"),
    engine: str | None = typer.Option(None, help=ENGINE_HELP),
) -> None:
    """Load the latest feature values into the online store (incremental by default)."""
    from pipelines.features.materialize import materialize

    ws = writing(ctx)
    with friendly_errors():
        ws = with_engine(ws, engine)
    end_ts = pd.Timestamp(end, tz="UTC").to_pydatetime() if end else None
    with friendly_errors(ws.online):
        report = materialize(ws, incremental=not full, end=end_ts)
    console.print(f"materialized {report.views} up to {report.end:%Y-%m-%d %H:%M:%S} "
                  f"into {masked(ws.online)} in {report.seconds:.1f}s")
    if report.refilled:
        console.print(f"loaded in full (the online store had no watermark for them: new, flushed or emptied): "
                      f"{report.refilled}")


@dataset_app.command("build")
def dataset_build_cmd(
    ctx: typer.Context,
    entities: Path = typer.Option(..., help="Entity rows: parquet/CSV with query_id, item_id, event_timestamp"),
    out: Path = typer.Option(..., help="Output dir for dataset.parquet and lineage.json"),
    service: str = typer.Option("training", help="FeatureService to read"),
    engine: str | None = typer.Option(None, help="duckdb (fast, same semantics) | feast (plain SDK) | ray (Feast's "
                                                 "Ray offline store; default when the offline setting is Ray)"),
) -> None:
    """Point-in-time join of a FeatureService onto entity rows, with lineage."""
    from pipelines.features.dataset import build_dataset

    ws = writing(ctx)
    engine = engine or ("ray" if ws.offline.startswith("ray") else "duckdb")
    with friendly_errors(), console.status(f"building point-in-time set from {service!r}"):
        result = build_dataset(ws, entities, out, service=service, engine=engine)
    nulls = {k: v for k, v in result.lineage["null_rate"].items() if v > 0}
    console.print(f"{result.lineage['rows']:,} rows -> {result.path}; lineage -> {out / 'lineage.json'}")
    console.print(f"features with nulls (missing/expired, rows kept): {nulls}")
    for line in result.all_null:
        console.print(f"[yellow]warning:[/yellow] null in every row: {escape(line)}")


@dataset_app.command("entities")
def dataset_entities_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., help="Output parquet of entity rows"),
    n: int = typer.Option(10_000, help="Rows"),
    seed: int = typer.Option(0),
    days: int = typer.Option(30, help="Event times spread over the last DAYS days (0: every row at now)"),
) -> None:
    """Sample entity rows (pairs from the signal tables, event times in a window) for a demo set."""
    from pipelines.features.entities import sample_entities

    ws = writing(ctx)
    with friendly_errors():
        df = sample_entities(ws, n=n, seed=seed, days=days)
    with atomic.atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    console.print(f"{len(df):,} entity rows -> {out}")


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    target: str = option(TargetConfig, "kind", "--target"),
    quick: bool = typer.Option(False, help="A few dozen queries, short lists (tests and CI)"),
    epochs: int | None = typer.Option(None, help="Passes over the training queries [the profile's]"),
    max_queries: int | None = option(DataConfig, "max_queries"),
    name: str | None = typer.Option(None, help="Model version name (default: hash of lineage + weights)"),
    seed: int = option(TrainConfig, "seed"),
    as_of: str | None = typer.Option(None, help="Event time of the training set's rows (default: today)"),
) -> None:
    """Distil the unified target (or an ablation's) into a MiniLM bi-encoder; register the version."""
    from pipelines.training.train import train

    ws = writing(ctx)
    with friendly_errors():
        config = train_config(target, quick, epochs, max_queries, seed, ctx.obj.threads)
        result = train(ws, config, as_of=_as_of(as_of), name=name, console=console)
    print(json.dumps({"version": result.model.version, "path": str(result.model.path), **result.stats}))


def train_config(target: str, quick: bool, epochs: int | None, max_queries: int | None, seed: int,
                 threads: int) -> TrainConfig:
    """The profile (full or quick) with the command line's overrides applied."""
    config = TrainConfig.quick(kind=target, seed=seed) if quick else TrainConfig(target=TargetConfig(kind=target),
                                                                                 seed=seed)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if max_queries is not None:
        config = replace(config, data=replace(config.data, max_queries=max_queries))
    return replace(config, threads=threads)


@app.command("consistency")
def consistency_cmd(
    ctx: typer.Context,
    n: int = typer.Option(1000, help="Keys to sample"),
    seed: int = typer.Option(0),
    service: str = typer.Option("training", help="FeatureService whose features are compared"),
) -> None:
    """Compare offline (as of now) and online values for sampled keys; exit 1 on any mismatch."""
    from pipelines.features.consistency import check_consistency

    ws: Workspace = ctx.obj.as_workspace()
    with friendly_errors(ws.online), console.status("comparing offline and online stores"):
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


index_app = typer.Typer(no_args_is_help=True, help="FAISS indexes of the catalog and their blend weights.")
app.add_typer(index_app, name="index")


@contextmanager
def index_errors() -> Iterator[None]:
    """Index and blend problems a user can fix become one red line (via friendly_errors)."""
    from pipelines.index.fit_blend import BlendError
    from pipelines.index.store import IndexMismatch

    try:
        yield
    except (BlendError, IndexMismatch) as exc:
        raise ConfigError(str(exc)) from None


@index_app.command("build")
def index_build_cmd(
    ctx: typer.Context,
    model: str | None = option(IndexConfig, "model"),
    kind: str = option(IndexConfig, "kind"),
    hnsw_m: int = option(IndexConfig, "hnsw_m"),
    ef_construction: int = option(IndexConfig, "ef_construction"),
    ef_search: int = option(IndexConfig, "ef_search"),
    blend: bool = typer.Option(True, help="Also fit the blend weights (needs `unisup apply`)"),
) -> None:
    """Encode the catalog with a model version and write index, item map and manifest."""
    from pipelines.index.build import build_index

    ws = writing(ctx)
    with friendly_errors(), known_models(), index_errors():
        config = IndexConfig(model=model, kind=kind, hnsw_m=hnsw_m, ef_construction=ef_construction,
                             ef_search=ef_search)
        manifest = build_index(ws, config)
    console.print(f"index {manifest.index_version}: {manifest.items:,} items x {manifest.dim} ({manifest.kind}), "
                  f"recall@100 vs exact {manifest.recall_at_100} over {manifest.recall_queries} queries, "
                  f"{manifest.build_seconds:.1f}s -> {ws.indexes_dir / manifest.index_version}")
    if blend:
        fit_and_show_blend(ws, ws.indexes_dir / manifest.index_version, as_of=None)


@index_app.command("blend")
def index_blend_cmd(
    ctx: typer.Context,
    index: Path | None = typer.Option(None, help="Index dir [newest under WORKSPACE/indexes]"),
    as_of: str | None = typer.Option(None, help="Read features as of this time [each judgment's time]"),
) -> None:
    """Fit the blend of model score and retriever_online features; writes blend.json in the index dir."""
    from pipelines.index.store import find_index

    ws = writing(ctx)
    with friendly_errors():
        index = index or find_index(ws.indexes_dir)
    fit_and_show_blend(ws, index, as_of=pd.Timestamp(as_of, tz="UTC") if as_of else None)


def fit_and_show_blend(ws: Workspace, index: Path, as_of: pd.Timestamp | None) -> None:
    """Fit the blend for one index and print its weights and per-query AUCs."""
    from pipelines.index.fit_blend import fit_blend

    with friendly_errors(), known_models(), index_errors(), console.status("fitting the blend"):
        result = fit_blend(ws, index, as_of=as_of)
    table = Table("input", "weight", "transform", title="blend (pipelines/index/blend.py)")
    for name, weight, log in zip(result.inputs, result.weights, result.log1p):
        table.add_row(name, f"{weight:+.3f}", "log1p" if log else "")
    console.print(table)
    fit = result.fitted
    console.print(f"per-query AUC, train (in-sample): {fit.get('train_query_auc')} (model score alone "
                  f"{fit.get('train_query_auc_model_score')}); dev: {fit.get('dev_query_auc')} "
                  f"(model score alone {fit.get('dev_query_auc_model_score')})")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    index: Path | None = setting("index"),
    model_dir: Path | None = setting("model_dir"),
    admin_reload: bool | None = setting("admin_reload"),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean otherwise)"),
    port: int = typer.Option(3000),
) -> None:
    """Start the BentoML retriever (serving/service.py); same as `bentoml serve serving.service:RetrieverService`
    with the settings in the environment."""
    from pipelines.index.store import check_servable

    with friendly_errors():  # what the service will load, checked here for a one-line error
        settings = Settings.load(**{**ctx.obj.model_dump(), "workspace": ctx.obj.workspace.resolve(),
                                    "repo": ctx.obj.repo.resolve(), "index": index and index.resolve(),
                                    "model_dir": model_dir and model_dir.resolve(), "admin_reload": admin_reload})
        manifest = check_servable(settings.as_workspace(), settings.index)
    env = {"BENTOML_DO_NOT_TRACK": "true", **os.environ, **settings.environment()}
    console.print(f"serving index {manifest.index_version} (model {manifest.model_version}) "
                  f"with features from {masked(settings.online)} on http://{host}:{port}")
    os.execve(sys.executable, [sys.executable, "-m", "bentoml", "serve", "serving.service:RetrieverService",
                               "--host", host, "--port", str(port), "--working-dir", str(PROJECT_ROOT)], env)


@app.command("ui")
def ui_cmd(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean otherwise)"),
    port: int = typer.Option(8888),
) -> None:
    """Browse the workspace registry in Feast's own UI: views, entities, services, their descriptions.

    Like `feast -c WORKSPACE ui -h 127.0.0.1` after `unisup apply`, but with this command's settings."""
    from pipelines.features.repo import feature_store

    ws: Workspace = ctx.obj.as_workspace()
    with friendly_errors():
        if not (ws.root / "registry.db").exists():
            raise ConfigError(f"no registry in {ws.root}: run `unisup apply` first")
    console.print(f"Feast UI for {ws.root / 'registry.db'} on http://{host}:{port}")
    feature_store(ws).serve_ui(host=host, port=port)


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    quick: bool = typer.Option(False, help="Sampled signals (fast)"),
    synthetic: bool = typer.Option(False, help="Use synthetic data even if Home Depot data is present"),
) -> None:
    """End to end: ingest -> signals -> apply -> materialize -> training set -> consistency -> lookup."""
    from pipelines.demo import run_demo

    with friendly_errors(ctx.obj.online):
        ws = writing(ctx)
        ok = run_demo(ws, console, quick=quick, synthetic=synthetic or not HOMEDEPOT.exists(),
                      ray=producer_pool(ctx, ws))
    raise typer.Exit(0 if ok else 1)


@contextmanager
def known_models() -> Iterator[None]:
    """An unknown --model is a bad setting (one red line listing the available ones), not a crash."""
    from pipelines.modeling.registry import UnknownModel
    from pipelines.preranking.store import UnknownPreranker
    from pipelines.ranking.store import UnknownRanker

    try:
        yield
    except (UnknownModel, UnknownRanker, UnknownPreranker) as exc:
        raise ConfigError(str(exc)) from None


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    judgments: Path | None = typer.Option(None, help="Judgments CSV in the Home Depot layout "
                                                     "(search_term, product_uid, relevance)"),
    split: str | None = typer.Option(None, help="Score the lake's own split instead (dev: held out)"),
    model: list[str] | None = typer.Option(None, help=f"{MODEL_NAMES} (repeatable; default: bm25 and minilm-l6-v2)"),
    out: Path | None = typer.Option(None, help="Output dir [WORKSPACE/reports/eval-<file stem or split>]"),
    encoding: str = option(EvalConfig, "encoding"),
    save_runs: bool = option(EvalConfig, "save_runs"),
    precompute: bool = option(EvalConfig, "precompute"),
) -> None:
    """Top-100 from the whole catalog per judged query, scored per model and frequency bucket."""
    from pipelines.evaluation.offline import default_out, evaluate_models
    from pipelines.evaluation.report import LABELS
    from pipelines.metrics import METRICS

    ws = writing(ctx)
    with friendly_errors(ws.online), known_models():
        if (judgments is None) == (split is None):
            raise ConfigError("give exactly one of --judgments FILE and --split NAME")
        config = EvalConfig(**({"models": tuple(dict.fromkeys(model))} if model else {}), judgments=judgments,
                            split=split or "dev", encoding=encoding, save_runs=save_runs,
                            precompute=precompute)
        out = out or default_out(ws, config)
        report = evaluate_models(ws, config, out)
    table = Table("model", *(LABELS[m] for m in METRICS), "queries",
                  title=f"{report['input']['source']}: top-{report['depth']}")
    for name, result in report["models"].items():
        table.add_row(name, *(f"{result['mean'][m]:.4f}" for m in METRICS), str(result["queries"]))
    console.print(table)
    rejected = report["input"].get("file", {}).get("rows_rejected", 0)
    if rejected:
        console.print(f"[yellow]{rejected} rows quarantined[/yellow]: {report['input']['file']['rejects_path']}")
    console.print(f"report -> {out}/report.html, report.md, report.json, per_query.csv, metrics.png, ndcg_by_bucket.png"
                  + (", runs/ (TREC)" if save_runs else ""))


@rank_app.command("train")
def rank_train_cmd(
    ctx: typer.Context,
    name: str = typer.Option("ranker", help="Name of the ranker (workspace/models/rankers/NAME)"),
    candidates: str = option(RankerDataConfig, "candidates"),
    n: int = option(RankerDataConfig, "n"),
    quick: bool = option(RankerDataConfig, "quick"),
    epochs: int = option(RankerTrainConfig, "epochs"),
    unjudged: str = option(RankerTrainConfig, "unjudged"),
    teacher_weight: float = option(RankerTrainConfig, "teacher_weight"),
    drop_share: float = option(RankerTrainConfig, "drop_share"),
    seed: int = option(RankerTrainConfig, "seed"),
) -> None:
    """Train the ranker (and its LambdaMART baseline) on the training queries; value weights on calib."""
    from pipelines.ranking.train import train_ranker

    ws = writing(ctx)
    with friendly_errors(), known_models():
        meta = train_ranker(ws, name, RankerDataConfig(candidates=candidates, n=n, quick=quick, seed=seed),
                            RankerTrainConfig(epochs=epochs, unjudged=unjudged, teacher_weight=teacher_weight,
                                              drop_share=drop_share, seed=seed), console)
    table = Table("click weight", "order weight", "calib NDCG@10", "E(clicks)@10", "E(orders)@10",
                  title=f"value grid on calib queries (chosen: {meta['value_weights']})")
    for g in meta["value_grid"]:
        table.add_row(f"{g['click_weight']:g}", f"{g['order_weight']:g}", f"{g['calib_ndcg@10']:.4f}",
                      f"{g['expected_clicks@10']:.4f}", f"{g['expected_orders@10']:.5f}")
    console.print(table)
    for event, r in meta["engagement_heldout"].items():
        console.print(f"{event} (held-out days): AUC {r['auc']:.4f} (position only {r['auc_position_only']:.4f}), "
                      f"ECE {r['ece']:.4f} (position only {r['ece_position_only']:.4f})")
    console.print(f"LambdaMART: {meta['lambdamart']}; {meta['seconds']['total']:.0f} s")


@prerank_app.command("train")
def prerank_train_cmd(
    ctx: typer.Context,
    name: str = typer.Option("preranker", help="Name of the pre-ranker (workspace/models/prerankers/NAME)"),
    ranker: str = option(PrerankDataConfig, "ranker"),
    n_retrieve: int = option(PrerankDataConfig, "n_retrieve"),
    n_keep: int = option(PrerankDataConfig, "n_keep"),
    queries: int = option(PrerankDataConfig, "queries"),
    quick: bool = option(PrerankDataConfig, "quick"),
    epochs: int = option(PrerankTrainConfig, "epochs"),
    seed: int = option(PrerankTrainConfig, "seed"),
) -> None:
    """Train the light and strong pre-rankers, uniformly and HAP's way, on the training queries."""
    from pipelines.preranking.train import train_preranker

    ws = writing(ctx)
    with friendly_errors(ws.online), known_models():
        meta = train_preranker(ws, name, PrerankDataConfig(ranker=ranker, n_retrieve=n_retrieve, n_keep=n_keep,
                                                           queries=queries, quick=quick, seed=seed),
                               PrerankTrainConfig(epochs=epochs, seed=seed), console)
    table = Table("model", *(f"epoch {h['epoch']}" for h in next(iter(meta["history"].values()))),
                  title="calib per-query AUC (positives vs the model's negative groups)")
    for key, history in meta["history"].items():
        table.add_row(key, *(f"{h['calib_auc']:.4f}" for h in history))
    console.print(table)
    console.print(f"rows per group (fit): {meta['rows']['fit']}; conflict figure -> {meta['root']}/conflict.png")


@prerank_app.command("eval")
def prerank_eval_cmd(
    ctx: typer.Context,
    name: str = typer.Option("preranker", help="Trained pre-ranker (workspace/models/prerankers/NAME)"),
    split: str = typer.Option("dev", help="Lake split scored (dev: held out)"),
    budget: list[float] | None = typer.Option(None, help="Routing budgets (repeatable; default 0.1 0.2 0.3)"),
    precompute: bool = option(EvalConfig, "precompute"),
    out: Path | None = typer.Option(None, help="Output dir [WORKSPACE/reports/prerank-NAME-SPLIT]"),
) -> None:
    """Each pre-ranking variant's kept candidates, ordered by the ranker, scored on the split."""
    from pipelines.evaluation.prerank import BUDGETS, REGIMES, evaluate_preranker

    ws = writing(ctx)
    with friendly_errors(ws.online), known_models():
        report = evaluate_preranker(ws, name, split, tuple(budget or BUDGETS), precompute, out, console)
    for regime, variants in report["regimes"].items():
        table = Table("variant", "top-10 kept", "routed", "NDCG@10", "condensed", "NDCG@25", "recall@100",
                      "irrelevant@10", title=f"{split}, {REGIMES[regime]}: retrieve {report['n_retrieve']} -> "
                                             f"keep {report['n_keep']} -> ranker {report['ranker']!r}")
        for v in variants:
            m = v["mean"]
            table.add_row(v["variant"], f"{v['top10_kept']:.4f}", f"{v['routed_share']:.3f}", f"{m['ndcg@10']:.4f}",
                          f"{m['ndcg@10_condensed']:.4f}", f"{m['ndcg@25']:.4f}", f"{m['recall@100']:.4f}",
                          f"{m['irrelevant@10']:.4f}")
        console.print(table)
    console.print(f"report -> {report['out']}/prerank.md, prerank.json")


@engagement_app.command("train")
def engagement_train_cmd(
    ctx: typer.Context,
    name: str = typer.Option("engagement", help="Name of the model set (workspace/models/engagement/NAME)"),
    negative_rate: float = option(EngagementConfig, "negative_rate"),
    rounds: int = option(EngagementConfig, "rounds"),
    max_depth: int = option(EngagementConfig, "max_depth"),
    user_features: bool = option(EngagementConfig, "user_features"),
    threads: int = option(EngagementConfig, "threads"),
    seed: int = option(EngagementConfig, "seed"),
) -> None:
    """pCTR and pCVR on the simulated impression log: downsampled, corrected, calibrated on a later day,
    with and without the user features; report and reliability diagrams in WORKSPACE/reports/engagement-NAME."""
    from pipelines.engagement.train import train_engagement, write_report

    ws = writing(ctx)
    with friendly_errors(ws.online):
        report = train_engagement(ws, EngagementConfig(negative_rate=negative_rate, rounds=rounds, max_depth=max_depth,
                                                       user_features=user_features, threads=threads, seed=seed),
                                  name, console)
    out = write_report(ws, name, report)
    table = Table("target", "features", "form", "ROC-AUC", "PR-AUC", "log loss", "ECE", "mean p", "observed",
                  title=f"held-out days ({report['log_rows']['heldout']:,} impressions)")
    for target, sets in report["targets"].items():
        for feature_set, result in sets.items():
            if feature_set == "user_feature_lift":
                continue
            for form, m in result["heldout"].items():
                table.add_row(target, feature_set, form, *(f"{m[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss")),
                              f"{m['ece']:.5f}", f"{m['mean_predicted']:.5f}", f"{m['observed_rate']:.5f}")
    console.print(table)
    console.print(f"report -> {out}/report.md, report.json, reliability-click.png, reliability-order.png")


@rank_app.command("tradeoff")
def rank_tradeoff_cmd(
    ctx: typer.Context,
    ranker: str = typer.Option("ranker", help="Trained ranker (workspace/models/rankers/NAME)"),
    baseline: str = typer.Option("rrf:unified", help="Model of the A/B's control arm"),
    split: str = option(ABConfig, "split"),
    impressions: int = option(ABConfig, "impressions"),
    seed: int = option(ABConfig, "seed"),
    out: Path | None = typer.Option(None, help="Output dir [WORKSPACE/reports/tradeoff-RANKER-SPLIT]"),
) -> None:
    """NDCG@10 against simulated CTR and orders/search for each engagement weight of the value model."""
    from pipelines.evaluation.tradeoff import value_tradeoff

    ws = writing(ctx)
    out = out or ws.root / "reports" / f"tradeoff-{ranker}-{split}"
    with friendly_errors(ws.online), known_models():
        report = value_tradeoff(ws, ranker, baseline, ABConfig(a=baseline, b=f"search:{ranker}", split=split,
                                                               impressions=impressions, seed=seed), out)
    table = Table("click w", "order w", "NDCG@10", "condensed", "irrelevant@10", "CTR", "orders/search",
                  title=f"value trade-off on {split} (baseline {baseline})")
    for p in report["points"]:
        table.add_row(f"{p['click_weight']:g}", f"{p['order_weight']:g}", f"{p['ndcg@10']:.4f}",
                      f"{p['ndcg@10_condensed']:.4f}", f"{p['irrelevant@10']:.4f}", f"{p['ctr']:.4f}",
                      f"{p['orders_per_search']:.5f}")
    console.print(table)
    console.print(f"report -> {out}/tradeoff.html, tradeoff.md, tradeoff.json, tradeoff.png")


@app.command("ab")
def ab_cmd(
    ctx: typer.Context,
    a: str = option(ABConfig, "a"),
    b: str = option(ABConfig, "b"),
    split: str = option(ABConfig, "split"),
    impressions: int = option(ABConfig, "impressions"),
    days: int = option(ABConfig, "days"),
    seed: int = option(ABConfig, "seed"),
    resamples: int = option(ABConfig, "resamples"),
    out: Path | None = typer.Option(None, help="Output dir [WORKSPACE/reports/ab-A-vs-B-SPLIT]"),
) -> None:
    """Replay the click simulator with ranker A vs ranker B: CTR, orders, irrelevant share, 95% CIs."""
    from pipelines.evaluation.ab import default_out, run_ab

    ws = writing(ctx)
    config = ABConfig(a=a, b=b, split=split, impressions=impressions, days=days, seed=seed, resamples=resamples)
    out = out or default_out(ws, config)
    with friendly_errors(ws.online), known_models():
        report = run_ab(ws, config, out)
    table = Table("metric", f"A {a}", f"B {b}", "B - A [95% CI]", title=f"{report['searches']:,} searches per arm")
    for name, m in report["metrics"].items():
        table.add_row(name, f"{m['a']:.4f}", f"{m['b']:.4f}",
                      f"{m['diff']:+.4f} [{m['diff_ci'][0]:+.4f}, {m['diff_ci'][1]:+.4f}]")
    console.print(table)
    console.print(f"{report['ci']}; report -> {out}/ab.html, ab.md, ab.json")


if __name__ == "__main__":
    sys.exit(app())
