"""Encoder runtimes: torch float32, torch as unisup runs it (bfloat16 where native), ONNX Runtime and
OpenVINO (pipelines/modeling/runtime.py), on the same weights (the packaged all-MiniLM-L6-v2).

Per path, two child processes (each with its own peak RSS): "query", serving's case, with 1 thread
encodes each of --queries queries alone (p50/p99 per call, after a warm-up); "catalog", with 2
threads, encodes --titles titles in one `encode` call (titles/s; the runtimes bucket by token count,
torch sorts by characters as Encoder always has). Texts are Home Depot's (../shared/data/homedepot:
distinct normalized search terms, product titles) if present, else the synthetic generator's.
The ONNX export is made once, in its own child ("export"), into this run's cache, and reused.

Quality gate per path against torch float32 (computed in this run): min cosine >= 0.999 on every
query and on a seeded sample of --gate-titles titles, and recall@100 >= 0.995 of exact inner-product
search (faiss IndexFlatIP) over the path's title vectors for --recall-queries queries, the truth
being the same search over torch float32's vectors. Ratios are to both torch paths of the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_encoder.py [--queries N] [--titles N] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ROOT,
    add_run_args,
    failures,
    finish,
    latency_summary,
    machine,
    output_path,
    parse_or_run_child,
    print_table,
    run_path,
    write_json,
)

HOMEDEPOT = ROOT.parent / "shared" / "data" / "homedepot"
GATE_COSINE, GATE_RECALL, RECALL_K = 0.999, 0.995, 100
WARMUP = 20  # query calls before timing: first calls pay one-off allocations
# label, runtime, bf16 ("native": where this CPU runs it natively, as unisup's torch path does; the
# table's "bf16" column says what each path ran; ONNX Runtime's CPU kernels are float32)
PATHS = [("torch fp32", "torch", "off"), ("torch (unisup)", "torch", "native"),
         ("onnxruntime fp32", "onnx", "off"), ("openvino fp32", "openvino", "off"),
         ("openvino bf16", "openvino", "native")]


def load_texts(n_queries: int, n_titles: int, work: Path) -> tuple[list[str], list[str], str]:
    """Distinct normalized queries and catalog titles: Home Depot's, else synthetic ones."""
    from pipelines.text import normalize_query

    if (HOMEDEPOT / "products.csv").exists():
        with (HOMEDEPOT / "judgments.csv").open(encoding="utf-8") as f:
            queries = list(dict.fromkeys(normalize_query(r["search_term"]) for r in csv.DictReader(f)))
        with (HOMEDEPOT / "products.csv").open(encoding="utf-8") as f:
            titles = [r["product_title"] for r in csv.DictReader(f)]
        source = "homedepot"
    else:
        from pipelines.ingest.synthetic import generate_synthetic
        from pipelines.lake import Lake

        lake = Lake(work / "lake")
        generate_synthetic(lake, n_items=n_titles, n_queries=n_queries, seed=0)
        queries = lake.read("queries")["query_norm"].astype(str).tolist()
        titles = lake.read("items")["title"].astype(str).tolist()
        source = "synthetic"
    return queries[:n_queries], titles[:n_titles], source


def load_path(runtime: str, bf16: str, threads: int, cache_dir: str):
    """The encoder of one path, its session made (export reused from cache_dir), and the seconds it took."""
    from pipelines.modeling.encoder import Encoder, bf16_is_fast
    from pipelines.modeling.runtime import RuntimeEncoder

    t0 = time.perf_counter()
    bf16 = bf16 == "native" and bf16_is_fast()
    encoder = Encoder.load(threads=threads, bf16=bf16)
    if runtime != "torch":
        encoder = RuntimeEncoder(encoder, runtime, Path(cache_dir), threads=threads, bf16=bf16)
    encoder.encode(["warm up"])
    return encoder, time.perf_counter() - t0


