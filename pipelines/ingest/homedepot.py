"""Ingest the Home Depot product-search relevance files into the canonical lake.

Reads the Kaggle "Home Depot Product Search Relevance" train layout: judgments (id, product_uid,
product_title, search_term, relevance) and optionally the catalog (product_uid, product_title). The
Kaggle download is ISO-8859-1 and the copy in ../shared is UTF-8, so the encoding is detected. Every
record read is written to the lake or quarantined in lake.rejects_dir/<file stem>.rejects.csv with its
line and reason: nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.ingest.errors import IngestError, Rejects, RowError
from pipelines.lake import RELEVANCE_MAX, RELEVANCE_MIN, Lake
from pipelines.text import normalize_query, query_id, query_split

JUDGMENT_COLUMNS = ("id", "product_uid", "product_title", "search_term", "relevance")
SCORED_COLUMNS = ("search_term", "product_uid", "relevance")  # all evaluation needs; id and title optional
PRODUCT_COLUMNS = ("product_uid", "product_title")

# One complete, well-formed multi-byte UTF-8 sequence (no overlongs, no surrogates).
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape turns an undecodable byte into


@dataclass(frozen=True)
class FileReport:
    """What happened to one input file; rows_read always equals rows_written + rows_rejected."""

    path: Path
    encoding: str
    rows_read: int  # non-blank records after the header, well-formed or not
    rows_written: int
    rows_rejected: int
    rejects_by_reason: dict[str, int]
    rejects_path: Path

    def __post_init__(self) -> None:
        if self.rows_read != self.rows_written + self.rows_rejected:  # a row went missing: a bug here
            raise AssertionError(f"{self.path.name}: rows read != written + rejected ({self})")


@dataclass(frozen=True)
class IngestReport:
    """Per-file accounting plus what reached the lake."""

    judgments: FileReport
    products: FileReport | None
    items_written: int
    items_from_judgments: int  # judged items absent from products.csv (or all, without it): judgment title
    queries_written: int


@dataclass
class _Source:
    """A decoded CSV file: well-formed records with their first line number, and its rejects so far."""

    path: Path
    encoding: str
    header: list[str]
    records: list[tuple[int, list[str]]]
    rejects: Rejects
    rejects_path: Path
    rows_read: int

    def report(self, rows_written: int) -> FileReport:
        self.rejects.write(self.rejects_path)
        return FileReport(self.path, self.encoding, self.rows_read, rows_written, len(self.rejects),
                          dict(self.rejects.counts), self.rejects_path)


def ingest_homedepot(
    judgments: Path, products: Path | None, lake: Lake, as_of: pd.Timestamp, encoding: str = "auto"
) -> IngestReport:
    """Write items, queries and judgments for the lake from Home Depot files.

    encoding="auto" reads UTF-8, or ISO-8859-1 when the file is mostly not UTF-8 (the Kaggle
    original); any other value is used as given. Items come from products.csv, plus judged items it
    lacks (titled from the judgment); without products.csv, from the judgments alone.
    """
    as_of = pd.Timestamp(as_of)
    catalog: dict[str, str] = {}
    products_report = None
    if products is not None:
        src = _read_source(Path(products), PRODUCT_COLUMNS, encoding, lake.rejects_dir)
        catalog = _products(src)
        products_report = src.report(len(catalog))
    src = _read_source(Path(judgments), JUDGMENT_COLUMNS, encoding, lake.rejects_dir)
    rows = _judgments(src)
    judgments_report = src.report(len(rows))
    if not rows:
        raise IngestError(src.path, f"no valid judgments: all {src.rows_read} rows rejected, "
                                    f"see {src.rejects_path}")
    items = dict(catalog)
    queries: dict[str, str] = {}
    for _, qid, item, _, raw_query, title in rows:
        items.setdefault(item, title)
        queries.setdefault(qid, raw_query)
    lake.write("items", pd.DataFrame({"item_id": list(items), "title": list(items.values()),
                                      "event_timestamp": as_of}))
    texts = list(queries.values())  # first raw spelling of each query_id
    lake.write("queries", pd.DataFrame({
        "query_id": list(queries), "query_text": texts, "query_norm": [normalize_query(q) for q in texts],
        "split": [query_split(q) for q in texts], "frequency": pd.array([None] * len(texts), dtype="Int64"),
        "event_timestamp": as_of}))
    columns = ["judgment_id", "query_id", "item_id", "relevance", "query_text", "title"]
    lake.write("judgments", pd.DataFrame(rows, columns=columns).assign(event_timestamp=as_of))
    return IngestReport(judgments_report, products_report, len(items), len(items) - len(catalog),
                        len(queries))


def read_judgments(path: Path, rejects_dir: Path, encoding: str = "auto") -> tuple[pd.DataFrame, FileReport]:
    """Valid rows of any file in the Home Depot judgments layout, validated exactly as ingest does.

    For scoring a retriever against judgments that never enter the lake (`unisup eval --judgments`):
    only search_term, product_uid and relevance are required; a missing id becomes the line number and
    a missing product_title stays empty. Bad rows go to rejects_dir/<stem>.rejects.csv, counted in the
    report; a file with no valid row raises IngestError. Columns: judgment_id, query_id, item_id,
    relevance, query_text, title."""
    src = _read_source(Path(path), SCORED_COLUMNS, encoding, Path(rejects_dir))
    rows = _judgments(src)
    report = src.report(len(rows))
    if not rows:
        raise IngestError(src.path, f"no valid judgments: all {src.rows_read} rows rejected, "
                                    f"see {src.rejects_path}")
    columns = ["judgment_id", "query_id", "item_id", "relevance", "query_text", "title"]
    return pd.DataFrame(rows, columns=columns), report


def _products(src: _Source) -> dict[str, str]:
    """item_id -> title from the catalog; a repeated product_uid keeps its first row."""
    uid_col, title_col = src.header.index("product_uid"), src.header.index("product_title")
    lines: dict[str, int] = {}
    titles: dict[str, str] = {}  # insertion order = file order
    for line, fields in src.records:
        try:
            item = _integer(fields[uid_col], "product_uid")
            title = _text(fields[title_col], "product_title")
            if item in titles:
                same = "the same" if titles[item] == title else "a different"
                raise RowError("product_uid", "duplicate_product_uid",
                               f"{item} already on line {lines[item]} with {same} title; kept the first")
        except RowError as bad:
            src.rejects.add(line, bad.field, bad.reason, fields, bad.detail)
            continue
        lines[item], titles[item] = line, title
    return titles


def _judgments(src: _Source) -> list[tuple[str, str, str, float, str, str]]:
    """Valid rows as (judgment_id, query_id, item_id, relevance, raw query, title). Duplicates are
    resolved in file order among valid rows: the first judgment of an id, or of a (query_id, item_id)
    pair, is kept; later ones are rejected with a pointer to the kept line. Without an id column the
    line number is the id; without product_title the title is empty."""
    col = {name: src.header.index(name) for name in JUDGMENT_COLUMNS if name in src.header}
    id_lines: dict[str, int] = {}
    pair_seen: dict[tuple[str, str], tuple[str, int]] = {}
    rows = []
    for line, fields in src.records:
        try:
            jid = _text(fields[col["id"]], "id") if "id" in col else str(line)
            item = _integer(fields[col["product_uid"]], "product_uid")
            title = _text(fields[col["product_title"]], "product_title") if "product_title" in col else ""
            raw_query = fields[col["search_term"]]
            norm = _text(normalize_query(raw_query), "search_term")
            relevance = _relevance(fields[col["relevance"]])
            if jid in id_lines:
                raise RowError("id", "duplicate_id", f"{jid} already on line {id_lines[jid]}; kept the first")
            qid = query_id(raw_query)
            if (qid, item) in pair_seen:
                kept_id, kept_line = pair_seen[qid, item]
                raise RowError(None, "duplicate_pair", f"query {norm!r}, product_uid {item} already judged "
                                                       f"by id {kept_id} on line {kept_line}; kept that one")
        except RowError as bad:
            src.rejects.add(line, bad.field, bad.reason, fields, bad.detail)
            continue
        id_lines[jid] = line
        pair_seen[qid, item] = (jid, line)
        rows.append((jid, qid, item, relevance, raw_query, title))
    return rows


def _text(value: str, field: str) -> str:
    text = value.strip()
    if not text:
        raise RowError(field, "empty_value", f"{field} is empty")
    return text


def _integer(value: str, field: str) -> str:
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise RowError(field, "not_an_integer", f"value {value!r} is not an integer")
    return str(int(text))


def _relevance(value: str) -> float:
    if not _DECIMAL.fullmatch(value.strip()):  # plain decimals only: float() also takes 'nan', 'inf', '1_0'
        raise RowError("relevance", "not_a_number", f"value {value!r} is not a number")
    if not RELEVANCE_MIN <= float(value) <= RELEVANCE_MAX:
        raise RowError("relevance", "out_of_range",
                   f"value {value!r} is outside [{RELEVANCE_MIN:g}, {RELEVANCE_MAX:g}]")
    return float(value)


def _read_source(path: Path, required: tuple[str, ...], encoding: str, rejects_dir: Path) -> _Source:
    """Split a file into records with exact line numbers; structurally broken records are rejected.

    The csv module (strict) is fed one line at a time so each record's lines are known even when a
    quoted field spans lines or is cut off at the end of a truncated file.
    """
    text, used, bad_lines = _decode(path, encoding)
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)
    try:  # the first non-blank row; _decode guarantees there is one
        header = [name.strip() for name in next(row for row in reader if row)]
    except csv.Error as exc:
        raise IngestError(path, f"header is not valid CSV ({exc})", row=reader.line_num) from None
    header_line = reader.line_num
    missing = [name for name in required if name not in header]
    if missing:
        raise IngestError(path, f"required column is missing (expected {', '.join(required)}; "
                                f"header has {', '.join(header)})", row=header_line, field=missing[0])
    src = _Source(path, used, header, [], Rejects(header), rejects_dir / f"{path.stem}.rejects.csv", 0)
    while True:
        consumed.clear()
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            fields, error = None, str(exc)
        if fields == []:  # blank line: not a record
            continue
        src.rows_read += 1
        first, last = reader.line_num - len(consumed) + 1, reader.line_num
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        source = "".join(consumed).rstrip("\r\n")
        bad = next((bad_lines[n] for n in range(first, last + 1) if n in bad_lines), None)
        if bad:
            src.rejects.add(first, None, "invalid_bytes", source, bad)
        elif fields is None:
            src.rejects.add(first, None, "malformed_csv", source, f"{where}: {error} (file truncated?)")
        elif len(fields) != len(header):
            src.rejects.add(first, None, "wrong_field_count", source,
                            f"{where}: expected {len(header)} fields, found {len(fields)}")
        else:
            src.records.append((first, fields))
    if not src.rows_read:
        raise IngestError(path, "has a header but no data rows", row=header_line)
    if not src.records:
        src.rejects.write(src.rejects_path)
        raise IngestError(path, f"no parseable rows: all {src.rows_read} rejected, see {src.rejects_path}")
    return src


def _decode(path: Path, encoding: str) -> tuple[str, str, dict[int, str]]:
    """The file's text, the encoding used, and {line: why} for lines holding undecodable bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(path, f"cannot be read ({exc.strerror})") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[bom:]
    if not data.strip():
        raise IngestError(path, "file is empty")
    used = _guess_encoding(data) if encoding == "auto" else encoding
    try:
        return data.decode(used), used, {}
    except UnicodeDecodeError:
        text = data.decode(used, "surrogateescape")
    bad: dict[int, str] = {}
    offset = bom
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        hit = _ESCAPED_BYTE.search(line)
        if hit:
            at = offset + len(line[: hit.start()].encode(used, "surrogateescape"))
            byte = ord(hit.group()) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
            bad[number] = f"line {number}: byte 0x{byte:02X} at byte offset {at} is not valid {used}"
        offset += len(line.encode(used, "surrogateescape"))
    return text, used, bad


def _guess_encoding(data: bytes) -> str:
    """UTF-8, unless bytes that are not UTF-8 outnumber the valid multi-byte UTF-8 sequences.

    A file with no valid multi-byte sequence at all is plainly ISO-8859-1. Requiring none would
    misread the Kaggle original, which is ISO-8859-1 yet holds a few byte pairs that happen to be
    valid UTF-8 (mojibake such as 0x89 0xDB 0xAA); a UTF-8 file damaged in a few places instead has
    more valid sequences than bad bytes, and its bad rows are rejected.
    """
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    valid = len(_UTF8_MULTIBYTE.findall(data))
    invalid = data.decode("utf-8", "replace").count("\ufffd") - data.count(b"\xef\xbf\xbd")
    return "iso-8859-1" if invalid > valid else "utf-8"
