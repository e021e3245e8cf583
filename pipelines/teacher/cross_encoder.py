"""Stage 2 of the teacher: a MiniLM-L6 cross-encoder with an ordinal (CORAL) head.

The query and the title go through the transformer together ("[CLS] query [SEP] title [SEP]"), so
every query word attends to every title word: this is what the bi-encoder and BM25 cannot do, and
why it is the expensive stage. Weights start from all-MiniLM-L6-v2 (pipelines.modeling.encoder.
minilm_dir), pooled by the mean over tokens as that model was trained.

Head: CORAL-style cumulative link (Cao, Mirjalili & Raschka 2020). One relevance score per pair,
s = w . pooled, and three ordered thresholds t1 < t2 < t3:

    P(grade >= k) = sigmoid(s - t_k),  k = 1, 2, 3

Loss: binary cross-entropy summed over the three "grade >= k" questions. Why this over a 4-way
softmax: grades are ordered, and the cumulative form uses that (an "exact match" is also at least
"relevant"), needs 384 + 3 parameters, and gives one scalar score that orders pairs the same way
for every threshold, so ranking by s, by expected grade or by P(relevant) agree. The thresholds are
kept ordered by construction (t1 + cumulative softplus gaps), so the four grade probabilities are
never negative. They start at the training grades' base rates, so step 0 predicts the prior.

CPU budget (measured here, 2 shared cores, ~33-token pairs): fp32 training ~28 ms a pair on one
thread and ~90 ms on two (the second thread loses more to synchronisation with a busy neighbour
than it gains), so training and inference pin one thread and restore the caller's setting after.
bfloat16 autocast where the CPU has it natively (AVX512-BF16/AMX) halves training time (~12 ms a
pair) and cuts inference from ~9 to ~3-4 ms a pair; weights and the loss stay float32. Where it is
emulated (AVX2-only CPUs) it is ~12x slower, so it is on only where native (bf16_is_fast).
Word embeddings are frozen (half the weights: less optimizer work, and ~20k pairs are too few to
move a 30k-word vocabulary usefully).

Train with `train_cross_encoder(queries, titles, grades, weights, config, out_dir)`; load a saved
model with `CrossEncoder.load(out_dir)` (an HF model directory plus head.pt and train_config.json).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from pipelines.atomic import atomic_path, write_json
from pipelines.modeling.encoder import bf16_is_fast, length_batches, mean_pool, offline_transformers
from pipelines.ray_data import Columns, RayDataConfig, run_batches
from pipelines.settings import available_cores
from pipelines.teacher.grades import GRADES, from_cumulative


@dataclass
class CrossEncoderConfig:
    """Stage 2 training; `quick()` is the test profile."""

    init_dir: str | None = field(default=None,
                                 metadata={"help": "HF dir to start from; None = packaged MiniLM-L6"})
    max_length: int = field(default=48, metadata={"help": "tokens of query + title; HD pairs average ~30"})
    batch_size: int = field(default=32, metadata={"help": "pairs per optimizer step"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the (capped) training pairs"})
    max_train_pairs: int = field(default=20_000, metadata={"help": "cap on training pairs (CPU time budget)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the transformer"})
    head_lr: float = field(default=2e-3, metadata={"help": "learning rate of the ordinal head"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay (not on biases/LayerNorm)"})
    warmup: float = field(default=0.06, metadata={"help": "share of steps with linear warm-up"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a share of peak (linear decay)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the pooled vector"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm"})
    group_batches: int = field(default=50,
                               metadata={"help": "batches per length-sorted group (less padding)"})
    eval_batch_size: int = field(default=128, metadata={"help": "pairs per forward at inference"})
    log_every: int = field(default=50, metadata={"help": "steps between loss lines"})
    bf16: bool = field(default_factory=bf16_is_fast,
                       metadata={"help": "bfloat16 autocast (default where native: ~2x train, ~3x infer)"})
    freeze_embeddings: bool = field(default=True,
                                    metadata={"help": "keep word embeddings fixed (half the weights)"})
    threads: int = field(default_factory=available_cores,
                         metadata={"help": "torch threads in train/predict (default: all cores; on a quiet "
                                           "2-core machine 2 threads infer 1.8x and train 2.5x faster than 1)"})
    seed: int = field(default=0, metadata={"help": "shuffling, dropout and head init"})

    @classmethod
    def quick(cls, **overrides) -> CrossEncoderConfig:
        """Tiny profile for tests and CI: a few hundred pairs, one short epoch."""
        return cls(**{"max_train_pairs": 256, "batch_size": 16, "max_length": 32, "log_every": 5,
                      "warmup": 0.1, "lr": 1e-4, **overrides})


class OrdinalHead(nn.Module):
    """Pooled vector -> (B, 3) cumulative logits s - t_k with ordered thresholds."""

    def __init__(self, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.first = nn.Parameter(torch.zeros(1))  # t1
        self.gaps = nn.Parameter(torch.zeros(GRADES - 2))  # t_{k+1} - t_k = softplus(gap) > 0

    def thresholds(self) -> torch.Tensor:
        return torch.cat([self.first, self.first + torch.cumsum(F.softplus(self.gaps), 0)])  # (3,)

    def init_thresholds(self, cum_rates: Sequence[float]) -> None:
        """Start at the base rates P(grade >= k), so that s = 0 predicts the prior."""
        t = -torch.logit(torch.tensor(cum_rates, dtype=torch.float32).clamp(0.02, 0.98))
        t = torch.maximum(t, t[0] + torch.arange(len(t)) * 1e-2)  # strictly increasing
        with torch.no_grad():
            self.first.copy_(t[:1])
            self.gaps.copy_(torch.log(torch.expm1((t[1:] - t[:-1]).clamp(min=1e-2))))  # softplus^-1

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        s = self.score(self.drop(pooled))  # (B, 1)
        return s - self.thresholds()[None, :]  # (B, 3)


def coral_loss(logits: torch.Tensor, grades: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over pairs of the summed BCE of the three 'grade >= k' questions."""
    targets = (grades[:, None] >= torch.arange(1, GRADES, device=grades.device)[None, :]).float()  # (B, 3)
    per_pair = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)  # (B,)
    return (per_pair * weights).sum() / weights.sum().clamp(min=1e-9)


