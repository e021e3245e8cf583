"""A producer's table checked against its feature view before anything is written.

The view is the one definition: types come from its Fields, ranges from their `min` / `max` tags
(`pipelines.signals.spec.bounds`). The rules:

- join keys: a non-empty string on every row. Null, NaN, None and "" are refused: a row nobody can
  look up, which Feast would otherwise store under a key like "nan".
- event_timestamp, created_timestamp: on every row, a timestamp with a time zone (converted to UTC).
  Naive stamps are refused, unlike the lake, which reads a naive time in a file as UTC: every
  producer is handed ctx.as_of in UTC, so a naive stamp was made some other way (datetime.now() is
  local time), and guessing its zone would shift point-in-time joins by hours. Anything that is not
  a timestamp (text, epoch numbers) is refused too.
- features: of the declared type (numbers for numeric features, whole numbers for integer ones,
  strings for string ones), finite, and inside the declared range where one is declared. A feature
  may be null (NaN, None): missing stays missing, unknown is not 0.

A violation raises SignalTableError naming the signal, the column, how many rows break the rule and
the first of them (its position in the producer's frame, its keys and the offending value).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import pandas as pd
from feast import FeatureView
from feast.types import Float32, Float64, Int32, Int64, String

from pipelines.signals.spec import TIMESTAMPS, declared_bounds

INTEGER, FLOAT = (Int32, Int64), (Float32, Float64)
# What pandas infers for an object column whose present values all are of a kind
_ALL_OF = {str: ("empty", "string"), numbers.Real: ("empty", "integer", "floating", "mixed-integer-float")}


class SignalTableError(ValueError):
    """A producer returned a table that does not fit its feature view."""


def check_frame(view: FeatureView, df: pd.DataFrame, join_keys: list[str]) -> None:
    """Columns, keys, timestamps and feature types: everything needed to cast the frame to the view."""
    missing = [c for c in (*join_keys, *TIMESTAMPS, *(f.name for f in view.features)) if c not in df.columns]
    if missing:
        raise SignalTableError(f"signal {view.name!r}: producer output lacks columns {missing}")
    fail = _reporter(view, df, join_keys)
    for key in join_keys:
        col = df[key]
        fail(key, col.isna(), "null (NaN or None)")
        fail(key, _not(col, str), "not strings")
        fail(key, col.to_numpy() == "", "empty")
    for name in TIMESTAMPS:
        col = df[name]
        fail(name, col.isna(), "null")
        kinds = _stamp_kinds(col)
        fail(name, kinds == "garbage", "not timestamps")
        fail(name, kinds == "naive", "naive (no time zone; stamp rows in UTC, as ctx.as_of is)")
    for f in view.features:
        col = df[f.name]
        if f.dtype == String:
            fail(f.name, _not(col, str), "not strings")
        elif f.dtype in INTEGER + FLOAT:
            fail(f.name, _not(col, numbers.Real), "not numbers")
            values = _floats(col)
            fail(f.name, np.isinf(values), "infinite")
            if f.dtype in INTEGER:
                fail(f.name, np.isfinite(values) & (values != np.round(values)), "not whole numbers")


def check_ranges(view: FeatureView, df: pd.DataFrame, join_keys: list[str]) -> None:
    """Every present value of a feature inside its declared range (call after check_frame)."""
    fail = _reporter(view, df, join_keys)
    for f in view.features:
        lo_hi = declared_bounds(f)
        if lo_hi is None:
            continue
        lo, hi = lo_hi
        values = _floats(df[f.name])
        with np.errstate(invalid="ignore"):
            fail(f.name, (values < lo) | (values > hi), f"outside {_interval(lo, hi)}")


def _reporter(view: FeatureView, df: pd.DataFrame, join_keys: list[str]) -> Callable[..., None]:
    """fail(column, mask, what): raise naming the signal, column, count and the first bad row."""
    def fail(column: str, mask, what: str) -> None:
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if not len(rows):
            return
        i = int(rows[0])
        shown = ", ".join(f"{c}: {_show(df[c].iloc[i])}" for c in dict.fromkeys([*join_keys, column]))
        raise SignalTableError(f"signal {view.name!r}, column {column!r}: {len(rows):,} "
                               f"row{'s' if len(rows) != 1 else ''} {what}, e.g. row {i}: {{{shown}}}")
    return fail


def _not(col: pd.Series, kind: type) -> np.ndarray:
    """Present values that are not instances of `kind` (checked one by one only for object columns)."""
    if not pd.api.types.is_object_dtype(col.dtype):
        fits = (pd.api.types.is_string_dtype(col.dtype) if kind is str
                else pd.api.types.is_numeric_dtype(col.dtype))
        return np.zeros(len(col), bool) if fits else col.notna().to_numpy()
    if pd.api.types.infer_dtype(col, skipna=True) in _ALL_OF[kind]:  # the fast path, in C
        return np.zeros(len(col), bool)
    fits = np.array([isinstance(v, kind) and not isinstance(v, bool) for v in col], dtype=bool)
    return ~fits & col.notna().to_numpy()


def _floats(col: pd.Series) -> np.ndarray:
    """A numeric column as float64, null as NaN (anything not a number as NaN too)."""
    if pd.api.types.is_object_dtype(col.dtype):
        col = pd.to_numeric(col, errors="coerce")
    return col.to_numpy(dtype="float64", na_value=np.nan)


def _stamp_kinds(col: pd.Series) -> np.ndarray:
    """Per row: "ok" (a time-zone-aware timestamp), "naive", "garbage", or "null"."""
    dtype = col.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return np.where(col.isna(), "null", "ok")
    if pd.api.types.is_datetime64_dtype(dtype):
        return np.where(col.isna(), "null", "naive")
    if not pd.api.types.is_object_dtype(dtype) and not pd.api.types.is_string_dtype(dtype):
        return np.where(col.isna(), "null", "garbage")  # numbers are not times: epoch seconds or ns?
    kinds = {v: _stamp_kind(v) for v in pd.unique(col.dropna())}  # few distinct stamps per table
    return np.array([kinds.get(v, "null") if not pd.isna(v) else "null" for v in col], dtype=object)


def _stamp_kind(value) -> str:
    if isinstance(value, numbers.Number):  # bools too
        return "garbage"
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return "garbage"
    if pd.isna(ts):
        return "garbage"
    return "naive" if ts.tzinfo is None else "ok"


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g}]" if np.isfinite(hi) else f"[{lo:g}, inf)"


def _show(value) -> str:
    """A value as a reader would type it: strings quoted, numpy scalars plain."""
    return repr(str(value)) if isinstance(value, str) else repr(value) if value is None else str(value)
