"""Weight importance and Hessian bias in pruning (Li et al. 2020), as pure functions.

- :mod:`~jaxprune.methods.importance.scores` (Section 2): natural, magnitude and Hessian
  importance of any parameter groups of any ``loss_fn(params) -> scalar``, pruning by a score
  (Π_s of Def. 2.3) and natural pruning (NP).
- :mod:`~jaxprune.methods.importance.linear` (Section 3): the exact risk of pruned min-norm
  linear models, through the auxiliary distribution of Def. 3.2.
- :mod:`~jaxprune.methods.importance.two_layer` (Section 4): Lemma 4.1's λ-scalings of a
  two-layer network and the partial PL / smoothness constants and bounds of Theorem 4.3.

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning",
  arXiv:2006.10903 (docs/references.md), with readings HB-1 to HB-14 (docs/readings.md).
"""

from jaxprune.methods.importance.linear import (
    METHODS as LINEAR_PRUNING_METHODS,
)
from jaxprune.methods.importance.linear import (
    AuxiliaryDistribution,
    ImportanceEstimate,
    RiskEstimate,
    auxiliary_distribution,
    empirical_risk,
    identity_auxiliary,
    identity_risk,
    leading_test_importance,
    leading_training_importance,
    min_norm_solution,
    population_loss,
    predicted_risk,
    pruning_masks,
    sample_auxiliary,
)
from jaxprune.methods.importance.scores import (
    EXACT_SUPPORT_LIMIT,
    HESSIAN_METHODS,
    NATURAL_PRUNING_METHODS,
    NaturalPruning,
    default_chunk_size,
    hessian_importance,
    magnitude_importance,
    natural_importance,
    natural_importance_from_gates,
    natural_importance_of_dense_inputs,
    natural_pruning,
    prune,
    prune_mask,
)
from jaxprune.methods.importance.two_layer import (
    LEMMA41_EXPONENTS,
    LayerQuantities,
    PPLSConstants,
    Theorem43Bounds,
    layer_group_ids,
    layer_quantities,
    lemma41_factors,
    ppls_constants,
    theorem43_bounds,
)

__all__ = [
    "EXACT_SUPPORT_LIMIT",
    "HESSIAN_METHODS",
    "LEMMA41_EXPONENTS",
    "LINEAR_PRUNING_METHODS",
    "NATURAL_PRUNING_METHODS",
    "AuxiliaryDistribution",
    "ImportanceEstimate",
    "LayerQuantities",
    "NaturalPruning",
    "PPLSConstants",
    "RiskEstimate",
    "Theorem43Bounds",
    "auxiliary_distribution",
    "default_chunk_size",
    "empirical_risk",
    "hessian_importance",
    "identity_auxiliary",
    "identity_risk",
    "layer_group_ids",
    "layer_quantities",
    "leading_test_importance",
    "leading_training_importance",
    "lemma41_factors",
    "magnitude_importance",
    "min_norm_solution",
    "natural_importance",
    "natural_importance_from_gates",
    "natural_importance_of_dense_inputs",
    "natural_pruning",
    "population_loss",
    "ppls_constants",
    "predicted_risk",
    "prune",
    "prune_mask",
    "pruning_masks",
    "sample_auxiliary",
    "theorem43_bounds",
]
