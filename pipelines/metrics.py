"""The one definition of the retrieval metrics (../shared/DESIGN.md, "Evaluation protocol").

A run is {query_id: {item_id: score}} over the whole catalog; judgments are rows (query_id,
item_id, relevance 1..3). A run is ranked by score descending, ties by item_id, and cut at depth 100.

- ndcg@10, ndcg@25: linear gain = relevance - 1 (unjudged items gain 0), ideal DCG from the query's
  judged items. ranx's "ndcg" is the linear-gain (Jarvelin & Kekalainen) form but wants integer
  relevance, so gains go in as round((relevance - 1) * 12): Home Depot relevances are means of three
  or four raters (thirds and quarters), which x12 makes exact integers (a stored 2.33 counts as
  2 1/3: NDCG moves by ~4e-6 against the raw value), and NDCG is scale-free.
- ndcg@10_condensed: the same ndcg@10 on the condensed list (Sakai 2007): the top 100 with the
  unjudged items removed, so judged items move up into the slots they held. Home Depot judged only
  what its own lexical engine showed, and with unjudged = gain 0 a ranker is rewarded for showing
  lexical look-alikes of the judged pool; the condensed form scores the order of the judged items alone.
- recall@100: share of the query's items with relevance >= 2 in the top 100 (ranx "recall@100-l12").
- irrelevant@10, mean_relevance@10, coverage@10: hand-rolled below; ranx has no equivalent.

A query with nothing to find is undefined for the metric, not 0: ndcg is NaN when no judged item has
gain > 0, recall when no item has relevance >= 2, mean_relevance when no top-10 item is judged.
Means skip NaN and `count` says how many queries each mean is over.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numba.core.errors import NumbaTypeSafetyWarning
from ranx import Qrels, Run
from ranx import evaluate as ranx_evaluate

GAIN_SCALE = 12  # lcm(3, 4): a relevance mean of 3 or 4 raters times 12 is an integer
RELEVANT = 2.0  # relevance at or above this counts as relevant (recall, irrelevant@10)
DEPTH = 100
TOP = 10
RANX = {"ndcg@10": "ndcg@10", "ndcg@25": "ndcg@25",
        "recall@100": f"recall@{DEPTH}-l{int((RELEVANT - 1) * GAIN_SCALE)}"}
CONDENSED = {"ndcg@10_condensed": "ndcg@10"}  # ranx metrics scored on the condensed lists
METRICS = ("ndcg@10", *CONDENSED, "ndcg@25", "recall@100", "irrelevant@10", "mean_relevance@10", "coverage@10")


def ranked(scores: dict[str, float], depth: int = DEPTH) -> list[str]:
    """Item ids by score descending, ties broken by item id so every metric sees one order."""
    return [item for item, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]]


def irrelevant_at(top: list[str], judged: dict[str, float], n: int = TOP) -> float:
    """Share of the first n slots holding a judged item with relevance < 2.

    Unjudged items do not count: with sparse judgments an unjudged item is unknown, not bad."""
    return sum(1 for item in top[:n] if item in judged and judged[item] < RELEVANT) / n


def mean_relevance_at(top: list[str], judged: dict[str, float], n: int = TOP) -> float:
    """Mean human relevance (1..3) of the judged items among the first n; NaN if none is judged.

    Read with coverage@10: it says how good the results are where we know, coverage how often we know."""
    rels = [judged[item] for item in top[:n] if item in judged]
    return float(np.mean(rels)) if rels else float("nan")


def coverage_at(top: list[str], judged: dict[str, float], n: int = TOP) -> float:
    """Share of the first n slots holding a judged item (how much of the top-n the judgments see)."""
    return sum(1 for item in top[:n] if item in judged) / n


def gain(relevance: float) -> int:
    """The integer gain ranx scores (relevance - 1, times GAIN_SCALE); also what runs/qrels.txt holds."""
    return round((relevance - 1.0) * GAIN_SCALE)


def _ranx_scores(qrels: Qrels, lists: dict[str, list[str]], metrics: list[str]) -> dict[str, dict[str, float]]:
    """ranx's per-query values of `metrics` for ranked lists: {metric: {query_id: value}}.

    ranx is given scores that restate our tie-broken order, so it cannot order ties differently.
    A run whose lists are all empty scores 0: ranx rejects such a run."""
    if not any(lists.values()):
        return {m: dict.fromkeys(lists, 0.0) for m in metrics}
    run = Run({qid: {item: float(DEPTH - i) for i, item in enumerate(top)} for qid, top in lists.items()})
    with warnings.catch_warnings():  # numba's uint64 -> int64 cast notice inside ranx: ids, not scores
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        ranx_evaluate(qrels, run, metrics, return_mean=False, threads=1)
    return {m: {qid: float(run.scores[m][qid]) for qid in lists} for m in metrics}


def _judged(judgments: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for qid, item, rel in zip(judgments["query_id"], judgments["item_id"], judgments["relevance"]):
        out.setdefault(str(qid), {})[str(item)] = float(rel)
    return out


def evaluate(run: dict[str, dict[str, float]], judgments: pd.DataFrame) -> dict:
    """Every metric per judged query and their means.

    Queries of `judgments` missing from the run count as empty results; run queries without
    judgments are ignored. Returns {"mean": {metric: v}, "count": {metric: n},
    "per_query": {query_id: {metric: v}}, "queries": n}."""
    judged = _judged(judgments)
    lists = {qid: ranked(run.get(qid, {})) for qid in judged}
    condensed = {qid: [item for item in top if item in judged[qid]] for qid, top in lists.items()}
    qrels = Qrels({qid: {item: gain(rel) for item, rel in items.items()} for qid, items in judged.items()})
    scores = _ranx_scores(qrels, lists, list(RANX.values()))
    condensed_scores = _ranx_scores(qrels, condensed, list(CONDENSED.values()))
    per_query: dict[str, dict[str, float]] = {}
    for qid, items in judged.items():
        top = lists[qid]
        has_gain = any(rel > 1.0 for rel in items.values())
        has_relevant = any(rel >= RELEVANT for rel in items.values())
        row = {}
        for name, ranx_name in RANX.items():
            defined = has_relevant if name.startswith("recall") else has_gain
            row[name] = scores[ranx_name][qid] if defined else float("nan")
        for name, ranx_name in CONDENSED.items():
            row[name] = condensed_scores[ranx_name][qid] if has_gain else float("nan")
        row["irrelevant@10"] = irrelevant_at(top, items)
        row["mean_relevance@10"] = mean_relevance_at(top, items)
        row["coverage@10"] = coverage_at(top, items)
        per_query[qid] = row
    frame = pd.DataFrame.from_dict(per_query, orient="index", columns=list(METRICS))
    return {
        "mean": {m: (float(frame[m].mean()) if frame[m].notna().any() else float("nan")) for m in METRICS},
        "count": {m: int(frame[m].notna().sum()) for m in METRICS},
        "per_query": per_query,
        "queries": len(per_query),
    }


def query_auc(queries: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean over queries (with both classes present) of the AUC of `scores` among that query's items:
    how well a score orders one query's results, which is all a ranking uses of it; None when no
    query has both classes."""
    from sklearn.metrics import roc_auc_score

    frame = pd.DataFrame({"q": queries, "y": labels, "s": scores})
    aucs = [roc_auc_score(g["y"], g["s"]) for _, g in frame.groupby("q") if g["y"].nunique() == 2]
    return float(np.mean(aucs)) if aucs else None
