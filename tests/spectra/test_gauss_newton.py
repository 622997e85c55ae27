"""Gauss-Newton trace against brute force: ``jax.jacobian`` / ``jax.hessian`` on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxprune.spectra import (
    SplitLoss,
    gauss_newton_quadratic_form,
    gauss_newton_trace,
    hessian_trace,
)

X = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
LABELS = jnp.array([0, 1, 2, 1, 0])


def _init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (3, 6)),
        "b1": 0.1 * jax.random.normal(k3, (6,)),
        "w2": jax.random.normal(k2, (6, 3)) / np.sqrt(6),
    }


def _forward(activation):
    def forward(params, batch):
        x, _ = batch
        return activation(x @ params["w1"] + params["b1"]) @ params["w2"]

    return forward


def _cross_entropy(outputs, batch):
    _, labels = batch
    logp = jax.nn.log_softmax(outputs)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _split(activation):
    return SplitLoss(_forward(activation), _cross_entropy)


def _loss(split):
    return lambda params, batch: split.output_loss(split.forward(params, batch), batch)


def _brute_force_gauss_newton(split, params, batch):
    """``Jᵀ H_ℓ J`` from the full output Jacobian and output-loss Hessian."""
    flat, unravel = ravel_pytree(params)
    outputs = split.forward(params, batch)
    jac = jax.jacobian(lambda f: split.forward(unravel(f), batch).ravel())(flat)
    hess = jax.hessian(lambda y: split.output_loss(y.reshape(outputs.shape), batch))(
        outputs.ravel()
    )
    return jac.T @ hess @ jac


def _exact_trace(split, params, batch):
    """``Σ_i e_iᵀ G e_i`` by :func:`gauss_newton_quadratic_form` on the basis vectors."""
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(flat.size)
    return jnp.sum(
        jax.vmap(lambda e: gauss_newton_quadratic_form(split, params, batch, unravel(e)))(basis)
    )


@pytest.mark.parametrize("activation", [jnp.tanh, jax.nn.relu], ids=["tanh", "relu"])
def test_quadratic_form_equals_brute_force_gauss_newton(activation):
    split, params = _split(activation), _init(jax.random.PRNGKey(1))
    gauss_newton = _brute_force_gauss_newton(split, params, (X, LABELS))
    _, unravel = ravel_pytree(params)
    tangent = jax.random.normal(jax.random.PRNGKey(2), (gauss_newton.shape[0],))
    got = gauss_newton_quadratic_form(split, params, (X, LABELS), unravel(tangent))
    np.testing.assert_allclose(got, tangent @ gauss_newton @ tangent, rtol=1e-5)


def test_trace_equals_loss_hessian_trace_on_relu_and_not_on_tanh():
    batch = (X, LABELS)
    params = _init(jax.random.PRNGKey(1))
    for activation, equal in ((jax.nn.relu, True), (jnp.tanh, False)):
        split = _split(activation)
        flat, unravel = ravel_pytree(params)
        hessian = jax.hessian(lambda f: _loss(split)(unravel(f), batch))(flat)
        trace_h = float(jnp.trace(hessian))
        trace_g = float(_exact_trace(split, params, batch))
        np.testing.assert_allclose(
            trace_g, np.trace(_brute_force_gauss_newton(split, params, batch)), rtol=1e-5
        )
        assert np.isclose(trace_g, trace_h, rtol=1e-5) == equal, (activation, trace_g, trace_h)


def test_gradient_of_trace_equals_loss_hessian_trace_gradient_on_relu():
    """On a piecewise-linear network the output Hessian's diagonal is identically zero, so the
    derivative of the trace in a gate scaling the weights equals the loss Hessian trace's."""
    split, params, batch = _split(jax.nn.relu), _init(jax.random.PRNGKey(3)), (X, LABELS)
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(flat.size)

    def scaled(gates):
        return {**params, "w1": params["w1"] * gates, "b1": params["b1"] * gates}

    def loss_hessian_trace(gates):
        return jnp.trace(
            jax.hessian(lambda f: _loss(split)(unravel(f), batch))(ravel_pytree(scaled(gates))[0])
        )

    def gauss_newton_trace_of(gates):
        point = scaled(gates)
        forms = jax.vmap(lambda e: gauss_newton_quadratic_form(split, point, batch, unravel(e)))
        return jnp.sum(forms(basis))

    gates = jnp.linspace(0.5, 1.5, 6)
    np.testing.assert_allclose(
        jax.grad(gauss_newton_trace_of)(gates),
        jax.grad(loss_hessian_trace)(gates),
        rtol=1e-4,
        atol=1e-6,
    )


def test_hutchinson_is_unbiased_with_lower_variance_than_loss_hessian_on_relu():
    split, params, batch = _split(jax.nn.relu), _init(jax.random.PRNGKey(1)), (X, LABELS)
    exact = float(_exact_trace(split, params, batch))
    key = jax.random.PRNGKey(4)
    estimate = gauss_newton_trace(split, params, batch, key, num_probes=1024, batch_size=256)
    assert abs(float(estimate.estimate) - exact) < 4 * float(estimate.stderr)
    assert estimate.samples.shape == (1024,) and np.all(np.asarray(estimate.samples) >= -1e-6)
    loss_estimate = hessian_trace(
        lambda p: _loss(split)(p, batch), params, key, num_probes=1024, batch_size=256
    )
    # Same probes: the loss Hessian's samples add the output Hessian's off-diagonal terms.
    assert float(jnp.std(estimate.samples)) < float(jnp.std(loss_estimate.samples))


def test_bad_split_loss():
    params = _init(jax.random.PRNGKey(1))
    with pytest.raises(TypeError, match="split_loss: expected a SplitLoss"):
        gauss_newton_trace(
            (_forward(jnp.tanh), _cross_entropy),
            params,
            (X, LABELS),
            jax.random.PRNGKey(0),
            num_probes=2,
        )
    with pytest.raises(TypeError, match=r"split_loss\.output_loss: expected a callable"):
        gauss_newton_trace(
            SplitLoss(_forward(jnp.tanh), 3),
            params,
            (X, LABELS),
            jax.random.PRNGKey(0),
            num_probes=2,
        )
