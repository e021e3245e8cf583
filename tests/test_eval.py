"""`unisup eval` and `unisup ab` on small lakes (no signals needed: both read only the lake).

The eval's numbers are checked against values worked out by hand: a ten-item catalog whose BM25
order is plain (titles of four distinct tokens, so one more matching query token always ranks
higher), judgments chosen for it, and every metric derived in a comment. The A/B is checked
against known answers (A vs A, a ranker that shows judged-irrelevant items).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ranx import Qrels, Run
from ranx import evaluate as ranx_evaluate
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.evaluation.ab import ab_test, query_totals
from pipelines.evaluation.judgments import UNSEEN, from_lake
from pipelines.evaluation.models import Models
from pipelines.evaluation.offline import EvalConfig, evaluate_models
from pipelines.evaluation.trec import write_runs
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.metrics import RELEVANT, ranked
from pipelines.modeling.registry import BASE_VERSION, UnknownModel
from pipelines.retrieval.runner import ModelRunner
from pipelines.simulation import EMPTY, ClickConfig, simulate
from pipelines.text import query_id
from pipelines.workspace import Workspace

from conftest import AS_OF

CLICKS = ClickConfig(days=7, searches_per_query_day=30.0)
runner = CliRunner()


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(root=tmp_path_factory.mktemp("eval") / "ws")
    generate_synthetic(ws.lake, n_items=400, n_queries=120, seed=1, as_of=AS_OF, judgments_per_query=8)
    return ws


def hd_file(ws: Workspace, path, extra: list[tuple[str, str, str]] = ()) -> pd.DataFrame:
    """The lake's dev judgments (+ extra rows) written in the Home Depot layout; returns the rows."""
    queries = ws.lake.read("queries").set_index("query_id")["query_text"]
    titles = ws.lake.read("items").set_index("item_id")["title"]
    dev = from_lake(ws.lake, "dev").judgments
    rows = pd.DataFrame({"id": range(1, len(dev) + 1), "product_uid": dev["item_id"],
                         "product_title": dev["item_id"].map(titles), "search_term": dev["query_id"].map(queries),
                         "relevance": dev["relevance"].round(2)})
    more = pd.DataFrame([(len(rows) + i + 1, uid, titles.get(uid, "x"), q, rel)
                         for i, (q, uid, rel) in enumerate(extra)], columns=rows.columns)
    rows = pd.concat([rows, more], ignore_index=True)
    rows.to_csv(path, index=False)
    return rows


def invoke(ws: Workspace, *args: str):
    return runner.invoke(app, ["--workspace", str(ws.root), *args])


