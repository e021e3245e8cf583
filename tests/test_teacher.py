"""The teacher cascade on a small synthetic lake, quick profile (one producer run shared by the tests)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest.synthetic import generate_synthetic
from pipelines.lake import Lake
from pipelines.signals.spec import SignalContext
from pipelines.teacher.calibrate import (
    CalibrationConfig,
    GradeCalibrator,
    agreement,
    binned_ece,
    ece,
    fit_calibrator,
    propensity_weights,
    teacher_role,
)
from pipelines.teacher.cascade import capped, escalate, tau_for_share
from pipelines.teacher.grades import (
    confidence,
    cumulative,
    expected_grade,
    from_cumulative,
    p_relevant,
    to_grade,
)

from conftest import reference_ndcg10

AS_OF = pd.Timestamp("2024-03-01", tz="UTC")
JOIN_KEYS = ["query_id", "item_id"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick producer run: the lake, its context and the teacher_labels frame."""
    import torch

    from pipelines.signals.teacher_labels import teacher_labels

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("teacher")
    lake = Lake(root / "lake")
    generate_synthetic(lake, n_items=300, n_queries=90, seed=3, as_of=AS_OF)
    ctx = SignalContext(lake=lake, as_of=AS_OF, seed=0, quick=True, work_dir=root / "work")
    return ctx, teacher_labels(ctx)


def test_grade_mapping_covers_every_home_depot_value():
    values = [1, 1.25, 1.33, 1.5, 1.67, 1.75, 2, 2.25, 2.33, 2.5, 2.67, 2.75, 3]
    assert to_grade(values).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]
    assert ((to_grade(values) >= 2) == (np.array(values) >= 2.0)).all()  # relevant = metrics.RELEVANT
    for bad in ([0.5], [3.5], [np.nan]):
        with pytest.raises(ValueError):
            to_grade(bad)


def test_cumulative_round_trip_and_summaries():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), 50)
    assert np.allclose(from_cumulative(cumulative(probs)), probs)
    assert np.allclose(expected_grade(probs), probs @ np.arange(4))
    assert np.allclose(p_relevant(probs), probs[:, 2:].sum(1))
    fixed = from_cumulative(np.array([[0.5, 0.7, 0.1]]))  # out of order: repaired, not negative
    assert (fixed >= 0).all() and np.isclose(fixed.sum(), 1.0)


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4), n)
    probs[np.arange(n), grades] += 0.6
    probs = probs ** 3  # overconfident
    return probs / probs.sum(1, keepdims=True), grades


def test_calibration_is_monotone_and_improves_held_out_ece():
    train_p, train_g = _miscalibrated(4000, 1)
    test_p, test_g = _miscalibrated(4000, 2)
    cal = GradeCalibrator.fit(train_p, train_g)
    out = cal.transform(test_p)
    assert np.allclose(out.sum(1), 1.0) and (out >= 0).all()
    assert ece(out, test_g) < 0.5 * ece(test_p, test_g)
    for xs, ys in cal.knots:  # each map raw P(grade >= k) -> calibrated is non-decreasing
        assert (np.diff(xs) > 0).all() and (np.diff(ys) >= 0).all()
    order = np.argsort(cumulative(test_p)[:, 0])
    assert (np.diff(cumulative(out)[order, 0]) >= -1e-12).all()


def _binary_probs(s: np.ndarray) -> np.ndarray:
    """Raw grade probabilities whose P(grade >= 2) is s: grade 2 with s, grade 0 otherwise."""
    return np.column_stack([1 - s, np.zeros_like(s), s, np.zeros_like(s)])


def _population(n: int, seed: int):
    """A candidate population with a raw score s, a feature z the score misses, relevance that
    depends on both, and judged pairs selected by both (more of them where z = 1: selection
    biased towards relevance, but only through features, i.e. missing at random given (s, z))."""
    rng = np.random.default_rng(seed)
    s, z = rng.random(n), rng.integers(0, 2, n).astype(float)
    relevant = rng.random(n) < s * (0.4 + 0.6 * z)
    judged = rng.random(n) < 1 / (1 + np.exp(-(-4.0 + 3.0 * z + 1.5 * s)))
    return s, z, relevant, judged


def _unjudged_sample(judged: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, float]:
    """Row numbers of a uniform sample of the unjudged pairs and the pairs each stands for."""
    pool = np.flatnonzero(~judged)
    return np.random.default_rng(seed).choice(pool, size, replace=False), len(pool) / size


