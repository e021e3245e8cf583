"""One loss per task of the ranker (the trainer sums them with named weights).

- relevance: CORAL's loss, a binary cross-entropy per threshold on the cumulative targets
  1[grade >= k], optionally weighted per row (human grades may count more than the teacher's);
- click / order: the position-based model. A logged impression at position p was examined with
  probability e_p (the click simulator's examination curve, known here; pipelines.simulation), and
  P(event at p) = e_p * P(event | examined). The cross-entropy is taken on that product, so the
  heads learn P(event | examined): the item's own attractiveness, comparable across positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.ranking.model import GRADES

EPS = 1e-6


def ordinal_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over rows of the summed BCE over thresholds; targets (B, GRADES-1) are
    P(grade >= k): 0/1 for a human grade (`cumulative_targets`), soft for the teacher's."""
    per_row = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").sum(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=EPS)


def cumulative_targets(grade: torch.Tensor) -> torch.Tensor:
    """1[grade >= k] for k = 1..GRADES-1: (B,) grades 0..GRADES-1 -> (B, GRADES-1)."""
    levels = torch.arange(1, GRADES, device=grade.device)
    return (grade.unsqueeze(-1) >= levels).float()


def binomial_event_loss(p_event: torch.Tensor, events: torch.Tensor, trials: torch.Tensor,
                        examination: torch.Tensor) -> torch.Tensor:
    """BCE of P(event) = examination * p_event (p_event: P(event | examined)) on aggregated counts:
    `events` of `trials` impressions at one position, -[k log(e p) + (n - k) log(1 - e p)] summed
    and divided by the batch's impressions (rows never shown weigh 0): one BCE term per impression,
    one row per pair."""
    p = (examination * p_event).clamp(EPS, 1 - EPS)
    nll = -(events * torch.log(p) + (trials - events) * torch.log1p(-p))
    return nll.sum() / trials.sum().clamp(min=1.0)