# A catalog where BM25's order can be written down: every title is four distinct tokens (equal
# lengths, tf 1), so an item's score is the sum of the idfs of the query tokens it contains, and an
# item holding a superset of another's matching tokens ranks above it. Items sharing no token with
# the query are not returned.
TITLES = {
    "100001": "cordless drill kit blue",
    "100002": "cordless drill case green",
    "100003": "drill bit set steel",
    "100004": "garden hose reel black",
    "100005": "brass door hinge satin",
    "100006": "brass cabinet knob round",
    "100007": "garden rake wood handle",
    "100008": "copper pipe elbow fitting",
    "100009": "ceramic floor tile white",
    "100010": "paint roller tray grey",
}
# (query, frequency in the lake or None if the lake lacks it, {item: relevance})
TINY = [
    ("cordless drill kit", 100, {"100001": 3.0, "100002": 1.0, "100003": 2.5, "100004": 2.0}),
    ("brass hinge", 60, {"100005": 2.0, "100006": 3.0}),
    ("garden hose", 40, {"100004": 1.0, "100007": 1.0}),
    ("zzzz widget", None, {"100001": 3.0}),
]
# BM25's top 10 by hand: 3 matching tokens > 2 > 1; "zzzz widget" shares no token with any title
TINY_RANKED = [["100001", "100002", "100003"], ["100005", "100006"], ["100004", "100007"], []]
# Per query, by hand (gain = relevance - 1, DCG = sum gain / log2(rank + 1), ideal from the judged items):
# cordless drill kit: ranked A(3) B(1) C(2.5); D(2) judged but not retrieved.
#   DCG = 2/1 + 0/log2 3 + 1.5/log2 4 = 2.75; ideal 2/1 + 1.5/log2 3 + 1/log2 4 = 3.446395 -> 0.797935
#   recall@100 = {A, C} of {A, C, D} = 2/3; irrelevant@10 = B = 1/10; mean relevance (3+1+2.5)/3;
#   coverage 3/10
# brass hinge: ranked F(2) G(3). DCG = 1 + 2/log2 3 = 2.261860; ideal 2 + 1/log2 3 = 2.630930 -> 0.859719
#   recall 2/2; irrelevant 0; mean relevance 2.5; coverage 2/10
# garden hose: ranked D(1) I(1): no gain and nothing relevant, so ndcg and recall are undefined (NaN);
#   irrelevant 2/10; mean relevance 1; coverage 2/10
# zzzz widget: nothing retrieved: ndcg 0, recall 0, irrelevant 0, mean relevance undefined, coverage 0
NAN = float("nan")
TINY_PER_QUERY = {  # ndcg@10, ndcg@25, recall@100, irrelevant@10, mean_relevance@10, coverage@10
    "cordless drill kit": (0.797935, 0.797935, 2 / 3, 0.1, 6.5 / 3, 0.3),
    "brass hinge": (0.859719, 0.859719, 1.0, 0.0, 2.5, 0.2),
    "garden hose": (NAN, NAN, NAN, 0.2, 1.0, 0.2),
    "zzzz widget": (0.0, 0.0, 0.0, 0.0, NAN, 0.0),
}
TINY_METRICS = ("ndcg@10", "ndcg@25", "recall@100", "irrelevant@10", "mean_relevance@10", "coverage@10")
# means skip undefined queries: ndcg (0.797935 + 0.859719 + 0) / 3, recall (2/3 + 1 + 0) / 3,
# irrelevant (0.1 + 0 + 0.2 + 0) / 4, mean relevance (6.5/3 + 2.5 + 1) / 3, coverage (0.3 + 0.2 + 0.2 + 0) / 4
TINY_MEAN = (0.552551, 0.552551, 5 / 9, 0.075, 17 / 9, 0.175)
TINY_COUNT = (3, 3, 3, 4, 3, 4)
# buckets from the lake's frequencies 100, 60, 40 (total 200): the busiest query starts at 0% of the
# traffic (head, < 50%), the next at 50% (torso, < 80%), the last at 80% (tail); zzzz is not in the lake
TINY_BUCKETS = {"cordless drill kit": "head", "brass hinge": "torso", "garden hose": "tail", "zzzz widget": UNSEEN}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Workspace, Path]:
    """The hand-checkable lake (the first three queries; judgments in it too) and a judgments file in
    the Home Depot layout holding all four queries."""
    root = tmp_path_factory.mktemp("tiny")
    ws = Workspace(root=root / "ws")
    ws.lake.write("items", pd.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values()),
                                         "event_timestamp": AS_OF}))
    lake_queries = [(text, freq) for text, freq, _ in TINY if freq is not None]
    ws.lake.write("queries", pd.DataFrame({
        "query_id": [query_id(t) for t, _ in lake_queries], "query_text": [t for t, _ in lake_queries],
        "query_norm": [t for t, _ in lake_queries], "split": "dev",
        "frequency": [f for _, f in lake_queries], "event_timestamp": AS_OF}))
    rows = [(text, item, rel) for text, _, judged in TINY for item, rel in judged.items()]
    in_lake = [r for r in rows if r[0] != "zzzz widget"]
    ws.lake.write("judgments", pd.DataFrame({
        "judgment_id": [str(n) for n in range(len(in_lake))], "query_id": [query_id(t) for t, _, _ in in_lake],
        "item_id": [i for _, i, _ in in_lake], "relevance": [r for _, _, r in in_lake], "event_timestamp": AS_OF}))
    csv = root / "tiny.csv"
    pd.DataFrame({"id": range(1, len(rows) + 1), "product_uid": [int(i) for _, i, _ in rows],
                  "product_title": [TITLES[i] for _, i, _ in rows], "search_term": [t for t, _, _ in rows],
                  "relevance": [r for _, _, r in rows]}).to_csv(csv, index=False)
    return ws, csv


def _close(got, expected) -> bool:
    """Equal to the hand values (six digits: per_query.csv keeps six significant ones); NaN = null or NaN."""
    return all((np.isnan(e) and (g is None or np.isnan(g))) or abs(g - e) < 1e-5 for g, e in zip(got, expected))


