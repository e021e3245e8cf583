"""Evaluation: the one metric definition (metrics.py) every report, eval command and test reads."""
