"""On-demand views: derived at read time from other views, identically offline and online."""

from feast import Field
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float32, Int64

from pipelines.features.gate import gated_engagement as gate

from features import engagement_stats_fv, teacher_labels_fv

# Engagement counted only where the teacher says relevant (the one gate: pipelines/features/gate.py).
gated_engagement = OnDemandFeatureView(
    name="gated_engagement",
    sources=[
        teacher_labels_fv[["grade_p2", "grade_p3"]],
        engagement_stats_fv[["clicks_30d", "orders_30d", "ctr_debiased_30d"]],
    ],
    # Field descriptions stay off: Feast 0.67 compares them with the inferred (empty) ones.
    schema=[
        Field(name="is_relevant", dtype=Int64),
        Field(name="gated_clicks_30d", dtype=Float32),
        Field(name="gated_orders_30d", dtype=Float32),
        Field(name="gated_ctr_30d", dtype=Float32),
    ],
    mode="pandas",
    udf=gate,
    # Feast re-creates UDFs from this text at read time; importing keeps the one definition.
    udf_string="from pipelines.features.gate import gated_engagement",
    description=(
        "Engagement kept only where the teacher labels the pair relevant: is_relevant (1 if"
        " P(grade >= 2) = grade_p2 + grade_p3 >= 0.7), gated_clicks_30d, gated_orders_30d, gated_ctr_30d."
    ),
)
