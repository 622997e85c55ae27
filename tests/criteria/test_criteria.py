"""Pruning criteria against brute-force computations on tiny models.

References are built without the library's grouping code: each group's weights are sliced by
hand (an MLP's neuron columns and biases, a CNN's filters, an attention block's heads),
gradients and Hessians come from ``jax.grad`` / ``jax.hessian`` on the flattened parameters,
and the per-group sums, norms and distances are taken in NumPy.  Both models carry ungrouped
(-1) weights.  Everything runs in float64 except the dtype check.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import head_group_ids, make_cnn, make_heads, make_mlp
from jax.flatten_util import ravel_pytree

from jaxprune.criteria._reduce import group_sum
from jaxprune.criteria.fpgm import fpgm_scores
from jaxprune.criteria.grasp import grasp_scores
from jaxprune.criteria.hessian_diag import (
    hessian_diagonal_score_estimate,
    hessian_diagonal_scores,
)
from jaxprune.criteria.magnitude import magnitude_scores
from jaxprune.criteria.random import random_scores
from jaxprune.criteria.snip import snip_scores
from jaxprune.criteria.taylor import gate_gradient_scores
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout

# Deviations of a Monte Carlo mean from its expectation allowed, in standard deviations.
SIGMAS = 5.0
# Relative accuracy required of a reported standard error from 2000 probes (as in
# tests/spectra/test_hessian.py).
STDERR_RTOL = 0.25
# Agreement of two exact computations of the same float64 quantity.
RTOL = 1e-9


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# --- tiny models, their group ids, and hand-sliced groups ------------------------------------


def _squared_loss(model, x, y):
    def loss(params, batch=None):
        inputs, targets = (x, y) if batch is None else batch
        return 0.5 * jnp.mean(jnp.sum((model.apply(params, inputs) - targets) ** 2, axis=-1))

    return loss


@functools.cache
def mlp_case():
    """4-7-5-3 tanh MLP: groups 0-6 are Dense_0's units, 7-11 Dense_1's; Dense_2 ungrouped."""
    model, params, x = make_mlp(jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(7), (x.shape[0], 3), jnp.float64)
    ids = build_group_ids(params, neurons(r"Dense_[01]$"))[0]
    return params, ids, _squared_loss(model, x, y), (x, y), model


def mlp_slices(tree):
    """Each MLP group's entries of ``tree`` (a pytree like params): kernel column + bias."""
    p = tree["params"]
    groups = []
    for layer, width in (("Dense_0", 7), ("Dense_1", 5)):
        kernel, bias = np.asarray(p[layer]["kernel"]), np.asarray(p[layer]["bias"])
        groups += [np.concatenate([kernel[:, i], bias[i : i + 1]]) for i in range(width)]
    return groups


@functools.cache
def cnn_case():
    """Two-conv CNN: groups 0-2 are Conv_0's filters (kernel + bias), 3-6 Conv_1's filters
    (kernel only; its bias and the Dense head are ungrouped)."""
    model, params, x = make_cnn(jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(8), (x.shape[0], 2), jnp.float64)
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    ids["params"]["Conv_0"]["kernel"] = np.arange(3, dtype=np.int32)[None, None, None, :]
    ids["params"]["Conv_0"]["bias"] = np.arange(3, dtype=np.int32)
    ids["params"]["Conv_1"]["kernel"] = np.arange(3, 7, dtype=np.int32)[None, None, None, :]
    return params, ids, _squared_loss(model, x, y), (x, y), model


def cnn_slices(tree):
    p = tree["params"]
    k0, b0 = np.asarray(p["Conv_0"]["kernel"]), np.asarray(p["Conv_0"]["bias"])
    k1 = np.asarray(p["Conv_1"]["kernel"])
    return [np.concatenate([k0[..., f].ravel(), b0[f : f + 1]]) for f in range(3)] + [
        k1[..., f].ravel() for f in range(4)
    ]


CASES = {"mlp": (mlp_case, mlp_slices), "cnn": (cnn_case, cnn_slices)}
# Groups of each layer, by hand.
LAYERS = {"mlp": [range(0, 7), range(7, 12)], "cnn": [range(0, 3), range(3, 7)]}


