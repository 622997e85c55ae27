"""What the papers measure: empirical NTKs (whole and per group), their spectra, Hessian traces
and eigenvalues, and PL condition numbers.  Pure functions of explicit arguments."""

from jaxprune.spectra.ntk import BACKENDS, empirical_ntk

__all__ = ["BACKENDS", "empirical_ntk"]
