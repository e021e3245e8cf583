"""The encoder on Ray Data: `Encoder.encode`'s vectors, computed by a pool of actors.

A producer run with the Ray engine encodes the catalog (pipelines.retrieval.dense.item_embeddings),
its queries' searches (DenseChannel.search_chunks) and the teacher's query features
(pipelines.retrieval.pair_features) through a RayEncoder. It is an Encoder (a subclass, not a wrapper),
so everything that reads an encoder reads it unchanged: `fingerprint()` is the weights', so embedding
caches and indexes keep their keys; `dataclasses.replace(encoder, bf16=False)` (the teacher's float32
query encoder) keeps it on Ray. Its vectors are Encoder.encode's bit for bit: the driver plans the
length-sorted batches `encode` would run (length_batches) and each actor runs each of them as one
forward (pipelines.ray_data). Serving never makes one: a request's query is encoded in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines.modeling.encoder import PROGRESS_FROM, Encoder, length_batches
from pipelines.ray_data import Columns, RayDataConfig, run_batches


class EmbedWorker:
    """A Ray Data actor's encoder: the weights `encode` runs (the bfloat16 copy where bf16 is on),
    the tokenizer and max_length; one planned batch per call."""

    def __init__(self, payload: tuple):
        model, tokenizer, max_length = payload
        self.encoder = Encoder(model, tokenizer, max_length=max_length)  # runs `model` as given

    def __call__(self, batch: Columns) -> Columns:
        with torch.inference_mode():
            return {"vector": self.encoder.forward(batch["text"].tolist()).numpy()}


@dataclass
class RayEncoder(Encoder):
    """An Encoder whose passes of `ray.min_rows` texts or more run on a Ray Data actor pool."""

    ray: RayDataConfig = field(default_factory=RayDataConfig)

    @classmethod
    def of(cls, encoder: Encoder, ray: RayDataConfig) -> RayEncoder:
        """The same weights and settings as `encoder`, encoding on the pool."""
        return cls(encoder.model, encoder.tokenizer, encoder.path, encoder.max_length, encoder.bf16, ray=ray)

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
        """Encoder.encode's vectors: one chunk of every text."""
        texts = list(texts)
        return self.encode_chunks(texts, max(len(texts), 1), batch_size, progress)

    def encode_chunks(self, texts: Sequence[str], chunk: int, batch_size: int = 256,
                      progress: bool | None = None) -> np.ndarray:
        """`Encoder.encode` of each run of `chunk` texts, concatenated (what chunked searches encode), in
        one pass on the pool: one pool start for all the chunks."""
        texts = list(texts)
        if not self.ray.runs(len(texts)):
            parts = [Encoder.encode(self, texts[i:i + chunk], batch_size, progress)
                     for i in range(0, len(texts), chunk)]
            return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        show = len(texts) >= PROGRESS_FROM if progress is None else progress
        plan = length_batches([len(t) for t in texts], batch_size, chunk)
        payload = (self.inference_model(), self.tokenizer, self.max_length)
        return run_batches({"text": texts}, plan, EmbedWorker, payload, self.ray, "encoding (Ray)", show)["vector"]
