"""Feature services, named for their reader; built from the signal registry so a new signal joins."""

from feast import FeatureService

from pipelines.signals.spec import signals_in

import signals

REGISTERED = signals_in(vars(signals))

# Everything a training set needs: every registered view in full, with the views derived from it.
training = FeatureService(
    name="training",
    features=[view for s in REGISTERED for view in s.views()],
    description="Point-in-time training sets: all signals and the gated engagement.",
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

# ...and the same features online, for all N candidates of a request in one batched lookup.
ranker_online = FeatureService(
    name="ranker_online",
    features=[view for s in REGISTERED for view in s.ranker_views()],
    description="Online features of the ranker's candidates, one batched lookup per /search request.",
)
