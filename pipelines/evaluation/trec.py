"""The scored runs as TREC files (`unisup eval --save-runs`), so anyone can score them with trec_eval or ranx.

In DIR/runs/:
- `<model>.run`, one line per retrieved item: `qid Q0 docid rank score tag` (tag and file stem are
  the model name with ':' as '_'). The lists are the ones metrics.evaluate scored: the top 100, rank
  1-based in metrics.ranked order. The score is the model's own. trec_eval and ranx ignore the rank
  column and re-sort by score, and they break ties unlike us (trec_eval by docid descending, ranx in
  an order it does not define), so to reproduce report.json order by score descending, then docid
  ascending: the rank column.
- `queries.tsv`: `qid<TAB>query text`, the text as judged.
- `qrels.txt`: `qid 0 docid gain` for every judged pair, gain = metrics.gain(relevance) =
  round((relevance - 1) * 12), not the raw relevance. Home Depot relevances are means of raters
  (1..3 in thirds and quarters) and trec_eval and ranx both read qrels relevance as an integer (ranx:
  `int("2.33")` fails); the scaled integer is the very gain our NDCG scores with (NDCG is
  scale-free), so their linear-gain NDCG (trec_eval `ndcg_cut.10`, ranx `ndcg@10`) is ours, and
  relevant (relevance >= 2) is gain >= 12 (`trec_eval -l 12`, ranx `recall@100-l12`). Judged items
  of gain 0 stay in the file: they are judged irrelevant, not unknown, which the condensed NDCG needs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import atomic
from pipelines.metrics import DEPTH, gain, ranked
from pipelines.retrieval.runner import Run

RUNS_DIR = "runs"


def safe_name(model: str) -> str:
    """A model name as run tag and file stem: ':' (rrf:unified, search:RANKER) is not allowed in
    Windows file names and reads as a separator in many tools."""
    return model.replace(":", "_")


def run_lines(run: Run, query_ids: list[str], tag: str) -> list[str]:
    """TREC run lines of the top-DEPTH lists, queries in the given order; a query with no results has none."""
    return [f"{qid} Q0 {item} {rank} {float(run[qid][item])!r} {tag}"
            for qid in query_ids for rank, item in enumerate(ranked(run.get(qid, {}), DEPTH), start=1)]


def write_runs(runs: dict[str, Run], queries: pd.DataFrame, judgments: pd.DataFrame, out: Path) -> Path:
    """out/runs/ holding <model>.run for every model, queries.tsv and qrels.txt; returns out/runs."""
    folder = Path(out) / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    query_ids = [str(q) for q in queries["query_id"]]
    for model, run in runs.items():
        lines = run_lines(run, query_ids, safe_name(model))
        atomic.write_text(folder / f"{safe_name(model)}.run", "".join(line + "\n" for line in lines))
    texts = (" ".join(str(t).split()) for t in queries["query_text"])  # a tab or newline would break the row
    atomic.write_text(folder / "queries.tsv", "".join(f"{qid}\t{text}\n" for qid, text in zip(query_ids, texts)))
    qrels = judgments.sort_values(["query_id", "item_id"])
    atomic.write_text(folder / "qrels.txt", "".join(f"{qid} 0 {item} {gain(rel)}\n" for qid, item, rel
                                                    in zip(qrels["query_id"], qrels["item_id"], qrels["relevance"])))
    return folder
