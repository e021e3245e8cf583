"""Teacher labelling on Ray Data against in-process: the same N pairs, the same fitted teacher.

Paths, each in its own child process (its own peak RSS; --quick runs them in this process):
- "in-process": Teacher.label as `signals build` runs it: stage 1 (pair features + boosting) on every
  pair, then the cross-encoder over the escalated pairs, torch on every core;
- "ray data": the same with the Ray engine (`signals build --engine ray`): a local Ray as a command
  starts it (ray_session: 2 CPUs, loopback), an actor pool of the ray_* settings' defaults (or the
  flags), every pass on it (--min-rows 0); stage 1 stays on the driver, its query encoding and the
  cross-encoder run on the pool (pipelines.ray_data). Ray's own start is timed apart; each pass's pool
  start-up (~10 s: actor processes importing torch, the model deserialized) is in its wall time.
Per path: wall seconds and pairs/s of the whole pass, stage 1 and stage 2 wall seconds, stage-2 pairs/s
and peak RSS (the Ray path: the driver's, and the largest actor's, sampled every 0.2 s). The Ray path's
labels must equal in-process's bit for bit (`labels equal`). Catalog encoding (--catalog titles, 0 = skip):
titles/s in-process (Encoder.encode, every core) and on the pool (RayEncoder), vectors compared likewise.

Stage 2 runs on at most --max-stage2 pairs, the least confident ones (Teacher.label's max_pairs, as
`cascade.max_pairs` caps a producer run): at ~4.5 ms a pair on 2 cores, 30,000 keeps both passes within
~5 minutes each, so one full run (and building its workspace) stays under ~15 minutes.

Input: --workspace W: its fitted teacher (W/cache/teacher, left by `signals build`) and lake, pairs from
its prior table (W/features/retrieval_prior.parquet) when there is one. Without: a workspace built in a
temp dir from --data (Home Depot files: ingest, then the quick teacher, as `signals build --quick`
fits it), pairs from the candidate tables of seeded training queries. Either way, N pairs: the
labelled pairs (candidates + judged) of seeded training queries until N, cut at N.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ray_data.py [--workspace W | --data DIR] [--pairs 200000] \\
        [--max-stage2 30000] [--catalog 10000] [--quick] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ROOT,
    ProcessTree,
    add_run_args,
    failures,
    finish,
    machine,
    output_path,
    parse_or_run_child,
    print_table,
    run_path,
    write_json,
)

warnings.filterwarnings("ignore")  # Feast's and Ray's deprecation notices
HOMEDEPOT = ROOT.parent / "shared" / "data" / "homedepot"
PAIRS_PER_QUERY = 150  # fewer than Home Depot's ~205 labelled pairs per query: queries sampled for N pairs
PATHS = ("in-process", "ray data")


def build_workspace(root: Path, data: Path | None, seed: int) -> dict:
    """A lake (Home Depot files from `data`, else a small synthetic one) and the quick teacher fitted on
    it, as `signals build --quick` fits it; the catalog's embeddings cached beside it."""
    from rich.console import Console

    from pipelines.lake import Lake
    from pipelines.signals.spec import SignalContext
    from pipelines.signals.teacher_labels import fitted_teacher
    from pipelines.teacher.cascade import TeacherConfig

    lake, as_of, t0 = Lake(root / "lake"), _as_of(), time.perf_counter()
    if data is not None:
        from pipelines.ingest.homedepot import ingest_homedepot

        ingest_homedepot(data / "judgments.csv", data / "products.csv", lake, as_of)
    else:
        from pipelines.ingest.synthetic import generate_synthetic

        generate_synthetic(lake, n_items=300, n_queries=90, seed=seed, as_of=as_of)
    ctx = SignalContext(lake=lake, as_of=as_of, seed=seed, quick=True, work_dir=root / "cache")
    fitted_teacher(ctx, TeacherConfig.quick(seed), Console(stderr=True))
    return {"built_from": str(data) if data else "synthetic", "seconds": round(time.perf_counter() - t0, 1)}


