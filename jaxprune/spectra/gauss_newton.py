"""Hutchinson's estimate of the Gauss–Newton trace ``Tr(Jᵀ H_ℓ J)`` of a loss split at its
outputs.

A loss ``L(w) = ℓ(f(w, batch), batch)`` has the Hessian ``∇²L = Jᵀ H_ℓ J + Σ_o ∂ℓ/∂f_o ·
∇²_w f_o`` (``J`` the Jacobian of the outputs, ``H_ℓ`` the Hessian of ``ℓ`` in the outputs).  The
first term is the Gauss–Newton matrix ``G``, positive semi-definite for a convex ``ℓ``.  On a
piecewise-linear network (ReLU MLPs and CNNs, max-pooling, BatchNorm in evaluation mode) the
second term has a zero diagonal, so ``Tr ∇²L = Tr G`` exactly (away from the kinks), and so is
every derivative of the trace; the Hutchinson sample ``tᵀ ∇²L t`` of the loss Hessian still
carries that term's off-diagonal entries as noise, which ``tᵀ G t`` does not.

``tᵀ G t = (J t)ᵀ H_ℓ (J t)`` costs one forward-mode pass through the network (``J t``) and
second directional derivatives of ``ℓ`` in the outputs only (:func:`gauss_newton_quadratic_form`):
differentiating it again (the PL gating objective differentiates the trace in the gates) is
second-order automatic differentiation through the network instead of the third order of the
loss Hessian's ``tᵀ ∇²L t``.

References:
  Schraudolph (2002), "Fast curvature matrix-vector products for second-order gradient descent"
  (the Gauss–Newton matrix); Martens (2020), "New insights and perspectives on the natural
  gradient method", Sec. 8; Hutchinson (1990).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._validation import check_key, check_tree_like
from jaxprune.spectra.hessian import (
    TraceEstimate,
    _check_finite_loss,
    _check_probe_args,
    _draw_probe,
    _map_probes,
)
from jaxprune.typing import PyTree

__all__ = ["SplitLoss", "gauss_newton_quadratic_form", "gauss_newton_trace"]


class SplitLoss(NamedTuple):
    """A loss written at its outputs: ``loss(params, batch) = output_loss(forward(params,
    batch), batch)``.

    A pytree (a ``NamedTuple`` of two callables): pass :class:`jax.tree_util.Partial` functions
    to hand it to compiled code as an argument.

    Attributes:
      forward: ``forward(params, batch) -> outputs``, e.g. ``lambda p, b: model.apply(p, b[0])``.
      output_loss: ``output_loss(outputs, batch) -> scalar``, twice differentiable in
        ``outputs`` (e.g. mean softmax cross-entropy against ``batch[1]``).
    """

    forward: Callable[[PyTree, Any], jax.Array]
    output_loss: Callable[[jax.Array, Any], jax.Array]


def validate_split_loss(split_loss: Any, *, allow_none: bool = False) -> SplitLoss | None:
    """``split_loss`` itself if it is a :class:`SplitLoss` of two callables (or ``None`` when
    ``allow_none``); otherwise a ``TypeError`` naming the argument.  The one check of a
    ``split_loss`` argument, shared by the Gauss-Newton estimators and the PL gating objective."""
    if split_loss is None and allow_none:
        return None
    if not isinstance(split_loss, SplitLoss):
        expected = "a SplitLoss(forward, output_loss)" + (" or None" if allow_none else "")
        raise TypeError(f"split_loss: expected {expected}, got {type(split_loss).__name__}")
    for name, fn in split_loss._asdict().items():
        if not callable(fn):
            raise TypeError(f"split_loss.{name}: expected a callable, got {fn!r}")
    return split_loss


def _form_and_loss(
    split_loss: SplitLoss, params: PyTree, batch: Any, tangent: PyTree
) -> tuple[jax.Array, jax.Array]:
    """``(tᵀ G t, output_loss(forward(params, batch), batch))``: the loss is the primal value
    the nested jvps compute anyway; its shape is static, so the scalar check costs nothing."""
    outputs, direction = jax.jvp(lambda p: split_loss.forward(p, batch), (params,), (tangent,))

    def slope(y: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, derivative = jax.jvp(lambda z: split_loss.output_loss(z, batch), (y,), (direction,))
        if jnp.shape(loss) != ():
            raise ValueError(
                "split_loss.output_loss: expected a scalar loss (shape ()), got an output of "
                f"shape {jnp.shape(loss)}"
            )
        return derivative, loss

    _, form, loss = jax.jvp(slope, (outputs,), (direction,), has_aux=True)
    return form, loss


def gauss_newton_quadratic_form(
    split_loss: SplitLoss, params: PyTree, batch: Any, tangent: PyTree
) -> jax.Array:
    """``tᵀ G t = (J t)ᵀ ∇²_y ℓ(y, batch) (J t)`` at ``y = forward(params, batch)``.

    Args:
      split_loss: the :class:`SplitLoss`.
      params: parameter pytree.
      batch: the batch, passed to ``forward`` and ``output_loss`` as is.
      tangent: pytree like ``params``.

    Returns:
      Scalar ``tᵀ G t`` (``>= 0`` for a convex ``output_loss``).

    Raises:
      TypeError: ``split_loss`` not a :class:`SplitLoss` of callables.
      ValueError: ``tangent`` of another structure or shape than ``params``, or an
        ``output_loss`` that is not a scalar.

    References:
      Schraudolph (2002); Martens (2020), Sec. 8.
    """
    split_loss = validate_split_loss(split_loss)
    check_tree_like(tangent, params, "tangent", "params")
    return _form_and_loss(split_loss, params, batch, tangent)[0]


def gauss_newton_trace(
    split_loss: SplitLoss,
    params: PyTree,
    batch: Any,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: str = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of ``Tr(G)``, ``G = Jᵀ H_ℓ J`` the Gauss–Newton matrix of the loss.

    Each probe ``t`` (Rademacher ±1 or standard Gaussian entries, a pytree like ``params``)
    gives the unbiased sample :func:`gauss_newton_quadratic_form`.  Equal in expectation to
    :func:`jaxprune.spectra.hessian_trace` of ``output_loss(forward(·, batch), batch)`` on a
    piecewise-linear network, with lower variance; differentiable in ``params`` and in
    anything ``split_loss`` closes over (for a fixed key).

    Args:
      split_loss: the :class:`SplitLoss`.
      params: parameter pytree (finite values).
      batch: the batch.
      key: PRNG key of the probes.
      num_probes: number of probes ``>= 1`` (``>= 2`` for a standard error).
      distribution: ``"rademacher"`` or ``"gaussian"``.
      batch_size: probes evaluated together (vectorized); default as :func:`jaxprune.spectra.hessian_trace`
        (1 on CPU, blocks of up to 16 that fit an eighth of the memory on GPU/TPU).

    Returns:
      :class:`~jaxprune.spectra.TraceEstimate` with scalar ``estimate`` and ``stderr``.

    Raises:
      TypeError / ValueError: ``split_loss`` not a :class:`SplitLoss` of callables, ``key``
        not a PRNG key, an ``output_loss`` that is not a scalar, the errors of
        :func:`jaxprune.spectra.hessian_trace`'s probe arguments, or a NaN or inf loss at
        ``params`` (checked when concrete: inside ``jit`` or ``grad`` it is not).

    References:
      Schraudolph (2002); Martens (2020), Sec. 8; Hutchinson (1990).
    """
    split_loss = validate_split_loss(split_loss)
    check_key(key, "key")
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)

    def sample(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        probe = _draw_probe(probe_key, params, distribution)
        return _form_and_loss(split_loss, params, batch, probe)

    samples, losses = _map_probes(sample, key, num_probes, batch_size)
    _check_finite_loss(losses[0], "split_loss: expected a finite loss at params and batch, got")
    return TraceEstimate.from_samples(samples, num_probes)
