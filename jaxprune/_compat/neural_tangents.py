"""Make neural-tangents 0.6.5 (its last release) import and run on current JAX.

neural-tangents 0.6.5 was written against JAX 0.4.2x.  On the JAX this project locks it fails at
import for four reasons, each repaired here by *adding* what is missing, never by replacing
anything JAX still provides:

1. ``jax.core.Jaxpr``, ``JaxprEqn``, ``Literal``, ``Var`` and ``Primitive`` moved to
   ``jax.extend.core``: they are added back to ``jax.core`` as aliases.
2. The ``jax.util`` module is gone: a module carrying ``safe_map`` and ``safe_zip`` (from
   ``jax._src.util``) is registered under that name.
3. ``jax.interpreters.ad.zeros_like_p`` is gone.  neural-tangents only uses it as a dictionary
   key for its structured-derivative rules, so a placeholder primitive that nothing ever binds is
   added.
4. ``neural_tangents.experimental`` (the TensorFlow bridge) imports TensorFlow at import time.
   It is registered as a lazy module, so it is only imported, and TensorFlow needed, when one of
   its attributes is used.

What works afterwards (tested in ``tests/_compat``): the empirical kernels with
``NtkImplementation.JACOBIAN_CONTRACTION`` and ``NTK_VECTOR_PRODUCTS``, and the ``stax``
analytic NNGP/NTK kernels.  What does not: ``NtkImplementation.STRUCTURED_DERIVATIVES`` (and
``AUTO``, which may pick it) fails inside its jaxpr interpreter on every JAX the registry offers,
and ``neural_tangents.experimental`` needs the optional ``tf`` extra.

Call :func:`import_neural_tangents` instead of ``import neural_tangents``; the restorations are
applied once, on first use.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types

import jax
import jax.core
import jax.interpreters.ad

_MOVED_TO_EXTEND_CORE = ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive")

#: Implementations of ``nt.empirical_ntk_fn`` known to work through this shim.
WORKING_IMPLEMENTATIONS = ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS")


def _restore_core_names() -> list[str]:
    import jax.extend.core as extend_core

    added = []
    for name in _MOVED_TO_EXTEND_CORE:
        if not hasattr(jax.core, name):
            setattr(jax.core, name, getattr(extend_core, name))
            added.append(f"jax.core.{name}")
    return added


def _restore_jax_util() -> list[str]:
    try:
        importlib.import_module("jax.util")
        return []
    except ImportError:
        from jax._src import util as src_util

        module = types.ModuleType("jax.util", "Restored by jaxprune._compat for neural-tangents.")
        module.safe_map = src_util.safe_map
        module.safe_zip = src_util.safe_zip
        sys.modules["jax.util"] = module
        jax.util = module
        return ["jax.util"]


def _restore_zeros_like_p() -> list[str]:
    if hasattr(jax.interpreters.ad, "zeros_like_p"):
        return []
    import jax.extend.core as extend_core

    # Only ever used by neural-tangents as a key in its rule tables; never bound.
    jax.interpreters.ad.zeros_like_p = extend_core.Primitive("zeros_like")
    return ["jax.interpreters.ad.zeros_like_p"]


class _DeferredTensorFlowBridge(types.ModuleType):
    """Stands in for ``neural_tangents.experimental`` until one of its attributes is used."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        del sys.modules[self.__name__]
        try:
            real = importlib.import_module(self.__name__)
        except ImportError as error:
            sys.modules[self.__name__] = self
            raise ImportError(
                f"neural_tangents.experimental.{attr} is neural-tangents' TensorFlow bridge and "
                "needs TensorFlow, which jaxprune's core install leaves out; install the extra "
                "`jaxprune[tf]` to use it"
            ) from error
        sys.modules["neural_tangents"].experimental = real
        return getattr(real, attr)


def _defer_tensorflow_bridge() -> list[str]:
    name = "neural_tangents.experimental"
    if name in sys.modules:
        return []
    sys.modules[name] = _DeferredTensorFlowBridge(name)
    return [name + " (deferred)"]


@functools.cache
def _apply_restorations() -> tuple[str, ...]:
    return tuple(
        _restore_core_names()
        + _restore_jax_util()
        + _restore_zeros_like_p()
        + _defer_tensorflow_bridge()
    )


def applied_restorations() -> tuple[str, ...]:
    """Names this shim added (empty on a JAX where neural-tangents imports unaided)."""
    return _apply_restorations()


def import_neural_tangents() -> types.ModuleType:
    """Return the ``neural_tangents`` module, applying the restorations first (once)."""
    _apply_restorations()
    return importlib.import_module("neural_tangents")