def test_importance_weights_recover_the_population_rate_from_a_biased_judged_sample():
    s, z, relevant, judged = _population(200_000, 0)
    sample, mass = _unjudged_sample(judged, 20_000, 1)
    grades = np.where(relevant[judged], 2, 0)
    features = np.column_stack([s, z])
    weights = propensity_weights(features[judged], features[sample], mass, max_weight=1_000)
    assert weights.mean() == pytest.approx(1.0) and (weights > 0).all()
    plain = GradeCalibrator.fit(_binary_probs(s[judged]), grades)
    weighted = GradeCalibrator.fit(_binary_probs(s[judged]), grades, weights)
    everyone = _binary_probs(s)
    truth = relevant.mean()
    err_plain = abs(p_relevant(plain.transform(everyone)).mean() - truth)
    err_weighted = abs(p_relevant(weighted.transform(everyone)).mean() - truth)
    assert err_plain > 0.05  # the judged sample over-represents z = 1, where pairs are more relevant
    assert err_weighted < 0.02 and err_weighted < err_plain / 4
    assert (binned_ece(p_relevant(weighted.transform(everyone)), relevant)
            < binned_ece(p_relevant(plain.transform(everyone)), relevant) / 2)


def test_candidate_sample_recovers_a_population_missing_not_at_random():
    """Judged pairs relevant with m(s), unjudged ones with rho x m(s): no feature explains the
    difference, so importance weighting cannot see it; the candidate sample with the right rho
    recovers the population's rate at every score."""
    rng = np.random.default_rng(2)
    n, rho = 200_000, 0.4
    s = rng.random(n)
    judged = rng.random(n) < 0.05 + 0.3 * s
    relevant = rng.random(n) < np.where(judged, 1.0, rho) * (0.3 + 0.6 * s)
    sample, mass = _unjudged_sample(judged, 20_000, 3)
    grades = np.where(relevant[judged], 2, 0)
    config = CalibrationConfig(sample="candidates", unjudged_relevance=rho)
    cal = fit_calibrator(config, _binary_probs(s[judged]), grades, _binary_probs(s[sample]), mass)
    plain = fit_calibrator(CalibrationConfig(sample="judged"), _binary_probs(s[judged]), grades,
                           _binary_probs(s[sample]), mass)
    predicted, predicted_plain = (p_relevant(c.transform(_binary_probs(s))) for c in (cal, plain))
    assert abs(predicted.mean() - relevant.mean()) < 0.01 < abs(predicted_plain.mean() - relevant.mean())
    for lo in np.arange(0, 1, 0.2):  # per score band, not only on average
        band = (s >= lo) & (s < lo + 0.2)
        assert abs(predicted[band].mean() - relevant[band].mean()) < 0.02
    assert binned_ece(predicted, relevant) < 0.02


