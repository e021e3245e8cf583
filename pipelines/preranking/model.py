"""The two pre-ranking models: one score per candidate from an MLP trunk (the shared parameters whose
gradients the groups fight over) and a linear head.

- light: the LIGHT retrieval columns (data.py) through a narrow trunk, cheap enough for every
  retrieved candidate;
- strong: the ranker's features (request-time pair features + store features) through the ranker's
  trunk shape, run only on the candidates routing sends it (route.py).
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.ranking.model import RankerConfig, SharedBottom

SHAPES = {"light": RankerConfig(hidden=(32, 16), dropout=0.0), "strong": RankerConfig(hidden=(128, 64), dropout=0.1)}


class Scorer(nn.Module):
    """features (B, F) -> relevance logit (B,)."""

    def __init__(self, n_features: int, config: RankerConfig):
        super().__init__()
        self.config = config
        self.trunk = SharedBottom(n_features, config)
        self.head = nn.Linear(self.trunk.width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)
