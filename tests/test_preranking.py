"""Pre-ranking's parts against references written here: the routing rule (budget, no leakage across
requests), the per-group list losses and the gradient balancing. The stage end to end (train + eval
on a workspace with a ranker) runs in tests/test_serving.py, beside the ranker it needs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.preranking.model import SHAPES, Scorer
from pipelines.preranking.route import keep, route
from pipelines.preranking.train import balanced, list_losses, shared_gradients


def requests(sizes: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"query_id": q, "item_id": [f"{q}-i{j:04d}" for j in range(n)],
                           "light": rng.normal(size=n), "strong": rng.normal(size=n)}) for q, n in sizes.items()]
    return pd.concat(parts, ignore_index=True)


def reference_keep(frame: pd.DataFrame, n_keep: int, budget: float) -> tuple[set, set]:
    """(routed, kept) item ids, one request at a time, written from the rule's description."""
    routed, kept = set(), set()
    for _, req in frame.groupby("query_id"):
        ordered = sorted(zip(req["light"], req["item_id"]), key=lambda t: (-t[0], t[1]))
        m = len(ordered)
        if m <= n_keep:
            kept |= {i for _, i in ordered}
            continue
        width = math.floor(budget * m + 1e-9)
        lo = max(min(n_keep - width // 2, m - width), 0)
        band = [i for _, i in ordered[lo:lo + width]]
        routed |= set(band)
        kept |= {i for _, i in ordered[:lo]}
        strong = dict(zip(req["item_id"], req["strong"]))
        kept |= set(sorted(band, key=lambda i: (-strong[i], i))[:n_keep - lo])
    return routed, kept


@pytest.mark.parametrize("budget", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_routing_matches_the_rule_and_respects_the_budget(budget):
    frame = requests({"q1": 300, "q2": 180, "q3": 120, "q4": 57})
    n_keep = 100
    routed = route(frame, n_keep, budget)
    kept = keep(frame.assign(strong=np.where(routed, frame["strong"], np.nan)), n_keep, budget)
    want_routed, want_kept = reference_keep(frame, n_keep, budget)
    assert set(frame.loc[routed, "item_id"]) == want_routed
    assert set(frame.loc[kept, "item_id"]) == want_kept
    per_request = frame.assign(routed=routed, kept=kept).groupby("query_id")
    sizes = per_request.size()
    assert (per_request["routed"].sum() <= np.floor(budget * sizes + 1e-9)).all()  # the budget, per request
    assert (per_request["kept"].sum() == np.minimum(sizes, n_keep)).all()


def test_budget_zero_is_light_alone_and_one_is_strong_alone():
    frame = requests({"q1": 250, "q2": 400, "q3": 130})
    for budget, column in ((0.0, "light"), (1.0, "strong")):
        kept = keep(frame, 100, budget)
        top = frame.sort_values(["query_id", column], ascending=[True, False]).groupby("query_id").head(100)
        assert set(frame.loc[kept, "item_id"]) == set(top["item_id"])


def test_a_candidates_route_depends_on_its_own_request_only():
    """Scored in one batch with other requests, shuffled, or with another request's scores changed:
    each request's routes and kept set are what it gets alone."""
    frame = requests({"a": 300, "b": 260, "c": 140}, seed=3)
    alone = {q: (route(req, 100, 0.2), keep(req, 100, 0.2)) for q, req in frame.groupby("query_id")}
    shuffled = frame.sample(frac=1.0, random_state=7)
    other = shuffled.assign(light=np.where(shuffled["query_id"] == "b", -shuffled["light"] * 10, shuffled["light"]))
    for batch in (frame, shuffled, other):
        routed, kept = route(batch, 100, 0.2), keep(batch, 100, 0.2)
        for q in ("a", "c"):
            mask = (batch["query_id"] == q).to_numpy()
            ids = batch.loc[mask, "item_id"]
            ref = frame[frame["query_id"] == q]
            want_routed = set(ref.loc[alone[q][0], "item_id"])
            want_kept = set(ref.loc[alone[q][1], "item_id"])
            assert set(ids[routed[mask]]) == want_routed
            assert set(ids[kept[mask]]) == want_kept


def test_list_losses_equal_bce_plus_infonce_by_hand():
    rng = np.random.default_rng(0)
    s = torch.tensor(rng.normal(size=12), dtype=torch.float64)
    codes = torch.tensor([0, 1, 1, 3, 4, 0,   0, 2, 2, 3, 0, 4])  # 0 positive, 1..4 the groups
    qcodes = torch.tensor([0, 0, 0, 0, 0, 0,   1, 1, 1, 1, 1, 1])
    tau = 0.5
    losses = list_losses(s.float(), codes, qcodes, {"exposed": (1,), "all": (1, 2, 3, 4)}, tau)
    s = s.numpy()
    for name, negative in (("exposed", {1}), ("all", {1, 2, 3, 4})):
        used = [i for i in range(12) if codes[i] == 0 or int(codes[i]) in negative]
        y = np.array([codes[i] == 0 for i in used], float)
        p = 1 / (1 + np.exp(-s[used]))
        bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        nce = []
        for i in range(12):
            negs = [j for j in range(12) if qcodes[j] == qcodes[i] and int(codes[j]) in negative]
            if codes[i] == 0 and negs:
                z = np.r_[s[i], s[negs]] / tau
                nce.append(np.log(np.exp(z).sum()) - z[0])
        assert losses[name].item() == pytest.approx(bce + np.mean(nce), rel=1e-5)


def test_balanced_weights_give_every_group_the_same_trunk_gradient_norm():
    torch.manual_seed(0)
    model = Scorer(6, SHAPES["light"])
    x = torch.randn(40, 6)
    codes = torch.tensor([0] * 8 + [1] * 4 + [2] * 8 + [3] * 20)
    qcodes = torch.arange(40) % 4
    losses = list_losses(model(x), codes, qcodes, {"exposed": (1,), "ranking": (2,), "retrieval": (3,)}, 0.5)
    grads = shared_gradients(model, losses)
    norms = {k: g.norm().item() for k, g in grads.items()}
    assert max(norms.values()) / min(norms.values()) > 1.2  # the groups start unbalanced
    total = balanced(model, losses)
    mean = np.mean(list(norms.values()))
    weights = {k: mean / n for k, n in norms.items()}
    expected = sum(weights[k] * losses[k] for k in losses)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    weighted = {k: (weights[k] * g).norm().item() for k, g in grads.items()}
    assert max(weighted.values()) == pytest.approx(min(weighted.values()), rel=1e-5)


def test_deep_table_against_a_reference_written_per_query():
    """The union of three channels' lists (empty slots, a query one channel returns nothing for), its
    ranks, scores, gaps and fusions, ordered and cut to n_retrieve, against plain Python loops."""
    from pipelines.metrics import DEPTH
    from pipelines.preranking.data import CHANNELS, deep_table

    rng = np.random.default_rng(4)
    catalog = np.array([f"item{i:04d}" for i in range(400)], dtype=object)
    queries, depth, n_retrieve = ["qb", "qa", "qc"], 150, 180
    hits = {}
    for c in CHANNELS:
        ids = np.array([rng.choice(catalog, depth, replace=False) for _ in queries], dtype=object)
        ids[1, 120:] = ""  # a short list
        if c == "bm25":
            ids[2, :] = ""  # no token matched
        scores = -np.sort(-rng.random((len(queries), depth)), axis=1).astype(np.float32)
        hits[c] = (ids, scores)
    table = deep_table(hits, queries, catalog, n_retrieve)

    expected = []
    for q, qid in enumerate(queries):
        lists = {c: [(i, s) for i, s in zip(hits[c][0][q], hits[c][1][q]) if i != ""] for c in CHANNELS}
        items = sorted({i for entries in lists.values() for i, _ in entries})
        for item in items:
            row = {"query_id": qid, "item_id": item}
            for c, entries in lists.items():
                rank = {i: r for r, (i, _) in enumerate(entries, start=1)}.get(item)
                score = dict(entries).get(item, min((s for _, s in entries), default=0.0))
                row[f"deep_rank_{c}"] = rank or n_retrieve + 1
                row[f"deep_score_{c}"] = score
                row[f"deep_gap_{c}"] = max((s for _, s in entries), default=0.0) - score
                row[f"rank_{c}"] = rank if rank and rank <= DEPTH else DEPTH + 1
            row["deep_fusion_score"] = sum(1 / (60 + row[f"deep_rank_{c}"]) for c in CHANNELS
                                           if row[f"deep_rank_{c}"] <= n_retrieve)
            row["fusion_score"] = sum(1 / (60 + row[f"rank_{c}"]) for c in CHANNELS if row[f"rank_{c}"] <= DEPTH)
            row["agreement"] = sum(row[f"rank_{c}"] <= DEPTH for c in CHANNELS)
            expected.append(row)
    want = pd.DataFrame(expected).sort_values(["query_id", "fusion_score", "deep_fusion_score", "item_id"],
                                              ascending=[True, False, False, True])
    want = want.groupby("query_id").head(n_retrieve).reset_index(drop=True)
    assert table["query_id"].tolist() == want["query_id"].tolist()
    assert table["item_id"].tolist() == want["item_id"].tolist()
    assert table.groupby("query_id")["retrieved_rank"].apply(list).to_dict() == {
        q: list(range(1, n + 1)) for q, n in want.groupby("query_id").size().items()}
    for column in want.columns.drop(["query_id", "item_id"]):
        np.testing.assert_allclose(table[column].to_numpy(np.float64), want[column].to_numpy(np.float64),
                                   rtol=1e-5, atol=1e-6, err_msg=column)


def test_the_band_estimated_from_a_sampled_table_is_the_routed_band_of_the_whole_list():
    """A table holding every candidate at weight 1 gives the routed band itself; thinned, with each
    kept tail row weighing for those dropped (and random items for none), it gives the same head."""
    from pipelines.preranking.train import estimated_band

    frame = requests({"q1": 300, "q2": 180, "q3": 120}, seed=5)
    want, _ = reference_keep(frame, 100, 0.3)
    whole = estimated_band(frame.assign(list_weight=1.0), frame["light"].to_numpy(), 100, 0.3)
    assert set(frame.loc[whole, "item_id"]) == want
    ranked = frame.sort_values(["query_id", "light"], ascending=[True, False])
    ranked["pos"] = ranked.groupby("query_id").cumcount()
    tail = ranked["pos"] >= 250  # q1's last 50: keep every fifth, weight 5
    thinned = ranked[~tail | (ranked["pos"] % 5 == 0)].assign(list_weight=lambda f: np.where(f["pos"] >= 250, 5.0, 1.0))
    extra = pd.DataFrame({"query_id": "q1", "item_id": ["random-1", "random-2"], "light": [9.0, -9.0],
                          "strong": 0.0, "list_weight": 0.0})  # outside the list: never in a band
    thinned = pd.concat([thinned.drop(columns="pos"), extra], ignore_index=True)
    inside = estimated_band(thinned, thinned["light"].to_numpy(), 100, 0.3)
    assert set(thinned.loc[inside, "item_id"]) == {i for i in want if i in set(thinned["item_id"])}