def test_agreement_matches_a_hand_computed_example():
    human = np.array([0, 1, 2, 3, 2, 3])
    teacher = np.array([0, 2, 2, 2, 3, 3])  # most probable grades
    probs = np.full((6, 4), 0.1)
    probs[np.arange(6), teacher] = 0.7
    a = agreement(human, probs)
    assert a["confusion"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert a["exact"] == pytest.approx(3 / 6) and a["within_one"] == pytest.approx(1.0)
    # quadratic weights (i - j)^2 / 9; observed disagreement 3 / 9; expected from the marginals
    # human (1, 1, 2, 2) and teacher (1, 0, 3, 2) over 6 pairs: 78 / 9 / 6 = 13 / 9
    assert a["qwk"] == pytest.approx(1 - (3 / 9) / (13 / 9))  # 10 / 13
    assert a["human"] == pytest.approx([1 / 6, 1 / 6, 2 / 6, 2 / 6])
    assert a["predicted"] == pytest.approx([1 / 6, 0, 3 / 6, 2 / 6])
    assert a["mean_probability"] == pytest.approx([0.1 + 0.6 / 6, 0.1, 0.1 + 1.8 / 6, 0.1 + 1.2 / 6])
    assert agreement(human, np.eye(4)[human])["qwk"] == pytest.approx(1.0)


def test_escalation_rule_picks_exactly_the_uncertain_pairs():
    conf = np.array([0.9, 0.3, 0.55, 0.8, 0.41, 0.5])
    assert escalate(conf, 0.5).tolist() == [False, True, False, False, True, False]
    tau = tau_for_share(conf, 0.5)
    assert escalate(conf, tau).tolist() == [False, True, False, False, True, True]
    assert capped(conf, 0.99, max_pairs=2).tolist() == [False, True, False, False, True, False]


def test_roles_are_stable_and_split_training_queries():
    texts = [f"query {i}" for i in range(2000)]
    roles = [teacher_role(t) for t in texts]
    assert roles == [teacher_role(t.upper() + "  ") for t in texts]  # by normalized text
    assert 0.15 < roles.count("calib") / len(roles) < 0.25


def test_output_fits_the_view_with_two_dated_versions(run):
    from pipelines.features.produce import conform
    from pipelines.features.repo import load_repo
    from pipelines.workspace import DEFAULT_REPO

    _ctx, df = run
    view = next(v for v in load_repo(DEFAULT_REPO).views if v.name == "teacher_labels")
    table = conform(view, df, JOIN_KEYS)
    assert table.num_rows == len(df) > 0
    v1, v2 = (df[df["teacher_version"] == v] for v in ("teacher-v1", "teacher-v2"))
    assert len(v1) == len(v2) == len(df) // 2
    assert (v1["event_timestamp"] == AS_OF - pd.Timedelta(days=14)).all()
    assert (v2["event_timestamp"] == AS_OF - pd.Timedelta(days=1)).all()
    assert (v1["teacher_stage"] == 1).all() and (v2["teacher_stage"] == 2).any()
    probs = df[[f"grade_p{g}" for g in range(4)]].to_numpy(np.float64)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.allclose(df["expected_grade"], expected_grade(probs), atol=1e-4)
    assert np.allclose(df["confidence"], confidence(probs), atol=1e-5)


def test_cascade_escalates_exactly_where_stage_one_is_unsure(run):
    ctx, df = run
    meta = json.loads((ctx.work_dir / "teacher" / "teacher.json").read_text())
    v1 = df[df["teacher_version"] == "teacher-v1"].set_index(JOIN_KEYS)
    v2 = df[df["teacher_version"] == "teacher-v2"].set_index(JOIN_KEYS).loc[v1.index]
    conf = v1["confidence"].to_numpy(np.float64)  # stored as float32: skip pairs within rounding of tau
    clear = np.abs(conf - meta["tau"]) > 1e-6
    unsure = conf < meta["tau"]
    stage2 = v2["teacher_stage"].to_numpy() == 2
    cap = meta["config"]["cascade"]["max_pairs"]
    assert unsure.sum() > 0 and stage2.sum() > 0
    if unsure.sum() <= cap:
        assert (stage2 == unsure)[clear].all()  # exactly the unsure pairs
    else:
        assert stage2.sum() == cap and not (stage2 & ~unsure)[clear].any()  # the least sure of them
    assert np.allclose(v1.loc[~stage2, "expected_grade"], v2.loc[~stage2, "expected_grade"])


def test_tau_depends_on_the_cost_setting_not_on_this_run_s_clock(run):
    """A busy machine measures other CPU costs; with the ratio fixed, tau (and the labels) stay."""
    from pipelines.teacher.cascade import CascadeConfig, Teacher

    ctx, _ = run
    teacher_dir = ctx.work_dir / "teacher"
    held = pd.read_parquet(teacher_dir / "calib_predictions.parquet")
    taus = {}
    for slow in (1.0, 3.0):  # stage 1 measured three times dearer, as beside another job
        teacher = Teacher.load(teacher_dir)
        teacher.meta["cost1_cpu_per_pair"] *= slow
        for ratio in (0.135, None):
            teacher.calibrate(held, CascadeConfig(cost_ratio=ratio))
            taus[slow, ratio] = (teacher.tau, teacher.meta["cost_ratio_used"])
    assert taus[1.0, 0.135] == taus[3.0, 0.135] and taus[1.0, 0.135][1] == 0.135
    assert taus[3.0, None][1] == pytest.approx(3 * taus[1.0, None][1])  # None: the measurement is used


def test_calibration_sample_is_re_applied_without_refitting(run):
    """The sample the calibrators see is a setting re-applied to the saved calibration predictions:
    the candidate sample is there, flagged, and calibrating on it lowers P(relevant) on the
    unjudged candidates; the fitted models' fingerprint does not depend on the setting."""
    from pipelines.teacher.cascade import CascadeConfig, Teacher, TeacherConfig, fingerprint

    ctx, _ = run
    teacher_dir = ctx.work_dir / "teacher"
    held = pd.read_parquet(teacher_dir / "calib_predictions.parquet")
    sampled = held[held["sampled"]]
    assert len(sampled) > 0 and sampled["relevance"].isna().all() and (sampled["mass"] >= 1).all()
    raw = sampled[[f"raw1_{g}" for g in range(4)]].to_numpy()
    mean = {}
    for sample in ("judged", "weighted", "candidates"):
        teacher = Teacher.load(teacher_dir)
        teacher.calibrate(held, CascadeConfig(), CalibrationConfig(sample=sample))
        assert teacher.meta["calibration"]["sample"] == sample
        mean[sample] = p_relevant(teacher.calib1.transform(raw)).mean()
    assert mean["candidates"] < mean["judged"]

    rows = held.assign(query_norm="q", weight=1.0)
    scorer = type("Titles", (), {"titles_of": staticmethod(lambda ids: [str(i) for i in ids])})()
    keys = {fingerprint(TeacherConfig.quick(0), rows, rows, scorer)}
    for sample in ("judged", "weighted"):
        config = TeacherConfig.quick(0)
        config.calibration = CalibrationConfig(sample=sample, unjudged_relevance=0.9, candidates=1_000)
        keys.add(fingerprint(config, rows, rows, scorer))
    assert len(keys) == 1


def test_human_grades_are_copied_for_training_queries_only(run):
    ctx, df = run
    queries = ctx.lake.read("queries").set_index("query_id")
    assert set(queries.loc[df["query_id"].unique(), "split"]) == {"train"}  # no dev query is labelled
    judged = ctx.lake.read("judgments").set_index(JOIN_KEYS)["relevance"]
    for _, rows in df.groupby("teacher_version"):
        rows = rows.set_index(JOIN_KEYS)
        has = rows["human_grade"].notna()
        assert np.allclose(rows.loc[has, "human_grade"], judged.reindex(rows.index[has]))  # never overwritten
        assert judged.reindex(rows.index[~has]).isna().all()
        train_judged = judged[queries.loc[judged.index.get_level_values(0), "split"].to_numpy() == "train"]
        assert set(train_judged.index) <= set(rows.index)  # every training judgment has its row


def test_producer_reads_no_dev_judgments(run, tmp_path):
    """Same work dir, dev judgments removed from the lake: the fitted teacher is reused (its
    fingerprint covers every training row) and the labels come out identical."""
    from pipelines.signals.teacher_labels import teacher_labels

    ctx, df = run
    lake = Lake(tmp_path / "lake")
    shutil.copytree(ctx.lake.root, lake.root)
    queries = lake.read("queries")
    judgments = lake.read("judgments")
    dev = judgments["query_id"].isin(queries.loc[queries["split"] == "dev", "query_id"])
    assert dev.any()
    lake.write("judgments", judgments[~dev])
    again = teacher_labels(SignalContext(lake=lake, as_of=ctx.as_of, seed=ctx.seed, quick=True,
                                         work_dir=ctx.work_dir))
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True))