class CrossEncoder(nn.Module):
    """Transformer over (query, title) + mean pooling + OrdinalHead."""

    def __init__(self, encoder: nn.Module, tokenizer, head: OrdinalHead, max_length: int, bf16: bool,
                 threads: int):
        super().__init__()
        self.encoder, self.tokenizer, self.head, self.max_length = encoder, tokenizer, head, max_length
        self.bf16, self.threads = bf16, threads

    @classmethod
    def build(cls, config: CrossEncoderConfig) -> CrossEncoder:
        from pipelines.modeling.encoder import minilm_dir

        transformers = offline_transformers()
        path = Path(config.init_dir) if config.init_dir else minilm_dir()
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        head = OrdinalHead(encoder.config.hidden_size, config.dropout)
        return cls(encoder, tokenizer, head, config.max_length, config.bf16, config.threads)

    @classmethod
    def load(cls, path: Path | str) -> CrossEncoder:
        transformers = offline_transformers()
        path = Path(path)
        config = CrossEncoderConfig(**json.loads((path / "train_config.json").read_text()))
        tokenizer = transformers.AutoTokenizer.from_pretrained(path / "model", local_files_only=True)
        encoder = transformers.AutoModel.from_pretrained(path / "model", local_files_only=True)
        head = OrdinalHead(encoder.config.hidden_size, config.dropout)
        head.load_state_dict(torch.load(path / "head.pt", weights_only=True))
        return cls(encoder, tokenizer, head, config.max_length, config.bf16, config.threads).eval()

    def save(self, path: Path | str, config: CrossEncoderConfig) -> Path:
        """The HF model directory, the head and the config, replaced as one directory."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.encoder.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            torch.save(self.head.state_dict(), tmp / "head.pt")
            (tmp / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        return path

    def forward(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(queries), list(titles), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        hidden = self.encoder(**batch).last_hidden_state  # (B, T, H)
        return self.head(mean_pool(hidden, batch["attention_mask"]))  # (B, 3)

    @torch.inference_mode()
    def cumulative(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """(B, 3) P(grade >= k), k = 1..3, of one batch as one forward (padded to its longest pair)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self(list(queries), list(titles))
        return torch.sigmoid(logits.float()).double().numpy()

    @torch.inference_mode()
    def predict(self, queries: Sequence[str], titles: Sequence[str], batch_size: int = 128,
                progress: bool = False, ray: RayDataConfig | None = None) -> np.ndarray:
        """(n, 4) grade probabilities, in input order; pairs are batched by length (less padding).

        With `ray`, a pass of ray.min_rows pairs or more runs on a Ray Data actor pool, each actor
        running the same length-sorted batches (pipelines.ray_data): the same probabilities."""
        self.eval()
        queries, titles = list(queries), list(titles)
        plan = length_batches([len(q) + len(t) for q, t in zip(queries, titles)], batch_size)
        if ray is not None and ray.runs(len(queries)):
            cum = run_batches({"query": queries, "title": titles}, plan, PredictWorker, self, ray,
                              "cross-encoder (Ray)", progress)["cum"]
            return from_cumulative(cum)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        cum = np.zeros((len(queries), GRADES - 1))
        with Progress(*_COLUMNS, disable=not progress, transient=True) as bar:
            task = bar.add_task("cross-encoder", total=len(queries), info="")
            for idx in plan:
                cum[idx] = self.cumulative([queries[i] for i in idx], [titles[i] for i in idx])
                bar.advance(task, len(idx))
        torch.set_num_threads(threads)
        return from_cumulative(cum)


