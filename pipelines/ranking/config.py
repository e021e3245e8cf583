"""Settings of the ranking stage (kept apart from the code that needs torch, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.workspace import ConfigError

# what search:RANKER@VARIANT sorts by: the value model (default), expected relevance alone, the
# engagement heads alone (P(click) + 2 P(order)), the LambdaMART baseline trained beside the ranker
VARIANTS = ("value", "relevance", "engagement", "lambdamart")
# the relevance label of a candidate no human judged (RankerTrainConfig.unjudged)
UNJUDGED = ("zero", "teacher")


@dataclass(frozen=True)
class RankerDataConfig:
    """What the training table holds."""

    candidates: str = field(default="rrf:unified", metadata={"help": "Candidate model (rrf:VERSION)"})
    n: int = field(default=200, metadata={"help": "Candidates per query"})
    label_days: int = field(default=14, metadata={"help": "Days of future traffic per engagement window"})
    quick: bool = field(default=False, metadata={"help": "A sample of training queries, for tests and CI"})
    seed: int = field(default=0, metadata={"help": "World seed of the click simulator (the store's)"})


@dataclass(frozen=True)
class RankerTrainConfig:
    """How the ranker is trained."""

    epochs: int = field(default=4, metadata={"help": "Passes over the fit rows"})
    batch_size: int = field(default=2048, metadata={"help": "Rows per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    unjudged: str = field(default="zero", metadata={
        "help": "Relevance label of candidates no human judged: zero (grade 0) | teacher (its grade distribution)"})
    teacher_weight: float = field(default=0.5, metadata={"help": "Relevance-loss weight of unjudged rows (human: 1)"})
    engagement_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the click and order losses"})
    drop_share: float = field(default=0.5, metadata={"help": "Share of queries trained without query-keyed features"})
    ndcg_tolerance: float = field(default=0.01, metadata={"help": "Calib NDCG@10 the value weights may give up"})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, batches and feature dropping"})

    def __post_init__(self):
        if self.unjudged not in UNJUDGED:
            raise ConfigError(f"unjudged label {self.unjudged!r}: expected one of {' | '.join(UNJUDGED)}")
