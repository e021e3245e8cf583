"""The pre-ranker's candidates, its two feature sets and its training table.

Candidates (`retrieve`, the one function training, eval and /search call): each channel of the
candidate model (rrf:VERSION: BM25, the bi-encoder, character n-grams) searched to depth N_r, their
union ordered by the ranker's own fusion (each channel's top 100, pipelines.retrieval.fusion), then by
the same fusion over the deep lists, top N_r per query. The first N of that order are exactly the
candidates the ranker sees without a pre-ranker, so "no pre-ranking" is the baseline of every table.

Light features (`LIGHT`): what retrieval already computed, per channel the deep rank, the channel's
score and its gap to the query's best, plus the deep fusion score and agreement: no lookup, no
pair scoring, a few microseconds per candidate. An item absent from a channel's deep list reads
rank N_r + 1 and the query's lowest score in that channel (an upper bound of its own).
Strong features: the ranker's (pipelines.ranking.features: request-time pair features + the
`ranking` FeatureService, point-in-time here, `ranker_online` at serving), so the strong model is
where request-time relevance comes from for a new query.

Training table: per training query (a seeded sample; teacher fit/calib roles as the ranker), the
retrieved candidates and random catalog items, each in one group:
- positive: judged relevant (grade >= 2) or clicked in the simulated traffic of the ranker's
  engagement labels (pipelines.ranking.data.engagement_labels: BM25's pages and the exploration slice);
- exposed: shown by the simulator and not clicked, or judged irrelevant (Home Depot's judgments are
  what its engine showed): the hardest negatives;
- ranking: among the ranker's N candidates, ranked below `ranking_cut` by the trained ranker;
- retrieval: retrieved below N (a seeded sample of `retrieval_sample` per query);
- random: catalog items not retrieved (`random_sample` per query).
Candidates in none of these (the ranker's top `ranking_cut`, never shown or judged) are "unlabeled":
in no loss, kept so the table still holds the whole head of each retrieved list (the routed band is
estimated from it: train.estimated_band).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.metrics import DEPTH
from pipelines.preranking.config import GROUPS, PrerankDataConfig
from pipelines.ranking.config import RankerDataConfig
from pipelines.ranking.data import engagement_labels, popularity_counts, ranker_features
from pipelines.ranking.search import SearchStack
from pipelines.retrieval import search_all
from pipelines.retrieval.fusion import ABSENT, RRF_K, rrf
from pipelines.retrieval.runner import ModelRunner
from pipelines.signals.spec import SignalContext
from pipelines.signals.training import training_judgments, training_queries
from pipelines.teacher.calibrate import teacher_role
from pipelines.workspace import Workspace

CHANNELS = ("bm25", "dense", "char")
LIGHT = ([f"deep_rank_{c}" for c in CHANNELS] + [f"deep_score_{c}" for c in CHANNELS]
         + [f"deep_gap_{c}" for c in CHANNELS] + ["deep_fusion_score", "deep_agreement"])
POSITIVE = "positive"
LABELS = (POSITIVE, *GROUPS)  # a row's `group` in a loss; code = position in LABELS
UNLABELED = "unlabeled"  # retrieved, label unknown: in no loss, but in the list the light model ranks


def retrieve(runner: ModelRunner, texts, query_ids, model: str, n_retrieve: int,
             progress: bool = True) -> pd.DataFrame:
    """Top n_retrieve candidates per query (module docstring) with the ranker's fusion columns
    (rank_<channel>, fusion_score, agreement), the LIGHT columns and `retrieved_rank` (1-based)."""
    hits, _ = search_all(runner.fused_channels(model), list(texts), k=n_retrieve, progress=progress)
    return deep_table(hits, list(query_ids), runner.item_ids, n_retrieve)


def deep_table(hits: dict, query_ids: list[str], catalog: np.ndarray, n_retrieve: int) -> pd.DataFrame:
    """retrieve's table from the channels' hits (CHANNELS -> (ids, scores), each (n_queries, depth),
    best first): the union of the lists per query, in numpy (it runs on every request). The ranker's
    fusion reads each list's first DEPTH (pipelines.retrieval.fusion: rank DEPTH + 1 and no fusion
    score beyond); the deep columns read the whole list (rank n_retrieve + 1 and the query's lowest
    score in that channel where it is absent)."""
    n_queries, n_items = len(query_ids), len(catalog)
    index = pd.Index(catalog)
    keys, ranks, scores = [], [], []
    for c in CHANNELS:
        ids, score = hits[c]
        codes = index.get_indexer(ids.ravel())  # -1: an empty slot
        valid = codes >= 0
        query = np.repeat(np.arange(n_queries), ids.shape[1])[valid]
        keys.append(query * n_items + codes[valid])
        ranks.append(np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.float32), n_queries)[valid])
        scores.append(score.ravel().astype(np.float32)[valid])
    union, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    query, item = union // n_items, union % n_items
    out = {"query_id": np.asarray(query_ids, dtype=object)[query], "item_id": catalog[item]}
    deep = np.full((len(union), len(CHANNELS)), n_retrieve + 1, np.float32)
    start = 0
    for j, c in enumerate(CHANNELS):
        at = inverse[start:start + len(keys[j])]
        start += len(keys[j])
        deep[at, j] = ranks[j]
        filled = np.full(len(union), np.nan, np.float32)
        filled[at] = scores[j]
        floor, top = np.full(n_queries, np.nan, np.float32), np.full(n_queries, np.nan, np.float32)
        np.fmin.at(floor, query[at], scores[j])
        np.fmax.at(top, query[at], scores[j])
        filled = np.nan_to_num(np.where(np.isnan(filled), floor[query], filled), nan=0.0)
        out[f"deep_rank_{c}"] = deep[:, j]
        out[f"deep_score_{c}"] = filled
        out[f"deep_gap_{c}"] = np.nan_to_num(top[query], nan=0.0) - filled
    present = deep <= n_retrieve
    out["deep_fusion_score"] = np.where(present, 1.0 / (RRF_K + deep.astype(np.float64)), 0.0).sum(axis=1).astype(
        np.float32)
    out["deep_agreement"] = present.sum(axis=1).astype(np.float32)
    prior = np.where(deep <= DEPTH, deep, ABSENT).astype(np.int64)
    for j, c in enumerate(CHANNELS):
        out[f"rank_{c}"] = prior[:, j]
    out["fusion_score"] = rrf(prior).astype(np.float32)
    out["agreement"] = (prior < ABSENT).sum(axis=1).astype(np.int64)
    by_text = np.argsort(np.argsort(np.asarray(query_ids, dtype=str), kind="stable"))  # query order by id
    order = np.lexsort((out["item_id"].astype(str), -out["deep_fusion_score"], -out["fusion_score"], by_text[query]))
    sorted_query = query[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_query)) + 1]
    place = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    order = order[place < n_retrieve]
    rows = pd.DataFrame({name: values[order] for name, values in out.items()})
    rows["retrieved_rank"] = (place[place < n_retrieve] + 1).astype(np.int64)
    return rows


def absent_items(rows: pd.DataFrame, extra: pd.DataFrame, n_retrieve: int) -> pd.DataFrame:
    """extra (query_id, item_id: items no channel returned for the query) with LIGHT columns as
    deep_table gives an absent item: rank n_retrieve + 1, the query's lowest score, its gap to the best."""
    out = extra.copy()
    by_query = rows.groupby("query_id")
    for c in CHANNELS:
        floor = out["query_id"].map(by_query[f"deep_score_{c}"].min()).fillna(0.0).astype(np.float32)
        top = out["query_id"].map(by_query[f"deep_score_{c}"].max()).fillna(0.0).astype(np.float32)
        out[f"deep_rank_{c}"] = np.float32(n_retrieve + 1)
        out[f"deep_score_{c}"] = floor
        out[f"deep_gap_{c}"] = top - floor
    out["deep_fusion_score"] = np.float32(0.0)
    out["deep_agreement"] = np.float32(0.0)
    return out


