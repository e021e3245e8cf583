"""The bi-encoder trainer: read it top to bottom (nanoGPT style).

Student: one shared MiniLM-L6 tower (pipelines.modeling.encoder: mean pooling, unit vectors) for
queries and titles, initialised from all-MiniLM-L6-v2. Per step, B queries each with a list of L
candidates (pipelines.training.data); logits are cosine / tau between every query and all B * L
items of the batch.
- listwise KL: KL(target || softmax(own list's logits)) per query, the target being the unified
  soft target (pipelines.training.target) -- the distillation term;
- in-batch negatives: cross-entropy over all B * L items with the query's best candidate as the
  class, so other queries' candidates are negatives too (they are cheap: already encoded).
loss = KL + in_batch_weight * CE. AdamW, linear warm-up then linear decay, gradient clipping.
Output: an HF directory under workspace/models/<version> with model.json holding the lineage
(feature service, dataset hash, definitions hash, config) and throughput.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import get_linear_schedule_with_warmup

from pipelines.modeling.encoder import Encoder, minilm_dir
from pipelines.modeling.registry import ModelRef, register
from pipelines.training.config import TrainConfig
from pipelines.training.data import candidate_lists, sample_batch, training_set
from pipelines.workspace import Workspace


@dataclass
class TrainResult:
    model: ModelRef
    stats: dict


def train(ws: Workspace, config: TrainConfig, as_of: pd.Timestamp | None = None,
          name: str | None = None, console: Console | None = None) -> TrainResult:
    """Build the point-in-time set, distil the target into the encoder, register the version."""
    console = console or Console(stderr=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    as_of = as_of if as_of is not None else pd.Timestamp.now(tz="UTC").floor("s")

    # data: the training FeatureService, point in time, then candidate lists
    clock = time.perf_counter()
    out_dir = ws.datasets_dir / f"train-{config.target.kind}-{config.seed}"
    dataset = training_set(ws, out_dir, as_of, config.data, seed=config.seed)
    lists = candidate_lists(dataset.frame, config.target)
    if len(lists) == 0:
        raise ValueError(f"{dataset.lineage['dataset_path']}: no query has two candidates with titles")
    data_seconds = time.perf_counter() - clock
    console.print(f"train[{config.target.kind}]: {len(lists):,} queries, {len(dataset.frame):,} candidate rows "
                  f"(dataset {dataset.lineage['dataset_sha256'][:12]}, {data_seconds:.0f} s)")

    # model and optimizer
    encoder = Encoder.load(minilm_dir(), max_length=config.max_length)
    encoder.model.train()
    if config.freeze_embeddings:
        encoder.model.embeddings.word_embeddings.weight.requires_grad_(False)
    trainable = [p for p in encoder.model.parameters() if p.requires_grad]
    B, L = config.queries_per_batch, config.data.list_size
    steps_per_epoch = math.ceil(len(lists) / B)
    total = steps_per_epoch * config.epochs
    peak = max(1, int(config.warmup * total)) - 1  # the step where warm-up reaches full lr
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=peak, num_training_steps=total)

    # the loop
    sequences, epoch_seconds, losses = 0, [], []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:.0f} seq/s")]
    with Progress(*columns, console=console, transient=False) as bar:
        for epoch in range(config.epochs):
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, loss=0.0, rate=0.0)
            start, seen = time.perf_counter(), 0
            order = rng.permutation(len(lists))
            for step in range(steps_per_epoch):
                idx = order[step * B:(step + 1) * B]
                batch = sample_batch(lists, idx, config.data, config.target.temperature, rng)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    q = encoder.forward(batch.queries)  # (b, d)
                    d = encoder.forward(batch.items)  # (b * L, d)
                b = len(idx)
                logits = q.float() @ d.float().T / config.tau  # (b, b * L), in float32
                mask = torch.from_numpy(batch.mask)
                own = logits.view(b, b, L)[torch.arange(b), torch.arange(b)]  # (b, L)
                own = own.masked_fill(~mask, float("-inf"))
                target = torch.from_numpy(batch.target).to(own.dtype)
                log_p = F.log_softmax(own, dim=-1).masked_fill(~mask, 0.0)
                kl = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(-1).mean()
                positive = torch.arange(b) * L + target.argmax(-1)
                every = logits.masked_fill(~mask.reshape(1, -1).expand(b, -1), float("-inf"))
                in_batch = F.cross_entropy(every, positive)
                loss = kl + config.in_batch_weight * in_batch
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                schedule.step()
                seen += b * (1 + L)
                losses.append(loss.detach().item())
                if step % config.log_every == 0 or step == steps_per_epoch - 1:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    recent = float(np.mean(losses[-config.log_every:]))
                    bar.update(task, loss=recent, rate=rate)
                    if not console.is_terminal:  # a log file gets no live bar: one line per log_every steps
                        console.print(f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} "
                                      f"loss {recent:.3f} {rate:.0f} seq/s")
                bar.advance(task)
            epoch_seconds.append(time.perf_counter() - start)
            sequences += seen
    encoder.model.eval()
    torch.set_num_threads(threads)

    stats = {"queries": len(lists), "candidate_rows": len(dataset.frame), "steps": total,
             "epoch_seconds": [round(s, 1) for s in epoch_seconds],
             "sequences_per_second": round(sequences / max(sum(epoch_seconds), 1e-9), 1),
             "final_loss": round(float(np.mean(losses[-config.log_every:])), 4),
             "data_seconds": round(data_seconds, 1), "threads": config.threads,
             "dataset_path": dataset.lineage["dataset_path"]}
    lineage = {"feature_service": dataset.lineage["feature_service"],
               "dataset_sha256": dataset.lineage["dataset_sha256"],
               "definitions_sha256": dataset.lineage["definitions_sha256"],
               "as_of": as_of.isoformat(),
               "base_model": str(Path(minilm_dir()).name), "config": config.to_dict()}
    model = register(ws.models_dir, encoder, lineage, name=name, stats=stats)
    console.print(f"train[{config.target.kind}]: model {model.version} -> {model.path}; "
                  f"{stats['sequences_per_second']} seq/s, epochs {stats['epoch_seconds']} s")
    return TrainResult(model, stats)