def group_positions(params, slices):
    """Each group's indices into ``ravel_pytree(params)``, found by slicing an index tree."""
    flat, unravel = ravel_pytree(params)
    index_tree = unravel(jnp.arange(flat.size, dtype=flat.dtype))
    return [s.astype(np.int64) for s in slices(index_tree)]


def gradient(loss, params, *batch):
    """``∇loss(params)`` by ``jax.grad`` (jit-compiled: faster than op-by-op on CPU)."""
    return jax.jit(jax.grad(loss))(params, *batch)


@functools.cache
def flat_hessian_and_gradient(case):
    """The explicit ``(P, P)`` Hessian and ``(P,)`` gradient of a case's loss on the flat params,
    and the function mapping flat vectors back to params."""
    params, _, loss, *_ = CASES[case][0]()
    flat, unravel = ravel_pytree(params)
    flat_loss = lambda v: loss(unravel(v))  # noqa: E731
    hessian = jax.jit(jax.hessian(flat_loss))(flat)
    return np.asarray(hessian), np.asarray(gradient(flat_loss, flat)), unravel


# --- the shared reduction -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_sum_sums_each_group_and_drops_ungrouped(dtype):
    params, ids, *_ = mlp_case()
    rng = np.random.default_rng(0)
    values = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(dtype), params)
    sums = group_sum(values, ids, 12)
    assert sums.shape == (12,) and sums.dtype == dtype
    expected = [s.sum() for s in mlp_slices(values)]
    np.testing.assert_allclose(sums, expected, rtol=1e-5 if dtype == np.float32 else RTOL)


# --- magnitude ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_magnitude_matches_numpy_norms(case, norm):
    make, slices = CASES[case]
    params, ids, *_ = make()
    order = 1 if norm == "l1" else 2
    expected = [np.linalg.norm(s, ord=order) for s in slices(params)]
    np.testing.assert_allclose(magnitude_scores(params, ids, norm=norm), expected, rtol=RTOL)


# --- SNIP -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_snip_matches_grad_times_weight(case):
    make, slices = CASES[case]
    params, ids, loss, *_ = make()
    grads = gradient(loss, params)
    expected = [np.abs(g * w).sum() for g, w in zip(slices(grads), slices(params))]
    np.testing.assert_allclose(snip_scores(loss, params, ids), expected, rtol=RTOL)


# --- GraSP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_grasp_is_minus_summed_score_of_explicit_hessian_times_gradient(case):
    make, slices = CASES[case]
    params, ids, loss, *_ = make()
    hessian, gradient, unravel = flat_hessian_and_gradient(case)
    hessian_grad = unravel(jnp.asarray(hessian @ gradient))
    # GraSP's score S(-w) = -w ⊙ Hg; GraSP prunes the highest S, so "importance" is -S.
    grasp_s = [-w * hg for w, hg in zip(slices(params), slices(hessian_grad))]
    expected = [-s.sum() for s in grasp_s]
    np.testing.assert_allclose(grasp_scores(loss, params, ids), expected, rtol=RTOL, atol=1e-14)


# --- gate gradient (Michel et al. / first-order Taylor) ---------------------------------------


def test_gate_gradient_matches_finite_differences_of_the_gated_loss():
    params, ids, loss, *_ = mlp_case()
    flat, unravel = ravel_pytree(params)
    positions = group_positions(params, mlp_slices)
    flat_loss = jax.jit(lambda v: loss(unravel(v)))

    def gated_loss(group, gate):
        gated = np.array(flat)
        gated[positions[group]] *= gate
        return float(flat_loss(gated))

    eps = 1e-6
    expected = [abs(gated_loss(g, 1 + eps) - gated_loss(g, 1 - eps)) / (2 * eps) for g in range(12)]
    np.testing.assert_allclose(gate_gradient_scores(loss, params, ids), expected, rtol=1e-6)


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_gate_gradient_equals_abs_sum_of_weight_times_gradient(case):
    make, slices = CASES[case]
    params, ids, loss, *_ = make()
    grads = gradient(loss, params)
    expected = [abs((g * w).sum()) for g, w in zip(slices(grads), slices(params))]
    np.testing.assert_allclose(gate_gradient_scores(loss, params, ids), expected, rtol=RTOL)