def test_bm25_ranks_the_tiny_catalog_as_worked_out_by_hand(tiny):
    ws, _ = tiny
    ranker = Models(ws).ranker("bm25")
    shown = ranker([text for text, _, _ in TINY])
    assert [[x for x in row if x != EMPTY] for row in shown] == TINY_RANKED


def test_eval_cli_reports_the_metrics_worked_out_by_hand(tiny, tmp_path):
    ws, csv = tiny
    out = tmp_path / "out"
    result = invoke(ws, "eval", "--judgments", str(csv), "--model", "bm25", "--model", "char", "--out", str(out))
    assert result.exit_code == 0, result.output
    for name in ("report.json", "report.md", "per_query.csv", "metrics.png", "ndcg_by_bucket.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["queries"] == 4 and report["input"]["file"]["rows_rejected"] == 0
    assert report["catalog_items"] == 10 and report["judged_items_not_in_catalog"] == 0
    bm25 = report["models"]["bm25"]
    assert _close([bm25["mean"][m] for m in TINY_METRICS], TINY_MEAN), bm25["mean"]
    assert [bm25["count"][m] for m in TINY_METRICS] == list(TINY_COUNT)
    per_query = pd.read_csv(out / "per_query.csv")
    assert len(per_query) == 2 * 4 and set(per_query["model"]) == {"bm25", "char"}
    rows = per_query[per_query["model"] == "bm25"].set_index("query_text")
    for text, expected in TINY_PER_QUERY.items():
        assert _close(rows.loc[text, list(TINY_METRICS)].tolist(), expected), (text, rows.loc[text].tolist())
        assert rows.loc[text, "bucket"] == TINY_BUCKETS[text]
    md = (out / "report.md").read_text()
    assert "| bm25 |" in md and "NDCG@10" in md and "by query-frequency bucket" in md


def test_save_runs_writes_trec_files_that_ranx_scores_as_the_report(tiny, tmp_path):
    """--save-runs: runs/<model>.run with BM25's hand-worked order, and ranx on the files alone
    gives report's ndcg@10 per query; both NDCG@10 forms are in every table."""
    ws, csv = tiny
    out = tmp_path / "out"
    result = invoke(ws, "eval", "--judgments", str(csv), "--model", "bm25", "--out", str(out), "--save-runs")
    assert result.exit_code == 0, result.output
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["bm25.run", "qrels.txt", "queries.tsv"]
    texts = dict(line.split("\t") for line in (runs / "queries.tsv").read_text().splitlines())
    assert sorted(texts.values()) == sorted(text for text, _, _ in TINY)
    run = Run.from_file(str(runs / "bm25.run"), kind="trec")
    by_text = {texts[qid]: ranked(items) for qid, items in run.to_dict().items()}
    assert by_text == {text: top for (text, _, _), top in zip(TINY, TINY_RANKED) if top}
    qrels = Qrels.from_file(str(runs / "qrels.txt"), kind="trec")
    assert qrels.to_dict()[query_id("cordless drill kit")] == {"100001": 24, "100002": 0, "100003": 18, "100004": 12}
    ranx_evaluate(qrels, run, "ndcg@10", return_mean=False, make_comparable=True)
    per_query = pd.read_csv(out / "per_query.csv").query("model == 'bm25'").set_index("query_id")
    for qid, expected in per_query["ndcg@10"].items():  # ranx scores "zzzz widget" (no results) 0, as we do
        assert np.isnan(expected) or run.scores["ndcg@10"][qid] == pytest.approx(expected, abs=1e-5), texts[qid]
    md = (out / "report.md").read_text()
    assert md.index("| NDCG@10 | condensed NDCG@10 |") < md.index("## condensed NDCG@10 by query-frequency bucket")
    assert "ndcg@10_condensed" in per_query.columns


def test_trec_run_files_round_trip_with_our_tie_order(tmp_path):
    """Ties in the rank column follow metrics.ranked (item id ascending); scores come back exactly;
    ':' in a model name becomes '_' in file name and tag; a tab in a query cannot break queries.tsv."""
    runs = {"rrf:unified": {"q1": {"b": 0.5, "a": 0.5, "c": 0.75, "d": 1 / 3}, "q2": {}},
            "bm25": {"q1": {"a": 1.0}, "q2": {"e": 2.0, "f": 2.0}}}
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query_text": ["deck\tstain", "drill"]})
    truth = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "item_id": ["a", "b", "e"], "relevance": [2.33, 1.0, 1.75]})
    folder = write_runs(runs, queries, truth, tmp_path)
    lines = (folder / "rrf_unified.run").read_text().splitlines()
    assert [line.split()[:4] for line in lines] == [["q1", "Q0", d, str(r)] for r, d in enumerate("cabd", start=1)]
    assert {line.split()[5] for line in lines} == {"rrf_unified"}
    for model, run in runs.items():
        back = Run.from_file(str(folder / f"{model.replace(':', '_')}.run"), kind="trec")
        assert back.to_dict() == {qid: items for qid, items in run.items() if items}
        for qid, items in back.to_dict().items():
            in_file = [line.split()[2] for line in (folder / f"{back.name}.run").read_text().splitlines()
                       if line.startswith(f"{qid} ")]
            assert in_file == ranked(items) == ranked(run[qid])
    assert (folder / "queries.tsv").read_text() == "q1\tdeck stain\nq2\tdrill\n"
    qrels = Qrels.from_file(str(folder / "qrels.txt"), kind="trec")
    assert qrels.to_dict() == {"q1": {"a": 16, "b": 0}, "q2": {"e": 9}}  # round((relevance - 1) * 12)


