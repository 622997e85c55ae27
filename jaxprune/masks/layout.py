"""Group layout: which groups form each layer.

Layer-wise TopK and the "keep at least one head/expert per layer" protection of Chen et al. (2023),
App. E.3, need to know which of the ``p`` groups belong together.  A layout is static structure
(NumPy), built alongside the group-id pytree by the constructors in :mod:`jaxprune.masks.groups`.

References:
  Chen et al. (2023), Appendix E.3 (every method keeps at least one head/expert per layer); reading
  PL-9 (docs/readings.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["GroupLayout"]


class GroupLayout(NamedTuple):
    """Layers of a grouping.

    Attributes:
      layer_names: ``(L,)`` a name per layer (e.g. the Flax path of the layer's kernel).
      layer_of_group: ``(p,)`` int array: the layer index in ``[0, L)`` of every group.
    """

    layer_names: tuple[str, ...]
    layer_of_group: np.ndarray

    @property
    def num_groups(self) -> int:
        """Number of groups ``p``."""
        return int(self.layer_of_group.shape[0])

    @property
    def num_layers(self) -> int:
        """Number of layers ``L``."""
        return len(self.layer_names)

    def groups_in_layer(self, layer: int) -> np.ndarray:
        """Indices of the groups of layer ``layer``, ascending."""
        return np.flatnonzero(self.layer_of_group == layer)

    @staticmethod
    def from_sizes(names: tuple[str, ...], sizes: tuple[int, ...]) -> GroupLayout:
        """Layout of consecutively numbered groups: ``sizes[l]`` groups in layer ``l``."""
        if len(names) != len(sizes):
            raise ValueError(
                f"names and sizes must have equal length, got {len(names)} and {len(sizes)}"
            )
        if any(s < 1 for s in sizes):
            raise ValueError(f"every layer needs at least one group, got sizes {sizes}")
        return GroupLayout(tuple(names), np.repeat(np.arange(len(sizes)), sizes).astype(np.int32))
