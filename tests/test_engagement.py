"""pCTR / pCVR end to end on a small workspace: trained from the feature store, corrected, calibrated,
saved and loaded; figures checked against rates counted from the impression log itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.engagement.config import EngagementConfig
from pipelines.engagement.data import impression_rows
from pipelines.engagement.store import EngagementFiles
from pipelines.engagement.train import train_engagement, write_report
from pipelines.features.produce import build_signals
from pipelines.signals.spec import SignalContext
from pipelines.signals.user_stats import impression_log
from pipelines.workspace import ConfigError

from conftest import AS_OF, prepare

CONFIG = EngagementConfig(rounds=40, max_depth=4, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipelines.workspace import Workspace

    from conftest import copy_repo

    root = tmp_path_factory.mktemp("engagement")
    ws = prepare(Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo")))
    ctx = SignalContext(lake=ws.lake, as_of=AS_OF, seed=0, quick=True, work_dir=ws.cache_dir)
    build_signals(ws, ctx, only=["user_stats", "user_brand"])  # records the build's settings
    report = train_engagement(ws, CONFIG)
    return ws, ctx, report


def test_heldout_figures_are_those_of_the_log_and_calibration_fixes_the_downsampling_shift(trained):
    ws, ctx, report = trained
    log = impression_log(ctx)
    heldout = log[log["day"] >= log["day"].max() - CONFIG.heldout_days + 1]
    click = report["targets"]["click"]["with_users"]["heldout"]
    assert click["raw"]["rows"] == len(heldout)
    assert click["raw"]["observed_rate"] == pytest.approx(heldout["click"].mean(), abs=1e-6)
    order = report["targets"]["order"]["with_users"]["heldout"]
    clicked = heldout[heldout["click"] == 1]
    assert order["raw"]["observed_rate"] == pytest.approx(clicked["order"].mean(), abs=1e-6)
    # trained on ~w of the negatives, the raw model over-predicts by about 1 / w; both fixes undo it
    assert click["raw"]["mean_predicted"] > 2 * click["raw"]["observed_rate"]
    assert click["corrected"]["mean_predicted"] == pytest.approx(click["raw"]["observed_rate"], rel=0.25)
    assert click["calibrated"]["ece"] < click["raw"]["ece"] / 5
    assert click["calibrated"]["roc_auc"] > 0.7  # relevance and position are learnable
    assert (ws.root / "reports" / "engagement-engagement" / "reliability-click.png").stat().st_size > 0


def test_training_days_keep_every_click_and_about_w_of_the_rest(trained):
    ws, ctx, report = trained
    data = impression_rows(ws, CONFIG)
    log = impression_log(ctx)
    days = log["day"].max() + 1
    train_log = log[(log["day"] >= CONFIG.first_day) & (log["day"] < days - CONFIG.heldout_days - 1)]
    kept = data.rows[data.rows["role"] == "train"]
    assert kept["click"].sum() == train_log["click"].sum()
    negatives = (kept["click"] == 0).sum() / (train_log["click"] == 0).sum()
    assert negatives == pytest.approx(CONFIG.negative_rate, abs=0.02)
    assert set(data.user_features) >= {"user_clicks_30d", "brand_clicks_30d"}


def test_saved_models_load_and_predict_what_training_reported(trained):
    ws, _, report = trained
    models = EngagementFiles.of(ws, "engagement").load()
    data = impression_rows(ws, CONFIG)
    heldout = data.rows[data.rows["role"] == "heldout"]
    p = models["click"].predict(heldout)
    assert np.mean(p) == pytest.approx(report["targets"]["click"]["with_users"]["heldout"]["calibrated"]
                                       ["mean_predicted"], abs=1e-5)
    assert ((p >= 0) & (p <= 1)).all()
    meta = json.loads(EngagementFiles.of(ws, "engagement").meta.read_text())
    assert set(meta["lineage"]["feature_services"]) == {"engagement", "ranking"}
    out = write_report(ws, "engagement", report)
    assert "user-feature lift" in (out / "report.md").read_text()


def test_a_bad_setting_is_a_one_line_error():
    with pytest.raises(ConfigError, match="negative_rate"):
        EngagementConfig(negative_rate=0.0)