class PredictWorker:
    """A Ray Data actor's cross-encoder (CrossEncoder.predict with `ray`): one planned batch per call."""

    def __init__(self, model: CrossEncoder):
        self.model = model.eval()

    def __call__(self, batch: Columns) -> Columns:
        return {"cum": self.model.cumulative(batch["query"].tolist(), batch["title"].tolist())}


_COLUMNS = (TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"))


def _batches(lengths: np.ndarray, config: CrossEncoderConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches; within each group of `group_batches` batches, pairs are sorted by length."""
    order = rng.permutation(len(lengths))
    group = config.batch_size * config.group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_cross_encoder(queries: Sequence[str], titles: Sequence[str], grades: Sequence[int],
                        weights: Sequence[float] | None, config: CrossEncoderConfig,
                        out_dir: Path | str) -> tuple[CrossEncoder, dict]:
    """Fine-tune MiniLM-L6 + ordinal head on graded pairs; save to out_dir. Returns model and stats."""
    from transformers import get_linear_schedule_with_warmup

    if not 0.0 <= config.min_lr_ratio < 1.0:
        raise ValueError(f"min_lr_ratio {config.min_lr_ratio}: must be in [0, 1)")
    # --- setup: seed everything, pin threads, cap the data to the time budget
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # restored at the end: the setting is process-wide
    rng = np.random.default_rng(config.seed)
    grades = np.asarray(grades, dtype=np.int64)
    weights = np.ones(len(grades)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.sort(rng.permutation(len(grades))[:config.max_train_pairs])
    queries, titles = [queries[i] for i in keep], [titles[i] for i in keep]
    grades, weights = grades[keep], weights[keep]
    lengths = np.array([len(q) + len(t) for q, t in zip(queries, titles)])

    # --- model: pretrained encoder, head starting at the base rates
    model = CrossEncoder.build(config)
    if config.freeze_embeddings:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    cum_rates = [np.average(grades >= k, weights=weights) for k in range(1, GRADES)]
    model.head.init_thresholds(cum_rates)
    trainable = [p for p in model.encoder.parameters() if p.requires_grad]
    decay, no_decay = [p for p in trainable if p.ndim >= 2], [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW([
        {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
        {"params": model.head.parameters(), "lr": config.head_lr, "weight_decay": 0.0},
    ], fused=True)  # one fused kernel per step instead of a dozen elementwise passes
    epochs = max(1, math.ceil(config.epochs))
    per_epoch = math.ceil(len(grades) / config.batch_size)
    total_steps = max(1, round(per_epoch * config.epochs))
    # linear warm-up, then linear decay that reaches min_lr_ratio at total_steps (0 a little later):
    # stable for short fine-tunes
    peak = max(1, int(config.warmup * total_steps)) - 1  # the step where warm-up reaches full lr
    zero = peak + round((total_steps - peak) / (1.0 - config.min_lr_ratio))
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=peak, num_training_steps=zero)

    # --- loop
    model.train()
    step, seen, losses, log = 0, 0, [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    with Progress(*_COLUMNS) as bar:
        task = bar.add_task("stage 2 train", total=total_steps, info="")
        for _epoch in range(epochs):
            for idx in _batches(lengths, config, rng):
                if step >= total_steps:
                    break
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    logits = model([queries[i] for i in idx], [titles[i] for i in idx])  # (B, 3)
                loss = coral_loss(logits.float(), torch.from_numpy(grades[idx]),
                                  torch.from_numpy(weights[idx]).float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                step, seen = step + 1, seen + len(idx)
                losses.append(loss.item())
                if step % config.log_every == 0 or step == total_steps:
                    mean = float(np.mean(losses[-config.log_every:]))
                    log.append({"step": step, "loss": round(mean, 4)})
                    rate = seen / (time.perf_counter() - start)
                    bar.update(task, info=f"loss {mean:.3f}  {rate:.0f} pairs/s")
                bar.advance(task)

    # --- save: HF dir + head + the resolved config, next to each other
    torch.set_num_threads(threads)
    model.eval()
    model.save(out_dir, config)
    stats = {"steps": step, "pairs_seen": seen, "train_pairs": len(grades),
             "seconds": round(time.perf_counter() - start, 1),
             "cpu_seconds": round(time.process_time() - cpu_start, 1), "loss_log": log}
    write_json(Path(out_dir) / "train_stats.json", stats, indent=2)
    return model, stats