def sample_pairs(root: Path, n: int, seed: int, out: Path) -> dict:
    """N labelled pairs of seeded training queries (Teacher.label's input) into `out`, from the prior's
    table when the workspace has one, else from the candidate tables of the sampled queries."""
    import pandas as pd

    from pipelines.lake import Lake
    from pipelines.retrieval import build_channels
    from pipelines.signals.retrieval_prior import candidate_table
    from pipelines.signals.spec import SignalContext
    from pipelines.signals.teacher_labels import label_pairs
    from pipelines.signals.training import training_judgments, training_queries

    ctx = SignalContext(lake=Lake(root / "lake"), as_of=_as_of(), seed=seed)
    queries = training_queries(ctx).sample(frac=1.0, random_state=seed)
    prior_file = root / "features" / "retrieval_prior.parquet"
    if prior_file.exists():
        prior = pd.read_parquet(prior_file, columns=["query_id", "item_id", "rank_bm25", "rank_dense", "rank_char",
                                                     "fusion_score", "agreement"])
        source = str(prior_file)
    else:
        queries = queries.head(math.ceil(n / PAIRS_PER_QUERY))
        items = ctx.lake.read("items")
        prior = candidate_table(ctx, build_channels(items, cache_dir=root / "cache" / "retrieval"), queries, items)
        source = f"candidate tables of {len(queries):,} training queries"
    sizes = prior.groupby("query_id").size().reindex(queries["query_id"], fill_value=0)
    chosen = queries[((sizes.cumsum() - sizes) < n).to_numpy()]  # the queries that start before pair n
    pairs = label_pairs(chosen, prior[prior["query_id"].isin(chosen["query_id"])],
                        training_judgments(ctx, chosen)).head(n)
    pairs.to_parquet(out)
    return {"pairs": len(pairs), "queries": int(pairs["query_id"].nunique()), "source": source}


def _as_of():
    import pandas as pd

    return pd.Timestamp("2024-03-01", tz="UTC")


