"""The encoder's bfloat16 inference copy: close to float32, and never stale after the weights change."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.modeling.encoder import Encoder

TEXTS = ["cordless drill 18 volt", "outdoor patio furniture cover", "2x4 lumber",
         "Husky 52 in. 10-Drawer Mobile Workbench with Solid Wood Top, Black"]


def test_bf16_vectors_match_float32_and_follow_weight_updates():
    encoder = Encoder.load(bf16=True)
    fp32 = Encoder(encoder.model, encoder.tokenizer, bf16=False).encode(TEXTS)
    bf16 = encoder.encode(TEXTS)
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert ((bf16 * fp32).sum(1) > 0.999).all()
    assert next(encoder.model.parameters()).dtype == torch.float32  # the trainable weights stay float32
    with torch.no_grad():  # what an optimizer step does: update in place
        for p in encoder.model.encoder.layer[0].parameters():
            p.mul_(0.5)
    moved = encoder.encode(TEXTS)
    assert not np.allclose(moved, bf16, atol=1e-3)  # the copy was remade from the new weights
    assert ((moved * Encoder(encoder.model, encoder.tokenizer, bf16=False).encode(TEXTS)).sum(1) > 0.999).all()