def test_gate_gradient_averages_absolute_values_over_batches():
    params, ids, loss, (x, y), _ = mlp_case()
    batches = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 6, 2)]
    per_batch = []
    for batch in batches:
        grads = gradient(loss, params, batch)
        per_batch.append(
            [abs((g * w).sum()) for g, w in zip(mlp_slices(grads), mlp_slices(params))]
        )
    scores = gate_gradient_scores(loss, params, ids, batches=(b for b in batches))
    np.testing.assert_allclose(scores, np.mean(per_batch, axis=0), rtol=RTOL)


def test_gate_gradient_normalizes_each_layer_by_its_l2_norm():
    params, ids, loss, *_ = mlp_case()
    layout = GroupLayout.from_sizes(("Dense_0", "Dense_1"), (7, 5))
    raw = np.asarray(gate_gradient_scores(loss, params, ids))
    expected = np.concatenate(
        [raw[:7] / np.linalg.norm(raw[:7]), raw[7:] / np.linalg.norm(raw[7:])]
    )
    normalized = gate_gradient_scores(loss, params, ids, normalize_by=layout)
    np.testing.assert_allclose(normalized, expected, rtol=RTOL)


def _heads_forward(params, x, head_gates):
    """HeadsModel written out by hand, with Michel et al.'s gate on each head's output."""
    p = params["params"]
    q = jnp.einsum("ntf,fhd->nthd", x, p["query"]["kernel"]) + p["query"]["bias"]
    v = jnp.einsum("ntf,fhd->nthd", x, p["value"]["kernel"]) + p["value"]["bias"]
    weights = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, q), axis=-1)
    mixed = jnp.einsum("nhts,nshd->nthd", weights, jnp.tanh(v)) * head_gates[:, None]
    out = jnp.einsum("nthd,hdf->ntf", mixed, p["out"]["kernel"]) + p["out"]["bias"]
    return out.mean(axis=1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


def test_gate_on_output_projection_rows_is_michel_head_gate():
    model, params, x = make_heads(jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(6), (x.shape[0], 3), jnp.float64)
    ones = jnp.ones(2, jnp.float64)
    by_hand = jax.jit(_heads_forward)(params, x, ones)
    np.testing.assert_allclose(by_hand, jax.jit(model.apply)(params, x), rtol=RTOL)
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    ids["params"]["out"]["kernel"] = np.arange(2, dtype=np.int32)[:, None, None]

    def head_loss(gates):
        return 0.5 * jnp.mean(jnp.sum((_heads_forward(params, x, gates) - y) ** 2, axis=-1))

    expected = np.abs(jax.jit(jax.grad(head_loss))(ones))
    scores = gate_gradient_scores(_squared_loss(model, x, y), params, ids)
    np.testing.assert_allclose(scores, expected, rtol=RTOL)


# --- Hessian diagonal (OBD / the HI of Li et al. (2020)) ------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_hessian_diagonal_exact_matches_jax_hessian(case):
    make, slices = CASES[case]
    params, ids, loss, *_ = make()
    hessian, _, unravel = flat_hessian_and_gradient(case)
    diagonal = unravel(jnp.asarray(np.diag(hessian)))
    expected = [0.5 * (h * w**2).sum() for h, w in zip(slices(diagonal), slices(params))]
    scores = hessian_diagonal_scores(loss, params, ids, exact=True)
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=1e-14)