def child(path: str, root: str, pairs_file: str, max_stage2: str, pool: str, out: str) -> dict:
    """One path in this (fresh) process: "in-process" or "ray data" labelling, or "catalog in-process" /
    "catalog ray data" encoding (pairs_file then holds the titles, JSON)."""
    import torch

    from pipelines.features.ray_store import ray_session
    from pipelines.modeling.ray_encoder import RayEncoder
    from pipelines.ray_data import RayDataConfig
    from pipelines.retrieval import shared_encoder
    from pipelines.workspace import Workspace

    root_dir, config = Path(root), RayDataConfig(**json.loads(pool))
    on_ray = path.endswith("ray data")
    result: dict = {"torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    session = ray_session(Workspace(root=root_dir, offline="ray" if on_ray else "duckdb"))
    with session, ProcessTree(worker_title=b"ray::MapWorker") as actors:
        result["ray_start_seconds"] = round(time.perf_counter() - t0, 1) if on_ray else None
        if path.startswith("catalog"):
            titles = json.loads(Path(pairs_file).read_text())
            encoder = RayEncoder.of(shared_encoder(), config) if on_ray else shared_encoder()
            t0 = time.perf_counter()
            vectors = encoder.encode(titles, progress=False)
            seconds = time.perf_counter() - t0
            np.save(out, vectors)
            result.update(titles=len(titles), seconds=round(seconds, 1), titles_per_s=round(len(titles) / seconds, 1))
        else:
            result.update(_label(root_dir, pairs_file, int(max_stage2), config if on_ray else None, out))
    result["actor_peak_rss_mb"] = actors.summary()["ray_worker_peak_rss_mb"] if on_ray else None
    return result


def _label(root: Path, pairs_file: str, max_stage2: int, ray, out: str) -> dict:
    """Teacher.label of the pairs with a fresh scorer (every query encoded in this pass), timed."""
    import pandas as pd

    from pipelines.lake import Lake
    from pipelines.retrieval import build_channels
    from pipelines.retrieval.pair_features import PairScorer
    from pipelines.teacher.cascade import Teacher

    pairs = pd.read_parquet(pairs_file)
    teacher = Teacher.load(root / "cache" / "teacher")
    items = Lake(root / "lake").read("items")
    scorer = PairScorer(build_channels(items, cache_dir=root / "cache" / "retrieval", ray=ray), items)
    t0 = time.perf_counter()
    labels = teacher.label(pairs, scorer, max_pairs=max_stage2, ray=ray)
    seconds = time.perf_counter() - t0
    np.savez(out, probs2=labels["probs2"], stage2=labels["stage2"])
    stage2 = int((labels["stage2"] == 2).sum())
    wall = labels["seconds"]
    return {"pairs": len(pairs), "stage2_pairs": stage2, "seconds": round(seconds, 1),
            "pairs_per_s": round(len(pairs) / seconds, 1), "stage1_seconds": round(wall["stage1_wall"], 1),
            "stage2_seconds": round(wall["stage2_wall"], 1),
            "stage2_pairs_per_s": round(stage2 / wall["stage2_wall"], 1) if stage2 else None,
            "driver_cpu_seconds": round(wall["stage1_cpu"] + wall["stage2_cpu"], 1),
            "cross_encoder_bf16": bool(teacher.cross_encoder.bf16)}


def _equal(a: Path, b: Path) -> bool | None:
    """Whether two paths' outputs are identical (None when one is missing)."""
    if not (a.exists() and b.exists()):
        return None
    x, y = np.load(a), np.load(b)
    if isinstance(x, np.lib.npyio.NpzFile):
        return all(np.array_equal(x[k], y[k]) for k in x.files)
    return bool(np.array_equal(x, y))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    from pipelines.ray_data import RayDataConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="Workspace with a fitted teacher (W/cache/teacher) and its lake")
    ap.add_argument("--data", help=f"Home Depot files to build a workspace from [{HOMEDEPOT} if present]")
    ap.add_argument("--pairs", type=int, default=200_000, help="pairs labelled by each path [200,000]")
    ap.add_argument("--max-stage2", type=int, default=30_000, help="cap on escalated pairs [30,000]")
    ap.add_argument("--catalog", type=int, default=10_000, help="titles encoded each way, 0 = skip [10,000]")
    defaults = RayDataConfig()
    ap.add_argument("--actors", type=int, default=defaults.actors)
    ap.add_argument("--cpus-per-actor", type=float, default=defaults.cpus_per_actor)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per block")
    ap.add_argument("--min-rows", type=int, default=0,
                    help=f"passes shorter than this stay in-process [0: every pass on the pool, so the Ray path "
                         f"measures Ray Data whatever the sizes; the setting's default is {defaults.min_rows:,}]")
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "bench_ray_data", quick="a synthetic lake, 300 items, every pass on the pool, paths in "
                                            "this process", redis=False)
    a = parse_or_run_child(ap, child, nargs=6)
    if a is None:
        return
    if a.quick:
        a.pairs, a.max_stage2, a.catalog, a.batch_size = min(a.pairs, 2000), 200, 300, 64
    pool = RayDataConfig(actors=a.actors, cpus_per_actor=a.cpus_per_actor, batch_size=a.batch_size,
                         min_rows=a.min_rows)
    out = output_path(a.out, "bench_ray_data", a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_data_"))
    script, runs, catalog = Path(__file__).resolve(), [], []
    data = None if a.quick else Path(a.data) if a.data else HOMEDEPOT if (HOMEDEPOT / "products.csv").exists() else None
    try:
        root = Path(a.workspace) if a.workspace else tmp / "ws"
        built = None if a.workspace else build_workspace(root, data, a.seed)
        sample = sample_pairs(root, a.pairs, a.seed, tmp / "pairs.parquet")
        print(f"{sample['pairs']:,} pairs of {sample['queries']:,} queries ({sample['source']}); work dir {tmp}",
              flush=True)
        run = lambda path, inputs, npy: run_path(  # noqa: E731
            script, [path, root, inputs, str(a.max_stage2), json.dumps(asdict(pool)), npy],
            child=child if a.quick else None, timeout=3600)
        for path in PATHS:
            print(f"running: {path} labelling ...", flush=True)
            runs.append({"label": path, **run(path, tmp / "pairs.parquet", tmp / f"{path}.npz")})
        runs[1]["labels_equal"] = _equal(tmp / f"{PATHS[0]}.npz", tmp / f"{PATHS[1]}.npz")
        if a.catalog:
            from pipelines.lake import Lake

            titles = Lake(root / "lake").read("items")["title"].astype(str).head(a.catalog).tolist()
            (tmp / "titles.json").write_text(json.dumps(titles))
            for path in PATHS:
                print(f"running: {path} catalog encoding ...", flush=True)
                catalog.append({"label": f"catalog {path}",
                                **run(f"catalog {path}", tmp / "titles.json", tmp / f"catalog {path}.npy")})
            catalog[1]["vectors_equal"] = _equal(tmp / f"catalog {PATHS[0]}.npy", tmp / f"catalog {PATHS[1]}.npy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (local, ray), (catalog_local, catalog_ray) = (runs + [{}, {}])[:2], (catalog + [{}, {}])[:2]
    ratios = {"pairs_per_s": _ratio(ray.get("pairs_per_s"), local.get("pairs_per_s")),
              "stage2_pairs_per_s": _ratio(ray.get("stage2_pairs_per_s"), local.get("stage2_pairs_per_s")),
              "catalog_titles_per_s": _ratio(catalog_ray.get("titles_per_s"), catalog_local.get("titles_per_s"))}
    failed = failures(runs + catalog)
    if ray.get("labels_equal") is False:
        failed.append("ray data: labels differ from in-process")
    if catalog_ray.get("vectors_equal") is False:
        failed.append("catalog ray data: vectors differ from in-process")
    result = {"quick": a.quick, "workspace": a.workspace, "built": built, "sample": sample, "pool": asdict(pool),
              "max_stage2": a.max_stage2, "runs": runs, "catalog": catalog, "ray_vs_in_process": ratios,
              "failed": failed, "machine": machine()}
    path = write_json(out, result)
    print_table(f"teacher labelling of {sample['pairs']:,} pairs, stage 2 capped at {a.max_stage2:,} pairs; pool: "
                f"{pool.actors} actors x {pool.cpus_per_actor:g} CPU, blocks of {pool.batch_size:,} rows; "
                f"Ray / in-process pairs/s {ratios['pairs_per_s']}, stage 2 {ratios['stage2_pairs_per_s']}",
                ["path", "wall s", "pairs/s", "stage 1 s", "stage 2 pairs", "stage 2 s", "stage 2 pairs/s",
                 "Ray start s", "peak MB driver / actor", "labels equal"],
                [(r["label"], r.get("seconds"), r.get("pairs_per_s"), r.get("stage1_seconds"), r.get("stage2_pairs"),
                  r.get("stage2_seconds"), r.get("stage2_pairs_per_s"), r.get("ray_start_seconds"),
                  f"{r.get('peak_rss_mb') or '-'} / {r.get('actor_peak_rss_mb') or '-'}",
                  r.get("labels_equal", "-") if not r.get("error") else r["error"][:60]) for r in runs])
    if catalog:
        print_table(f"catalog encoding, {catalog[0].get('titles', '-')} titles; Ray / in-process "
                    f"{ratios['catalog_titles_per_s']}",
                    ["path", "seconds", "titles/s", "peak MB driver / actor", "vectors equal"],
                    [(c["label"], c.get("seconds"), c.get("titles_per_s"),
                      f"{c.get('peak_rss_mb') or '-'} / {c.get('actor_peak_rss_mb') or '-'}",
                      c.get("vectors_equal", "-") if not c.get("error") else c["error"][:60]) for c in catalog])
    finish(path, failed, runs + catalog)


if __name__ == "__main__":
    main()
