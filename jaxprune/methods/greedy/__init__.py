"""Greedy forward selection of subnetworks (Wolfe et al. 2023; Ye et al. 2020).

- :mod:`~jaxprune.methods.greedy.selection`: two-layer networks (Sec. 3, eqs. 9–11): the neuron
  outputs ``Φ``, the compiled search with replacement on one device or sharded over a device
  mesh (App. E, Algorithm 3), Lemma 1's bound (eq. 12) and the compacted subnetwork.
"""

from jaxprune.methods.greedy import selection
from jaxprune.methods.greedy.selection import (
    LOSSES,
    GreedySelection,
    greedy_forward_selection,
    hull_diameter,
    lemma1_bound,
    neuron_outputs,
    selection_loss,
    subnetwork,
)

__all__ = [
    "LOSSES",
    "GreedySelection",
    "greedy_forward_selection",
    "hull_diameter",
    "lemma1_bound",
    "neuron_outputs",
    "selection",
    "selection_loss",
    "subnetwork",
]
