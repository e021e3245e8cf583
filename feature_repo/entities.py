"""Entities: what a feature is about. Pair views are keyed by both, (query_id, item_id).

Declared in pipelines/signals/entities.py beside the signals that key on them; registered here."""

from pipelines.signals.entities import item, query

__all__ = ["item", "query"]
