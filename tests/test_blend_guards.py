"""The blend's two guards, on a prepared synthetic workspace with a real flat index:

- fit_blend refuses weights that would reverse the index's order for items without features
  (a non-positive model-score weight), and leaves the blend it had in place;
- the retriever warns at load when the blend was fitted on other feature definitions than the
  registry's now (a signal joined `retriever_online` after the fit), and stops once it is refitted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pipelines.features.produce import build_signals
from pipelines.features.repo import apply
from pipelines.index.build import IndexConfig, build_index
from pipelines.index.fit_blend import BlendError, fit_blend
from pipelines.settings import Settings
from pipelines.signals.spec import SignalContext
from pipelines.workspace import Workspace

from conftest import AS_OF, copy_repo, prepare

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signals" / "title_overlap.py"
STALE = "was fitted on other feature definitions"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Workspace, Path]:
    """A prepared workspace (SQLite online store) and a flat index of its catalog, no blend yet."""
    root = tmp_path_factory.mktemp("blend")
    ws = prepare(Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo")))
    manifest = build_index(ws, IndexConfig(), progress=False)
    return ws, ws.indexes_dir / manifest.index_version


def test_fit_blend_refuses_a_model_score_that_would_reverse_the_index(indexed):
    """With the lake's judgments the cosine orders judged items the right way and gets a positive
    weight; with every grade mirrored (1 <-> 3, 1.33 <-> 2.67) the same cosine orders them backwards,
    and fit_blend must refuse rather than write a blend that reverses the index for featureless items."""
    ws, index_dir = indexed
    good = fit_blend(ws, index_dir)
    assert good.weights[0] > 0 and good.fitted["train_query_auc_model_score"] > 0.5
    blend_file = index_dir / "blend.json"
    written = blend_file.read_bytes()
    judgments = ws.lake.read("judgments")
    try:
        ws.lake.write("judgments", judgments.assign(relevance=4.0 - judgments["relevance"]))
        with pytest.raises(BlendError, match=r"the model score got weight -?\d+\.\d+ <= 0"):
            fit_blend(ws, index_dir)
    finally:
        ws.lake.write("judgments", judgments)
    assert blend_file.read_bytes() == written  # the refused fit wrote nothing


def loaded_retriever(ws: Workspace, index_dir: Path):
    from serving.retriever import LoadedRetriever

    return LoadedRetriever(Settings.load(workspace=ws.root, online=ws.online, repo=ws.repo_dir, index=index_dir,
                                         workers=1, torch_threads=1))


def stale_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "unisup.serving" and STALE in r.getMessage()]


def test_a_blend_fitted_on_other_feature_definitions_is_warned_about(indexed, caplog):
    ws, index_dir = indexed
    caplog.set_level(logging.WARNING, logger="unisup.serving")
    fit_blend(ws, index_dir)
    fresh = loaded_retriever(ws, index_dir)
    assert fresh.versions.feature_definitions == fresh.blend.fitted["definitions_sha256"][:12]
    assert stale_warnings(caplog) == []

    # a platform team adds a signal (README "Adding a signal"): retriever_online gains overlap_ratio
    shutil.copy(EXAMPLE, ws.repo_dir / "title_overlap.py")
    with open(ws.repo_dir / "signals.py", "a") as f:
        f.write("from title_overlap import SIGNAL as title_overlap\n")
    build_signals(ws, SignalContext(lake=ws.lake, as_of=AS_OF), only=["title_overlap"])
    apply(ws)
    stale = loaded_retriever(ws, index_dir)
    assert "overlap_ratio" in stale.online.feature_names and "overlap_ratio" not in stale.blend.inputs
    assert stale.versions.feature_definitions != fresh.versions.feature_definitions
    (message,) = stale_warnings(caplog)
    assert str(index_dir) in message and "unisup index blend" in message

    caplog.clear()
    refit = fit_blend(ws, index_dir)  # what the warning says to run
    assert "overlap_ratio" in refit.inputs
    loaded_retriever(ws, index_dir)
    assert stale_warnings(caplog) == []
