"""report.html, ab.html and tradeoff.html: one self-contained page each, holding the Markdown report's
tables cell for cell and its PNGs inline, referring to nothing outside the file."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipelines.evaluation.ab import ABConfig, run_ab
from pipelines.evaluation.offline import EvalConfig, evaluate_models
from pipelines.evaluation.tradeoff import write_tradeoff_report
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.workspace import Workspace

from conftest import AS_OF

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Tables as lists of rows of cell texts, image sources, and every tag seen."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """The pipe tables of a report.md, alignment rows left out."""
    tables, previous = [], False
    for line in markdown.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous:
            tables.append([])
        if is_row and "---" not in line:
            tables[-1].append([c.strip() for c in line.strip().strip("|").split("|")])
        previous = is_row
    return tables


def check_page(html_path: Path, md_path: Path, images: int) -> Page:
    text = html_path.read_text()
    page = Page(text)
    assert page.tables and page.tables == markdown_tables(md_path.read_text())
    assert len(page.images) == images
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert "http://" not in text and "https://" not in text
    assert not page.tags & {"link", "script", "iframe", "object"}  # nothing loaded from elsewhere
    return page


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(root=tmp_path_factory.mktemp("html") / "ws")
    generate_synthetic(ws.lake, n_items=300, n_queries=80, seed=2, as_of=AS_OF, judgments_per_query=6)
    return ws


def test_eval_report_html(ws, tmp_path):
    evaluate_models(ws, EvalConfig(models=("bm25", "char"), split="dev"), tmp_path)
    page = check_page(tmp_path / "report.html", tmp_path / "report.md", images=2)  # metrics, buckets
    assert [row[0] for row in page.tables[0][1:]] == ["bm25", "char"]


def test_ab_report_html(ws, tmp_path):
    run_ab(ws, ABConfig(a="bm25", b="char", impressions=2000, resamples=100), tmp_path)
    check_page(tmp_path / "ab.html", tmp_path / "ab.md", images=0)


def test_tradeoff_report_html(tmp_path):
    points = [{"click_weight": w, "order_weight": 2 * w, "ndcg@10": 0.5 - w / 10, "ndcg@10_condensed": 0.6 - w / 10,
               "irrelevant@10": 0.2, "ctr": 0.3 + w / 10, "ctr_diff_ci": [0.01, 0.02],
               "orders_per_search": 0.01 + w / 100, "orders_diff_ci": [0.001, 0.002], "irrelevant_share": 0.2,
               "baseline": {"ctr": 0.3, "orders_per_search": 0.01, "irrelevant_share": 0.25}} for w in (0.0, 0.5)]
    report = {"ranker": "r", "baseline": "bm25", "split": "dev", "queries": 3, "searches": 100, "points": points,
              "relevance_head": {"pairs": 10, "ece_p_relevant": 0.05, "exact": 0.5, "within_one": 0.9, "qwk": 0.4}}
    paths = write_tradeoff_report(report, tmp_path)
    page = check_page(paths["html"], paths["markdown"], images=1)
    assert [row[:2] for row in page.tables[0][1:]] == [["0", "0"], ["0.5", "1"]]
