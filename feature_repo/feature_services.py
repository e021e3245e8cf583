"""Feature services, named for their reader; built from the signal registry so a new signal joins."""

from feast import FeatureService

from pipelines.signals.spec import signals_in

import signals

REGISTERED = signals_in(vars(signals))

# Everything a retriever's training set needs: every view keyed by queries and items in full, with
# the views derived from it (user views need rows that carry a user: `engagement` below).
training = FeatureService(
    name="training",
    features=[view for s in REGISTERED if s.pair_keyed for view in s.views()],
    description="Point-in-time training sets: all (query, item) signals and the gated engagement.",
)

# What the retriever reads per returned (query, item): a small projection of each signal.
retriever_online = FeatureService(
    name="retriever_online",
    features=[view for s in REGISTERED for view in s.online_views()],
    description="Online features the retriever blends into its score, one batched lookup.",
)

# What the ranking stage reads per candidate pair: point-in-time for its training sets...
ranking = FeatureService(
    name="ranking",
    features=[view for s in REGISTERED for view in s.ranker_views()],
    description="Point-in-time training sets of the ranker: each signal's ranker features.",
)

# What the pCTR / pCVR models read beyond the ranker's features, point-in-time at each impression
# (rows carry user_id and brand)...
engagement = FeatureService(
    name="engagement",
    features=[view for s in REGISTERED for view in s.engagement_views()],
    description="Point-in-time user features of the engagement models, as of each impression.",
)

# ...and both models' features online, for all N candidates of a request and its user in one lookup.
ranker_online = FeatureService(
    name="ranker_online",
    features=[view for s in REGISTERED for view in s.search_views()],
    description="Online features of /search: the ranker's and the engagement models', one batched lookup.",
)
