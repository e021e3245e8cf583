"""The pre-ranker's trainer: read it top to bottom.

1. The training table (data.py): retrieved candidates and random items of sampled training queries,
   each a positive or in one negative group; item popularity out of query as for the ranker.
2. Two feature specs: LIGHT columns (light model), the ranker's features (strong model; query-keyed
   store features blanked for half the queries per epoch, as the ranker: dev queries arrive new).
3. Four models: light and strong, each trained two ways on the same rows, batches and seed:
   - uniform: one loss over every negative group pooled: BCE + InfoNCE (per positive, a softmax
     against its query's negatives);
   - hap: one such loss term per negative group (the positives against that group's negatives only),
     summed with weights w_g = mean_h |grad_h| / |grad_g| over the trunk's parameters, recomputed
     every step: every group moves the shared trunk by the same magnitude, so the many hard
     negatives do not drown the easy ones (our reading of HAP's gradient-harmonized contrastive
     learning; arXiv 2603.03770).
   Uniformly, both models train on every group. HAP's light model trains on every group, its strong
   one on the hard rows only, said two ways: the hard groups (config.HARD: exposed, ranking), or the
   rows the HAP light model would route at `band_budget` (estimated_band: its rank in the whole list,
   estimated from the table's sampling weights; groups exposed, ranking, retrieval) plus every
   positive. The one whose calib per-query AUC inside the routed band is higher is HAP's strong model
   (both figures in preranker.json). "Strong everywhere" (the reference HAP is held to) is the
   uniform strong model, trained on everything it will score.
4. Conflict probe, both ways of training: every PROBE_EVERY steps, each group's loss gradient on the
   trunk; their pairwise cosines and norms go to preranker.json and conflict.png.
5. After each epoch, the calib queries' mean per-query AUC (positives vs the model's negative
   groups; strong: with every query-keyed feature blanked, as dev is served); the best epoch is kept.
Output: workspace/models/prerankers/<name>/.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.metrics import query_auc
from pipelines.preranking.config import BAND_GROUPS, GROUPS, HARD, TRAINING, PrerankDataConfig, PrerankTrainConfig
from pipelines.preranking.data import LABELS, LIGHT, POSITIVE, training_table
from pipelines.preranking.model import SHAPES, Scorer
from pipelines.preranking.route import band
from pipelines.preranking.store import PrerankerFiles, scores
from pipelines.ranking.features import FeatureSpec, drop_query_features
from pipelines.ranking.train import out_of_query_popularity
from pipelines.workspace import Workspace

PROBE_EVERY = 10  # steps between gradient-conflict probes


def train_preranker(ws: Workspace, name: str, data: PrerankDataConfig, config: PrerankTrainConfig,
                    console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    rows, views = training_table(ws, data, console)
    rows = out_of_query_popularity(rows)
    fit = rows[rows["role"] == "fit"].reset_index(drop=True)
    calib = rows[rows["role"] == "calib"].reset_index(drop=True)
    specs = {"light": FeatureSpec.fit(fit, {}, request=LIGHT), "strong": FeatureSpec.fit(fit, views)}
    models, history, conflict = {}, {}, {}

    def fit_model(key: str, kind: str, training: str, groups: tuple[str, ...], fit_rows, calib_rows) -> None:
        keep = [POSITIVE, *groups]
        models[key], history[key], conflict[key] = train_one(
            fit_rows[fit_rows["group"].isin(keep)], calib_rows[calib_rows["group"].isin(keep)], specs[kind], kind,
            groups, training, config, console, label=key)

    for training in TRAINING:
        fit_model(f"light-{training}", "light", training, GROUPS, fit, calib)
    fit_model("strong-uniform", "strong", "uniform", GROUPS, fit, calib)
    bands = {role: estimated_band(part, scores(models["light-hap"], specs["light"], part), data.n_keep,
                                  config.band_budget) for role, part in (("fit", fit), ("calib", calib))}
    positive = {role: (part["group"] == POSITIVE).to_numpy() for role, part in (("fit", fit), ("calib", calib))}
    fit_model("strong-hap-groups", "strong", "hap", HARD, fit, calib)
    fit_model("strong-hap-band", "strong", "hap", BAND_GROUPS, fit[bands["fit"] | positive["fit"]],
              calib[bands["calib"] | positive["calib"]])
    in_band = calib[bands["calib"] & calib["group"].isin([POSITIVE, *BAND_GROUPS]).to_numpy()]
    in_band = drop_query_features(in_band, specs["strong"], 1.0, config.seed)  # as dev is served
    band_auc = {key: round(mean_query_auc(in_band, scores(models[key], specs["strong"], in_band)), 4)
                for key in ("strong-uniform", "strong-hap-groups", "strong-hap-band")}
    chosen = max(("strong-hap-groups", "strong-hap-band"), key=band_auc.get)
    console.print(f"calib per-query AUC inside the routed band (budget {config.band_budget:g}): {band_auc}; "
                  f"HAP's strong model: {chosen}")
    models["strong-hap"] = models[chosen]
    saved = {key: models[key] for key in ("light-uniform", "light-hap", "strong-uniform", "strong-hap")}
    files = PrerankerFiles.of(ws, name)
    meta = {"name": name, "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
            "data": asdict(data), "train": asdict(config), "shapes": {k: asdict(v) for k, v in SHAPES.items()},
            "rows": {role: part["group"].value_counts().reindex(LABELS, fill_value=0).to_dict()
                     for role, part in (("fit", fit), ("calib", calib))},
            "strong_hap": {"chosen": chosen, "calib_band_auc": band_auc, "band_budget": config.band_budget,
                           "calib_band_rows": len(in_band)},
            "history": history, "conflict_summary": {k: conflict_summary(v) for k, v in conflict.items()},
            "conflict": conflict,
            "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    files.save(saved, specs, meta)
    plot_conflict(conflict, files.root / "conflict.png")
    console.print(f"pre-ranker {name!r} saved in {files.root} ({meta['seconds']:.0f} s)")
    return {**meta, "root": str(files.root)}


def train_one(fit: pd.DataFrame, calib: pd.DataFrame, spec: FeatureSpec, kind: str, groups: tuple[str, ...],
              training: str, config: PrerankTrainConfig, console: Console, label: str) -> tuple[Scorer, list, list]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = Scorer(len(spec.inputs), SHAPES[kind])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    codes = torch.from_numpy(fit["group"].map({g: i for i, g in enumerate(LABELS)}).to_numpy(np.int64))
    bounds = query_bounds(fit)
    probes = {g: (LABELS.index(g),) for g in groups}  # one loss term per negative group
    terms = probes if training == "hap" else {"all": tuple(LABELS.index(g) for g in groups)}
    calib_new = drop_query_features(calib, spec, 1.0, config.seed) if kind == "strong" else calib
    history, conflict, best, step = [], [], (-1.0, None), 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for epoch in range(config.epochs):
        frame = drop_query_features(fit, spec, 0.5, config.seed + epoch) if kind == "strong" else fit
        x = torch.from_numpy(spec.matrix(frame))
        order = rng.permutation(len(bounds))
        model.train()
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"{label} epoch {epoch + 1}/{config.epochs}", total=len(order))
            for start in range(0, len(order), config.queries_per_batch):
                idx, qcodes = batch_rows(bounds, order[start:start + config.queries_per_batch])
                s = model(x[idx])
                losses = list_losses(s, codes[idx], qcodes, terms, config.temperature)
                if step % PROBE_EVERY == 0:
                    per_group = losses if training == "hap" else list_losses(s, codes[idx], qcodes, probes,
                                                                            config.temperature)
                    conflict.append(gradient_probe(model, per_group, step))
                loss = balanced(model, losses) if training == "hap" else sum(losses.values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                bar.advance(task, len(order[start:start + config.queries_per_batch]))
        auc = mean_query_auc(calib_new, scores(model, spec, calib_new))
        history.append({"epoch": epoch + 1, "calib_auc": round(auc, 4)})
        console.print(f"{label} epoch {epoch + 1}: calib per-query AUC {auc:.4f}")
        if auc > best[0]:
            best = (auc, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    model.eval()
    return model, history, conflict


def estimated_band(rows: pd.DataFrame, light: np.ndarray, n_keep: int, budget: float) -> np.ndarray:
    """Bool per row: inside the band routing would send to the strong model at `budget`, by the light
    score's rank in the whole retrieved list, estimated from the table (each row counts for its
    `list_weight` rows: sampled retrieval negatives for all of their group, random items for none)."""
    weight = rows["list_weight"].to_numpy(np.float64)
    codes, _ = pd.factorize(rows["query_id"])
    order = np.lexsort((rows["item_id"].astype(str).to_numpy(), -light, codes))
    w, c = weight[order], codes[order]
    cum = np.cumsum(w)
    start = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
    before = cum - w - np.repeat(np.r_[0.0, cum[start[1:] - 1]], np.diff(np.r_[start, len(c)]))
    size = np.bincount(codes, weights=weight)[c]
    lo, width = band(np.round(size).astype(np.int64), n_keep, budget)
    inside = np.zeros(len(rows), bool)
    inside[order] = (before >= lo) & (before < lo + width) & (w > 0)
    return inside


def query_bounds(rows: pd.DataFrame) -> np.ndarray:
    """(n_queries, 2) start and end row of each query's contiguous block (rows sorted by query)."""
    codes = pd.factorize(rows["query_id"])[0]
    if len(codes) and (np.diff(codes) < 0).any():
        raise ValueError("training rows must be grouped by query")
    starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0]) if len(codes) else np.zeros(0, np.int64)
    return np.column_stack([starts, np.r_[starts[1:], len(codes)]]).astype(np.int64)


