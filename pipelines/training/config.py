"""Training arguments, in one dataclass per concern (Tevatron's split: arguments / data / model / trainer).

Every field has a default that is the full run; `quick()` is the test/CI profile. The whole config
goes into the model's lineage, so a version id changes when any of it does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipelines.modeling.encoder import bf16_is_fast
from pipelines.settings import available_cores
from pipelines.workspace import ConfigError

TARGETS = ("unified", "engagement", "human", "teacher")


@dataclass(frozen=True)
class TargetConfig:
    """How candidates are scored into a soft target (pipelines.training.target documents the formula)."""

    kind: str = field(default="unified", metadata={"help": "unified | engagement | human | teacher (ablations)"})
    w_teacher: float = 1.0  # graded relevance / 3: calibrated teacher expected grade, or the human grade
    human_override: bool = True  # where a human judged the pair, its grade replaces the teacher's
    w_prior: float = 0.3  # retrieval agreement (RRF score normalized to 0..1)
    w_engagement: float = 0.5  # gated, position-debiased 30-day CTR
    temperature: float = 0.1  # softmax temperature over a list's min-max scaled utilities

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise ConfigError(f"target {self.kind!r}: expected one of {', '.join(TARGETS)}")


@dataclass(frozen=True)
class DataConfig:
    """Which candidate lists the trainer sees."""

    list_size: int = 16  # candidates per query per step (listwise KL is over these)
    top_share: float = 0.25  # share of a list taken from the target's best; the rest sampled (hard negatives)
    max_queries: int | None = field(default=None, metadata={"help": "Cap on training queries (seeded sample)"})
    max_candidates: int = 200  # per query, best by retrieval agreement, before sampling lists


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loop."""

    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = field(default=1, metadata={"help": "Passes over the training queries"})
    queries_per_batch: int = 16
    lr: float = 3e-5
    warmup: float = 0.1  # share of steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    tau: float = 0.05  # score temperature: cosine / tau are the student's logits
    in_batch_weight: float = 0.5  # weight of the in-batch-negative contrastive term
    max_length: int = 32
    grad_clip: float = 1.0
    freeze_embeddings: bool = True  # word embeddings fixed: half the weights, so a cheaper backward + AdamW
    threads: int = field(default_factory=available_cores, metadata={"help": "torch threads (default: all cores)"})
    bf16: bool = field(default_factory=bf16_is_fast)  # autocast where the CPU has native bfloat16
    seed: int = field(default=0, metadata={"help": "Seed of sampling, initialization and order"})
    log_every: int = 20

    @classmethod
    def quick(cls, kind: str = "unified", seed: int = 0) -> TrainConfig:
        """Seconds, not minutes: a few dozen queries, short lists, one epoch."""
        return cls(target=TargetConfig(kind=kind), data=DataConfig(list_size=8, max_queries=48),
                   queries_per_batch=8, seed=seed, log_every=2)

    def to_dict(self) -> dict:
        return asdict(self)
