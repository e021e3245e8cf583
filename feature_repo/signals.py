"""The signal registry: every Signal bound in this module is produced, applied and served.

To add a signal, write one file next to this one (a producer and its FeatureView exported as
SIGNAL, see README "Adding a signal") and register it here with one line:

    from my_signal import SIGNAL as my_signal
"""

from pipelines.signals.spec import Signal

from features import (
    engagement_stats_fv,
    item_profile_fv,
    query_profile_fv,
    retrieval_prior_fv,
    teacher_labels_fv,
)

# Order matters only for speed: the teacher computes the candidate table the prior then reuses.
teacher_labels = Signal(
    teacher_labels_fv,
    producer="pipelines.signals.teacher:teacher_labels",
    online_features=("expected_grade", "confidence"),
)
retrieval_prior = Signal(
    retrieval_prior_fv,
    producer="pipelines.signals.prior:retrieval_prior",
    online_features=("fusion_score", "agreement"),
)
engagement_stats = Signal(
    engagement_stats_fv,
    producer="pipelines.signals.engagement:engagement_stats",
    online_features=("clicks_30d", "ctr_debiased_30d"),
)
item_profile = Signal(
    item_profile_fv,
    producer="pipelines.signals.profiles:item_profile",
    online_features=("title", "popularity"),
)
query_profile = Signal(
    query_profile_fv,
    producer="pipelines.signals.profiles:query_profile",
    online_features=("frequency",),
)
