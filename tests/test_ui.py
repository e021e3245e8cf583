"""What a person sees of unisup: Feast's UI on the workspace registry (`unisup ui`), the command list
of `unisup --help`, and the warning of a dataset build whose feature is null in every row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.produce import build_signals
from pipelines.features.repo import apply
from pipelines.signals.spec import SignalContext
from pipelines.signals.teacher_labels import teacher_labels_fv

from conftest import AS_OF, free_port, prepare

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signals" / "title_overlap.py"


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("content-type", ""), response.read()


def wait_until_up(proc: subprocess.Popen, url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`unisup ui` exited with {proc.returncode}:\n{proc.stdout.read().decode()}")
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"`unisup ui` did not answer {url} within {seconds} s")


def test_ui_serves_the_workspace_registry_with_descriptions(make_workspace):
    ws = make_workspace()
    contents = apply(ws)  # the UI reads the registry only: no signal tables needed
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--workspace", str(ws.root),
                             "--repo", str(ws.repo_dir), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{base}/health")
        status, kind, page = get(f"{base}/")
        assert status == 200 and kind.startswith("text/html") and b"<html" in page.lower()
        # Feast 0.67's UI reads the project list, then the registry over REST under /api/v1
        projects = json.loads(get(f"{base}/projects-list.json")[2])["projects"]
        assert [(p["id"], p["registryPath"]) for p in projects] == [("unisup", "/api/v1")]
        views = json.loads(get(f"{base}/api/v1/feature_views?project=unisup")[2])["featureViews"]
        by_name = {v["spec"]["name"]: v["spec"] for v in views}
        assert set(by_name) >= {v.name for v in contents.views}
        assert by_name["teacher_labels"]["description"] == teacher_labels_fv.description
        features = {f["name"]: f.get("description") for f in by_name["teacher_labels"]["features"]}
        assert features == {f.name: f.description for f in teacher_labels_fv.features}
        services = json.loads(get(f"{base}/api/v1/feature_services?project=unisup")[2])["featureServices"]
        assert {s["spec"]["name"]: s["spec"]["description"] for s in services} == {
            s.name: s.description for s in contents.services}
        entities = json.loads(get(f"{base}/api/v1/entities?project=unisup")[2])["entities"]
        described = {e["spec"]["name"]: e["spec"].get("description") for e in entities}
        assert described.items() >= {e.name: e.description for e in contents.entities}.items()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_without_a_registry_says_what_to_run(tmp_path):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "empty"), "ui"])
    assert result.exit_code == 2 and "run `unisup apply` first" in " ".join(result.output.split())


def test_help_lists_commands_in_pipeline_order():
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    panel = out[out.index("Commands"):].splitlines()[1:]
    names = [line.strip("│ ").split()[0] for line in panel if line.startswith("│ ") and line[2] != " "]
    assert names == ["ingest", "signals", "apply", "materialize", "dataset", "train", "index", "rank", "prerank",
                     "engagement",
                     "serve", "ui", "eval", "ab", "consistency", "demo"]


def test_dataset_build_warns_when_a_feature_is_null_in_every_row(make_workspace, tmp_path):
    """The README's new-signal walkthrough: a signal first built after the entity rows' time is null in
    every row (the point-in-time join hides the rows' future), and the build says so and why."""
    ws = prepare(make_workspace())
    shutil.copy(EXAMPLE, ws.repo_dir / "title_overlap.py")
    with open(ws.repo_dir / "signals.py", "a") as f:
        f.write("from title_overlap import SIGNAL as title_overlap\n")
    built = AS_OF + pd.Timedelta(days=1)  # built a day after every other signal's latest event
    build_signals(ws, SignalContext(lake=ws.lake, as_of=built), only=["title_overlap"])
    apply(ws)
    pairs = pd.read_parquet(ws.features_dir / "title_overlap.parquet", columns=["query_id", "item_id"]).head(50)

    def dataset_build(at: pd.Timestamp) -> str:
        entities = tmp_path / f"entities-{at:%Y%m%d}.parquet"
        pairs.assign(event_timestamp=at).to_parquet(entities)
        result = CliRunner().invoke(app, ["--workspace", str(ws.root), "--repo", str(ws.repo_dir), "dataset",
                                          "build", "--entities", str(entities), "--out", str(tmp_path / "ds")])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())  # undo rich's wrapping

    before = dataset_build(AS_OF)
    assert "null in every row: title_overlap (overlap_ratio, title_has_query): every row" in before
    assert "older than the view's first event time" in before and "teacher_labels (" not in before

    after = dataset_build(AS_OF + pd.Timedelta(days=10))  # past engagement_stats' 7-day TTL
    assert "title_overlap (" not in after
    assert "engagement_stats (impressions_7d," in after and "the values had expired" in after
    assert "gated_engagement (gated_clicks_30d, gated_orders_30d, gated_ctr_30d): an on-demand view" in after
