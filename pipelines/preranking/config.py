"""Settings of the pre-ranking stage (apart from the torch code, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.workspace import ConfigError

# negative groups, hardest first (data.py says where each comes from); the strong model trains on HARD
GROUPS = ("exposed", "ranking", "retrieval", "random")
HARD = ("exposed", "ranking")
BAND_GROUPS = ("exposed", "ranking", "retrieval")  # the groups a routed band can hold (random items: never)
TRAINING = ("uniform", "hap")  # one pooled loss | a loss term per negative group, gradient-balanced


@dataclass(frozen=True)
class PrerankDataConfig:
    """What the pre-ranker's training table holds."""

    ranker: str = field(default="ranker", metadata={
        "help": "Trained ranker whose candidates and ranks define the groups"})
    n_retrieve: int = field(default=1000, metadata={"help": "Candidates retrieved per query (N_r)"})
    n_keep: int = field(default=200, metadata={"help": "Candidates the pre-ranker passes to the ranker (N)"})
    ranking_cut: int = field(default=50, metadata={"help": "Ranker ranks below this make ranking negatives"})
    retrieval_sample: int = field(default=150, metadata={"help": "Retrieval negatives kept per query (of ranks > N)"})
    random_sample: int = field(default=30, metadata={"help": "Random catalog negatives per query"})
    queries: int = field(default=2000, metadata={"help": "Training queries sampled (seeded)"})
    quick: bool = field(default=False, metadata={"help": "The quick sample of training queries, for tests and CI"})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and the click simulator's world"})

    def __post_init__(self):
        if not 0 < self.n_keep < self.n_retrieve:
            raise ConfigError(f"n_keep {self.n_keep} must lie between 0 and n_retrieve {self.n_retrieve}")


@dataclass(frozen=True)
class PrerankTrainConfig:
    """How the light and strong models are trained."""

    epochs: int = field(default=6, metadata={"help": "Passes over the training queries"})
    queries_per_batch: int = field(default=32, metadata={"help": "Queries per step (their rows form the lists)"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate"})
    temperature: float = field(default=0.5, metadata={"help": "InfoNCE temperature"})
    band_budget: float = field(default=0.3, metadata={
        "help": "Routing budget whose band is HAP's routed training set for the strong model"})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and batches"})

