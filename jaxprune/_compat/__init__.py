"""Compatibility shims: the only place in jaxprune allowed to touch JAX internals."""
