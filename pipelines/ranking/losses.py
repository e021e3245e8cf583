"""One loss per task of the ranker (the trainer sums them with named weights).

- relevance: CORAL's loss, a binary cross-entropy per threshold on the cumulative targets
  1[grade >= k], optionally weighted per row (human grades may count more than the teacher's);
- click / order: the position-based model. A logged impression at position p was examined with
  probability e_p (the click simulator's examination curve, known here; pipelines.simulation), and
  P(event at p) = e_p * sigmoid(logit). The cross-entropy is taken on that product, so the head
  learns P(event | examined): the item's own attractiveness, comparable across positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.ranking.model import GRADES

EPS = 1e-6


def ordinal_loss(logits: torch.Tensor, grade: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of the summed BCE over thresholds; grade is (B,) in 0..GRADES-1."""
    levels = torch.arange(1, GRADES, device=grade.device)
    targets = (grade.unsqueeze(-1) >= levels).to(logits.dtype)  # (B, GRADES-1)
    per_row = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=EPS)


def examined_event_loss(logit: torch.Tensor, event: torch.Tensor, examination: torch.Tensor) -> torch.Tensor:
    """BCE of P(event) = examination * sigmoid(logit) against the logged 0/1 event."""
    p = (examination * torch.sigmoid(logit)).clamp(EPS, 1 - EPS)
    return F.binary_cross_entropy(p, event.to(p.dtype))
