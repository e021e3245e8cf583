"""The ranking stage: a multi-task ranker (shared bottom, an ordinal relevance head, engagement
heads) and one value model that combines its outputs ("Joint Optimization of Relevance and
Engagement in Multi-Task Ranking", arXiv 2605.27704).

- model.py: the network (shared bottom + heads, each returning logits);
- losses.py: one loss per task, summed with named weights;
- value.py: the one value-model function and its weights.
"""