def training_table(ws: Workspace, config: PrerankDataConfig,
                   console: Console | None = None) -> tuple[pd.DataFrame, dict]:
    """(rows with group, role, LIGHT and the ranker's features; the ranking service's views)."""
    console = console or Console(stderr=True)
    as_of = pd.Timestamp.now(tz="UTC")
    ctx = SignalContext(lake=ws.lake, as_of=as_of, seed=config.seed, quick=config.quick)
    queries = training_queries(ctx)
    if len(queries) > config.queries:
        queries = queries.sample(n=config.queries, random_state=config.seed).sort_values("query_id")
    queries = queries.assign(role=[teacher_role(t) for t in queries["query_norm"]]).reset_index(drop=True)
    texts, qids = queries["query_norm"].tolist(), queries["query_id"].tolist()
    stack = SearchStack.load(ws, config.ranker)
    console.print(f"pre-ranker data: {len(queries):,} training queries, {stack.candidate_model} top "
                  f"{config.n_retrieve}, ranker {config.ranker!r}")
    rows = retrieve(stack.runner, texts, qids, stack.candidate_model, config.n_retrieve)

    with console.status("the ranker's ranks of its candidates"):
        ranked = stack.rank(texts, qids, n=config.n_keep, progress=False).rows
    ranked = ranked.assign(ranker_rank=ranked.groupby("query_id", sort=False).cumcount() + 1)
    rows = rows.merge(ranked[["query_id", "item_id", "ranker_rank"]], on=["query_id", "item_id"], how="left")
    rng = np.random.default_rng(config.seed)
    rows = pd.concat([rows, random_items(ws, rows, queries, config, rng)], ignore_index=True)

    top = rows[rows["retrieved_rank"] <= config.n_keep]
    shown = engagement_labels(ws, queries, top[["query_id", "item_id"]], RankerDataConfig(
        candidates=stack.candidate_model, n=config.n_keep, quick=config.quick, seed=config.seed), console)
    clicks = shown.filter(like="clicks_").filter(like="_fit").sum(axis=1)
    shown = shown[["query_id", "item_id"]].assign(clicked=clicks.to_numpy() > 0, shown=True)
    judged = training_judgments(ctx, queries).groupby(["query_id", "item_id"], as_index=False)["relevance"].mean()
    rows = rows.merge(shown, on=["query_id", "item_id"], how="left").merge(judged, on=["query_id", "item_id"],
                                                                          how="left")
    rows["group"] = assign_groups(rows, config)
    rows = sample_retrieval(rows, config, rng)
    rows = rows.merge(queries[["query_id", "query_norm", "role"]], on="query_id", how="left")
    rows = popularity_counts(rows, ctx)

    rows, views = ranker_features(ws, stack.runner, stack.candidate_model, rows, as_of, console)
    counts = rows["group"].value_counts().reindex([*LABELS, UNLABELED], fill_value=0)
    console.print("pre-ranker data: " + ", ".join(f"{g} {n:,}" for g, n in counts.items()))
    return rows, views


