"""Paired statistics for a sweep: the difference between two arms (e.g. two losses) measured
on the same prompts under the same seeds.

With d[s, p] the difference of arm A and arm B on prompt p under seed s (an S x P table), the
mean difference has two sources of noise: the seeds (training noise) and the prompts (which
prompts happened to be held out). Treating both as random, crossed effects, the variance of the
grand mean is estimated from the two-way ANOVA mean squares without replication,

    Var(mean) = (MS_seed + MS_prompt - MS_residual) / (S * P),

floored at MS_residual / (S * P). With one seed it is the paired-over-prompts variance
var_p(d) / P; with one prompt, var_s(d) / S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    """Mean of a difference table and its standard error; n_seeds x n_prompts entries."""

    mean: float
    se: float
    n_seeds: int
    n_prompts: int

    @property
    def z(self) -> float:
        """mean / se (inf when se is 0 and mean is not)."""
        if self.se > 0:
            return self.mean / self.se
        return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)


def paired_difference(a: np.ndarray, b: np.ndarray) -> Paired:
    """Mean and SE of d = a - b for two [S, P] tables (S seeds, P prompts), as in the module
    docstring."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"expected a non-empty [seeds, prompts] table, got shape {d.shape}")
    s, p = d.shape
    mean = float(d.mean())
    if s == 1 and p == 1:
        return Paired(mean, math.nan, s, p)
    if s == 1:
        return Paired(mean, float(d.std(ddof=1) / math.sqrt(p)), s, p)
    if p == 1:
        return Paired(mean, float(d.std(ddof=1) / math.sqrt(s)), s, p)
    seed_means, prompt_means = d.mean(1), d.mean(0)
    ms_seed = p * float(((seed_means - mean) ** 2).sum()) / (s - 1)
    ms_prompt = s * float(((prompt_means - mean) ** 2).sum()) / (p - 1)
    resid = d - seed_means[:, None] - prompt_means[None, :] + mean
    ms_resid = float((resid**2).sum()) / ((s - 1) * (p - 1))
    var = max(ms_seed + ms_prompt - ms_resid, ms_resid) / (s * p)
    return Paired(mean, math.sqrt(var), s, p)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over independent values (SE NaN for fewer than two)."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()) if len(arr) else math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))
