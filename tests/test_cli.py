"""The CLI's option plumbing: overrides reach the config, defaults and help come from the config classes."""

from __future__ import annotations

from typer.testing import CliRunner

from pipelines.cli import app, train_config
from pipelines.evaluation.ab import ABConfig
from pipelines.training.config import DataConfig, TrainConfig


def test_train_overrides_reach_the_config():
    full = train_config("human", quick=False, epochs=None, max_queries=None, seed=5, threads=3)
    assert (full.target.kind, full.seed, full.threads, full.epochs) == ("human", 5, 3, TrainConfig().epochs)
    assert full.data == DataConfig()  # nothing else moved
    quick = train_config("teacher", quick=True, epochs=2, max_queries=10, seed=1, threads=1)
    profile = TrainConfig.quick(kind="teacher", seed=1)
    assert (quick.epochs, quick.data.max_queries, quick.threads) == (2, 10, 1)
    assert quick.data.list_size == profile.data.list_size and quick.queries_per_batch == profile.queries_per_batch


def test_defaults_and_help_come_from_the_config_classes():
    out = CliRunner().invoke(app, ["ab", "--help"], terminal_width=200).output
    assert f"[default: {ABConfig().impressions}]" in out and "Bootstrap resamples of queries" in out
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "UNISUP_THREADS" in out and "torch threads of training" in out


def test_a_bad_setting_is_one_line_not_a_traceback(tmp_path):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "--threads", "0", "apply"])
    assert result.exit_code == 2 and "setting threads = 0" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["--online", "memcached://x", "apply"])
    assert result.exit_code == 2 and "expected 'sqlite' or" in result.output


def test_an_unknown_signal_is_a_bad_setting(make_workspace):
    ws = make_workspace()
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "--repo", str(ws.repo_dir),
                                      "signals", "build", "--only", "nope"])
    assert result.exit_code == 2 and "no signal named 'nope'" in result.output
