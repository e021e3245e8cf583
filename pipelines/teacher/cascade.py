"""The cascade: stage 1 everywhere, stage 2 only where stage 1 is unsure; fitting the teacher.

Escalation rule (the one definition):

    escalate(pair)  <=>  confidence_1(pair) < tau

where confidence_1 is the largest of stage 1's *calibrated* grade probabilities. Calibrated,
because then "unsure" means the same thing in every score range: a confidence of 0.5 says stage 1
names the right grade about half the time. Low confidence covers both kinds of doubt that matter for
ranking: a pair near the relevant/irrelevant line (P(grade 1) ~ P(grade 2)) and a relevant pair
whose exact-vs-relevant grade is open (the linear NDCG gain tells 2 from 3 as much as 1 from 2).
Escalated pairs take stage 2's calibrated probabilities; the others keep stage 1's. Both are
calibrated on the same held-out queries, so mixed lists compare like with like.

The calibrators are fitted on the calibration queries' pairs as `TeacherConfig.calibration` says
(calibrate.py: by default their candidate population, judged and unjudged). tau is chosen on the
calibration queries (never dev) to spend the cost budget: the largest
escalation share (at least `min_share`) of those queries' judged pairs whose cost stays within
`max_cost_share` of running stage 2 everywhere,

    cost(share) = (c1 + share x ce) / (c1 + ce)

with c1, ce the CPU seconds per pair of stage 1 and of the cross-encoder. Only their ratio matters,
and it is a setting (`cost_ratio`, measured once on Home Depot on a quiet machine), not this run's
clock: measured during a build, it moved with the machine's load and tau with it (0.565 quiet, 0.559
beside other jobs), and labels must depend on the data and the seed alone. Each run still records
its measured costs in teacher.json, and the report measures the cost share. Stage 2 "everywhere" costs
c1 + ce, because stage 2 reads stage 1's output: its probabilities are the cross-encoder's pooled
with stage 1's (grades.blend, weight `stage1_weight`); the two disagree enough (correlation ~0.67)
that the pool ranks better than either alone, and the cascade pays for stage 1 on every pair anyway.
Why spend the budget rather than stop at the smallest share that reaches an NDCG target: on judged
items the stages differ by ~0.001-0.003 NDCG@10, about the standard error over the calibration
queries, so a target would pick its share by noise; stage 2 agrees better with human grades
(Spearman) and the cost budget is the constraint that binds. The share -> NDCG@10 / cost curve read
on calib is kept in teacher.json.

`max_pairs` caps how many pairs one producer run may escalate (the time budget of `signals build`):
if more pairs fall under tau, the least confident max_pairs are escalated, i.e. tau is lowered.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.atomic import atomic_path, write_json
from pipelines.metrics import evaluate
from pipelines.ray_data import RayDataConfig
from pipelines.retrieval.pair_features import PairScorer
from pipelines.teacher.calibrate import (
    SELECTION_COLUMNS,
    CalibrationConfig,
    GradeCalibrator,
    fit_calibrator,
    propensity_weights,
    selection_features,
)
from pipelines.teacher.cross_encoder import CrossEncoder, CrossEncoderConfig, train_cross_encoder
from pipelines.teacher.grades import blend, confidence, expected_grade, to_grade
from pipelines.teacher.stage1 import Stage1, Stage1Config

TIE_BREAK = 1e-4  # weight of the raw expected grade in ranking scores (calibrated maps have flat spots)


@dataclass
class CascadeConfig:
    """How the escalation threshold is chosen (not part of the fitted teacher's fingerprint)."""

    max_cost_share: float = field(default=0.40,
                                  metadata={"help": "cost ceiling, share of stage 2 everywhere"})
    share_step: float = field(default=0.01, metadata={"help": "grid step of escalation shares tried"})
    min_share: float = field(default=0.0,
                             metadata={"help": "escalate at least this share (tests exercise stage 2)"})
    max_pairs: int | None = field(default=None,
                                  metadata={"help": "cap on pairs escalated per run (time budget)"})
    cost_ratio: float | None = field(default=0.135, metadata={
        "help": "stage 1's CPU cost per pair / the cross-encoder's (Home Depot, quiet 2-core machine: "
                "0.82 / 6.09 ms); None = this run's measurement"})


def escalate(conf1: np.ndarray, tau: float) -> np.ndarray:
    """The escalation rule: True where stage 1's calibrated confidence is below tau."""
    return np.asarray(conf1) < tau


def tau_for_share(conf1: np.ndarray, share: float) -> float:
    """The threshold that escalates (about) `share` of these pairs: the least confident ones."""
    if share <= 0 or len(conf1) == 0:
        return 0.0
    ordered = np.sort(np.asarray(conf1))
    n = min(len(ordered), round(share * len(ordered)))
    return float(np.nextafter(ordered[n - 1], np.inf)) if n > 0 else 0.0


def capped(conf1: np.ndarray, tau: float, max_pairs: int | None) -> np.ndarray:
    """escalate(conf1, tau), keeping only the `max_pairs` least confident pairs if more qualify."""
    mask = escalate(conf1, tau)
    if max_pairs is not None and mask.sum() > max_pairs:
        keep = np.argsort(conf1, kind="stable")[:max_pairs]
        mask = np.zeros(len(conf1), dtype=bool)
        mask[keep] = True
    return mask


def combine(p1: np.ndarray, p2: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cascade probabilities and the stage used (1 or 2) per pair.

    p2 holds stage 2's probabilities for the escalated pairs only (mask.sum() rows, in order)."""
    out = np.array(p1, dtype=np.float64, copy=True)
    out[mask] = p2
    return out, np.where(mask, 2, 1).astype(np.int64)


def ranking_score(calibrated: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Calibrated expected grade, ties broken by the raw expected grade."""
    return expected_grade(calibrated) + TIE_BREAK * expected_grade(raw)


def rerank_ndcg(pairs: pd.DataFrame, score: np.ndarray, judgments: pd.DataFrame) -> float:
    """NDCG@10 (pipelines.metrics) of each query's judged items ordered by `score`."""
    run: dict[str, dict[str, float]] = {}
    for qid, item, s in zip(pairs["query_id"], pairs["item_id"], score):
        run.setdefault(str(qid), {})[str(item)] = float(s)
    return float(evaluate(run, judgments)["mean"]["ndcg@10"])


def choose_tau(pairs: pd.DataFrame, cal1: np.ndarray, raw1: np.ndarray, cal2: np.ndarray,
               raw2: np.ndarray, cost_ratio: float, config: CascadeConfig) -> tuple[float, pd.DataFrame]:
    """tau by the rule in the module docstring, plus the share -> NDCG@10 / cost curve.

    pairs (query_id, item_id, relevance) are the calibration queries' judged pairs, rows aligned
    with the stages' calibrated (cal*) and raw probabilities."""
    conf1 = confidence(cal1)
    s1, s2 = ranking_score(cal1, raw1), ranking_score(cal2, raw2)
    full = rerank_ndcg(pairs, s2, pairs)
    rows = []
    for share in np.arange(0.0, 1.0 + 1e-9, config.share_step):
        cost = (cost_ratio + share) / (cost_ratio + 1.0)  # cost(share) above, divided through by ce
        if cost > config.max_cost_share + 1e-9 and share > config.min_share + 1e-9:
            break
        tau = tau_for_share(conf1, share)
        mask = escalate(conf1, tau)
        ndcg = rerank_ndcg(pairs, np.where(mask, s2, s1), pairs)
        rows.append({"share": float(mask.mean()), "tau": tau, "cost_share": cost, "ndcg@10": ndcg,
                     "retention": ndcg / full if full > 0 else float("nan")})
    curve = pd.DataFrame(rows).assign(stage2_ndcg=full)
    return float(curve["tau"].iloc[-1]), curve


# --- the fitted teacher: both stages, their calibrators and tau ----------------------------------


@dataclass
class TeacherConfig:
    """The whole teacher: both stages, the cascade and how training pairs are drawn."""

    stage1: Stage1Config = field(default_factory=Stage1Config)
    cross_encoder: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)
    cascade: CascadeConfig = field(default_factory=lambda: CascadeConfig(max_pairs=50_000))
    negatives_per_query: int = field(default=3, metadata={"help": "weak negatives per query (grade 0)"})
    negative_min_rank: int = field(default=30, metadata={"help": "negatives: best channel rank above this"})
    stage1_weight: float = field(default=0.3,
                                 metadata={"help": "stage 1's weight in stage 2's logit blend"})
    negative_weight: float = field(default=0.5, metadata={"help": "training weight of a weak negative"})
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    seed: int = field(default=0, metadata={
        "help": "negative and calibration-candidate sampling; the stages take their own seeds"})

    @classmethod
    def quick(cls, seed: int = 0) -> TeacherConfig:
        """Test/CI profile: a small booster, a tiny stage 2 (one short epoch), a low escalation cap,
        a small calibration sample."""
        return cls(stage1=Stage1Config(max_iter=60, min_samples_leaf=10),
                   cross_encoder=CrossEncoderConfig.quick(seed=seed),
                   cascade=CascadeConfig(min_share=0.2, max_pairs=300),
                   calibration=CalibrationConfig(candidates=1_000), seed=seed)


def _cpu() -> float:
    return time.process_time()


@dataclass
class Teacher:
    """Stage 1 and the cross-encoder (fitted, cached), and what is derived from their saved
    calibration-query predictions on every run: a calibrator each for stage 1, stage 2 and the
    cross-encoder alone (a report row), and the escalation threshold tau."""

    stage1: Stage1
    cross_encoder: CrossEncoder
    meta: dict  # config, costs (CPU s/pair), fit timings, fingerprint; then tau and its curve
    calib1: GradeCalibrator | None = None
    calib2: GradeCalibrator | None = None
    calib_ce: GradeCalibrator | None = None
    tau: float = 0.0

    def stage1_probs(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated stage 1 probabilities."""
        raw = self.stage1.predict_proba(features)
        return raw, self.calib1.transform(raw)

    def cross_encoder_probs(self, queries: list[str], titles: list[str], progress: bool = False,
                            ray: RayDataConfig | None = None) -> np.ndarray:
        """Raw cross-encoder probabilities (the expensive call; on a Ray Data actor pool with `ray`)."""
        return self.cross_encoder.predict(queries, titles, batch_size=self.meta["eval_batch_size"],
                                          progress=progress, ray=ray)

    def stage2_probs(self, ce: np.ndarray, raw1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated stage 2 probabilities: the cross-encoder read with stage 1's evidence."""
        raw = blend(ce, raw1, self.meta["config"]["stage1_weight"])
        return raw, self.calib2.transform(raw)

    def raw_probs(self, held: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw stage 1, stage 2 and cross-encoder probabilities from saved raw1_*, ce_* columns."""
        raw1, ce = (held[[f"{p}{g}" for g in range(4)]].to_numpy() for p in ("raw1_", "ce_"))
        return raw1, blend(ce, raw1, self.meta["config"]["stage1_weight"]), ce

    def calibrate(self, held: pd.DataFrame, cascade: CascadeConfig,
                  calibration: CalibrationConfig | None = None) -> pd.DataFrame:
        """Fit the calibrators on the calibration queries' pairs saved by _fit (`held`: judged
        pairs, weak negatives and the uniform sample of unjudged candidates, flagged `sampled`) as
        `calibration` says, then choose tau on the judged pairs; returns the tau curve."""
        calibration = calibration or CalibrationConfig()
        judged = held[held["relevance"].notna()].reset_index(drop=True)
        unjudged = held[held["sampled"]].reset_index(drop=True)
        grades = to_grade(judged["relevance"])
        mass = float(unjudged["mass"].iloc[0]) if len(unjudged) else 0.0
        (raw1, raw2, ce), (u1, u2, uce) = self.raw_probs(judged), self.raw_probs(unjudged)
        weights = None
        if calibration.sample == "weighted":
            weights = propensity_weights(selection_features(judged, raw1), selection_features(unjudged, u1),
                                         mass, calibration.max_weight)
        self.calib1, self.calib2, self.calib_ce = (fit_calibrator(calibration, r, grades, u, mass, weights)
                                                   for r, u in ((raw1, u1), (raw2, u2), (ce, uce)))
        ratio = cascade.cost_ratio
        if ratio is None:
            ratio = self.meta["cost1_cpu_per_pair"] / self.meta["cost_ce_cpu_per_pair"]
        self.tau, curve = choose_tau(judged, self.calib1.transform(raw1), raw1, self.calib2.transform(raw2),
                                     raw2, ratio, cascade)
        self.meta.update(cascade=asdict(cascade), calibration=asdict(calibration), cost_ratio_used=ratio,
                         tau=self.tau, tau_curve=curve.to_dict("records"))
        return curve

    def label(self, pairs: pd.DataFrame, scorer: PairScorer, max_pairs: int | None = None,
              ray: RayDataConfig | None = None) -> dict:
        """Stage 1 everywhere and the cascade: calibrated probabilities and stage per pair, plus
        CPU seconds (this process's: a Ray actor's are not counted) and wall seconds of each stage.
        pairs need query_id, item_id, query_norm and the prior columns.

        With `ray` (the producer's engine is Ray), the cross-encoder pass runs on a Ray Data actor
        pool, with the same probabilities (pipelines.ray_data). Stage 1 stays here: its features read
        the three catalog indexes and the query encoder (~330 MB on Home Depot, which every actor would
        hold) at ~0.3 ms a pair, a twentieth or less of the cross-encoder's (benchmarks/bench_ray_data.py),
        and the escalation choice is global (the least confident pairs of the whole run); its query
        encoding goes to the pool when the scorer's encoder is a RayEncoder (build_channels with `ray`)."""
        cpu, wall = _cpu(), time.perf_counter()
        raw1, cal1 = self.stage1_probs(scorer.features(pairs))
        seconds = {"stage1_cpu": _cpu() - cpu, "stage1_wall": time.perf_counter() - wall}
        mask = capped(confidence(cal1), self.tau, max_pairs)
        cpu, wall = _cpu(), time.perf_counter()
        sub = pairs[mask]
        ce = self.cross_encoder_probs(sub["query_norm"].tolist(), scorer.titles_of(sub["item_id"]), True, ray)
        _raw2, cal2 = self.stage2_probs(ce, raw1[mask])
        seconds.update(stage2_cpu=_cpu() - cpu, stage2_wall=time.perf_counter() - wall)
        probs2, stage2 = combine(cal1, cal2, mask)
        return {"probs1": cal1, "stage1": np.ones(len(pairs), np.int64), "probs2": probs2, "stage2": stage2,
                "seconds": {k: round(v, 1) for k, v in seconds.items()}}

    def save(self, path: Path) -> Path:
        """Stage 1, calibrators and teacher.json; the cross-encoder saved itself to path/cross_encoder."""
        self.stage1.save(path / "stage1.joblib")
        for name in ("calib1", "calib2", "calib_ce"):
            if getattr(self, name) is not None:
                getattr(self, name).save(path / f"{name}.joblib")
        write_json(path / "teacher.json", self.meta, indent=2, default=str)  # last: it marks the set complete
        return path

    @classmethod
    def load(cls, path: Path) -> Teacher:
        """The fitted models, with the calibrators and tau of the run that saved them where it
        calibrated: a labeller for queries no producer has seen (`unisup eval --precompute`);
        `fit_teacher` calibrates again on every run."""
        meta = json.loads((path / "teacher.json").read_text())
        teacher = cls(Stage1.load(path / "stage1.joblib"), CrossEncoder.load(path / "cross_encoder"), meta)
        for name in ("calib1", "calib2", "calib_ce"):
            if (path / f"{name}.joblib").exists():
                setattr(teacher, name, GradeCalibrator.load(path / f"{name}.joblib"))
        teacher.tau = float(meta.get("tau", 0.0))
        return teacher


def training_rows(pairs: pd.DataFrame, negatives: pd.Index, role: str,
                  negative_weight: float) -> pd.DataFrame:
    """Judged pairs plus the sampled weak negatives of one role, with grade and weight."""
    rows = pairs[(pairs["role"] == role) & (pairs["relevance"].notna() | pairs.index.isin(negatives))].copy()
    judged = rows["relevance"].notna()
    rows["grade"] = 0
    rows.loc[judged, "grade"] = to_grade(rows.loc[judged, "relevance"])
    rows["weight"] = np.where(judged, 1.0, negative_weight)
    return rows


def calibration_rows(pairs: pd.DataFrame, negatives: pd.Index, config: TeacherConfig) -> pd.DataFrame:
    """The calib queries' training rows plus `config.calibration.candidates` of their unjudged
    candidates drawn uniformly (seeded), flagged `sampled`; `mass` is how many unjudged candidates
    each sampled row stands for (0 on the other rows). Weak negatives are a deep, biased slice of
    the unjudged candidates, so they are not the sample; one may be drawn into it too."""
    pool = pairs[(pairs["role"] == "calib") & pairs["relevance"].isna()]
    drawn = pool.sample(n=min(config.calibration.candidates, len(pool)), random_state=config.seed).index
    rows = training_rows(pairs, negatives.union(drawn), "calib", config.negative_weight)
    rows["sampled"] = rows.index.isin(drawn)
    rows["mass"] = np.where(rows["sampled"], len(pool) / max(len(drawn), 1), 0.0)
    return rows


RUNTIME_ONLY = ("threads", "log_every")  # how fast or how chatty, not what is fitted: a cached teacher
# stays valid on a machine with another core count (threads default to all cores)


def fingerprint(config: TeacherConfig, fit: pd.DataFrame, calib: pd.DataFrame, scorer: PairScorer) -> str:
    """Hash of everything the fitted models and their saved calibration predictions depend on:
    config (bar the cascade's and the calibration's, which are re-applied to those predictions on
    every run; the calibration sample's size shows in the rows), training and calibration rows,
    their titles."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("cascade", "calibration")}
    settings["cross_encoder"] = {k: v for k, v in settings["cross_encoder"].items() if k not in RUNTIME_ONLY}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for rows in (fit, calib):
        keys = rows["query_norm"] + "\t" + np.asarray(scorer.titles_of(rows["item_id"]), dtype=object)
        frame = keys.to_frame().assign(g=rows["grade"].to_numpy(), w=rows["weight"].to_numpy(),
                                       s=rows.get("sampled", False))
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _columns(prefix: str, probs: np.ndarray) -> dict:
    return {f"{prefix}{g}": probs[:, g] for g in range(probs.shape[1])}


def _fit(fit: pd.DataFrame, calib: pd.DataFrame, scorer: PairScorer, out_dir: Path, config: TeacherConfig,
         key: str) -> Teacher:
    """Both stages on fit rows, and their raw predictions on calib rows (kept for calibration)."""
    seconds = {}
    wall = time.perf_counter()
    stage1 = Stage1.fit(scorer.features(fit), fit["grade"], fit["weight"], config.stage1)
    cpu = _cpu()
    raw1 = stage1.predict_proba(scorer.features(calib))
    cost1 = (_cpu() - cpu) / len(calib)
    seconds["stage1_fit"] = time.perf_counter() - wall

    wall = time.perf_counter()

    def texts(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
        return rows["query_norm"].tolist(), scorer.titles_of(rows["item_id"])

    model, stats = train_cross_encoder(*texts(fit), fit["grade"].to_numpy(), fit["weight"].to_numpy(),
                                       config.cross_encoder, out_dir / "cross_encoder")
    seconds["stage2_train"], wall, cpu = time.perf_counter() - wall, time.perf_counter(), _cpu()
    ce = model.predict(*texts(calib), batch_size=config.cross_encoder.eval_batch_size, progress=True)
    cost_ce = (_cpu() - cpu) / len(calib)
    seconds["stage2_calib_predict"] = time.perf_counter() - wall

    held = calib[["query_id", "item_id", "relevance", "grade", "weight", *SELECTION_COLUMNS, "sampled",
                  "mass"]].assign(**_columns("raw1_", raw1), **_columns("ce_", ce))
    with atomic_path(out_dir / "calib_predictions.parquet") as tmp:
        held.to_parquet(tmp)
    meta = {"fingerprint": key, "config": asdict(config), "cost1_cpu_per_pair": cost1,
            "cost_ce_cpu_per_pair": cost_ce, "fit_pairs": len(fit), "calib_pairs": len(calib),
            "calib_sampled_candidates": int(calib["sampled"].sum()),
            "fit_queries": int(fit["query_id"].nunique()), "calib_queries": int(calib["query_id"].nunique()),
            "eval_batch_size": config.cross_encoder.eval_batch_size, "stage2_train": stats,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    return Teacher(stage1, model, meta)


def fit_teacher(pairs: pd.DataFrame, negatives: pd.Index, scorer: PairScorer, out_dir: Path,
                config: TeacherConfig, console: Console | None = None) -> Teacher:
    """Fit both stages on "fit" queries, calibrate them and choose tau on "calib" queries.

    pairs: query_id, item_id, query_norm, prior columns, relevance (NaN = unjudged), role.
    Models already in out_dir with the same fingerprint are loaded instead of refitted; the
    calibrators and tau are derived again from their saved calibration predictions."""
    console = console or Console(stderr=True)
    fit = training_rows(pairs, negatives, "fit", config.negative_weight)
    calib = calibration_rows(pairs, negatives, config)
    key = fingerprint(config, fit, calib, scorer)
    saved = out_dir / "teacher.json"
    if saved.exists() and json.loads(saved.read_text()).get("fingerprint") == key:
        console.print(f"teacher: reusing the fitted teacher in {out_dir}")
        teacher = Teacher.load(out_dir)
    else:
        console.print(f"teacher: fitting on {len(fit):,} pairs, calibrating on {len(calib):,}")
        out_dir.mkdir(parents=True, exist_ok=True)
        teacher = _fit(fit, calib, scorer, out_dir, config, key)

    curve = teacher.calibrate(pd.read_parquet(out_dir / "calib_predictions.parquet"), config.cascade,
                              config.calibration)
    teacher.save(out_dir)
    cost1, cost_ce = teacher.meta["cost1_cpu_per_pair"], teacher.meta["cost_ce_cpu_per_pair"]
    console.print(f"teacher: tau = {teacher.tau:.3f} (escalates {curve['share'].iloc[-1]:.0%} of calib "
                  f"pairs at cost ratio {teacher.meta['cost_ratio_used']:.3f}); measured CPU s per 1k pairs: "
                  f"stage 1 {cost1 * 1e3:.2f}, cross-encoder {cost_ce * 1e3:.2f}")
    return teacher
