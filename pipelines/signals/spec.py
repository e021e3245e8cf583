"""What a signal is: a feature view plus the function that produces its table.

A platform team adds a signal by writing one file that defines a FeatureView and a producer and
exports them as a `Signal`, then registering it with one line in feature_repo/signals.py.
Apply, materialize, `signals build`, dataset build and both FeatureServices discover it from
there; no core code changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from feast import FeatureView

from pipelines.lake import Lake


@dataclass(frozen=True)
class SignalContext:
    """What a producer may read: the lake, the as-of time its rows are stamped with, a seed."""

    lake: Lake
    as_of: pd.Timestamp
    seed: int = 0
    quick: bool = False
    work_dir: Path | None = None  # scratch space for producers that cache models or indexes


Producer = Callable[[SignalContext], pd.DataFrame]


@dataclass(frozen=True)
class Signal:
    """A feature view and its producer.

    online_features: the features the `retriever_online` service reads; empty keeps the signal
    offline-only (training sets still get every feature)."""

    view: FeatureView
    producer: Producer | str  # a function, or "module:function" imported on first use
    online_features: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.view.name

    def produce(self, ctx: SignalContext) -> pd.DataFrame:
        fn = self.producer
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(ctx)


def signals_in(namespace: dict) -> list[Signal]:
    """Every Signal bound in a module namespace, in definition order (the registry)."""
    return [v for v in namespace.values() if isinstance(v, Signal)]
