"""Deprecated location of the argument checks, kept for the merge of issue 12 only.

The checks live in :mod:`jaxprune._validation` (``check_finite_params`` is
``check_finite_tree``). This module goes after the merge, once ``jaxprune/spectra/ntk.py`` and
``jaxprune/methods/pl_gating.py`` import from :mod:`jaxprune._validation` directly.
"""

from __future__ import annotations

from jaxprune._validation import check_batch, check_positive_int
from jaxprune._validation import check_finite_tree as check_finite_params

__all__ = ["check_batch", "check_finite_params", "check_positive_int"]
