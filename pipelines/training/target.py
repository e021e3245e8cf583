"""The unified target: one soft distribution over each query's candidate list.

Per candidate i of query q, a utility from the three signals as read through the `training`
FeatureService (all in 0..1):
    grade_i      = grade(human_grade) / 3 where a human judged the pair (human_override), else
                   expected_grade / 3                   (calibrated cascade, 0 if unlabelled)
    prior_i      = fusion_score * (RRF_K + 1) / 3        (1 = ranked first by all three channels)
    engagement_i = min(gated_ctr_30d, 1)                 (debiased CTR where the teacher says
                                                         relevant, 0 where gated out or unseen)
    u_i = w_teacher * grade_i + w_prior * prior_i + w_engagement * engagement_i
The target is softmax(s_i / T) with s = (u - min u) / (max u - min u) over the list: min-max scaling
makes T mean the same for every target kind and list, so the ablations differ only in u:
    engagement: u = ctr_smoothed_30d (raw clicks, ungated: the status quo), 0 where never shown;
    human:      u = (human_grade - 1) / 2 where judged, 0 otherwise (unjudged counted irrelevant);
    teacher:    u = expected_grade / 3 (the teacher alone, no human grades).
Why this shape: graded relevance leads, from people where they judged the pair (the teacher was
fitted to imitate them, so where both exist the human grade is the better one; both are on the
ordinal 0..3 scale of pipelines.teacher.grades) and from the teacher everywhere else (~97% of
candidates); the prior says which items several channels agree on (robust where the teacher is
unsure); gated engagement adds what users prefer among relevant items without rewarding clicks on
irrelevant popular ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.retrieval.fusion import RRF_K
from pipelines.teacher.grades import GRADES, to_grade
from pipelines.training.config import TargetConfig

N_CHANNELS = 3


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        raise KeyError(f"training set lacks feature {name!r}: build it with the 'training' FeatureService")
    return df[name].to_numpy(dtype="float64", na_value=np.nan)


def utility(df: pd.DataFrame, config: TargetConfig) -> np.ndarray:
    """u per row of a point-in-time training set (see the module docstring)."""
    teacher = np.nan_to_num(_col(df, "expected_grade") / 3.0)
    if config.kind == "teacher":
        return teacher
    if config.kind == "human":
        return np.nan_to_num((_col(df, "human_grade") - 1.0) / 2.0)
    if config.kind == "engagement":
        return np.nan_to_num(_col(df, "ctr_smoothed_30d"))
    grade = teacher
    if config.human_override:
        human = _col(df, "human_grade")
        judged = ~np.isnan(human)
        grade = teacher.copy()
        grade[judged] = to_grade(human[judged]) / (GRADES - 1)
    prior = np.clip(np.nan_to_num(_col(df, "fusion_score")) * (RRF_K + 1) / N_CHANNELS, 0.0, 1.0)
    engagement = np.clip(np.nan_to_num(_col(df, "gated_ctr_30d")), 0.0, 1.0)
    return config.w_teacher * grade + config.w_prior * prior + config.w_engagement * engagement


def soft_target(u: np.ndarray, temperature: float) -> np.ndarray:
    """softmax of min-max scaled utilities over one list; uniform when the list has no spread."""
    u = np.asarray(u, dtype="float64")
    spread = u.max() - u.min()
    s = (u - u.min()) / spread if spread > 0 else np.zeros_like(u)
    z = np.exp((s - s.max()) / temperature)
    return z / z.sum()
