"""Home Depot ingest: canonical output, encodings, and every kind of bad input.

All rows here are invented in the Kaggle layout; the real files are only read from ../shared when
present (those tests skip otherwise) and never copied into the project.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.ingest.errors import IngestError, Rejects
from pipelines.ingest.homedepot import FileReport, IngestReport, ingest_homedepot
from pipelines.lake import Lake
from pipelines.text import normalize_query, query_id, query_split

AS_OF = pd.Timestamp("2016-01-18", tz="UTC")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "homedepot"
J_HEADER = "id,product_uid,product_title,search_term,relevance"
GOOD = [  # lines 2-5 of every judgments file below
    "1,200001,Acme 1/2 in. x 10 ft. Copper Pipe,Copper Pipe,3.0",
    '2,200002,"Acme 36 in. x 36 in. Aluminum Sheet, Silver",metal sheet,2.33',
    "3,200002,\"Acme 36 in. x 36 in. Aluminum Sheet, Silver\",copper  pipe,1.33",
    '4,200003,"Bolt ""Pro"" 18-Volt Cordless Drill",cordless drill,2.67',
]
PRODUCTS = """product_uid,product_title
200001,Acme 1/2 in. x 10 ft. Copper Pipe
200002,"Acme 36 in. x 36 in. Aluminum Sheet, Silver"
200003,"Bolt ""Pro"" 18-Volt Cordless Drill"
200009,Unjudged Widget
"""


def judgments(*rows: str) -> str:
    return "\n".join([J_HEADER, *GOOD, *rows]) + "\n"


def ingest(tmp_path: Path, judgments_text: str | bytes, products_text: str | bytes | None = None,
           encoding: str = "auto") -> IngestReport:
    j = tmp_path / "judgments.csv"
    j.write_bytes(judgments_text if isinstance(judgments_text, bytes) else judgments_text.encode())
    p = None
    if products_text is not None:
        p = tmp_path / "products.csv"
        p.write_bytes(products_text if isinstance(products_text, bytes) else products_text.encode())
    return ingest_homedepot(j, p, Lake(tmp_path / "lake"), AS_OF, encoding=encoding)


def read_rejects(report: FileReport) -> pd.DataFrame:
    return pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)


def lake_of(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


def assert_accounted(report: FileReport, lake_rows: int) -> None:
    """Every row read is written or rejected, and the rejects file holds exactly the rejected rows."""
    assert report.rows_read == report.rows_written + report.rows_rejected
    assert report.rows_written == lake_rows
    assert len(read_rejects(report)) == report.rows_rejected == sum(report.rejects_by_reason.values())


def only_reject(tmp_path: Path, row: str) -> pd.Series:
    report = ingest(tmp_path, judgments(row), PRODUCTS)
    assert (report.judgments.rows_read, report.judgments.rows_written) == (5, 4)
    assert_accounted(report.judgments, len(lake_of(tmp_path).read("judgments")))
    rejects = read_rejects(report.judgments)
    assert len(rejects) == 1
    return rejects.iloc[0]


# --- canonical output ---------------------------------------------------------------------------


def test_writes_canonical_tables(tmp_path: Path) -> None:
    report = ingest(tmp_path, judgments("5,200004,Acme Hinge (Not in Catalog),door hinge,2.0"), PRODUCTS)
    lake = lake_of(tmp_path)
    items, queries, judged = (lake.read(t).set_index(k) for t, k in
                              [("items", "item_id"), ("queries", "query_id"), ("judgments", "judgment_id")])
    assert list(items.index) == ["200001", "200002", "200003", "200009", "200004"]
    assert items.loc["200003", "title"] == 'Bolt "Pro" 18-Volt Cordless Drill'
    assert items.loc["200004", "title"] == "Acme Hinge (Not in Catalog)"  # judged but not in products
    assert report.items_from_judgments == 1 and report.items_written == 5
    pipe = query_id("copper pipe")
    assert queries.loc[pipe, "query_text"] == "Copper Pipe"  # first raw spelling of the query
    assert queries.loc[pipe, "query_norm"] == "copper pipe"
    assert len(queries) == report.queries_written == 4
    for qid, row in queries.iterrows():
        assert qid == query_id(row["query_text"]) and row["split"] == query_split(row["query_text"])
        assert row["query_norm"] == normalize_query(row["query_text"])
    assert queries["frequency"].isna().all()
    assert list(judged.index) == ["1", "2", "3", "4", "5"]
    assert judged.loc["3", "query_id"] == pipe and judged.loc["3", "item_id"] == "200002"
    assert judged["relevance"].dtype == "float32" and judged.loc["2", "relevance"] == pytest.approx(2.33)
    for table in (items, queries, judged):
        assert str(table["event_timestamp"].dtype) == "datetime64[us, UTC]"
        assert (table["event_timestamp"] == AS_OF).all()
    assert report.products is not None
    assert report.judgments.encoding == report.products.encoding == "utf-8"
    assert report.judgments.rejects_path == lake.rejects_dir / "judgments.rejects.csv"
    assert read_rejects(report.judgments).empty


def test_without_products_items_come_from_judgments(tmp_path: Path) -> None:
    report = ingest(tmp_path, judgments())
    items = lake_of(tmp_path).read("items")
    assert list(items["item_id"]) == ["200001", "200002", "200003"]
    assert report.products is None and report.items_from_judgments == 3


def test_blank_lines_and_multiline_quoted_fields_keep_line_numbers(tmp_path: Path) -> None:
    rows = ["", '5,200005,"Two-line\ntitle",widget,2.0', "6,200006,Widget,widget,abc"]  # lines 6, 7-8, 9
    report = ingest(tmp_path, judgments(*rows))
    assert (report.judgments.rows_read, report.judgments.rows_written) == (6, 5)  # the blank line is no row
    reject = read_rejects(report.judgments).iloc[0]
    assert reject["line"] == "9" and reject["reason"] == "not_a_number"
    assert lake_of(tmp_path).read("items").set_index("item_id").loc["200005", "title"] == "Two-line\ntitle"


def test_bom_is_ignored(tmp_path: Path) -> None:
    report = ingest(tmp_path, b"\xef\xbb\xbf" + judgments().encode())
    assert report.judgments.rows_written == 4


# --- files that cannot be used ------------------------------------------------------------------


def test_ingest_error_message() -> None:
    err = IngestError(Path("data/judgments.csv"), "value 'abc' is not a number", row=17, field="relevance")
    assert str(err) == "judgments.csv line 17, field 'relevance': value 'abc' is not a number"
    assert str(IngestError("products.csv", "file is empty")) == "products.csv: file is empty"


def test_missing_required_column(tmp_path: Path) -> None:
    text = "id,product_uid,product_title,relevance\n1,200001,Acme Pipe,3.0\n"
    with pytest.raises(IngestError) as exc:
        ingest(tmp_path, text)
    assert (exc.value.file.name, exc.value.row, exc.value.field) == ("judgments.csv", 1, "search_term")
    assert str(exc.value).startswith("judgments.csv line 1, field 'search_term': required column is missing")


def test_products_missing_required_column(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"products.csv line 1, field 'product_title'"):
        ingest(tmp_path, judgments(), "product_uid,name\n200001,Acme Pipe\n")


@pytest.mark.parametrize("text", ["", "   \n\n", "\ufeff"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(IngestError, match=r"judgments.csv: file is empty"):
        ingest(tmp_path, text)


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"judgments.csv line 1: has a header but no data rows"):
        ingest(tmp_path, J_HEADER + "\n\n")


def test_nothing_parseable(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no parseable rows: all 2 rejected"):
        ingest(tmp_path, J_HEADER + '\n1,200001\n2,200002,"Acme Sh')
    rejects = pd.read_csv(lake_of(tmp_path).rejects_dir / "judgments.rejects.csv", dtype=str)
    assert list(rejects["line"]) == ["2", "3"]
    assert list(rejects["reason"]) == ["wrong_field_count", "malformed_csv"]


def test_no_valid_rows(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no valid judgments: all 1 rows rejected"):
        ingest(tmp_path, J_HEADER + "\n1,200001,Acme Pipe,pipe,9\n")


# --- truncated files ----------------------------------------------------------------------------


def test_truncated_mid_quoted_field(tmp_path: Path) -> None:
    row = only_reject(tmp_path, '5,200002,"Acme 36 in. x 36 in. Alumi')  # no closing quote, no newline
    assert row["line"] == "6" and row["reason"] == "malformed_csv"
    assert "line 6" in row["detail"] and "unexpected end of data" in row["detail"]
    assert row["raw_record"] == '5,200002,"Acme 36 in. x 36 in. Alumi'


def test_truncated_with_missing_fields(tmp_path: Path) -> None:
    row = only_reject(tmp_path, "5,200002,Acme Sheet")
    assert (row["line"], row["reason"]) == ("6", "wrong_field_count")
    assert row["detail"] == "line 6: expected 5 fields, found 3"


def test_truncated_products_title_is_not_accepted(tmp_path: Path) -> None:
    """The title is the last column, so a cut inside its quotes still has the right field count."""
    report = ingest(tmp_path, judgments(), PRODUCTS + '200010,"Acme Door Kn')
    assert report.products is not None
    assert report.products.rows_read == 5 and report.products.rows_rejected == 1
    assert read_rejects(report.products).iloc[0]["line"] == "6"
    assert "200010" not in set(lake_of(tmp_path).read("items")["item_id"])
    assert_accounted(report.products, 4)


# --- rows that are rejected ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("5,200005,Acme Widget,   ,2.0", "search_term", "empty_value"),
        ("5,200005,Acme Widget,,2.0", "search_term", "empty_value"),
        ("5,200005,  ,widget,2.0", "product_title", "empty_value"),
        (",200005,Acme Widget,widget,2.0", "id", "empty_value"),
        ("5,200005,Acme Widget,widget,abc", "relevance", "not_a_number"),
        ("5,200005,Acme Widget,widget,", "relevance", "not_a_number"),
        ("5,200005,Acme Widget,widget,nan", "relevance", "not_a_number"),
        ("5,200005,Acme Widget,widget,0.99", "relevance", "out_of_range"),
        ("5,200005,Acme Widget,widget,3.01", "relevance", "out_of_range"),
        ("5,abc,Acme Widget,widget,2.0", "product_uid", "not_an_integer"),
        ("5,2000.5,Acme Widget,widget,2.0", "product_uid", "not_an_integer"),
        ("5,-200005,Acme Widget,widget,2.0", "product_uid", "not_an_integer"),
        ("5,,Acme Widget,widget,2.0", "product_uid", "not_an_integer"),
        ("1,200005,Acme Widget,widget,2.0", "id", "duplicate_id"),
    ],
)
def test_bad_row_is_rejected(tmp_path: Path, row: str, field: str, reason: str) -> None:
    reject = only_reject(tmp_path, row)
    assert (reject["line"], reject["field"], reject["reason"]) == ("6", field, reason)
    assert reject["relevance"] == row.split(",")[-1]  # the raw values are kept


def test_relevance_message_names_the_value(tmp_path: Path) -> None:
    assert only_reject(tmp_path, "5,200005,Acme Widget,widget,abc")["detail"] == "value 'abc' is not a number"


@pytest.mark.parametrize("value", ["1", "3", "2.5", " 2.33 ", "1.0e0"])
def test_relevance_bounds_are_inclusive(tmp_path: Path, value: str) -> None:
    report = ingest(tmp_path, judgments(f"5,200005,Acme Widget,widget,{value}"))
    assert report.judgments.rows_rejected == 0


def test_duplicate_id_keeps_first(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, "2,200005,Acme Widget,widget,2.0")
    assert reject["detail"] == "2 already on line 3; kept the first"
    assert lake_of(tmp_path).read("judgments").set_index("judgment_id").loc["2", "item_id"] == "200002"


def test_same_query_and_item_judged_twice_keeps_first(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, "5,200001,Acme 1/2 in. x 10 ft. Copper Pipe,  COPPER   pipe ,1.0")
    assert reject["reason"] == "duplicate_pair"
    assert "already judged by id 1 on line 2; kept that one" in reject["detail"]
    kept = lake_of(tmp_path).read("judgments").set_index("judgment_id")
    assert "5" not in kept.index and kept.loc["1", "relevance"] == 3.0


def test_duplicate_product_uid_keeps_first(tmp_path: Path) -> None:
    products = PRODUCTS + "200002,Some Other Title\n200001,Acme 1/2 in. x 10 ft. Copper Pipe\n200x,Bad Id\n"
    report = ingest(tmp_path, judgments(), products)
    assert report.products is not None
    rejects = read_rejects(report.products)
    assert list(rejects["line"]) == ["6", "7", "8"]
    assert list(rejects["reason"]) == ["duplicate_product_uid", "duplicate_product_uid", "not_an_integer"]
    assert "with a different title; kept the first" in rejects.iloc[0]["detail"]
    assert "with the same title" in rejects.iloc[1]["detail"]
    items = lake_of(tmp_path).read("items").set_index("item_id")
    assert items.loc["200002", "title"] == "Acme 36 in. x 36 in. Aluminum Sheet, Silver"
    assert_accounted(report.products, 4)


ROWS = st.sampled_from([
    "{i},2000{i},Widget {i},widget {i},2.0",
    "{i},2000{i},Widget {i},widget,3",
    "{i},2000{i},Widget {i},widget {i},abc",
    "{i},2000{i},Widget {i},widget {i},4",
    "{i},20x0,Widget {i},widget {i},2.0",
    "{i},2000{i},,widget {i},2.0",
    "1,2000{i},Widget {i},widget {i},2.0",
    "{i},2000{i},Widget {i}",
    '{i},2000{i},"Widget, {i}",widget {i},1.67',
    "",
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROWS, min_size=1, max_size=25).filter(any), st.booleans())
def test_every_row_is_written_or_rejected(templates: list[str], truncate: bool) -> None:
    lines = [t.format(i=i) for i, t in enumerate(templates, start=1)]
    text = "\n".join([J_HEADER, *lines]) + ("" if truncate else "\n")
    if truncate:
        text = text[: len(text) - 3]
    data_lines = sum(1 for line in text.split("\n")[1:] if line)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report = ingest(Path(tmp), text)
        except IngestError:
            rejects = pd.read_csv(Lake(Path(tmp) / "lake").rejects_dir / "judgments.rejects.csv", dtype=str)
            assert len(rejects) == data_lines  # nothing usable, and every row is in the rejects file
            return
        assert report.judgments.rows_read == data_lines
        assert_accounted(report.judgments, len(Lake(Path(tmp) / "lake").read("judgments")))


# --- encodings ----------------------------------------------------------------------------------

LATIN1_TITLES = ["Acme 90Â° Brass Elbow ½ in.", "Café Door Knob in Bronze ¾ in.", "John Doe Men\x89Ûªs Boots"]


def test_iso_8859_1_file_round_trips(tmp_path: Path) -> None:
    """The Kaggle original is ISO-8859-1 and even holds byte pairs that are valid UTF-8 (Ûª)."""
    rows = [f"{i},20000{i},{title},½ in. elbow {i},2.0" for i, title in enumerate(LATIN1_TITLES, start=1)]
    report = ingest(tmp_path, ("\n".join([J_HEADER, *rows]) + "\n").encode("iso-8859-1"))
    assert report.judgments.encoding == "iso-8859-1" and report.judgments.rows_rejected == 0
    lake = lake_of(tmp_path)
    assert list(lake.read("items")["title"]) == LATIN1_TITLES
    queries = lake.read("queries")
    assert queries["query_text"].iloc[0] == "½ in. elbow 1"
    assert queries["query_id"].iloc[0] == query_id("½ in. elbow 1")


def test_mixed_encoding_rejects_bad_rows_with_byte_offset(tmp_path: Path) -> None:
    good = [f"{i},20000{i},Acme ½ in. Elbow {i},elbow ½ {i},2.0" for i in range(1, 4)]
    data = ("\n".join([J_HEADER, *good]) + "\n").encode() + b"4,200004,Acme Widget,widget \xbd in,2.0\n"
    report = ingest(tmp_path, data)
    assert report.judgments.encoding == "utf-8"
    assert (report.judgments.rows_written, report.judgments.rows_rejected) == (3, 1)
    reject = read_rejects(report.judgments).iloc[0]
    offset = data.index(b"widget \xbd") + len("widget ")
    assert (reject["line"], reject["reason"]) == ("5", "invalid_bytes")
    assert reject["detail"] == f"line 5: byte 0xBD at byte offset {offset} is not valid utf-8"


def test_explicit_encoding_is_used(tmp_path: Path) -> None:
    data = judgments("5,200005,Café Table,table,2.0").encode("iso-8859-1")
    report = ingest(tmp_path, data, encoding="utf-8")
    assert report.judgments.encoding == "utf-8" and report.judgments.rejects_by_reason == {"invalid_bytes": 1}


def test_rejects_accumulator(tmp_path: Path) -> None:
    rejects = Rejects(["a", "b"])
    rejects.add(3, "b", "not_a_number", ["1", "x"], "value 'x' is not a number")
    rejects.add(4, None, "wrong_field_count", "1,2,3")
    assert len(rejects) == 2 and rejects.counts == {"not_a_number": 1, "wrong_field_count": 1}
    written = pd.read_csv(rejects.write(tmp_path / "r.csv"), dtype=str, keep_default_na=False)
    assert list(written.columns) == ["line", "field", "reason", "detail", "a", "b", "raw_record"]
    assert list(written.iloc[1]) == ["4", "", "wrong_field_count", "", "", "", "1,2,3"]


# --- the real files, when ../shared is present --------------------------------------------------

needs_shared = pytest.mark.skipif(not (SHARED / "judgments.csv").exists(), reason="../shared data absent")


@needs_shared
def test_real_judgments_sample(tmp_path: Path) -> None:
    with (SHARED / "judgments.csv").open(encoding="utf-8", newline="") as fh:
        head = "".join(next(fh) for _ in range(2001))
    sample = tmp_path / "sample"
    sample.mkdir()
    report = ingest(sample, head)
    assert report.judgments.encoding == "utf-8" and report.judgments.rows_read == 2000
    lake = lake_of(sample)
    assert_accounted(report.judgments, len(lake.read("judgments")))
    queries = lake.read("queries")
    assert (queries["query_id"] == [query_id(t) for t in queries["query_text"]]).all()
    latin = tmp_path / "latin"
    latin.mkdir()
    assert ingest(latin, head.encode("iso-8859-1")).judgments.encoding == "iso-8859-1"
    for table in ("items", "queries", "judgments"):
        pd.testing.assert_frame_equal(lake.read(table), lake_of(latin).read(table))


@needs_shared
def test_real_files_ingest_in_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    report = ingest_homedepot(SHARED / "judgments.csv", SHARED / "products.csv", lake_of(tmp_path), AS_OF)
    assert time.perf_counter() - start < 10
    assert report.products is not None
    assert report.products.rows_read == report.items_written == 54_667
    assert report.judgments.rows_read == 59_518
    assert_accounted(report.judgments, len(lake_of(tmp_path).read("judgments")))
    assert set(report.judgments.rejects_by_reason) <= {"duplicate_pair"}
