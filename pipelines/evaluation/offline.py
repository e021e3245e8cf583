"""`unisup eval`: score retrieval models against a judgment set, overall and per frequency bucket.

For every query of the set each model retrieves its top 100 from the whole catalog (run.py), and
pipelines.metrics.evaluate, the one definition of the metrics, scores the run: once on all
queries and once per query-frequency bucket. Outputs (report.py): report.json, report.md,
per_query.csv, metrics.png and ndcg_by_bucket.png in the output directory, with the resolved config
inside report.json; with `save_runs`, the scored runs as TREC files in runs/ (trec.py).

    unisup eval --split dev --model bm25 --model minilm-l6-v2 --model rrf
    unisup eval --judgments held_out.csv --model bm25 --out reports/held_out --save-runs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.evaluation import judgments as judgment_sets
from pipelines.evaluation.models import Models
from pipelines.evaluation.report import write_eval_report
from pipelines.evaluation.trec import write_runs
from pipelines.metrics import DEPTH, evaluate
from pipelines.modeling.registry import BASE_VERSION
from pipelines.workspace import Workspace


@dataclass(frozen=True)
class EvalConfig:
    """What to score, against what; report.json records it as resolved."""

    models: tuple[str, ...] = field(default=("bm25", BASE_VERSION), metadata={
        "help": "bm25 | char | rrf | an encoder version (minilm-l6-v2 or one under workspace/models)"})
    judgments: Path | None = field(default=None, metadata={
        "help": "A file in the Home Depot judgments layout; None scores the lake's `split` instead"})
    split: str = field(default="dev", metadata={"help": "Lake split scored when no file is given"})
    encoding: str = field(default="auto", metadata={"help": "Encoding of the judgments file"})
    save_runs: bool = field(default=False, metadata={
        "help": "Also write every model's top-100 lists as TREC run files (runs/<model>.run, queries.tsv, "
                "qrels.txt) for trec_eval or ranx"})
    precompute: bool = field(default=False, metadata={
        "help": "Also score each search:RANKER in the known-query regime (+known): the producers' inference "
                "(prior, teacher) run for the file's queries first, never reading its judgments"})

    def label(self) -> str:
        """Short name of the judgment set, for the default output directory."""
        return Path(self.judgments).stem if self.judgments is not None else self.split


def default_out(ws: Workspace, config: EvalConfig) -> Path:
    """WORKSPACE/reports/eval-<file stem or split>: reruns on the same set replace the old report."""
    return ws.root / "reports" / f"eval-{config.label()}"


def load_judgments(ws: Workspace, config: EvalConfig, out: Path) -> judgment_sets.JudgmentSet:
    """The judgment set the config names; a file's rejects go to out/rejects/."""
    if config.judgments is not None:
        return judgment_sets.from_file(Path(config.judgments), ws.lake, out / "rejects", config.encoding)
    return judgment_sets.from_lake(ws.lake, config.split)


def score(runs: dict[str, dict], jset: judgment_sets.JudgmentSet) -> dict[str, dict]:
    """metrics.evaluate of every run on all queries and on each bucket's queries."""
    buckets = judgment_sets.ordered_buckets(jset.queries["bucket"])
    out = {}
    for model, run in runs.items():
        overall = evaluate(run, jset.judgments)
        by_bucket = {}
        for bucket in buckets:
            ids = set(jset.queries.loc[jset.queries["bucket"] == bucket, "query_id"])
            result = evaluate(run, jset.judgments[jset.judgments["query_id"].isin(ids)])
            by_bucket[bucket] = {"queries": result["queries"], "mean": result["mean"], "count": result["count"]}
        out[model] = {"mean": overall["mean"], "count": overall["count"], "queries": overall["queries"],
                      "by_bucket": by_bucket, "per_query": overall["per_query"]}
    return out


def evaluate_models(ws: Workspace, config: EvalConfig, out: Path | None = None) -> dict:
    """Retrieve, score and write the report; returns the report dict (as written to report.json)."""
    out = Path(out) if out is not None else default_out(ws, config)
    models = Models(ws, precompute=config.precompute)
    models.check(config.models)
    jset = load_judgments(ws, config, out)
    runs, seconds = models.runs(jset.queries["query_norm"].tolist(), jset.queries["query_id"].tolist(),
                                   config.models, DEPTH)
    results = score(runs, jset)
    catalog = set(models.runner.item_ids)
    report = {
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "input": jset.summary(),
        "catalog_items": len(catalog),
        "judged_items_not_in_catalog": int((~jset.judgments["item_id"].isin(catalog)).sum()),
        "depth": DEPTH,
        "search_seconds": seconds,
        "models": {m: {k: v for k, v in r.items() if k != "per_query"} for m, r in results.items()},
    }
    write_eval_report(report, results, jset.queries, out)
    if config.save_runs:
        write_runs(runs, jset.queries, jset.judgments, out)
    return report
