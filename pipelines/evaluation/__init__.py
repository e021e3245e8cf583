"""Evaluation: `unisup eval` over any judgments file, the simulated A/B, the teacher report; all
score with pipelines.metrics, the one metric definition."""
