"""Greedy forward selection of subnetworks (Wolfe et al. 2023; Ye et al. 2020).

- :mod:`~jaxprune.methods.greedy.selection`: two-layer networks (Sec. 3, eqs. 9–11): the neuron
  outputs ``Φ``, the compiled search with replacement on one device or sharded over a device
  mesh (App. E, Algorithm 3), Lemma 1's bound (eq. 12) and the compacted subnetwork.
- :mod:`~jaxprune.methods.greedy.channels`: deep networks layer by layer (App. D, Algorithm 2,
  Ye et al.'s scheme): every candidate channel of a step scored in one compiled evaluation, on
  a zoo model (:func:`greedy_channel_selection`) or any gated loss (:func:`greedy_gate_selection`).
"""

from jaxprune.methods.greedy import channels, selection
from jaxprune.methods.greedy.channels import CRITERIA as CHANNEL_CRITERIA
from jaxprune.methods.greedy.channels import (
    ChannelSelection,
    GateSelection,
    LayerSelection,
    flat_gates,
    greedy_channel_selection,
    greedy_gate_selection,
)
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
    "CHANNEL_CRITERIA",
    "LOSSES",
    "ChannelSelection",
    "GateSelection",
    "GreedySelection",
    "LayerSelection",
    "channels",
    "flat_gates",
    "greedy_channel_selection",
    "greedy_forward_selection",
    "greedy_gate_selection",
    "hull_diameter",
    "lemma1_bound",
    "neuron_outputs",
    "selection",
    "selection_loss",
    "subnetwork",
]