def test_buckets_come_from_query_profile_and_unseen_queries(tiny, tmp_path):
    """Each bucket holds one query here, so its means are that query's hand-worked metrics."""
    ws, csv = tiny
    report = evaluate_models(ws, EvalConfig(models=("bm25",), judgments=csv), tmp_path / "out")
    buckets = report["models"]["bm25"]["by_bucket"]
    assert list(buckets) == ["head", "torso", "tail", UNSEEN]
    for text, bucket in TINY_BUCKETS.items():
        assert buckets[bucket]["queries"] == 1
        assert _close([buckets[bucket]["mean"][m] for m in TINY_METRICS], TINY_PER_QUERY[text]), bucket


def test_a_fused_model_name_fuses_the_lexical_channels_with_that_encoder(ws, tmp_path):
    """"rrf:VERSION" is rrf with that encoder as the dense channel: rrf:minilm-l6-v2 is rrf itself,
    and a name that resolves to no encoder fails before any work."""
    retriever = ModelRunner(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
    texts = ws.lake.read("queries")["query_norm"].head(20).tolist()
    keys = [str(i) for i in range(len(texts))]
    runs, _ = retriever.runs(texts, keys, ["rrf", f"rrf:{BASE_VERSION}", "bm25"])
    assert runs["rrf"] == runs[f"rrf:{BASE_VERSION}"] and runs["rrf"] != runs["bm25"]
    with pytest.raises(UnknownModel):
        retriever.check(["rrf:no-such-model"])


def test_bad_rows_are_quarantined_and_counted(ws, tmp_path):
    csv = tmp_path / "bad_rows.csv"
    hd_file(ws, csv)
    with csv.open("a") as fh:
        fh.write("9001,100001,Some Title,deck stain,high\n9002,abc,Some Title,deck stain,2\n")
    report = evaluate_models(ws, EvalConfig(models=("bm25",), judgments=csv), tmp_path / "out")
    file = report["input"]["file"]
    assert file["rows_rejected"] == 2 and file["rows_read"] == file["rows_used"] + 2
    assert file["rejects_by_reason"] == {"not_a_number": 1, "not_an_integer": 1}
    rejects = pd.read_csv(file["rejects_path"])
    assert set(rejects["field"]) == {"relevance", "product_uid"} and rejects["line"].notna().all()


@pytest.mark.parametrize("content, expected", [
    ("id,product_uid,product_title,search_term,score\n1,100001,T,deck,3\n", "line 1, field 'relevance'"),
    ("product_uid,search_term,relevance\n100001,deck,9\n100002,deck,x\n", "no valid judgments"),
    ("", "file is empty"),
])
def test_bad_file_gives_one_clear_line(ws, tmp_path, content, expected):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    result = invoke(ws, "eval", "--judgments", str(csv), "--model", "bm25", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "bad.csv" in result.output and expected in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, expected", [
    (["eval", "--split", "dev", "--model", "no-such-model"], "available: minilm-l6-v2"),
    (["eval"], "exactly one of --judgments"),
    (["ab", "--a", "bm25", "--b", "no-such-model"], "not found"),
])
def test_bad_settings_give_one_clear_line(ws, args, expected):
    result = invoke(ws, *args)
    assert result.exit_code == 2 and expected in result.output, result.output


