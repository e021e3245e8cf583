"""Bi-encoder distillation from the unified target (issue 5): config, target, lists, trainer."""
