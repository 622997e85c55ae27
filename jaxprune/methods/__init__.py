"""The papers' pruning algorithms as pure functions (one module or package per paper).

- :mod:`~jaxprune.methods.pl_gating` (Chen et al. 2023): per-group NTK features (Sec. 3.2.2),
  the gating network of eq. 8, the objective of eq. 36 (App. E.2) and one Algorithm-2 pruning
  event (``pl_gating.features``, ``gate``, ``gating_loss``, ``train_gating``, ``select``,
  ``prune``; the objective's options as one ``GatingObjective``).
- :mod:`~jaxprune.methods.directional` (Chao et al. 2020): the directional-pruning solution,
  scores from the Hessian's flat directions, eq. 9, and Bézier connecting curves.  The gRDA optimizer
  itself is :func:`jaxprune.optim.grda`.
- :mod:`~jaxprune.methods.greedy` (Wolfe et al. 2023; Ye et al. 2020): greedy forward selection
  of neurons with replacement (Sec. 3, eqs. 9–11) on one device or a device mesh (App. E,
  Algorithm 3), Lemma 1's bound, and the layer-wise selection of CNN channels (App. D).
- :mod:`~jaxprune.methods.importance` (Li et al. 2020): natural, magnitude and Hessian importance
  of any groups, pruning and natural pruning (Sec. 2), the exact risk of pruned linear models
  (Sec. 3, Def. 3.2) and the λ-rescaled two-layer network (Sec. 4, Lemma 4.1, Theorem 4.3).
"""

from jaxprune.methods import directional, greedy, importance, pl_gating
from jaxprune.methods.directional import (
    BezierFit,
    bezier_point,
    curve_losses,
    directional_pruning_solution,
    fit_bezier_midpoint,
    flat_direction_scores,
    line_losses,
    projection_scores,
    sign_alignment_ratio,
    top_eigenspace_fraction,
)
from jaxprune.methods.pl_gating import GatingEvent, GatingObjective, PLGatingConfig

__all__ = [
    "BezierFit",
    "GatingEvent",
    "GatingObjective",
    "PLGatingConfig",
    "bezier_point",
    "curve_losses",
    "directional",
    "directional_pruning_solution",
    "fit_bezier_midpoint",
    "flat_direction_scores",
    "greedy",
    "importance",
    "line_losses",
    "pl_gating",
    "projection_scores",
    "sign_alignment_ratio",
    "top_eigenspace_fraction",
]
