"""Pre-ranking: between retrieval and the ranker, a heterogeneity-aware adaptive pre-ranker (HAP).

Retrieval returns N_r candidates per query (default 1,000); a light model scores all of them, a
strong model re-scores only the ones whose light score sits near the cut-off, and the ranker sees the
N (default 200) kept. Training separates negatives by where they come from (exposed, ranking,
retrieval, random) into their own loss terms, balanced by their gradient magnitudes (train.py).
"""
