"""What the papers measure: empirical NTKs (whole and per group), their spectra, Hessian traces
and eigenvalues, and PL condition numbers.  Pure functions of explicit arguments."""

from jaxprune.spectra.gauss_newton import (
    SplitLoss,
    gauss_newton_quadratic_form,
    gauss_newton_trace,
)
from jaxprune.spectra.hessian import (
    DiagonalSample,
    TraceEstimate,
    gauss_newton_diagonal,
    group_hessian_traces,
    hessian_diagonal,
    hessian_quadratic_form,
    hessian_trace,
    hvp,
    output_hessian_trace,
    output_hvp,
    rademacher_signs,
    sample_output_hessian_diagonal,
)
from jaxprune.spectra.lanczos import (
    EigenResult,
    SpectralDensity,
    density_moments,
    hessian_eigenvalues,
    hessian_spectral_density,
)
from jaxprune.spectra.ntk import BACKENDS, empirical_ntk
from jaxprune.spectra.pl import PLCondition, empirical_pl_ratio, pl_condition, proposition8_bound
from jaxprune.spectra.sketch import sketch_outputs
from jaxprune.spectra.spectrum import SpectrumFeatures, group_rank_bound, spectrum_features
from jaxprune.spectra.trace_estimators import deflated_trace, hutchpp_trace, xtrace

__all__ = [
    "BACKENDS",
    "DiagonalSample",
    "EigenResult",
    "PLCondition",
    "SpectralDensity",
    "SpectrumFeatures",
    "SplitLoss",
    "TraceEstimate",
    "deflated_trace",
    "density_moments",
    "empirical_ntk",
    "empirical_pl_ratio",
    "gauss_newton_diagonal",
    "gauss_newton_quadratic_form",
    "gauss_newton_trace",
    "group_hessian_traces",
    "group_rank_bound",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_quadratic_form",
    "hessian_spectral_density",
    "hessian_trace",
    "hutchpp_trace",
    "hvp",
    "output_hessian_trace",
    "output_hvp",
    "pl_condition",
    "proposition8_bound",
    "rademacher_signs",
    "sample_output_hessian_diagonal",
    "sketch_outputs",
    "spectrum_features",
    "xtrace",
]