def test_hessian_diagonal_hutchinson_within_its_standard_error():
    params, ids, loss, *_ = mlp_case()
    hessian = flat_hessian_and_gradient("mlp")[0]
    weights = np.asarray(ravel_pytree(params)[0])
    means, sds = [], []
    for positions in group_positions(params, mlp_slices):
        # Sample for group g: vᵀ A v with A_ji = ½ w_j² H_ji for j in g (rows outside g zero).
        rows = np.zeros_like(weights)
        rows[positions] = 0.5 * weights[positions] ** 2
        a = rows[:, None] * hessian
        s = 0.5 * (a + a.T)
        means.append(np.trace(a))
        # Rademacher probes: Var(vᵀ A v) = 2 (‖S‖_F² − Σ S_ii²).
        sds.append(np.sqrt(2 * (np.sum(s**2) - np.sum(np.diag(s) ** 2))))
    num_probes = 2000
    key = jax.random.PRNGKey(11)
    estimate = hessian_diagonal_score_estimate(loss, params, ids, key, num_probes=num_probes)
    theory_stderr = np.asarray(sds) / np.sqrt(num_probes)
    assert estimate.samples.shape == (num_probes, 12)
    assert np.all(np.abs(np.asarray(estimate.estimate) - means) <= SIGMAS * theory_stderr)
    np.testing.assert_allclose(estimate.stderr, theory_stderr, rtol=STDERR_RTOL)
    scores = hessian_diagonal_scores(loss, params, ids, key=key, num_probes=num_probes)
    np.testing.assert_allclose(scores, estimate.estimate, rtol=RTOL)


# --- FPGM -----------------------------------------------------------------------------------


def pairwise_distance_sums(vectors):
    stacked = np.stack(vectors)
    return np.linalg.norm(stacked[:, None, :] - stacked[None, :, :], axis=-1).sum(axis=1)


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_fpgm_matches_numpy_pairwise_distances_within_each_layer(case):
    make, slices = CASES[case]
    params, ids, *_ = make()
    groups = slices(params)
    expected = np.concatenate(
        [pairwise_distance_sums([groups[g] for g in layer]) for layer in LAYERS[case]]
    )
    np.testing.assert_allclose(fpgm_scores(params, ids), expected, rtol=RTOL)
    layout = GroupLayout.from_sizes(("first", "second"), tuple(len(r) for r in LAYERS[case]))
    np.testing.assert_allclose(fpgm_scores(params, ids, layout=layout), expected, rtol=RTOL)


def test_fpgm_joins_groups_that_share_leaves_into_one_layer():
    _, params, _ = make_heads(jnp.float64)
    p = params["params"]
    heads = [
        np.concatenate(
            [np.ravel(p[name]["kernel"][:, h]) for name in ("query", "value")]
            + [np.ravel(p[name]["bias"][h]) for name in ("query", "value")]
            + [np.ravel(p["out"]["kernel"][h])]
        )
        for h in range(2)
    ]
    distance = np.linalg.norm(heads[0] - heads[1])
    np.testing.assert_allclose(fpgm_scores(params, head_group_ids(params)), [distance] * 2)


def test_fpgm_single_group_layer_scores_zero():
    params, ids, *_ = mlp_case()
    layout = GroupLayout(("a", "b", "c"), np.array([0] * 7 + [1] * 4 + [2], np.int32))
    scores = np.asarray(fpgm_scores(params, ids, layout=layout))
    assert scores[11] == 0.0
    assert np.all(scores[:11] > 0)


# --- random ---------------------------------------------------------------------------------


def test_random_scores_reproducible_by_key_and_uniform():
    key = jax.random.PRNGKey(3)
    scores = np.asarray(random_scores(key, 20000))
    assert scores.shape == (20000,)
    np.testing.assert_array_equal(scores, random_scores(key, 20000))
    assert not np.array_equal(scores, random_scores(jax.random.PRNGKey(4), 20000))
    assert np.all((scores >= 0) & (scores < 1))
    # Kolmogorov–Smirnov distance to Uniform[0, 1); 1.95/sqrt(n) is the 0.1% critical value.
    ordered = np.sort(scores)
    n = ordered.size
    ks = max(np.max(np.arange(1, n + 1) / n - ordered), np.max(ordered - np.arange(n) / n))
    assert ks < 1.95 / np.sqrt(n)


# --- shared behaviour -----------------------------------------------------------------------


