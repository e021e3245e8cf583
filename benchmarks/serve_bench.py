"""/retrieve (or, with --endpoint search, /search) under loopback load: p50 / p99 / req/s at
concurrency 1, 8 and 32, where the time goes, and the same feature lookup through the plain Feast SDK.

Builds a throwaway workspace: a synthetic lake (--items catalog, Home Depot's 54k by default), the
feature repo applied, a flat index of the catalog (embeddings cached across runs under
$TMPDIR/unisup-bench-cache, keyed by model and catalog), feature tables for every (query, top-100
item) pair of the lake's queries plus item and query profiles (random values, 5% null),
materialized into a private redis-server, and the blend fitted. `unisup serve` then runs in a
subprocess, and this process (asyncio + aiohttp) keeps c requests in flight for --duration seconds
per level after --warmup seconds: k=100, with_features=true, the lake's queries in seeded order
(/search: k=10 of n=200 candidates, ranked by a ranker trained on the same workspace in the quick
profile; its stages: retrieve (three channels), features (request-time), lookup (ranker_online,
one Redis read), rank (network + value model), respond).

Per level: latency percentiles, req/s, errors; mean stage times from the Server-Timing header
(queue: waiting for a batch to start; encode and search are of the whole batch the request rode in;
features is the one Redis round trip and decode) and the rest (HTTP, validation, JSON); the mean
encode batch (the X-Encode-Batch header: the size of the forward pass each request rode in, so
larger batches weigh by how many requests they carried); the server processes' CPU; the load
average. The client shares the 2 cores, so its CPU is reported too.

Then, with the server idle, one query's 100 returned pairs looked up in this process through
OnlineFeatures (the service's path) and Feast's get_online_features(...).to_df().

--soak-minutes N (issue 18's soak: `--endpoint search --soak-minutes 30`): N more minutes at
concurrency 8, /retrieve and (with --endpoint search) /search requests interleaved, in windows of
--soak-every minutes (5); every window after the first starts, beside the load, a `unisup materialize
--full` into the service's Redis and then POST /admin/reload switching the served index between the
benchmark's and a second one of the other kind. Per window: requests, errors, p50 / p99 per endpoint,
server RSS. Passes with zero errors, every materialize and reload succeeding, and < 10% growth of the
server processes' RSS from the end of the first window to the end of the last.

A level with failed requests or none at all, a lookup path that raises, or a failed soak is listed
under "failed" in the JSON and makes the script exit 1. --quick is a smoke run of every level and
lookup path on the smallest setup that serves: the lake of tests/test_serving.py (400 items, 80
queries, the off-the-shelf minilm-l6-v2 encoding its catalog in seconds, no shared embedding cache),
one server process, 1 s per level.

    PYTHONPATH=. .venv/bin/python benchmarks/serve_bench.py [--endpoint retrieve|search] [--duration 30]
        [--items 54000] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ROOT,
    add_run_args,
    finish,
    free_port,
    latency_summary,
    machine,
    output_path,
    print_table,
    redis_server,
    write_json,
)
from benchmarks.bench_materialize import feature_columns
from pipelines.settings import Settings
from serving.process import ServiceProcess

warnings.filterwarnings("ignore")  # Feast's experimental-ODFV and ibis deprecation notices
LEVELS = (1, 8, 32)
K = 100
USERS, BRANDS_PER_USER = 2_000, 3  # synthetic user views: every user with the same few brands
CACHE = Path(tempfile.gettempdir()) / "unisup-bench-cache"
ENDPOINTS = {  # what each endpoint's requests ask, the stages its Server-Timing names, its targets
    "retrieve": {"body": {"k": K, "with_features": True}, "stages": ("queue", "encode", "search", "features", "blend"),
                 "targets": {"p50_ms_c1": 15.0, "p99_ms_c1": 40.0, "rps_c8": 100.0}},
    "search": {"body": {"k": 10, "n": 200}, "stages": ("retrieve", "features", "lookup", "rank", "respond"),
               "targets": {"p50_ms_c1": 40.0, "p99_ms_c1": 100.0, "rps_c8": 50.0}},
}
SWITCHED_READS = 6  # consecutive /metadata answers naming the new index: every worker (2 by default) switched
SERVE = Settings.model_fields  # the service's settings: the server's defaults and their help


def build(root: Path, online: str, items: int, queries: int, kind: str, seed: int, shared_cache: bool = True,
          ranker: bool = False, preranker: bool = False):
    """Workspace with lake, index, feature tables for every query's top-100, Redis and the blend;
    with `ranker`, a ranker trained on it (quick profile, rrf candidates: /search's latency does not
    depend on how well it ranks), and with `preranker` a pre-ranker for it (quick profile, one epoch,
    N_r 1,000 -> 200, less on a small catalog). shared_cache: keep catalog embeddings in CACHE across runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.features.produce import view_schema
    from pipelines.features.redis_fast import materialize_redis
    from pipelines.features.repo import apply, feature_store
    from pipelines.features.watermark import record_watermarks
    from pipelines.index.build import IndexConfig, build_index
    from pipelines.index.fit_blend import fit_blend
    from pipelines.index.store import load_encoder, load_index
    from pipelines.ingest.synthetic import generate_synthetic
    from pipelines.signals.spec import table_path
    from pipelines.simulation.users import brand_of
    from pipelines.workspace import Workspace

    ws = Workspace(root=root, online=online)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    generate_synthetic(ws.lake, n_items=items, n_queries=queries, seed=seed, as_of=now - pd.Timedelta(hours=1))
    apply(ws)
    if shared_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        ws.cache_dir.symlink_to(CACHE, target_is_directory=True)
    manifest = build_index(ws, IndexConfig(kind=kind))
    loaded = load_index(ws.indexes_dir / manifest.index_version)
    lake_queries = ws.lake.read("queries")
    vectors = load_encoder(manifest, ws.models_dir).encode(lake_queries["query_norm"].tolist())
    _, rows = loaded.index.search(vectors, K)
    keys = {("query_id", "item_id"): pd.DataFrame({"query_id": np.repeat(lake_queries["query_id"].to_numpy(), K),
                                                   "item_id": loaded.item_ids[rows.ravel()]}),
            ("item_id",): pd.DataFrame({"item_id": loaded.item_ids}),
            ("query_id",): lake_queries[["query_id"]]}
    users = pd.DataFrame({"user_id": [f"u{i:06d}" for i in range(USERS)]})  # the simulator's ids
    brands = brand_of(ws.lake.read("items")["title"]).drop_duplicates().head(BRANDS_PER_USER)
    keys[("user_id",)] = users
    keys[("user_id", "brand")] = users.merge(pd.DataFrame({"brand": brands.to_numpy()}), how="cross")
    rng = np.random.default_rng(seed)
    for view in feature_store(ws).list_feature_views():
        frame = keys[tuple(view.join_keys)]
        stamp = now - pd.Timedelta(hours=2) - pd.to_timedelta(rng.integers(0, 86400, len(frame)), unit="s")
        table = pa.table({**{k: pa.array(frame[k].astype(str)) for k in view.join_keys},
                          "event_timestamp": pa.array(stamp), "created_timestamp": pa.array(stamp),
                          **feature_columns(view, len(frame), rng)})
        schema = view_schema(view)
        pq.write_table(table.select(schema.names).cast(schema), table_path(ws, view))
    stats = materialize_redis(ws, end=now.to_pydatetime(), incremental=False, dedup=False)
    record_watermarks(ws, list(stats.views), {})  # what `unisup materialize` records: the service checks it
    fit_blend(ws, loaded.path)
    if ranker:
        from pipelines.ranking.config import RankerDataConfig, RankerTrainConfig
        from pipelines.ranking.train import train_ranker

        train_ranker(ws, "ranker", RankerDataConfig(candidates="rrf", quick=True, seed=seed),
                     RankerTrainConfig(epochs=1, seed=seed))
    if preranker:
        from pipelines.preranking.config import PrerankDataConfig, PrerankTrainConfig
        from pipelines.preranking.train import train_preranker

        data = PrerankDataConfig(n_retrieve=min(1000, items // 2), n_keep=min(200, items // 4), quick=True, seed=seed)
        train_preranker(ws, "preranker", data, PrerankTrainConfig(epochs=1, seed=seed))
    pairs = {q: list(g) for q, g in keys[("query_id", "item_id")].groupby("query_id", sort=False)["item_id"]}
    return ws, manifest, lake_queries["query_text"].tolist(), pairs


def second_index(ws, kind: str) -> str:
    """Another index of the same catalog (the other kind), for the soak's reloads to switch between; built
    after the levels, since the service would otherwise start on the newest."""
    from pipelines.index.build import IndexConfig, build_index
    from pipelines.index.fit_blend import fit_blend

    manifest = build_index(ws, IndexConfig(kind="hnsw" if kind == "flat" else "flat"))
    fit_blend(ws, ws.indexes_dir / manifest.index_version)
    return manifest.index_version


class ServerProcess(ServiceProcess):
    """The service under load, plus what the benchmark reads from it."""

    def usage(self) -> tuple[float, float]:
        """(CPU seconds, RSS MiB) of the server: BentoML's arbiter and every worker it started."""
        import psutil

        cpu = rss = 0.0
        root = psutil.Process(self.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                cpu, rss = cpu + times.user + times.system, rss + proc.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
        return cpu, rss


async def load(targets: list[tuple[str, bytes]], concurrency: int, seconds: float,
               warmup: float) -> tuple[list[tuple], float]:
    """Keep `concurrency` requests in flight for warmup + seconds, cycling through (url, body) `targets`.
    Returns (latency s, status, Server-Timing, encode batch, url) of each request sent after the warm-up, and
    the seconds from the warm-up's end to the last of them. A worker whose every request so far started in
    the warm-up sends one more after the window: on a slow machine a level at high concurrency still measures
    each worker once (throughput then divides by the longer span) instead of reporting nothing."""
    import aiohttp

    records: list[tuple] = []
    start = time.perf_counter() + warmup
    end = start + seconds
    last = start
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as session:
        async def worker(w: int) -> None:
            nonlocal last
            i, measured = w, False
            while time.perf_counter() < end or not measured:
                (url, body), i = targets[i % len(targets)], i + concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body) as resp:
                        await resp.read()
                        status, timing = resp.status, resp.headers.get("Server-Timing", "")
                        batch = int(resp.headers.get("X-Encode-Batch", 0))
                except aiohttp.ClientError as exc:
                    status, timing, batch = f"{type(exc).__name__}", "", 0
                if t0 >= start:
                    done = time.perf_counter()
                    records.append((done - t0, status, timing, batch, url))
                    measured, last = True, max(last, done)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return records, max(seconds, last - start)


def stage_ms(timings: list[str]) -> dict[str, float]:
    """Mean milliseconds per stage over Server-Timing headers like 'encode;dur=3.10, search;dur=0.42'."""
    sums: dict[str, float] = {}
    for header in timings:
        for part in header.split(","):
            if ";dur=" in part:
                name, dur = part.strip().split(";dur=")
                sums[name] = sums.get(name, 0.0) + float(dur)
    return {name: total / max(len(timings), 1) for name, total in sums.items()}


def run_level(server: ServerProcess, endpoint: str, bodies: list[bytes], concurrency: int, seconds: float,
              warmup: float) -> dict:
    stage_names = ENDPOINTS[endpoint]["stages"]
    (cpu0, _), client0, load0 = server.usage(), _cpu(), os.getloadavg()[0]
    records, seconds = asyncio.run(load([(f"{server.url}/{endpoint}", b) for b in bodies], concurrency, seconds,
                                        warmup))
    (cpu1, _), client1 = server.usage(), _cpu()
    ok = [r for r in records if r[1] == 200]
    stages = stage_ms([r[2] for r in ok])
    lat = latency_summary([r[0] for r in ok]) if ok else {}
    other = lat.get("mean_ms", 0.0) - sum(stages.get(s, 0.0) for s in stage_names)
    return {"concurrency": concurrency, **lat, "requests": len(records), "errors": len(records) - len(ok),
            "error_kinds": sorted({str(r[1]) for r in records if r[1] != 200}),
            "req_per_s": round(len(ok) / seconds, 1),
            "stages_ms": {s: round(stages.get(s, 0.0), 3) for s in stage_names} | {"other": round(other, 3)},
            "mean_encode_batch": round(float(np.mean([r[3] for r in ok])), 2) if ok else None,
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / (seconds + warmup), 1),
            "client_cpu_percent": round(100 * (client1 - client0) / (seconds + warmup), 1),
            "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lookup_paths(ws, pairs: dict[str, list[str]], iterations: int) -> list[dict]:
    """One query's 100 pairs per call: the service's OnlineFeatures path vs plain Feast."""
    from pipelines.features.online import OnlineFeatures

    ours = OnlineFeatures(ws)
    service = ours.store.get_feature_service("retriever_online")
    batches = [[(q, i) for i in items] for q, items in pairs.items()]
    paths = {
        "OnlineFeatures.get_online_columns (served)": ours.get_online_columns,
        "OnlineFeatures.get_online_features -> DataFrame": ours.get_online_features,
        "Feast get_online_features(...).to_df()": lambda p: ours.store.get_online_features(
            features=service, entity_rows=[{"query_id": a, "item_id": b} for a, b in p]).to_df(),
    }
    out = []
    for label, call in paths.items():
        try:
            for batch in batches[:30]:
                call(batch)
            times = []
            for n in range(iterations):
                t0 = time.perf_counter()
                call(batches[n % len(batches)])
                times.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a failed path is a row of the report, not the end of it
            out.append({"path": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        out.append({"path": label, **latency_summary(times)})
    return out


def soak(server: ServerProcess, ws, targets: list[tuple[str, bytes]], minutes: float, every: float,
         indexes: list[str]) -> dict:
    """`minutes` at concurrency 8 over `targets` (both endpoints' requests interleaved), in windows of
    `every` minutes. From the second window on, each window starts a `unisup materialize --full` into the
    service's Redis and, once it is done, POST /admin/reload to the next of `indexes`, both while the load
    runs. Per window: requests, errors, p50 / p99 per endpoint, the server's RSS at its end, the events."""
    windows, events = [], []
    for w in range(max(1, round(minutes / every))):
        event: dict = {}
        side = threading.Thread(target=_materialize_and_reload, args=(server, ws, indexes[w % len(indexes)], event))
        if w > 0:
            side.start()
        records, _ = asyncio.run(load(targets, 8, 60 * every, 0))
        if w > 0:
            side.join()
            events.append(event)
        windows.append({"window": w, "minutes": [round(w * every, 2), round((w + 1) * every, 2)],
                        "requests": len(records), "errors": sum(r[1] != 200 for r in records),
                        "error_kinds": sorted({str(r[1]) for r in records if r[1] != 200}),
                        "by_endpoint": {url.rsplit("/", 1)[1]: _summary([r[0] for r in records
                                                                          if r[4] == url and r[1] == 200])
                                        for url in sorted({t[0] for t in targets})},
                        "rss_mb": round(server.usage()[1], 1), "event": event or None})
    rss = [w["rss_mb"] for w in windows]
    growth = (rss[-1] - rss[0]) / rss[0] * 100 if len(rss) > 1 else 0.0
    errors = sum(w["errors"] for w in windows)
    events_ok = all(e.get("materialize_exit") == 0 and e.get("switched_s") is not None for e in events)
    return {"minutes": minutes, "every_minutes": every, "concurrency": 8, "windows": windows,
            "requests": sum(w["requests"] for w in windows), "errors": errors, "rss_mb": rss,
            "rss_growth_percent": round(growth, 2), "pass": errors == 0 and growth < 10 and events_ok}


def _summary(seconds: list[float]) -> dict:
    return latency_summary(seconds) if seconds else {}


def _materialize_and_reload(server: ServerProcess, ws, index: str, event: dict) -> None:
    """One soak event, recorded into `event`: a full materialize (a child `unisup` process, as an
    operator runs it), then a switch of the served index."""
    import httpx

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--workspace", str(ws.root), "--online", ws.online,
                           "--repo", str(ws.repo_dir), "materialize", "--full"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    event.update(materialize_exit=done.returncode, materialize_s=round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    answer = httpx.post(f"{server.url}/admin/reload", json={"index": index}, timeout=30)
    event.update(reload_to=index, reload_status=answer.status_code)
    if answer.status_code != 202:
        event["reload_answer"] = answer.text[:300]
        return
    seen = 0  # /metadata answers from whichever worker takes it: switched once several in a row say so
    while seen < SWITCHED_READS and time.perf_counter() - t0 < 300:
        seen = seen + 1 if httpx.get(f"{server.url}/metadata", timeout=30).json()["deployment"]["index"] == index else 0
        time.sleep(0.2)
    event["switched_s"] = round(time.perf_counter() - t0, 1) if seen >= SWITCHED_READS else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30, help="measured seconds per concurrency level")
    ap.add_argument("--warmup", type=float, default=3, help="seconds per level before measuring")
    ap.add_argument("--items", type=int, default=54_000, help="catalog size (Home Depot: ~54k)")
    ap.add_argument("--queries", type=int, default=1000, help="lake queries; requests cycle through them")
    ap.add_argument("--index-kind", default="flat", help="flat (exact, default) | hnsw (recall@100 reported)")
    ap.add_argument("--torch-threads", type=int, help=f"{SERVE['torch_threads'].description} (UNISUP_TORCH_THREADS)")
    ap.add_argument("--workers", type=int, help=f"{SERVE['workers'].description} (UNISUP_WORKERS) "
                                                f"[{SERVE['workers'].default}; --quick: 1]")
    ap.add_argument("--lanes", type=int, default=SERVE["lanes"].default,
                    help=f"{SERVE['lanes'].description} (UNISUP_LANES)")
    ap.add_argument("--lookups", type=int, default=500, help="timed calls per lookup path")
    ap.add_argument("--soak-minutes", type=float, default=0,
                    help="opt-in soak at concurrency 8 after the levels (e.g. 30; --endpoint search: both endpoints)")
    ap.add_argument("--soak-every", type=float, default=5,
                    help="soak window in minutes; each after the first starts a materialize --full and a reload")
    ap.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="retrieve",
                    help="retrieve: k=100 with features; search: k=10 of n=200 through a ranker trained on the lake")
    ap.add_argument("--preranker", action="store_true",
                    help="--endpoint search: serve with a pre-ranker trained on the workspace (N_r 1,000 -> the "
                         "ranker's 200, budget 0.2); its work counts in the retrieve stage")
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "serve", quick="400 items, 80 queries, 1 server process, 1 s per level, 20 lookups")
    a = ap.parse_args()
    if a.preranker and a.endpoint != "search":
        ap.error("--preranker needs --endpoint search")
    if a.quick:
        a.duration, a.warmup = min(a.duration, 1), min(a.warmup, 0.5)
        a.items, a.queries, a.lookups = min(a.items, 400), min(a.queries, 80), min(a.lookups, 20)
        a.soak_minutes = min(a.soak_minutes, 1)
        a.soak_every = min(a.soak_every, a.soak_minutes / 2)
    a.workers = a.workers or (1 if a.quick else SERVE["workers"].default)
    # what the server will use, as it resolves it (the flag, else THREADS / WORKERS)
    a.torch_threads = Settings.load(workers=a.workers, torch_threads=a.torch_threads).encoder_threads
    out = output_path(a.out, "serve" if a.endpoint == "retrieve" else "serve_search", a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    started = {"load_avg": [round(x, 2) for x in os.getloadavg()], "time": pd.Timestamp.now(tz="UTC").isoformat()}
    server = None
    try:
        with redis_server(a.redis, tmp / "redis") as redis:
            redis.client(0).flushdb()
            t0 = time.perf_counter()
            ws, manifest, texts, pairs = build(tmp / "ws", redis.url(0), a.items, a.queries, a.index_kind,
                                               a.seed, shared_cache=not a.quick, ranker=a.endpoint == "search",
                                               preranker=a.preranker)
            print(f"built workspace, index and features for {len(pairs):,} queries in {time.perf_counter() - t0:.0f}s")
            rng = random.Random(a.seed)
            bodies = [json.dumps({"query": t, **ENDPOINTS[a.endpoint]["body"]}).encode() for t in texts]
            rng.shuffle(bodies)
            server = ServerProcess(ws, free_port(), tmp / "server.log",
                                   env={"UNISUP_TORCH_THREADS": str(a.torch_threads),
                                        "UNISUP_WORKERS": str(a.workers), "UNISUP_LANES": str(a.lanes),
                                        "UNISUP_ADMIN_RELOAD": str(a.soak_minutes > 0).lower(),
                                        **({"UNISUP_PRERANKER": "preranker"} if a.preranker else {})})
            server.wait_ready()
            levels = []
            for c in LEVELS:
                print(f"concurrency {c}: {a.warmup:g}s warm-up + {a.duration:g}s ...", flush=True)
                levels.append(run_level(server, a.endpoint, bodies, c, a.duration, a.warmup))
            soaked = None
            if a.soak_minutes > 0:
                second = second_index(ws, a.index_kind)
                endpoints = ["retrieve", "search"] if a.endpoint == "search" else ["retrieve"]
                targets = [(f"{server.url}/{e}", json.dumps({"query": t, **ENDPOINTS[e]["body"]}).encode())
                           for t in texts for e in endpoints]
                random.Random(a.seed).shuffle(targets)
                print(f"soak: {a.soak_minutes:g} min at concurrency 8 on {endpoints}, a materialize and a reload "
                      f"every {a.soak_every:g} min ...", flush=True)
                soaked = soak(server, ws, targets, a.soak_minutes, a.soak_every,
                              [manifest.index_version, second])
            server.stop()
            server = None
            lookups = lookup_paths(ws, pairs, a.lookups)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(a, out, manifest, levels, lookups, soaked, started)


def failures(levels: list[dict], lookups: list[dict], soaked: dict | None) -> list[str]:
    """What failed: levels with failed requests or none, lookup paths that raised, a failed soak."""
    failed = [f"concurrency {lv['concurrency']}: {lv['errors']} of {lv['requests']} requests failed "
              f"({', '.join(lv['error_kinds']) or 'none sent'})" for lv in levels if lv["errors"] or not lv["requests"]]
    failed += [f"{r['path']}: {r['error']}" for r in lookups if r.get("error")]
    if soaked and not soaked["pass"]:
        failed.append(f"soak: {soaked['errors']} errors, RSS {soaked['rss_growth_percent']:+.1f}%")
    return failed


def report(a, out: Path, manifest, levels: list[dict], lookups: list[dict], soaked: dict | None,
           started: dict) -> None:
    by_c = {lv["concurrency"]: lv for lv in levels}
    met = {"p50_ms_c1": by_c[1].get("p50_ms"), "p99_ms_c1": by_c[1].get("p99_ms"), "rps_c8": by_c[8]["req_per_s"]}
    TARGETS, STAGES = ENDPOINTS[a.endpoint]["targets"], ENDPOINTS[a.endpoint]["stages"]
    checks = {"p50_ms_c1": met["p50_ms_c1"] is not None and met["p50_ms_c1"] <= TARGETS["p50_ms_c1"],
              "p99_ms_c1": met["p99_ms_c1"] is not None and met["p99_ms_c1"] <= TARGETS["p99_ms_c1"],
              "rps_c8": met["rps_c8"] >= TARGETS["rps_c8"]}
    ours, feast = lookups[0], lookups[2]
    speedup = round(feast["p50_ms"] / ours["p50_ms"], 1) if "p50_ms" in feast and "p50_ms" in ours else None
    failed = failures(levels, lookups, soaked)
    result = {"endpoint": a.endpoint, "request": ENDPOINTS[a.endpoint]["body"], "items": a.items,
              "preranker": "preranker@0.2 (N_r 1000)" if a.preranker else None,
              "queries": a.queries, "duration_s": a.duration, "warmup_s": a.warmup,
              "quick": a.quick,
              "index": {"kind": manifest.kind, "params": manifest.params, "recall_at_100": manifest.recall_at_100},
              "torch_threads": a.torch_threads, "workers": a.workers, "lanes": a.lanes, "levels": levels,
              "lookup_100_pairs": lookups,
              "lookup_p50_speedup_vs_feast": speedup, "failed": failed,
              "soak": soaked, "targets": TARGETS, "measured": met, "met": checks,
              "started": started, "machine": machine()}
    path = write_json(out, result)
    rows = []
    for lv in levels:
        st = lv["stages_ms"]
        mean = lv.get("mean_ms") or 1.0
        rows.append((lv["concurrency"], lv.get("p50_ms", "-"), lv.get("p99_ms", "-"), lv["req_per_s"], lv["errors"],
                     *(f"{st[s]:.2f} ({100 * st[s] / mean:.0f}%)" for s in (*STAGES, "other")),
                     lv["mean_encode_batch"], f"{lv['server_cpu_percent']:.0f} / {lv['client_cpu_percent']:.0f}",
                     f"{lv['load_avg_1m'][0]:.1f} -> {lv['load_avg_1m'][1]:.1f}"))
    asked = ", ".join(f"{k}={v}" for k, v in ENDPOINTS[a.endpoint]["body"].items())
    print_table(f"/{a.endpoint} {asked}, features from Redis, {a.items:,} items, {manifest.kind} index (recall@100 "
                f"{manifest.recall_at_100}), {a.duration:g}s per level",
                ["concurrency", "p50 ms", "p99 ms", "req/s", "errors", *(f"{s} ms" for s in STAGES), "other ms",
                 "encode batch", "CPU % server / client", "load 1m"], rows)
    print_table(f"one lookup of 100 pairs x retriever_online from Redis (Feast / ours p50: "
                f"{result['lookup_p50_speedup_vs_feast']}x)", ["path", "p50 ms", "p99 ms", "mean ms"],
                [(r["path"], *(r[k] for k in ("p50_ms", "p99_ms", "mean_ms"))) if "p50_ms" in r
                 else (r["path"], r["error"], "", "") for r in lookups])
    if soaked:
        endpoints = list(soaked["windows"][0]["by_endpoint"])
        print_table(f"soak: {soaked['minutes']:g} min at concurrency 8, a materialize --full and a reload every "
                    f"{soaked['every_minutes']:g} min", ["minutes", "requests", "errors",
                                                         *(f"{e} p50 / p99 ms" for e in endpoints), "RSS MB", "event"],
                    [(f"{w['minutes'][0]:g}-{w['minutes'][1]:g}", w["requests"], w["errors"],
                      *(f"{w['by_endpoint'][e].get('p50_ms', '-')} / {w['by_endpoint'][e].get('p99_ms', '-')}"
                        for e in endpoints), w["rss_mb"],
                      "" if not w["event"] else f"materialize {w['event']['materialize_s']} s (exit "
                      f"{w['event']['materialize_exit']}), reload -> {w['event']['reload_to']} "
                      f"({w['event']['reload_status']}) switched after {w['event'].get('switched_s')} s")
                     for w in soaked["windows"]])
        print(f"soak: {soaked['requests']:,} requests, {soaked['errors']} errors, server RSS {soaked['rss_mb'][0]} "
              f"-> {soaked['rss_mb'][-1]} MB ({soaked['rss_growth_percent']:+.1f}%): "
              f"{'pass' if soaked['pass'] else 'FAIL'}")
    print("targets: " + ", ".join(f"{k} {met[k]} (target {TARGETS[k]}) {'ok' if checks[k] else 'MISSED'}"
                                  for k in TARGETS))
    finish(path, failed)


if __name__ == "__main__":
    main()
