"""Run registered producers and write their tables where the feature views read them.

Every table is checked against its view before it is written (pipelines.features.validate: keys,
both timestamps in UTC, every declared feature of its type and inside its declared range), so a
producer bug stops the build here, naming the signal, column, count and an example row, instead of
reaching the offline store and, materialized, the online one. The failing signal's table is not
written (a previous one stays as it was); signals built before it in the same run keep their new
tables, each whole and valid on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
from feast import FeatureView
from feast.types import Bool, Float32, Float64, Int32, Int64, String

from pipelines.atomic import write_json, write_parquet
from pipelines.features.repo import load_repo
from pipelines.features.validate import SignalTableError, check_frame, check_ranges
from pipelines.lake import to_arrow
from pipelines.signals.spec import TIMESTAMPS, Producer, Signal, SignalContext, table_path
from pipelines.workspace import Workspace

_ARROW = {Float32: pa.float32(), Float64: pa.float64(), Int64: pa.int64(), Int32: pa.int32(),
          String: pa.string(), Bool: pa.bool_()}


def view_schema(view: FeatureView, join_keys: list[str] | None = None) -> pa.Schema:
    """Arrow schema of the table behind a view: join keys, both timestamps, then features.

    join_keys default to the view's own, which Feast fills in only once the view is applied."""
    keys = [pa.field(k, pa.string()) for k in (join_keys or view.join_keys)]
    ts = [pa.field(t, pa.timestamp("us", tz="UTC")) for t in TIMESTAMPS]
    feats = []
    for f in view.features:
        if f.dtype not in _ARROW:
            raise SignalTableError(f"view {view.name!r}, feature {f.name!r}: unsupported type {f.dtype}")
        feats.append(pa.field(f.name, _ARROW[f.dtype]))
    return pa.schema(keys + ts + feats)


def conform(view: FeatureView, df: pd.DataFrame, join_keys: list[str] | None = None) -> pa.Table:
    """Cast a producer's frame to the view's schema once its columns, keys, timestamps and types
    are checked (ranges are write_signal's further check); SignalTableError names what is wrong."""
    join_keys = join_keys or view.join_keys
    schema = view_schema(view, join_keys)
    check_frame(view, df, join_keys)
    try:
        return to_arrow(df, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
        raise SignalTableError(f"signal {view.name!r}: {exc}") from exc


def write_signal(ws: Workspace, signal: Signal, ctx: SignalContext, join_keys: list[str],
                 producer: Producer | None = None) -> tuple[Path, int]:
    """Produce one signal's table (with its own producer unless one is given), check it against
    the view, ranges included, and only then write it, sorted by key then time, for stable files."""
    df = replace(signal, producer=producer).produce(ctx) if producer else signal.produce(ctx)
    table = conform(signal.view, df, join_keys)
    check_ranges(signal.view, df, join_keys)
    table = table.sort_by([(k, "ascending") for k in join_keys]
                          + [("event_timestamp", "ascending")])
    out = table_path(ws, signal.view)
    write_parquet(table, out)
    return out, table.num_rows


def build_signals(ws: Workspace, ctx: SignalContext, only: list[str] | None = None,
                  on_done: Callable[[str, Path, int, float], None] | None = None,
                  producers: dict[str, Producer] | None = None) -> dict[str, dict]:
    """Produce every registered signal (or `only` those) into the workspace.

    `producers` swaps a signal's producer for another with the same table contract (tests of the
    feature-store plumbing use the synthetic teacher instead of fitting one). Returns rows and
    wall seconds per signal, and writes them to work_dir/signals_build.json when there is one."""
    contents = load_repo(ws.repo_dir)
    chosen = [contents.signal(name) for name in only] if only else contents.signals
    producers = producers or {}
    report = {}
    for signal in chosen:
        clock = time.perf_counter()
        path, n = write_signal(ws, signal, ctx, contents.join_keys(signal.view), producers.get(signal.name))
        seconds = time.perf_counter() - clock
        report[signal.name] = {"rows": n, "seconds": round(seconds, 1), "path": str(path)}
        if on_done:
            on_done(signal.name, path, n, seconds)
    if ctx.work_dir is not None:
        summary = {"as_of": str(ctx.as_of), "quick": ctx.quick, "seed": ctx.seed, "signals": report}
        write_json(Path(ctx.work_dir) / "signals_build.json", summary, indent=2)
    return report