def batch_rows(bounds: np.ndarray, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices of the batch's queries, each row's query number within the batch)."""
    spans = [np.arange(*bounds[q]) for q in queries]
    idx = np.concatenate(spans)
    qcodes = np.repeat(np.arange(len(spans)), [len(s) for s in spans])
    return torch.from_numpy(idx), torch.from_numpy(qcodes)


def list_losses(s: torch.Tensor, codes: torch.Tensor, qcodes: torch.Tensor, terms: dict[str, tuple[int, ...]],
                temperature: float) -> dict[str, torch.Tensor]:
    """Per term: BCE over the positives and the term's negatives + InfoNCE of each positive against
    its own query's negatives of the term. Terms without positives or negatives in the batch drop out."""
    positive = codes == 0
    n_queries = int(qcodes.max()) + 1 if len(qcodes) else 0
    out = {}
    for name, negative_codes in terms.items():
        negative = torch.isin(codes, torch.tensor(negative_codes))
        if not positive.any() or not negative.any():
            continue
        used = positive | negative
        bce = F.binary_cross_entropy_with_logits(s[used], positive[used].float())
        z = s / temperature
        neg_q, neg_z = qcodes[negative], z[negative]
        peak = torch.full((n_queries,), -torch.inf).scatter_reduce(0, neg_q, neg_z.detach(), reduce="amax")
        total = torch.zeros(n_queries).index_add(0, neg_q, torch.exp(neg_z - peak[neg_q]))
        has = total[qcodes[positive]] > 0
        if has.any():
            lse = (peak + torch.log(total.clamp_min(1e-30)))[qcodes[positive]][has]
            zp = z[positive][has]
            bce = bce + (torch.logaddexp(zp, lse) - zp).mean()
        out[name] = bce
    return out