def test_eval_minimal_columns_and_split_dev(ws, tmp_path):
    """Only search_term, product_uid, relevance are required; --split dev scores the lake's own set."""
    csv = tmp_path / "minimal.csv"
    hd_file(ws, csv)[["search_term", "product_uid", "relevance"]].to_csv(csv, index=False)
    from_file = evaluate_models(ws, EvalConfig(models=("bm25",), judgments=csv), tmp_path / "a")
    result = invoke(ws, "eval", "--split", "dev", "--model", "bm25", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    from_split = json.loads((tmp_path / "b" / "report.json").read_text())
    assert from_split["input"]["source"] == "lake:dev"
    assert from_split["models"]["bm25"]["mean"] == pytest.approx(from_file["models"]["bm25"]["mean"], abs=2e-3)


@pytest.fixture(scope="module")
def traffic(ws):
    jset = from_lake(ws.lake, "dev")
    queries = jset.queries[["query_id", "query_text"]].merge(ws.lake.read("queries")[["query_id", "frequency"]])
    return queries, jset.judgments, Models(ws)


def test_ranker_shows_the_runs_top_10(traffic):
    queries, _, retriever = traffic
    shown = retriever.ranker("bm25")(queries["query_text"].tolist())
    runs, _ = retriever.runs(queries["query_text"].tolist(), queries["query_id"].tolist(), ["bm25"])
    for row, qid in zip(shown, queries["query_id"]):
        top = ranked(runs["bm25"].get(qid, {}), 10)
        assert list(row[:len(top)]) == top and all(x == EMPTY for x in row[len(top):])


def test_a_vs_a_differs_by_zero(traffic):
    queries, truth, retriever = traffic
    ranker = retriever.ranker("bm25")
    result = ab_test(queries, ranker, ranker, truth, CLICKS, seed=3, resamples=500)
    for name, m in result["metrics"].items():
        assert m["diff"] == 0.0 and m["diff_ci"][0] <= 0.0 <= m["diff_ci"][1], name
        assert m["a_ci"][0] <= m["a"] <= m["a_ci"][1], name
    assert result["metrics"]["ctr"]["a_ci"][0] < result["metrics"]["ctr"]["a_ci"][1]


def test_showing_judged_irrelevant_items_raises_the_irrelevant_share(traffic):
    queries, truth, retriever = traffic
    bad = truth[truth["relevance"] < RELEVANT].sort_values(["query_id", "relevance", "item_id"])
    bad_lists = bad.groupby("query_id")["item_id"].apply(list).to_dict()

    def irrelevant_first(texts):
        out = np.full((len(texts), 10), EMPTY, dtype=object)
        for i, text in enumerate(texts):
            items = bad_lists.get(query_id(text), [])[:10]
            out[i, :len(items)] = items
        return out

    result = ab_test(queries, retriever.ranker("bm25"), irrelevant_first, truth, CLICKS, seed=0, resamples=500)
    share = result["metrics"]["irrelevant_share"]
    assert share["b"] > share["a"] and share["diff_ci"][0] > 0
    assert result["metrics"]["orders_per_search"]["diff"] < 0


def test_traffic_is_common_to_both_arms_and_counts_empty_results(traffic):
    """Same seed, same searches per query whatever is shown, including queries shown nothing."""
    queries, truth, retriever = traffic
    nothing = simulate(queries, lambda texts: np.full((len(texts), 10), EMPTY, dtype=object), truth, CLICKS, seed=4)
    bm25 = simulate(queries, retriever.ranker("bm25"), truth, CLICKS, seed=4)
    assert nothing.searches.equals(bm25.searches) and nothing.searches["searches"].sum() > 0
    totals = query_totals(nothing)
    assert totals["searches"].sum() == nothing.searches["searches"].sum() and totals["shown"].sum() == 0


def test_ab_cli_writes_json_and_markdown(ws, tmp_path):
    out = tmp_path / "ab"
    result = invoke(ws, "ab", "--a", "bm25", "--b", "char", "--impressions", "5000", "--resamples", "200",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ab.json").read_text())
    assert set(report["metrics"]) >= {"ctr", "orders_per_search", "irrelevant_share"}
    assert report["config"]["split"] == "dev" and "paired bootstrap over queries" in report["ci"]
    assert "| CTR (clicks / search) |" in (out / "ab.md").read_text()
