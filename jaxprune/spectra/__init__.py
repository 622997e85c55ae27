"""What the papers measure: empirical NTKs (whole and per group), their spectra, Hessian traces
and eigenvalues, and PL condition numbers.  Pure functions of explicit arguments."""

from jaxprune.spectra.ntk import BACKENDS, empirical_ntk
from jaxprune.spectra.pl import PLCondition, empirical_pl_ratio, pl_condition, proposition8_bound
from jaxprune.spectra.spectrum import SpectrumFeatures, group_rank_bound, spectrum_features

__all__ = [
    "BACKENDS",
    "PLCondition",
    "SpectrumFeatures",
    "empirical_ntk",
    "empirical_pl_ratio",
    "group_rank_bound",
    "pl_condition",
    "proposition8_bound",
    "spectrum_features",
]