def hand_ndcg10(pairs: pd.DataFrame, score: np.ndarray) -> float:
    """Mean reference NDCG@10 (conftest.reference_ndcg10) of each query's judged items ordered by
    `score`, ties by item id; a query with no gain is skipped."""
    values = []
    for _, q in pairs.assign(score=score).groupby("query_id"):
        relevance = q["relevance"].to_numpy(np.float64)
        if not (np.round(relevance * 12) > 12).any():
            continue
        order = np.lexsort((q["item_id"].to_numpy(str), -q["score"].to_numpy(np.float64)))
        values.append(reference_ndcg10(relevance[order], relevance))
    return float(np.mean(values))


def test_report_on_dev(run):
    """Ranges, then the report's NDCG@10 against hand_ndcg10 on the same dev pairs: the random-order
    reference (its scores are the seeded draw, known here) and stage 1 (scores from the fitted teacher)."""
    from rich.console import Console

    from pipelines.evaluation.teacher_report import COMPARED, dev_pairs, report_markdown, teacher_report
    from pipelines.signals.teacher_labels import fitted_teacher
    from pipelines.teacher.cascade import TIE_BREAK, TeacherConfig

    ctx, _ = run
    report = teacher_report(ctx.lake, ctx.work_dir, quick=True)
    methods = {m["method"]: m for m in report["methods"]}
    assert len(methods) == 4 and report["split"] == "dev" and report["pairs"] > 0
    cascade = methods["cascade"]
    assert 0.0 <= cascade["escalation_share"] <= 1.0
    for m in methods.values():
        assert 0.0 < m["ndcg@10"] <= 1.0 and m["cpu_s_per_1k"] > 0
        assert 0.0 <= m["ece_calibrated"] <= 1.0
        a = m["agreement"]
        assert a["pairs"] == report["pairs"] and sum(map(sum, a["confusion"])) == report["pairs"]
        assert 0.0 <= a["exact"] <= a["within_one"] <= 1.0 and -1.0 <= a["qwk"] <= 1.0
        assert sum(a["human"]) == pytest.approx(1.0) and sum(a["mean_probability"]) == pytest.approx(1.0)
    compared = report["calibrations_compared"]
    assert len(compared) == len(COMPARED) and sum(c["configured"] for c in compared) == 1
    for c in compared:
        assert 0.0 <= c["unjudged_stage1"]["share_p_relevant>=0.5"] <= 1.0 and c["stage1"]["pairs"] == report["pairs"]
    configured = next(c for c in compared if c["configured"])
    assert configured["tau"] == pytest.approx(report["tau"])
    assert configured["cascade"]["ece"] == pytest.approx(methods["cascade"]["ece_calibrated"])
    assert configured["cascade"]["ndcg@10"] == pytest.approx(methods["cascade"]["ndcg@10"])
    assert configured["stage1"]["ndcg@10"] == pytest.approx(methods["stage 1 (boosting)"]["ndcg@10"])
    unjudged = report["unjudged_candidates"]
    assert set(unjudged["versions"]) == {"teacher-v1", "teacher-v2"} and not unjudged["stale"]
    assert "| cascade |" in report_markdown(report) and "QWK" in report_markdown(report)

    # the dev pairs, from the lake directly: dev queries' judgments in (query_id, item_id) order
    queries = ctx.lake.read("queries")
    dev = ctx.lake.read("judgments")
    dev = dev[dev["query_id"].isin(queries.loc[queries["split"] == "dev", "query_id"])]
    dev = dev.sort_values(JOIN_KEYS).reset_index(drop=True)[[*JOIN_KEYS, "relevance"]]
    assert report["pairs"] == len(dev) and report["queries"] == dev["query_id"].nunique()
    random_order = hand_ndcg10(dev, np.random.default_rng(0).random(len(dev)))  # the report's seed is 0
    assert report["reference_ndcg@10"]["random order"] == pytest.approx(random_order, abs=1e-9)

    # stage 1: calibrated expected grade, ties by the raw one, from the teacher the report loaded
    ctx_now = SignalContext(lake=ctx.lake, as_of=pd.Timestamp.now(tz="UTC"), quick=True, work_dir=ctx.work_dir)
    teacher, _, scorer, _ = fitted_teacher(ctx_now, TeacherConfig.quick(0), Console(stderr=True))
    pairs, _ = dev_pairs(ctx_now, scorer.channels)
    assert pairs[JOIN_KEYS].to_numpy().tolist() == dev[JOIN_KEYS].to_numpy().tolist()
    raw, cal = teacher.stage1_probs(scorer.features(pairs))
    grades = np.arange(4.0)
    stage1 = hand_ndcg10(dev, cal @ grades + TIE_BREAK * (raw @ grades))
    assert methods["stage 1 (boosting)"]["ndcg@10"] == pytest.approx(stage1, abs=1e-9)
    assert stage1 > random_order  # a fitted teacher orders judged items better than chance

    # the derived columns, by their documented arithmetic
    full = methods["stage 2 everywhere (cross-encoder + stage 1)"]
    for m in methods.values():
        assert m["ndcg_retention"] == pytest.approx(m["ndcg@10"] / full["ndcg@10"])
        assert m["gain_kept"] == pytest.approx((m["ndcg@10"] - random_order) / (full["ndcg@10"] - random_order))
        assert m["cost_share"] == pytest.approx(m["cpu_s_per_1k"] / full["cpu_s_per_1k"])
