"""Training-time analysis probes: NTK condition number and Hessian trace of the pruned model.

On a fixed probe batch (the first ``analysis_examples`` training examples, prepared once), the
engine logs the condition number ``λ_max/λ_min`` of the empirical NTK (Chen et al. (2023),
Figures 3 and 5; App. D footnote) and the Hutchinson trace of the loss Hessian, both of the
pruned model: the parameters are seen through the optimizer's mask, ``f(m ⊙ w)``, so only kept
weights contribute tangents.  :func:`analysis_fn` is compiled once per model binding (a
compacted model is a new binding); :func:`analyze_state` runs it on a training state.

References:
  Chen et al. (2023), Figures 3 and 5, App. D footnote (NTK condition number in training).
  Hutchinson (1990) (stochastic trace estimation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.optim import MaskedState, apply_mask
from jaxprune.spectra import empirical_ntk, hessian_trace, sketch_outputs, spectrum_features
from jaxprune.train.parallel import to_host
from jaxprune.train.steps import TrainState
from jaxprune.train.tasks import Task
from jaxprune.train.zoo import Bound
from jaxprune.typing import PyTree

__all__ = ["analysis_fn", "analyze_state", "probe_batch"]

AnalysisFn = Callable[..., tuple[jax.Array, jax.Array]]


def analysis_fn(
    model: Bound, loss_fn: Callable, *, num_probes: int, projections: int | None
) -> AnalysisFn:
    """Jitted ``(params, mask, collections, gates, probe, key) -> (kernel, trace)``.

    Args:
      model: the bound model.
      loss_fn: its :func:`~jaxprune.train.steps.make_loss_fn`.
      num_probes: Hutchinson probes of the Hessian trace.
      projections: if set, the NTK of this many random projections of each example's outputs
        (:func:`sketch_outputs`, an unbiased estimate of the kernel traced over all outputs).

    Returns:
      The function; ``kernel`` is the ``(n, n)`` NTK of the ``n`` probe examples (traced over
      outputs), ``trace`` the Hessian-trace estimate of the probe-batch loss.
    """

    def analysis(params, mask, collections, gates, probe, key):
        def apply_fn(p: PyTree, x: jax.Array) -> jax.Array:
            variables = {"params": apply_mask(p, mask), **collections}
            return model.apply(variables, x, train=False, gates=gates)[0]

        def loss(p: PyTree) -> jax.Array:
            return loss_fn(apply_mask(p, mask), collections, gates, probe, key, False)[0]

        kernel_fn = apply_fn
        if projections is not None:
            kernel_fn = sketch_outputs(apply_fn, params, probe["x"], key, projections)
        kernel = empirical_ntk(kernel_fn, params, probe["x"])
        return kernel, hessian_trace(loss, params, key, num_probes=num_probes).estimate

    return jax.jit(analysis)


def probe_batch(task: Task, examples: dict[str, np.ndarray], key: jax.Array) -> dict[str, Any]:
    """The probe batch: ``examples`` (host arrays, leading axis ``n``) prepared by the task
    with a fixed ``key`` (MLM corruption), so every analysis of the run sees the same batch."""
    return task.prepare({k: jnp.asarray(v) for k, v in examples.items()}, key)


def analyze_state(
    fn: AnalysisFn, state: TrainState, probe: dict[str, Any], key: jax.Array
) -> dict[str, float]:
    """NTK extreme eigenvalues, condition number and Hessian trace of ``state``'s pruned model.

    The mask is the masked optimizer's (all ones in dense training).
    """
    if isinstance(state.opt_state, MaskedState):
        mask = state.opt_state.mask
    else:
        mask = jax.tree_util.tree_map(jnp.ones_like, state.params)
    kernel, trace = fn(*to_host((state.params, mask, state.collections, state.gates)), probe, key)
    kernel = np.asarray(kernel)
    if not np.isfinite(kernel).all():  # a diverged run: NaN metrics, logged as such
        names = ("ntk_lambda_max", "ntk_lambda_min", "ntk_condition")
        return {**dict.fromkeys(names, float("nan")), "hessian_trace": float(trace)}
    features = spectrum_features(kernel, dtype=np.float64)
    return {
        "ntk_lambda_max": float(features.lambda_max),
        "ntk_lambda_min": float(features.lambda_min),
        "ntk_condition": float(features.condition_number),
        "hessian_trace": float(trace),
    }
