"""The multi-task ranker: a shared bottom (MLP over the pair's features) and one small head per task.

- OrdinalHead: cumulative probabilities P(grade >= k), k = 1..GRADES-1, over the 0..3 grade scale.
  CORAL's shape (one shared score s, one threshold per k: logit_k = s - t_k) with the thresholds
  ordered by construction (t_1 = c, t_k = t_{k-1} + softplus(d_k)), so P(grade >= k) never
  increases with k for ANY weights, not only at CORAL's optimum. Written here rather than taken
  from coral-pytorch: that layer leaves the biases free (rank consistency is a property of its
  optimum, not of every step), and it is 20 lines.
- EngagementHead: one logit of P(click | examined) and one of P(order | click); P(order | examined)
  is their product (`engagement_probabilities`), so it never exceeds P(click | examined), also for
  items the logs never showed (a free order head extrapolated to P(order) > P(click) there and the
  value model ranked those first). Training multiplies by the position's examination probability
  (losses.py), so the heads learn the item's attractiveness, not where the logged ranker put it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

GRADES = 4  # ordinal grades 0..3 (pipelines.teacher.grades)


@dataclass(frozen=True)
class RankerConfig:
    """Shape of the network; the input width comes from the feature list at build time."""

    hidden: tuple[int, ...] = field(default=(128, 64), metadata={"help": "Widths of the shared bottom's layers"})
    dropout: float = field(default=0.1, metadata={"help": "Dropout after each hidden layer"})


class SharedBottom(nn.Module):
    """MLP shared by every head: features (B, F) -> representation (B, H)."""

    def __init__(self, n_features: int, config: RankerConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OrdinalHead(nn.Module):
    """Logits of P(grade >= k) for k = 1..GRADES-1, non-increasing in k by construction."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)  # the one shared score (CORAL's weight vector)
        self.first = nn.Parameter(torch.zeros(1))  # t_1
        self.gaps = nn.Parameter(torch.zeros(GRADES - 2))  # softplus(gaps) = t_k - t_{k-1} > 0

    def thresholds(self) -> torch.Tensor:
        return torch.cumsum(torch.cat([self.first, F.softplus(self.gaps)]), dim=0)  # (GRADES-1,)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(h) - self.thresholds()  # (B, GRADES-1)


class EngagementHead(nn.Module):
    """One engagement logit: P(click | examined), or P(order | click)."""

    def __init__(self, width: int):
        super().__init__()
        self.out = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h).squeeze(-1)  # (B,)


class Ranker(nn.Module):
    """Shared bottom + ordinal relevance head + click and order heads."""

    def __init__(self, n_features: int, config: RankerConfig | None = None):
        super().__init__()
        self.config = config or RankerConfig()
        self.bottom = SharedBottom(n_features, self.config)
        self.relevance = OrdinalHead(self.bottom.width)
        self.click = EngagementHead(self.bottom.width)
        self.order = EngagementHead(self.bottom.width)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)
        return {"relevance": self.relevance(h), "click": self.click(h), "order": self.order(h)}


def relevance_probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cumulative P(grade >= k), (B, GRADES-1); expected grade = their sum, (B,))."""
    cumulative = torch.sigmoid(logits)
    return cumulative, cumulative.sum(dim=-1)


def engagement_probabilities(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(click | examined), P(order | examined) = P(click | examined) * P(order | click)), (B,) each."""
    p_click = torch.sigmoid(outputs["click"])
    return p_click, p_click * torch.sigmoid(outputs["order"])
