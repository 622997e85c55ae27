"""jaxprune: pruning and spectral analysis of over-parameterized networks in JAX/Flax.

Subpackages, in data-flow order (each imports only those before it):
  ``group_ids`` (the group-id format), ``spectra`` (NTK, Hessian, PL), ``masks`` (groups, masks,
  schedules, compaction), ``criteria`` (baseline scores), ``optim`` (optax transforms),
  ``models`` (Flax models with prunable structure), ``data`` (offline datasets).
"""

__version__ = "0.1.0"
