"""Baseline pruning criteria: one score per group, higher = more important (keep the top).

References: see each module (Han et al. 2015; Lee et al. 2019; Wang et al. 2020; Michel et al.
2019; Molchanov et al. 2019; LeCun et al. 1990; He et al. 2019).
"""

from jaxprune.criteria.fpgm import fpgm_scores
from jaxprune.criteria.grasp import grasp_scores
from jaxprune.criteria.hessian_diag import hessian_diagonal_score_estimate, hessian_diagonal_scores
from jaxprune.criteria.magnitude import NORMS, magnitude_scores
from jaxprune.criteria.random import random_scores
from jaxprune.criteria.snip import snip_scores
from jaxprune.criteria.taylor import gate_gradient_scores

__all__ = [
    "NORMS",
    "fpgm_scores",
    "gate_gradient_scores",
    "grasp_scores",
    "hessian_diagonal_score_estimate",
    "hessian_diagonal_scores",
    "magnitude_scores",
    "random_scores",
    "snip_scores",
]
