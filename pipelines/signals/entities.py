"""Entities: what a feature is about. Pair views are keyed by both, (query_id, item_id).

Declared here, beside the producers that fill them, so a signal module (view + producer) needs
nothing from feature_repo/; feature_repo/entities.py registers them."""

from feast import Entity, ValueType

# A search query, keyed by pipelines.text.query_id (hash of the normalized text).
query = Entity(
    name="query",
    join_keys=["query_id"],
    value_type=ValueType.STRING,
    description="A search query; query_id = first 16 hex of sha256(normalized text), pipelines.text.query_id.",
)

# A catalog item, keyed by the catalog's own id (Home Depot: product_uid).
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalog item; item_id is the catalog's product id.",
)

# The (query, item) pair key: Feast forms it from both entities of a pair view.
PAIR = [query, item]