def _criteria(loss):
    """Every params-based criterion as ``f(params, group_ids) -> (p,)``."""
    return {
        "magnitude": lambda p, g: magnitude_scores(p, g),
        "snip": lambda p, g: snip_scores(loss, p, g),
        "grasp": lambda p, g: grasp_scores(loss, p, g),
        "gate": lambda p, g: gate_gradient_scores(loss, p, g),
        "hessian_exact": lambda p, g: hessian_diagonal_scores(loss, p, g, exact=True),
        "hessian_hutchinson": lambda p, g: hessian_diagonal_scores(
            loss, p, g, key=jax.random.PRNGKey(0), num_probes=4
        ),
        "fpgm": lambda p, g: fpgm_scores(p, g),
    }


NAMES = list(_criteria(None))


@pytest.mark.parametrize("name", NAMES)
def test_criterion_returns_params_dtype_and_is_jittable(name):
    params, ids, _, (x, y), model = mlp_case()
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    loss32 = _squared_loss(model, x.astype(jnp.float32), y.astype(jnp.float32))
    criterion = _criteria(loss32)[name]
    eager = criterion(params32, ids)
    assert eager.shape == (12,) and eager.dtype == jnp.float32
    jitted = jax.jit(lambda p: criterion(p, ids))(params32)
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-6)


def _with_nan(params):
    bad = jax.tree_util.tree_map(lambda a: a, params)
    bad["params"]["Dense_1"]["kernel"] = bad["params"]["Dense_1"]["kernel"].at[0, 0].set(jnp.nan)
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_criterion_rejects_non_finite_params_naming_the_leaf(name):
    params, ids, loss, *_ = mlp_case()
    with pytest.raises(
        ValueError, match=r"params\['params'\]\['Dense_1'\]\['kernel'\].*non-finite"
    ):
        _criteria(loss)[name](_with_nan(params), ids)


@pytest.mark.parametrize("name", NAMES)
def test_criterion_rejects_mismatched_group_ids_naming_the_path(name):
    params, ids, loss, *_ = mlp_case()
    short = {"params": {k: v for k, v in ids["params"].items() if k != "Dense_2"}}
    with pytest.raises(ValueError, match="Dense_2"):
        _criteria(loss)[name](params, short)


def test_bad_arguments_raise_naming_argument_and_value():
    params, ids, loss, *_ = mlp_case()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"norm.*'l3'"):
        magnitude_scores(params, ids, norm="l3")
    with pytest.raises(ValueError, match=r"num_probes: expected a positive int, got 0"):
        hessian_diagonal_scores(loss, params, ids, key=key, num_probes=0)
    with pytest.raises(TypeError, match=r"num_probes.*2\.5"):
        hessian_diagonal_scores(loss, params, ids, key=key, num_probes=2.5)
    with pytest.raises(ValueError, match=r"num_probes=3"):
        hessian_diagonal_scores(loss, params, ids, num_probes=3, exact=True)
    with pytest.raises(ValueError, match=r"key=None"):
        hessian_diagonal_scores(loss, params, ids, num_probes=3)
    with pytest.raises(ValueError, match=r"num_groups: expected a positive int, got 0"):
        random_scores(key, 0)
    with pytest.raises(TypeError, match=r"num_groups.*3\.0"):
        random_scores(key, 3.0)
    with pytest.raises(ValueError, match="batches"):
        gate_gradient_scores(loss, params, ids, batches=[])
    wrong = GroupLayout.from_sizes(("a",), (11,))
    with pytest.raises(ValueError, match=r"normalize_by describes 11 groups.*12"):
        gate_gradient_scores(loss, params, ids, normalize_by=wrong)
    with pytest.raises(ValueError, match=r"layout describes 11 groups.*12"):
        fpgm_scores(params, ids, layout=wrong)
    with pytest.raises(TypeError, match=r"layout must be a GroupLayout, got dict"):
        fpgm_scores(params, ids, layout={})


def test_fpgm_rejects_a_layer_of_unequal_groups_naming_layer_and_leaf():
    params, ids, *_ = mlp_case()
    merged = GroupLayout.from_sizes(("hidden",), (12,))
    with pytest.raises(ValueError, match=r"layer 'hidden'.*\['Dense_0'\]\['bias'\]"):
        fpgm_scores(params, ids, layout=merged)