def child(role: str, runtime: str, bf16: str, data: str, out: str, cache_dir: str) -> dict:
    """One measurement in this (fresh) process: role "export", "query" (1 thread) or "catalog" (2 threads)."""
    texts = json.loads(Path(data).read_text())
    if role == "export":
        from pipelines.atomic import write_bytes
        from pipelines.modeling.encoder import Encoder
        from pipelines.modeling.runtime import export_onnx, export_path

        encoder = Encoder.load(threads=2)
        t0 = time.perf_counter()
        path = write_bytes(export_path(Path(cache_dir), encoder.fingerprint()), export_onnx(encoder))
        return {"seconds": round(time.perf_counter() - t0, 2), "onnx_mb": round(path.stat().st_size / 2**20, 1)}
    threads = 1 if role == "query" else 2
    encoder, load_s = load_path(runtime, bf16, threads, cache_dir)
    result = {"threads": threads, "load_seconds": round(load_s, 2), "bf16": bool(getattr(encoder, "bf16", False))}
    if role == "query":
        queries = texts["queries"]
        for q in queries[:WARMUP]:
            encoder.encode([q])
        vectors, times = np.zeros((len(queries), encoder.dim), np.float32), []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            vectors[i] = encoder.encode([q])[0]
            times.append(time.perf_counter() - t0)
        result["latency"] = latency_summary(times)
    else:
        t0 = time.perf_counter()
        vectors = encoder.encode(texts["titles"], progress=False)
        seconds = time.perf_counter() - t0
        result.update(seconds=round(seconds, 2), titles_per_s=round(len(vectors) / seconds, 1))
    result["rss_after_mb"] = _rss_mb()
    np.save(out, vectors)
    return result


def _rss_mb() -> float | None:
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return round(int(found.group(1)) / 1024, 1) if found else None


def quality(query: np.ndarray, titles: np.ndarray, ref_query: np.ndarray, ref_titles: np.ndarray,
            gate_titles: np.ndarray, recall_queries: np.ndarray) -> dict:
    """Cosines to torch float32 and recall@100 of exact search over this path's title vectors."""
    import faiss

    cq, ct = (query * ref_query).sum(1), (titles[gate_titles] * ref_titles[gate_titles]).sum(1)
    k = min(RECALL_K, len(titles))
    truth, got = faiss.IndexFlatIP(titles.shape[1]), faiss.IndexFlatIP(titles.shape[1])
    truth.add(ref_titles)
    got.add(titles)
    _, want = truth.search(ref_query[recall_queries], k)
    _, have = got.search(query[recall_queries], k)
    recall = float(np.mean([len(set(w) & set(h)) / k for w, h in zip(want, have)]))
    norms = np.abs(np.linalg.norm(np.concatenate([query, titles]), axis=1) - 1).max()
    out = {"queries_cos_min": float(cq.min()), "queries_cos_mean": float(cq.mean()),
           "titles_cos_min": float(ct.min()), "titles_cos_mean": float(ct.mean()),
           "all_titles_cos_min": float((titles * ref_titles).sum(1).min()),
           "recall_at_100": round(recall, 5), "max_norm_error": float(norms)}
    out["gate"] = bool(min(out["queries_cos_min"], out["titles_cos_min"]) >= GATE_COSINE and recall >= GATE_RECALL)
    return out


def libraries() -> dict:
    from pipelines.modeling.encoder import bf16_is_fast

    found = {}
    for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "openvino", "faiss-cpu"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found | {"bf16_native": bf16_is_fast()}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _pair(a: object, b: object, fmt: str = "{}") -> str:
    return " / ".join("-" if v is None else fmt.format(v) for v in (a, b))