def random_items(ws: Workspace, rows: pd.DataFrame, queries: pd.DataFrame, config: PrerankDataConfig,
                 rng: np.random.Generator) -> pd.DataFrame:
    """`random_sample` catalog items per query that retrieval did not return, LIGHT columns as for an
    item absent from every channel."""
    catalog = ws.lake.read("items")["item_id"].astype(str).to_numpy()
    retrieved = rows.groupby("query_id")["item_id"].agg(set)
    parts = []
    for qid in queries["query_id"]:
        picks = rng.choice(catalog, size=min(len(catalog), 2 * config.random_sample), replace=False)
        picks = [i for i in picks if i not in retrieved.get(qid, ())][:config.random_sample]
        parts.append(pd.DataFrame({"query_id": qid, "item_id": picks}))
    return absent_items(rows, pd.concat(parts, ignore_index=True), config.n_retrieve).assign(random=True)


def assign_groups(rows: pd.DataFrame, config: PrerankDataConfig) -> pd.Series:
    """Each row's group (module docstring), UNLABELED where its label is unknown."""
    judged_relevant = rows["relevance"].ge(2.0)
    positive = judged_relevant | rows["clicked"].eq(True)
    exposed = ~positive & (rows["shown"].eq(True) | rows["relevance"].notna())
    random = rows.get("random", pd.Series(False, index=rows.index)).eq(True)
    ranking = ~positive & ~exposed & rows["ranker_rank"].gt(config.ranking_cut)
    retrieval = ~positive & ~exposed & ~random & rows["retrieved_rank"].gt(config.n_keep)
    group = pd.Series(UNLABELED, index=rows.index, dtype=object)
    for name, mask in (("random", ~positive & random), ("retrieval", retrieval), ("ranking", ranking),
                       ("exposed", exposed), (POSITIVE, positive)):  # later wins: the stronger evidence
        group[mask] = name
    return group


def sample_retrieval(rows: pd.DataFrame, config: PrerankDataConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Keep at most `retrieval_sample` retrieval negatives per query (seeded), every other row, and
    `list_weight`: how many rows of the retrieved list the row stands for (a kept retrieval negative,
    all of its query's retrieval negatives over those kept; a random item, none), so the light model's
    rank of a row in the whole list can be estimated from the table (train.estimated_band)."""
    draw = pd.Series(rng.random(len(rows)), index=rows.index)
    retrieval = rows["group"] == "retrieval"
    order = draw.where(retrieval).groupby(rows["query_id"]).rank(method="first")
    keep = ~retrieval | (order <= config.retrieval_sample)
    total = retrieval.groupby(rows["query_id"]).transform("sum")
    kept = (retrieval & keep).groupby(rows["query_id"]).transform("sum")
    weight = np.where(retrieval, total / kept.clip(lower=1), np.where(rows["group"] == "random", 0.0, 1.0))
    rows = rows.assign(list_weight=weight.astype(np.float64))
    return rows[keep].sort_values(["query_id", "item_id"]).reset_index(drop=True)
