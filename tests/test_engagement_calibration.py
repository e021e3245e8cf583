"""Calibration utilities of pipelines.engagement against known rates, sklearn and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression

from pipelines.engagement.calibration import (
    IsotonicCalibrator,
    correct_downsampling,
    downsample_negatives,
    expected_calibration_error,
    reliability,
    reliability_diagram,
    scores,
)

RATES = (0.01, 0.05, 0.2)
KEEP = 0.1


def ctr_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Click probabilities crowded near 0 (mean ~0.07), as pCTRs are."""
    return rng.beta(1.5, 20, n)


@pytest.mark.parametrize("r", RATES)
def test_correction_recovers_known_base_rate(r):
    n = 2_000_000
    labels = np.random.default_rng(7).random(n) < r
    kept = labels[downsample_negatives(labels, KEEP, seed=11)]
    observed = kept.mean()
    assert observed > 1.5 * r  # the shift is real (r / (r + (1 - r) w) is ~5-9x r here)
    # delta method: q ~ P / (P + N / w) with P ~ Bin(n, r) positives and N ~ Bin(n, (1 - r) w) kept negatives
    se = np.sqrt(r * (1 - r) / n + r**2 * (1 - r) * (1 - (1 - r) * KEEP) / (KEEP * n))
    assert abs(correct_downsampling(np.array([observed]), KEEP)[0] - r) < 5 * se


def test_correction_inverts_the_shift():
    r = np.linspace(0, 1, 1001)
    for w in (0.01, 0.1, 0.5, 1.0):
        np.testing.assert_allclose(correct_downsampling(r / (r + (1 - r) * w), w), r, rtol=1e-12, atol=1e-15)


def test_downsample_negatives():
    labels = np.random.default_rng(0).random(1_000_000) < 0.03
    keep = downsample_negatives(labels, 0.2, seed=5)
    assert keep.dtype == bool and keep.shape == labels.shape
    assert keep[labels].all()
    negatives = (~labels).sum()
    assert abs(keep[~labels].sum() - 0.2 * negatives) < 5 * np.sqrt(negatives * 0.2 * 0.8)
    np.testing.assert_array_equal(keep, downsample_negatives(labels, 0.2, seed=5))
    assert not np.array_equal(keep, downsample_negatives(labels, 0.2, seed=6))
    assert downsample_negatives(labels, 1.0, seed=5).all()
    for bad in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="0 < rate <= 1"):
            downsample_negatives(labels, bad, seed=5)
        with pytest.raises(ValueError, match="0 < rate <= 1"):
            correct_downsampling(np.array([0.5]), bad)


def test_isotonic_calibrates_held_out_scores():
    rng = np.random.default_rng(3)
    n = 200_000
    p_fit, p_test = ctr_like(rng, n), ctr_like(rng, n)
    y_fit, y_test = rng.random(n) < p_fit, rng.random(n) < p_test
    assert expected_calibration_error(y_test, p_test**2) > 0.03  # squared scores are far off
    calibrator = IsotonicCalibrator().fit(p_fit**2, y_fit)
    assert expected_calibration_error(y_test, calibrator.predict(p_test**2)) < 0.01


def test_isotonic_matches_sklearn_and_survives_json():
    rng = np.random.default_rng(4)
    p = ctr_like(rng, 50_000)
    y = rng.random(len(p)) < p
    calibrator = IsotonicCalibrator().fit(p**2, y)
    probe = np.r_[-1.0, 0.0, np.linspace(0, 1, 10_001), (p**2)[:1000], 2.0]  # beyond the range: clipped
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1, increasing=True).fit(p**2, y)
    np.testing.assert_allclose(calibrator.predict(probe), reference.predict(probe), rtol=1e-12, atol=1e-15)
    loaded = IsotonicCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_array_equal(loaded.predict(probe), calibrator.predict(probe))
    assert loaded == calibrator


def test_isotonic_predict_before_fit():
    with pytest.raises(ValueError, match="before fit"):
        IsotonicCalibrator().predict(np.array([0.1]))


def test_ece_of_calibrated_labels_is_near_zero():
    rng = np.random.default_rng(5)
    p = ctr_like(rng, 1_000_000)
    assert expected_calibration_error(rng.random(len(p)) < p, p) < 0.005


def test_ece_by_hand():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.05, 0.6])
    y = np.array([0, 1, 1, 1, 0, 0])
    # 3 equal-mass bins: {0.05, 0.1}, {0.2, 0.3}, {0.4, 0.6}
    # |0.075 - 0| = 0.075, |0.25 - 1| = 0.75, |0.5 - 0.5| = 0 -> (2 * 0.075 + 2 * 0.75 + 0) / 6 = 0.275
    assert expected_calibration_error(y, p, bins=3) == pytest.approx(0.275)
    table = reliability(y, p, bins=3)
    np.testing.assert_allclose(table["mean_predicted"], [0.075, 0.25, 0.5])
    np.testing.assert_allclose(table["observed_rate"], [0.0, 1.0, 0.5])
    assert table["count"].tolist() == [2, 2, 2]


def test_reliability_matches_sklearn_quantile_bins():
    rng = np.random.default_rng(6)
    p = ctr_like(rng, 100_000)
    y = rng.random(len(p)) < p**0.8
    table = reliability(y, p, bins=20)
    observed, predicted = calibration_curve(y, p, n_bins=20, strategy="quantile")
    np.testing.assert_allclose(table["mean_predicted"], predicted)
    np.testing.assert_allclose(table["observed_rate"], observed)
    assert table["count"].sum() == len(p) and np.ptp(table["count"]) <= 1


def test_scores():
    rng = np.random.default_rng(8)
    p = ctr_like(rng, 20_000)
    y = (rng.random(len(p)) < p).astype(int)
    result = scores(y, p)
    assert list(result) == ["roc_auc", "pr_auc", "log_loss", "ece", "mean_predicted", "observed_rate", "rows"]
    assert 0.5 < result["roc_auc"] < 1 and 0 < result["pr_auc"] < 1 and result["rows"] == len(y)
    assert result["observed_rate"] == round(y.mean(), 6)
    one_class = scores(np.zeros(100, int), np.r_[0.0, np.full(99, 0.01)])
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None
    assert np.isfinite(one_class["log_loss"]) and one_class["observed_rate"] == 0


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(9)
    p = ctr_like(rng, 20_000)
    y = rng.random(len(p)) < p
    path = reliability_diagram({"raw": (y, p**2), "calibrated": (y, p)}, tmp_path / "plots" / "rel.png", "pCTR")
    assert path == tmp_path / "plots" / "rel.png"
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in path.parent.iterdir()] == ["rel.png"]  # no temporary left behind