def _row(r: dict) -> tuple:
    q, c, g = r.get("query", {}), r.get("catalog", {}), r.get("quality", {})
    lat = q.get("latency", {})
    verdict = ("pass" if g.get("gate") else "FAIL") if g else (r.get("error") or r.get("skipped") or "-")[:60]
    return (r["label"], "yes" if q.get("bf16") else "no", _pair(lat.get("p50_ms"), lat.get("p99_ms"), "{:.2f}"),
            _pair(r.get("p50_speedup_vs_fp32"), r.get("p50_speedup_vs_torch")), c.get("titles_per_s"),
            _pair(r.get("catalog_speedup_vs_fp32"), r.get("catalog_speedup_vs_torch")),
            _pair(q.get("peak_rss_mb"), c.get("peak_rss_mb"), "{:,.0f}"),
            _pair(g.get("queries_cos_min"), g.get("titles_cos_min"), "{:.5f}"),
            f"{g['recall_at_100']:.4f}" if g else None, verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10_000, help="distinct queries (latency, cosine, recall)")
    ap.add_argument("--titles", type=int, default=60_000, help="catalog titles encoded (Home Depot has 54,667)")
    ap.add_argument("--gate-titles", type=int, default=10_000, help="titles sampled for the cosine gate")
    ap.add_argument("--recall-queries", type=int, default=1_000)
    ap.add_argument("--cache-dir", help="ONNX export cache to reuse (default: a fresh one; the export is timed)")
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "bench_encoder", quick="100 queries, 200 titles, paths in this process", redis=False)
    a = parse_or_run_child(ap, child, nargs=6)
    if a is None:
        return
    if a.quick:
        a.queries, a.titles = min(a.queries, 100), min(a.titles, 200)
    out = output_path(a.out, "bench_encoder", a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench_encoder_"))
    cache_dir = Path(a.cache_dir) if a.cache_dir else tmp / "exports"
    script, runs = Path(__file__).resolve(), []
    try:
        queries, titles, source = load_texts(a.queries, a.titles, tmp)
        data = tmp / "texts.json"
        data.write_text(json.dumps({"queries": queries, "titles": titles}))
        print(f"{len(queries):,} queries and {len(titles):,} titles ({source}); work dir {tmp}", flush=True)
        run = lambda role, rt, bf16, npy: run_path(  # noqa: E731
            script, [role, rt, bf16, data, npy, cache_dir], child=child if a.quick else None)
        export = run("export", "onnx", "off", tmp / "none.npy") if not a.cache_dir else {"reused": str(cache_dir)}
        available = libraries()
        for label, rt, bf16 in PATHS:
            row = {"label": label, "runtime": rt, "bf16_requested": bf16}
            if rt == "openvino" and available["openvino"] is None:
                row["skipped"] = "openvino not installed"
                runs.append(row)
                continue
            for role in ("query", "catalog"):
                print(f"running: {label} ({role}) ...", flush=True)
                npy = tmp / f"{len(runs)}-{role}.npy"
                row[role] = run(role, rt, bf16, npy) | {"vectors": str(npy)}
                if row[role].get("error"):
                    row["error"] = f"{role}: {row[role]['error']}"
                    row["stderr_tail"] = row[role].get("stderr_tail")
            runs.append(row)
        rng = np.random.default_rng(a.seed)
        gate_titles = np.sort(rng.choice(len(titles), min(a.gate_titles, len(titles)), replace=False))
        recall_queries = np.sort(rng.choice(len(queries), min(a.recall_queries, len(queries)), replace=False))
        base, torch_row = runs[0], runs[1]
        if not base.get("error"):
            ref_q, ref_t = np.load(base["query"]["vectors"]), np.load(base["catalog"]["vectors"])
            for r in runs:
                if r.get("error") or r.get("skipped"):
                    continue
                r["quality"] = quality(np.load(r["query"]["vectors"]), np.load(r["catalog"]["vectors"]),
                                       ref_q, ref_t, gate_titles, recall_queries)
                p50 = r["query"]["latency"]["p50_ms"]
                r["p50_speedup_vs_fp32"] = _ratio(base["query"]["latency"]["p50_ms"], p50)
                r["p50_speedup_vs_torch"] = _ratio(torch_row.get("query", {}).get("latency", {}).get("p50_ms"), p50)
                r["catalog_speedup_vs_fp32"] = _ratio(r["catalog"]["titles_per_s"], base["catalog"]["titles_per_s"])
                r["catalog_speedup_vs_torch"] = _ratio(r["catalog"]["titles_per_s"],
                                                       torch_row.get("catalog", {}).get("titles_per_s"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in runs:
        for role in ("query", "catalog"):
            r.get(role, {}).pop("vectors", None)
    failed = failures(runs) + ([f"export: {export['error']}"] if export.get("error") else [])
    result = {"source": source, "queries": len(queries), "titles": len(titles), "gate_titles": len(gate_titles),
              "recall_queries": len(recall_queries), "quick": a.quick, "export": export, "runs": runs,
              "gate": {"cosine_min": GATE_COSINE, "recall_at_100_min": GATE_RECALL},
              "failed": failed, "libraries": available, "machine": machine(),
              "cpu_affinity": len(os.sched_getaffinity(0))}
    path = write_json(out, result)
    print_table(f"encoder runtimes on {len(queries):,} queries / {len(titles):,} titles ({source}); export "
                f"{export.get('seconds', '-')} s; gate: cosine >= {GATE_COSINE}, recall@100 >= {GATE_RECALL}",
                ["path", "bf16", "query p50 / p99 ms", "x fp32 / x torch", "catalog titles/s", "x fp32 / x torch",
                 "peak MB query / catalog", "min cos queries / titles", "recall@100", "gate"],
                [_row(r) for r in runs])
    finish(path, failed, runs)


if __name__ == "__main__":
    main()
