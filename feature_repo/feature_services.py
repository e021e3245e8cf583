"""Feature services, named for their reader; built from the signal registry so a new signal joins."""

from feast import FeatureService

from pipelines.signals.spec import signals_in

import signals
from on_demand_features import gated_engagement

REGISTERED = signals_in(vars(signals))

# Everything a training set needs: every registered view in full, plus the gate.
training = FeatureService(
    name="training",
    features=[s.view for s in REGISTERED] + [gated_engagement],
    description="Point-in-time training sets: all signals and the gated engagement.",
)

# What the retriever reads per returned (query, item): a small projection of each signal.
retriever_online = FeatureService(
    name="retriever_online",
    features=[s.view[list(s.online_features)] for s in REGISTERED if s.online_features]
    + [gated_engagement[["is_relevant", "gated_ctr_30d"]]],
    description="Online features the retriever blends into its score, one batched lookup.",
)