def shared_gradients(model: Scorer, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each loss's gradient on the trunk's parameters, flattened."""
    params = [p for p in model.trunk.parameters() if p.requires_grad]
    return {name: torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for name, loss in losses.items()}


def balanced(model: Scorer, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the group losses weighted so that each moves the trunk by the mean gradient norm."""
    norms = {name: g.norm() for name, g in shared_gradients(model, losses).items()}
    mean = torch.stack(list(norms.values())).mean()
    return sum((mean / norms[name].clamp_min(1e-12)).detach() * loss for name, loss in losses.items())


def gradient_probe(model: Scorer, losses: dict[str, torch.Tensor], step: int) -> dict:
    """{step, norm per group, cosine per pair of groups} of the groups' trunk gradients."""
    grads = shared_gradients(model, losses)
    names = list(grads)
    cosines = {f"{a}|{b}": round(float(F.cosine_similarity(grads[a], grads[b], dim=0)), 4)
               for i, a in enumerate(names) for b in names[i + 1:]}
    return {"step": step, "norm": {n: round(float(g.norm()), 6) for n, g in grads.items()}, "cosine": cosines}


def mean_query_auc(rows: pd.DataFrame, score: np.ndarray) -> float:
    """metrics.query_auc of the positives against the rows' negatives; NaN when no query has both."""
    auc = query_auc(rows["query_id"].to_numpy(), (rows["group"] == POSITIVE).to_numpy(), score)
    return float("nan") if auc is None else auc


def hard_easy(probe: dict) -> tuple[float, float]:
    """(mean cosine over pairs of one hard and one easy group, or over all pairs when the training has
    no easy group; the hard groups' share of the summed gradient norms) of one probe."""
    cross = [c for pair, c in probe["cosine"].items() if sum(g in HARD for g in pair.split("|")) == 1]
    cosine = float(np.mean(cross or list(probe["cosine"].values()) or [np.nan]))
    share = sum(n for g, n in probe["norm"].items() if g in HARD) / max(sum(probe["norm"].values()), 1e-12)
    return cosine, share


def conflict_summary(probes: list[dict]) -> dict:
    """Means over a training's probes: cosine per pair of groups, hard_easy's two figures."""
    if not probes:
        return {}
    pairs = sorted({pair for p in probes for pair in p["cosine"]})
    cosine = {pair: round(float(np.mean([p["cosine"][pair] for p in probes if pair in p["cosine"]])), 4)
              for pair in pairs}
    cross, share = np.mean([hard_easy(p) for p in probes], axis=0)
    return {"cosine": cosine, "hard_vs_easy_cosine": round(float(cross), 4), "hard_norm_share": round(float(share), 4)}


def plot_conflict(conflict: dict[str, list], path) -> None:
    """Over training steps, per model and training, hard_easy's cosine (left) and the hard groups'
    share of the gradient norm (right; HAP's strong model trains on hard groups only: share 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, probes in conflict.items():
        if not probes:
            continue
        steps = [p["step"] for p in probes]
        cosine, share = zip(*(hard_easy(p) for p in probes))
        style = "-" if "hap" in key else "--"
        axes[0].plot(steps, cosine, style, marker=".", label=key)
        axes[1].plot(steps, share, style, marker=".", label=key)
    axes[0].set(title="cosine of hard- vs easy-group gradients on the trunk\n(HAP's strong: exposed vs ranking)",
                xlabel="step")
    axes[1].set(title="hard groups' share of the gradient norm", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
