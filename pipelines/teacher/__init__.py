"""The relevance teacher: a two-stage cascade that labels (query, item) pairs with graded relevance.

- grades.py: Home Depot relevance -> ordinal grades 0..3 (the one mapping) and probability algebra;
- stage1.py: channel features for any pair and a gradient-boosted 4-grade classifier (cheap);
- cross_encoder.py: MiniLM-L6 cross-encoder with an ordinal (CORAL) head, trained on human grades;
- calibrate.py: fit/calib roles of training queries, isotonic calibration per stage, ECE;
- cascade.py: the escalation rule, choosing its threshold, and fitting the whole teacher.

Nothing here knows Feast: the teacher_labels signal (view + producer) is
pipelines/signals/teacher_labels.py, and the dev report on quality, calibration and cost is
pipelines/evaluation/teacher_report.py.
"""
