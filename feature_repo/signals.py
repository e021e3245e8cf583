"""The signal registry: every Signal bound in this module is produced, applied and served.

A signal is one module (its FeatureView, its producer and `SIGNAL = Signal(...)`; see
examples/signals/title_overlap.py and README "Adding a signal"), registered here with one line:

    from my_signal import SIGNAL as my_signal

Order matters only for speed: the teacher computes the candidate table the prior then reuses.
"""

from pipelines.signals.teacher_labels import SIGNAL as teacher_labels
from pipelines.signals.retrieval_prior import SIGNAL as retrieval_prior
from pipelines.signals.engagement_stats import SIGNAL as engagement_stats
from pipelines.signals.item_profile import SIGNAL as item_profile
from pipelines.signals.query_profile import SIGNAL as query_profile
from pipelines.signals.user_stats import SIGNAL as user_stats
from pipelines.signals.user_brand import SIGNAL as user_brand
