"""`unisup eval` and `unisup ab` on a small synthetic lake (no signals needed: both read only the lake).

The eval's numbers are checked against pipelines.retrieval.report.channel_report, which scores the same
channels on the same dev queries through its own path, and against metrics.evaluate on runs built
here; the A/B against known answers (A vs A, a ranker that shows judged-irrelevant items).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.evaluation.ab import ab_test, query_totals
from pipelines.evaluation.judgments import UNSEEN, from_lake
from pipelines.evaluation.metrics import RELEVANT, evaluate, ranked
from pipelines.evaluation.offline import EvalConfig, evaluate_models
from pipelines.evaluation.run import Retriever
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.modeling.registry import BASE_VERSION, UnknownModel
from pipelines.retrieval.bm25 import BM25Channel
from pipelines.retrieval.report import channel_report, hits_run
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


def test_eval_cli_writes_reports_equal_to_the_channel_report(ws, tmp_path):
    """The same channels on the same dev pairs, read from a file: the channel report's numbers."""
    csv = tmp_path / "dev.csv"
    hd_file(ws, csv)
    out = tmp_path / "out"
    result = invoke(ws, "eval", "--judgments", str(csv), "--model", "bm25", "--model", "char",
                    "--model", BASE_VERSION, "--model", "rrf", "--out", str(out))
    assert result.exit_code == 0, result.output
    for name in ("report.json", "report.md", "per_query.csv", "metrics.png", "ndcg_by_bucket.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    oracle = channel_report(ws.lake, ws.cache_dir, split="dev")
    same = {"bm25": "bm25", "char": "char", BASE_VERSION: "dense", "rrf": "fusion_rrf"}
    for model, channel in same.items():
        mean = {m: (np.nan if v is None else v) for m, v in report["models"][model]["mean"].items()}
        assert mean == pytest.approx(oracle["mean"][channel], nan_ok=True), model
    assert report["input"]["file"]["rows_rejected"] == 0
    md = (out / "report.md").read_text()
    assert "| rrf |" in md and "NDCG@10" in md and "by query-frequency bucket" in md
    per_query = pd.read_csv(out / "per_query.csv")
    assert len(per_query) == 4 * report["input"]["queries"]


def test_a_fused_model_name_fuses_the_lexical_channels_with_that_encoder(ws, tmp_path):
    """"rrf:VERSION" is rrf with that encoder as the dense channel: rrf:minilm-l6-v2 is rrf itself,
    and a name that resolves to no encoder fails before any work."""
    retriever = Retriever(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
    texts = ws.lake.read("queries")["query_norm"].head(20).tolist()
    keys = [str(i) for i in range(len(texts))]
    runs, _ = retriever.runs(texts, keys, ["rrf", f"rrf:{BASE_VERSION}", "bm25"])
    assert runs["rrf"] == runs[f"rrf:{BASE_VERSION}"] and runs["rrf"] != runs["bm25"]
    with pytest.raises(UnknownModel):
        retriever.check(["rrf:no-such-model"])


def test_buckets_come_from_query_profile_and_unseen_queries(ws, tmp_path):
    """Lake queries keep their head/torso/tail bucket; a query the lake lacks is 'unseen'; every
    bucket's means are metrics.evaluate on that bucket's queries of an independently built run."""
    items = ws.lake.read("items")
    extra = [("zz unseen widget", items["item_id"].iloc[0], "2.67"),
             ("zz unseen widget", items["item_id"].iloc[1], "1")]
    csv = tmp_path / "with_unseen.csv"
    rows = hd_file(ws, csv, extra)
    report = evaluate_models(ws, EvalConfig(models=("bm25",), judgments=csv), tmp_path / "out")
    buckets = report["models"]["bm25"]["by_bucket"]
    assert UNSEEN in buckets and buckets[UNSEEN]["queries"] == 1
    assert set(buckets) - {UNSEEN} <= {"head", "torso", "tail"}
    judgments = pd.DataFrame({"query_id": rows["search_term"].map(query_id), "item_id": rows["product_uid"].astype(str),
                              "relevance": rows["relevance"].astype(float)})
    texts = rows.drop_duplicates("search_term")["search_term"].tolist()
    channel = BM25Channel.build(items["item_id"].astype(str).to_numpy(), items["title"].astype(str).tolist())
    run = hits_run([query_id(t) for t in texts], *channel.search(texts, k=100))
    expected = evaluate(run, judgments)["mean"]
    assert report["models"]["bm25"]["mean"] == pytest.approx(expected, nan_ok=True)
    unseen = evaluate(run, judgments[judgments["query_id"] == query_id("zz unseen widget")])["mean"]
    assert buckets[UNSEEN]["mean"] == pytest.approx(unseen, nan_ok=True)
    assert sum(b["queries"] for b in buckets.values()) == report["input"]["queries"]


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
    return queries, jset.judgments, Retriever(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")


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
