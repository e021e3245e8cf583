"""Bi-encoder distillation: the target formula, lists, and a quick run through the real Feast path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.features.dataset import file_sha256
from pipelines.modeling.encoder import Encoder
from pipelines.modeling.registry import BASE_VERSION, available, resolve
from pipelines.training.config import DataConfig, TargetConfig, TrainConfig
from pipelines.training.data import CandidateLists, sample_batch
from pipelines.training.target import soft_target, utility
from pipelines.workspace import ConfigError

from conftest import AS_OF, prepare

ROWS = pd.DataFrame({
    "expected_grade": [3.0, 0.0, 1.5, np.nan],
    "fusion_score": [3 / 61, 0.0, 1 / 61, 1 / 70],
    "gated_ctr_30d": [0.2, 0.0, np.nan, 0.0],
    "ctr_smoothed_30d": [0.05, 0.4, np.nan, 0.1],
    "human_grade": [np.nan, 1.0, 3.0, np.nan],
})


def test_each_target_reads_only_its_signals():
    unified = utility(ROWS, TargetConfig("unified", w_teacher=1.0, w_prior=0.3, w_engagement=0.5))
    # row 2: the teacher says grade 1.5, a human said relevance 3 (grade 3): the human grade wins
    assert unified == pytest.approx([1.0 + 0.3 + 0.1, 0.0, 1.0 + 0.1, 0.3 * 61 / 70 / 3])
    teacher_only = utility(ROWS, TargetConfig("unified", human_override=False))
    assert teacher_only == pytest.approx([1.0 + 0.3 + 0.1, 0.0, 0.5 + 0.1, 0.3 * 61 / 70 / 3])
    assert utility(ROWS, TargetConfig("teacher")) == pytest.approx([1.0, 0.0, 0.5, 0.0])
    assert utility(ROWS, TargetConfig("human")) == pytest.approx([0.0, 0.0, 1.0, 0.0])
    # clicks, ungated: the status quo rewards the clicked irrelevant item (row 1) most
    assert utility(ROWS, TargetConfig("engagement")).argmax() == 1
    with pytest.raises(ConfigError, match="target 'clicks'"):
        TargetConfig("clicks")
    with pytest.raises(KeyError, match="gated_ctr_30d"):
        utility(ROWS.drop(columns="gated_ctr_30d"), TargetConfig())


def test_soft_target_is_a_distribution_ordered_like_utility():
    p = soft_target(np.array([0.2, 0.9, 0.5]), temperature=0.1)
    assert p.sum() == pytest.approx(1.0) and list(np.argsort(p)) == [0, 2, 1]
    assert soft_target(np.ones(4), 0.1) == pytest.approx(np.full(4, 0.25))
    # scale-free: the same ordering and spacing gives the same target at any scale
    assert soft_target(np.array([0.0, 10.0, 5.0]), 0.1) == pytest.approx(soft_target(np.array([0, 1, 0.5]), 0.1))


def test_batches_put_the_best_first_and_pad_short_lists():
    lists = CandidateLists(["q0", "q1"], [np.array([f"a{i}" for i in range(10)]), np.array(["b0", "b1", "b2"])],
                           [np.arange(10.0), np.array([0.0, 1.0, 0.5])])
    batch = sample_batch(lists, np.array([0, 1]), DataConfig(list_size=4, top_share=0.5), 0.1,
                         np.random.default_rng(0))
    assert batch.items[:2] == ["a9", "a8"] and batch.items[4] == "b1" and batch.items[7] == ""
    assert batch.mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert np.allclose(batch.target.sum(1), 1.0) and batch.target[1, 3] == 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipelines.training.train import train
    from pipelines.workspace import Workspace

    from conftest import copy_repo

    root = tmp_path_factory.mktemp("train")
    ws = prepare(Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo")))
    return ws, train(ws, TrainConfig.quick(), as_of=AS_OF)


def test_quick_run_registers_a_version_with_its_lineage(trained):
    ws, result = trained
    model = result.model
    manifest = json.loads((model.path / "model.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["feature_service"] == "training"
    assert lineage["dataset_sha256"] == file_sha256(manifest["stats"]["dataset_path"])
    assert lineage["config"]["target"]["kind"] == "unified"
    assert available(ws.models_dir) == [model.version, BASE_VERSION]
    assert resolve(ws.models_dir).version == model.version  # newest trained is the default
    assert np.isfinite(result.stats["final_loss"]) and result.stats["sequences_per_second"] > 0
    dataset = pd.read_parquet(manifest["stats"]["dataset_path"])
    assert {"expected_grade", "fusion_score", "gated_ctr_30d", "title", "query_text"} <= set(dataset.columns)


def test_trained_weights_load_back_and_moved(trained):
    _, result = trained
    tuned, base = result.model.load(), Encoder.load()
    assert tuned.fingerprint() != base.fingerprint()
    vectors = tuned.encode(["cordless drill", "drill cordless 18v"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
