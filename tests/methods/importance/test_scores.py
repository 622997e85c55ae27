"""Natural, magnitude and Hessian importance, Π_s and natural pruning against brute force.

The structured natural-importance paths (gated neurons, inputs of a dense layer) are checked
against the general path and against hand-pruned copies of the zoo's MLP.

References are built without the module's machinery: groups are sliced by hand, replaced
models are evaluated one by one in Python loops, Hessians come from ``jax.hessian`` on the
flattened parameters, supports are enumerated with ``itertools.combinations`` and greedy
elimination is re-run as a plain loop.  Everything runs in float64.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxprune.masks import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout
from jaxprune.methods.importance import (
    EXACT_SUPPORT_LIMIT,
    hessian_importance,
    magnitude_importance,
    natural_importance,
    natural_pruning,
    prune,
    prune_mask,
)
from jaxprune.methods.importance.scores import (
    ACCELERATOR_CHUNK,
    STRUCTURED_CHUNK_CPU,
    WHOLE_MODEL_BLOCK_ENTRIES_CPU,
    default_chunk_size,
    natural_importance_from_gates,
    natural_importance_of_dense_inputs,
)
from jaxprune.models import MLP
from jaxprune.models import mlp as mlp_zoo

# Agreement of two float64 computations of the same quantity in different summation orders.
RTOL = 1e-10
ATOL = 1e-12
# Deviation of a Monte Carlo mean from its expectation allowed, in standard errors.
SIGMAS = 5.0
HIDDEN = 4


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# --- a tiny tanh network with hand-made neuron groups ----------------------------------------


@functools.cache
def network():
    """3-4-2 tanh network on 6 examples; group j = hidden unit j (kernel column, bias, and
    output-kernel row); the output bias is ungrouped."""
    rng = np.random.default_rng(0)
    params = {
        "hidden": {"kernel": rng.normal(size=(3, HIDDEN)), "bias": rng.normal(size=HIDDEN)},
        "out": {"kernel": rng.normal(size=(HIDDEN, 2)), "bias": rng.normal(size=2)},
    }
    reference = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape), params)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    ids = {
        "hidden": {
            "kernel": np.arange(HIDDEN, dtype=np.int32)[None, :],
            "bias": np.arange(HIDDEN, dtype=np.int32),
        },
        "out": {
            "kernel": np.arange(HIDDEN, dtype=np.int32)[:, None],
            "bias": np.full((1,), -1, np.int32),
        },
    }
    return params, reference, ids, x, y


def network_loss(params):
    _, _, _, x, y = network()
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def replace_unit(params, reference, unit):
    """``params`` with hidden unit ``unit`` replaced by ``reference`` (None: zero), by hand."""
    new = jax.tree_util.tree_map(np.array, params)
    ref = jax.tree_util.tree_map(np.zeros_like, params) if reference is None else reference
    new["hidden"]["kernel"][:, unit] = ref["hidden"]["kernel"][:, unit]
    new["hidden"]["bias"][unit] = ref["hidden"]["bias"][unit]
    new["out"]["kernel"][unit, :] = ref["out"]["kernel"][unit, :]
    return new


def unit_values(tree, unit):
    """The entries of hidden unit ``unit`` in a pytree like params."""
    return np.concatenate(
        [
            np.asarray(tree["hidden"]["kernel"])[:, unit],
            np.asarray(tree["hidden"]["bias"])[unit : unit + 1],
            np.asarray(tree["out"]["kernel"])[unit, :],
        ]
    )


def flat_set(params, flags):
    """Boolean pytree like params from a flat ``(P,)`` membership in ravel order."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out, start = [], 0
    for leaf in leaves:
        out.append(np.asarray(flags[start : start + leaf.size]).reshape(leaf.shape))
        start += leaf.size
    return jax.tree_util.tree_unflatten(treedef, out)


def brute_set_importance(loss, params, reference, flags):
    """``L(θ with the flagged flat entries replaced) − L(θ)``, one model at a time."""
    flat, unravel = ravel_pytree(params)
    ref = np.zeros_like(flat) if reference is None else ravel_pytree(reference)[0]
    replaced = np.where(flags, ref, flat)
    return float(loss(unravel(jnp.asarray(replaced))) - loss(params))


@functools.cache
def flat_hessian():
    """The explicit ``(P, P)`` Hessian of the network loss on the flat parameters."""
    params, *_ = network()
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda v: network_loss(unravel(v))))(flat))


def flat_hessian_diagonal():
    return np.diag(flat_hessian())


# --- natural importance ----------------------------------------------------------------------


@pytest.mark.parametrize("init_pruning", [False, True], ids=["regular", "init"])
def test_natural_importance_of_groups_equals_a_loop_replacing_each_group(init_pruning):
    params, reference, ids, *_ = network()
    reference = reference if init_pruning else None
    scores = natural_importance(network_loss, params, ids, reference=reference)
    base = network_loss(params)
    expected = [network_loss(replace_unit(params, reference, j)) - base for j in range(HIDDEN)]
    assert scores.shape == (HIDDEN,)
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("init_pruning", [False, True], ids=["regular", "init"])
def test_unstructured_natural_importance_replaces_one_weight_at_a_time(init_pruning):
    params, reference, *_ = network()
    reference = reference if init_pruning else None
    size = ravel_pytree(params)[0].size
    scores = natural_importance(network_loss, params, None, reference=reference)
    expected = [
        brute_set_importance(network_loss, params, reference, np.arange(size) == i)
        for i in range(size)
    ]
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("init_pruning", [False, True], ids=["regular", "init"])
def test_natural_importance_of_overlapping_sets(init_pruning):
    params, reference, *_ = network()
    reference = reference if init_pruning else None
    size = ravel_pytree(params)[0].size
    input_layer = {
        "hidden": {"kernel": True, "bias": True},
        "out": {"kernel": False, "bias": False},
    }
    first_weights = np.arange(size) < 5  # overlaps the input layer
    column = {
        "hidden": {"kernel": np.array([[True, False, False, False]]), "bias": False},
        "out": {"kernel": False, "bias": np.array([False, True])},
    }
    empty = flat_set(params, np.zeros(size, bool))
    sets = [input_layer, flat_set(params, first_weights), column, empty]
    flags = [
        ravel_pytree(jax.tree_util.tree_map(lambda s, p: np.broadcast_to(s, p.shape), m, params))[0]
        for m in sets
    ]
    scores = natural_importance(network_loss, params, sets, reference=reference, chunk_size=3)
    expected = [brute_set_importance(network_loss, params, reference, np.asarray(f)) for f in flags]
    assert scores.shape == (4,) and float(scores[3]) == 0.0
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)


def test_chunk_size_does_not_change_natural_importance():
    params, reference, *_ = network()
    results = [
        natural_importance(network_loss, params, None, reference=reference, chunk_size=c)
        for c in (1, 5, 64)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=RTOL, atol=ATOL)


def test_default_chunk_size_follows_the_backend_rule():
    for num_params in (1, 16, 1000, 4097, 75_010):
        expected = min(ACCELERATOR_CHUNK, max(1, WHOLE_MODEL_BLOCK_ENTRIES_CPU // num_params))
        assert default_chunk_size(num_params, backend="cpu") == expected
        for backend in ("gpu", "tpu"):
            assert default_chunk_size(num_params, backend=backend) == ACCELERATOR_CHUNK
    assert default_chunk_size(backend="cpu") == STRUCTURED_CHUNK_CPU
    assert default_chunk_size(backend="gpu") == ACCELERATOR_CHUNK
    assert default_chunk_size(7) == default_chunk_size(7, backend=jax.default_backend())
    with pytest.raises(ValueError, match="num_params: expected a positive int, got 0"):
        default_chunk_size(0)
    params, reference, ids, *_ = network()
    chunk_size = default_chunk_size(ravel_pytree(params)[0].size)
    np.testing.assert_allclose(
        natural_importance(network_loss, params, ids, reference=reference),
        natural_importance(network_loss, params, ids, reference=reference, chunk_size=chunk_size),
        rtol=RTOL,
        atol=ATOL,
    )


# --- structured paths: gated neurons and the inputs of a dense layer --------------------------

WIDTHS = (5, 4)


@functools.cache
def gated_mlp():
    """The zoo's tanh MLP 3-5-4-2 in float64 on 7 examples with integer labels."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(7, 3)), rng.integers(0, 2, 7)
    model = MLP(hidden=WIDTHS, num_outputs=2, activation=jnp.tanh)
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) * 1.5, variables)
    return model, variables, x, y


def cross_entropy(logits):
    _, _, _, y = gated_mlp()
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])


def mlp_loss(variables):
    model, _, x, _ = gated_mlp()
    return cross_entropy(model.apply(variables, x))


def gated_mlp_loss(gates):
    model, variables, x, _ = gated_mlp()
    return cross_entropy(model.apply(variables, x, neuron_gates=gates))


def mlp_without_neuron(layer, unit):
    """The MLP's variables with hidden unit ``unit`` of ``layer`` zeroed by hand (kernel
    column and bias), as NumPy copies."""
    _, variables, _, _ = gated_mlp()
    new = jax.tree_util.tree_map(np.array, variables)
    dense = new["params"][f"Dense_{layer}"]
    dense["kernel"][:, unit] = 0.0
    dense["bias"][unit] = 0.0
    return new


def brute_mlp_neuron_importance():
    """NI of the 9 hidden units in gate order, one hand-pruned model at a time."""
    _, variables, _, _ = gated_mlp()
    base = float(mlp_loss(variables))
    return np.array(
        [
            float(mlp_loss(mlp_without_neuron(layer, unit))) - base
            for layer, width in enumerate(WIDTHS)
            for unit in range(width)
        ]
    )


def test_gated_natural_importance_equals_natural_importance_of_the_zoo_neuron_groups():
    """Regular pruning of a neuron (kernel column + bias, act(0) = 0) zeroes its output,
    which is what a zero gate does."""
    model, variables, *_ = gated_mlp()
    ids, _ = mlp_zoo.group_ids(variables, model)
    gated = natural_importance_from_gates(gated_mlp_loss, sum(WIDTHS))
    assert gated.shape == (sum(WIDTHS),)
    np.testing.assert_allclose(gated, brute_mlp_neuron_importance(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        gated, natural_importance(mlp_loss, variables, ids), rtol=RTOL, atol=ATOL
    )


def test_gated_natural_importance_equals_groups_holding_the_next_layers_row():
    _, variables, *_ = gated_mlp()
    gated = natural_importance_from_gates(gated_mlp_loss, sum(WIDTHS))
    for layer, start in ((0, 0), (1, WIDTHS[0])):
        spec = neurons(f"Dense_{layer}$", next_layer=f"Dense_{layer + 1}$")
        ids, _ = build_group_ids(variables, spec)
        np.testing.assert_allclose(
            gated[start : start + WIDTHS[layer]],
            natural_importance(mlp_loss, variables, ids),
            rtol=RTOL,
            atol=ATOL,
        )


def dense_layer_split(layer):
    """``(inputs, kernel, loss_of_outputs)`` splitting the MLP at the dense layer fed by
    hidden layer ``layer``, written out by hand."""
    _, variables, x, _ = gated_mlp()
    dense = [variables["params"][f"Dense_{i}"] for i in range(len(WIDTHS) + 1)]
    h = x
    for i in range(layer + 1):
        h = jnp.tanh(h @ dense[i]["kernel"] + dense[i]["bias"])

    def loss_of_outputs(z):
        z = z + dense[layer + 1]["bias"]
        for i in range(layer + 2, len(WIDTHS) + 1):
            z = jnp.tanh(z) @ dense[i]["kernel"] + dense[i]["bias"]
        return cross_entropy(z)

    return h, dense[layer + 1]["kernel"], loss_of_outputs


@pytest.mark.parametrize("layer", [0, 1])
def test_dense_input_natural_importance_equals_natural_importance_of_that_layers_neurons(layer):
    _, variables, *_ = gated_mlp()
    inputs, kernel, loss_of_outputs = dense_layer_split(layer)
    scores = natural_importance_of_dense_inputs(loss_of_outputs, inputs, kernel)
    ids, _ = build_group_ids(variables, neurons(f"Dense_{layer}$"))
    start = sum(WIDTHS[:layer])
    assert scores.shape == (WIDTHS[layer],)
    np.testing.assert_allclose(scores, natural_importance(mlp_loss, variables, ids), rtol=RTOL)
    np.testing.assert_allclose(
        scores, brute_mlp_neuron_importance()[start : start + WIDTHS[layer]], rtol=RTOL, atol=ATOL
    )


def test_dense_input_natural_importance_zeroes_one_input_over_every_leading_axis():
    rng = np.random.default_rng(7)
    inputs, kernel, target = rng.normal(size=(2, 3, 6)), rng.normal(size=(6, 4)), rng.normal()

    def loss_of_outputs(z):
        return jnp.sum(jnp.sin(z) ** 2) + target

    base = loss_of_outputs(inputs @ kernel)
    expected = [
        loss_of_outputs(np.where(np.arange(6) == g, 0.0, inputs) @ kernel) - base for g in range(6)
    ]
    scores = natural_importance_of_dense_inputs(loss_of_outputs, inputs, kernel)
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 50])
def test_chunk_size_does_not_change_the_structured_paths(chunk_size):
    gated = natural_importance_from_gates(gated_mlp_loss, sum(WIDTHS))
    np.testing.assert_allclose(
        natural_importance_from_gates(gated_mlp_loss, sum(WIDTHS), chunk_size=chunk_size),
        gated,
        rtol=RTOL,
        atol=ATOL,
    )
    inputs, kernel, loss_of_outputs = dense_layer_split(0)
    np.testing.assert_allclose(
        natural_importance_of_dense_inputs(loss_of_outputs, inputs, kernel, chunk_size=chunk_size),
        gated[: WIDTHS[0]],
        rtol=RTOL,
        atol=ATOL,
    )


# --- magnitude and Hessian importance --------------------------------------------------------


def test_magnitude_importance_is_the_squared_norm_per_group_weight_and_set():
    params, _, ids, *_ = network()
    expected = [np.sum(unit_values(params, j) ** 2) for j in range(HIDDEN)]
    np.testing.assert_allclose(magnitude_importance(params, ids), expected, rtol=RTOL)
    flat = np.asarray(ravel_pytree(params)[0])
    np.testing.assert_allclose(magnitude_importance(params, None), flat**2, rtol=RTOL)
    first = np.arange(flat.size) < 7
    sets = [flat_set(params, first), flat_set(params, ~first)]
    np.testing.assert_allclose(
        magnitude_importance(params, sets), [np.sum(flat[first] ** 2), np.sum(flat[~first] ** 2)]
    )


def test_exact_hessian_importance_is_half_the_hessian_diagonal_times_weight_squared():
    params, _, ids, *_ = network()
    flat = np.asarray(ravel_pytree(params)[0])
    elementwise = 0.5 * flat_hessian_diagonal() * flat**2
    index_tree = ravel_pytree_index(params)
    expected = [elementwise[unit_values(index_tree, j).astype(int)].sum() for j in range(HIDDEN)]
    scores = hessian_importance(network_loss, params, ids)
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)
    first = np.arange(flat.size) < 9
    sets = [flat_set(params, first), flat_set(params, np.arange(flat.size) == 4)]
    np.testing.assert_allclose(
        hessian_importance(network_loss, params, sets),
        [elementwise[first].sum(), elementwise[4]],
        rtol=RTOL,
        atol=ATOL,
    )


def ravel_pytree_index(params):
    """A pytree like params holding each entry's position in ``ravel_pytree`` order."""
    flat, unravel = ravel_pytree(params)
    return unravel(jnp.arange(flat.size, dtype=flat.dtype))


def test_hutchinson_hessian_importance_is_within_its_standard_error_of_the_exact_one():
    """A Rademacher probe v gives group g the sample ½ vᵀ S_g v, S_g the symmetric part of
    A_jk = [j ∈ g] w_j² H_jk: mean ½ tr(S_g), variance ½ Σ_{j≠k} (S_g)_jk²."""
    params, _, ids, *_ = network()
    num_probes = 500
    flat = np.asarray(ravel_pytree(params)[0])
    hessian = flat_hessian()
    index_tree = ravel_pytree_index(params)
    exact, stderr = [], []
    for j in range(HIDDEN):
        in_group = np.isin(np.arange(flat.size), unit_values(index_tree, j).astype(int))
        a = (in_group * flat**2)[:, None] * hessian
        sym = (a + a.T) / 2
        exact.append(0.5 * np.trace(sym))
        off_diagonal = np.sum(sym**2) - np.sum(np.diag(sym) ** 2)
        stderr.append(np.sqrt(0.5 * off_diagonal / num_probes))
    scores = hessian_importance(
        network_loss, params, ids, method="hutchinson", key=jax.random.key(3), num_probes=500
    )
    assert np.all(np.abs(np.asarray(scores) - exact) <= SIGMAS * np.asarray(stderr))


def test_natural_equals_hessian_importance_for_the_squared_loss_at_its_minimum():
    """Li et al. (2020), Lemma 3.1 with reading HB-3: at the least-squares minimum θ*, removing
    weight i raises the loss by θ_i² Σ̂_ii = ½ H_ii θ_i² (H = 2Σ̂), and a set Δ by θ_Δᵀ Σ̂_ΔΔ θ_Δ."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=40)
    theta = np.linalg.lstsq(x, y, rcond=None)[0]
    covariance = x.T @ x / len(x)

    def loss(w):
        return jnp.mean((x @ w - y) ** 2)

    natural = natural_importance(loss, theta, None)
    np.testing.assert_allclose(natural, hessian_importance(loss, theta, None), rtol=1e-8)
    np.testing.assert_allclose(natural, theta**2 * np.diag(covariance), rtol=1e-8)
    sets = [np.arange(6) < 3, np.arange(6) % 2 == 0]
    expected = [theta[s] @ covariance[np.ix_(s, s)] @ theta[s] for s in sets]
    np.testing.assert_allclose(natural_importance(loss, theta, sets), expected, rtol=1e-8)


# --- Π_s -------------------------------------------------------------------------------------


def test_prune_keeps_exactly_the_top_groups_and_zeros_the_rest():
    params, _, ids, *_ = network()
    scores = np.array([0.3, -1.0, 2.0, 0.5])
    for keep in range(HIDDEN + 1):
        top = set(np.argsort(-scores)[:keep].tolist())
        mask = prune_mask(params, scores, keep, group_ids=ids)
        assert mask.dtype == bool and set(np.flatnonzero(mask).tolist()) == top
        pruned = prune(params, scores, keep, group_ids=ids)
        for j in range(HIDDEN):
            want = unit_values(params, j) if j in top else np.zeros_like(unit_values(params, j))
            np.testing.assert_array_equal(unit_values(pruned, j), want)
        np.testing.assert_array_equal(pruned["out"]["bias"], params["out"]["bias"])


def test_unstructured_prune_takes_a_vector_or_a_pytree_and_breaks_ties_by_position():
    params, *_ = network()
    flat = np.asarray(ravel_pytree(params)[0])
    scores = np.abs(flat)
    keep = 11
    pruned = prune(params, scores, keep)
    kept = np.argsort(-scores, kind="stable")[:keep]
    expected = np.zeros_like(flat)
    expected[kept] = flat[kept]
    np.testing.assert_array_equal(ravel_pytree(pruned)[0], expected)
    tree_scores = jax.tree_util.tree_map(np.abs, params)
    np.testing.assert_array_equal(
        prune_mask(params, tree_scores, keep), prune_mask(params, scores, keep)
    )
    ties = prune_mask(params, np.ones(flat.size), 5)
    np.testing.assert_array_equal(np.flatnonzero(ties), np.arange(5))


def test_per_layer_prune_keeps_the_same_fraction_of_every_leaf():
    params, *_ = network()
    flat = np.asarray(ravel_pytree(params)[0])
    rng = np.random.default_rng(1)
    scores = rng.normal(size=flat.size)
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(params)]  # 4, 12, 2, 8
    mask = prune_mask(params, scores, flat.size // 2, per_layer=True)
    start = 0
    for size in sizes:
        leaf_scores, leaf_mask = scores[start : start + size], mask[start : start + size]
        top = np.argsort(-leaf_scores)[: size // 2]
        assert set(np.flatnonzero(leaf_mask).tolist()) == set(top.tolist())
        start += size


def test_per_layer_prune_of_groups_uses_the_first_leaf_of_each_group_or_a_layout():
    params = {"a": np.ones((2, 3)), "b": np.ones(4)}
    ids = {"a": np.array([[0, 1, 0]], np.int32), "b": np.array([2, 3, 4, 5], np.int32)}
    scores = np.array([1.0, 0.0, 5.0, 4.0, 3.0, 2.0])
    # Default layers: leaf "a" holds groups 0-1, leaf "b" groups 2-5; half of each is kept.
    np.testing.assert_array_equal(
        prune_mask(params, scores, 3, group_ids=ids, per_layer=True), [1, 0, 1, 1, 0, 0]
    )
    assert prune_mask(params, scores, 3, group_ids=ids).tolist() == [0, 0, 1, 1, 1, 0]
    layout = GroupLayout(("x", "y"), np.array([0, 0, 0, 1, 1, 1], np.int32))
    np.testing.assert_array_equal(
        prune_mask(params, scores, 2, group_ids=ids, per_layer=True, layout=layout),
        [0, 0, 1, 1, 0, 0],
    )


# --- natural pruning -------------------------------------------------------------------------


@functools.cache
def small_problem():
    """A non-separable loss of 8 weights: a tanh unit on a least-squares fit."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(12, 8)), rng.normal(size=12)
    params = {"w": rng.normal(size=5), "v": rng.normal(size=3)}
    reference = {"w": rng.normal(size=5), "v": rng.normal(size=3)}
    return params, reference, x, y


def small_loss(params):
    _, _, x, y = small_problem()
    w = jnp.concatenate([params["w"], params["v"]])
    return jnp.mean((jnp.tanh(x @ w) - y) ** 2) + 0.1 * jnp.sum(w[:4] * w[4:])


def brute_natural_pruning(loss, params, reference, keep):
    """Minimum loss over every support of ``keep`` kept weights, evaluated one by one."""
    flat, unravel = ravel_pytree(params)
    ref = np.zeros_like(flat) if reference is None else np.asarray(ravel_pytree(reference)[0])
    best = None
    for kept in itertools.combinations(range(flat.size), keep):
        flags = np.isin(np.arange(flat.size), kept)
        value = float(loss(unravel(jnp.asarray(np.where(flags, flat, ref)))))
        if best is None or value < best[0]:
            best = (value, flags)
    return best


@pytest.mark.parametrize("init_pruning", [False, True], ids=["regular", "init"])
@pytest.mark.parametrize("keep", [0, 3, 6, 8])
def test_exact_natural_pruning_is_the_minimum_over_all_supports(keep, init_pruning):
    params, reference, *_ = small_problem()
    reference = reference if init_pruning else None
    result = natural_pruning(small_loss, params, keep, reference=reference, method="exact")
    loss, flags = brute_natural_pruning(small_loss, params, reference, keep)
    assert result.method == "exact" and result.mask.dtype == bool
    np.testing.assert_array_equal(result.mask, flags)
    np.testing.assert_allclose(result.loss, loss, rtol=RTOL)
    np.testing.assert_allclose(result.loss, float(small_loss(result.params)), rtol=RTOL)
    flat = np.asarray(ravel_pytree(params)[0])
    ref = np.zeros_like(flat) if reference is None else np.asarray(ravel_pytree(reference)[0])
    np.testing.assert_array_equal(ravel_pytree(result.params)[0], np.where(flags, flat, ref))


def test_exact_natural_pruning_of_groups_enumerates_group_supports():
    params, _, ids, *_ = network()
    result = natural_pruning(network_loss, params, 2, group_ids=ids)
    losses = {
        kept: float(
            network_loss(
                functools.reduce(
                    lambda p, j: replace_unit(p, None, j),
                    [j for j in range(HIDDEN) if j not in kept],
                    params,
                )
            )
        )
        for kept in itertools.combinations(range(HIDDEN), 2)
    }
    best = min(losses, key=losses.get)
    assert result.method == "exact"
    assert tuple(np.flatnonzero(result.mask).tolist()) == best
    np.testing.assert_allclose(result.loss, losses[best], rtol=RTOL)


def test_exact_natural_pruning_breaks_ties_by_the_smallest_kept_groups():
    params = np.array([1.0, -1.0, 1.0, -1.0, 1.0])
    result = natural_pruning(lambda w: jnp.sum(w**2), params, 3, method="exact")
    # Every support of 3 has loss 3: the lexicographically smallest, (0, 1, 2), is kept.
    np.testing.assert_array_equal(result.mask, [1, 1, 1, 0, 0])
    result = natural_pruning(lambda w: jnp.sum(w**2), params, 1, method="exact")
    np.testing.assert_array_equal(result.mask, [1, 0, 0, 0, 0])


def test_greedy_natural_pruning_equals_exact_on_a_separable_quadratic():
    rng = np.random.default_rng(4)
    a, c, theta = rng.uniform(0.5, 2.0, 10), rng.normal(size=10), rng.normal(size=10)

    def loss(w):
        return jnp.sum(a * (w - c) ** 2)

    for keep in (0, 3, 6, 10):
        greedy = natural_pruning(loss, theta, keep, method="greedy")
        exact = natural_pruning(loss, theta, keep, method="exact")
        assert greedy.method == "greedy" and greedy.mask.sum() == keep
        np.testing.assert_array_equal(greedy.mask, exact.mask)
        np.testing.assert_allclose(greedy.loss, exact.loss, rtol=RTOL)


def test_greedy_natural_pruning_is_backward_elimination():
    params, reference, *_ = small_problem()
    flat, unravel = ravel_pytree(params)
    ref = np.asarray(ravel_pytree(reference)[0])
    alive = np.ones(flat.size, bool)
    for _ in range(flat.size - 2):  # plain loop: remove the cheapest remaining weight
        losses = [
            float(
                small_loss(unravel(jnp.asarray(np.where(alive & (np.arange(8) != i), flat, ref))))
            )
            if alive[i]
            else np.inf
            for i in range(flat.size)
        ]
        alive[int(np.argmin(losses))] = False
    result = natural_pruning(small_loss, params, 2, reference=reference, method="greedy")
    np.testing.assert_array_equal(result.mask, alive)


def test_auto_natural_pruning_is_exact_below_the_limit_and_greedy_above():
    params, *_ = small_problem()
    assert natural_pruning(small_loss, params, 4).method == "exact"
    big = np.linspace(-1.0, 1.0, 40)
    assert math.comb(40, 20) > EXACT_SUPPORT_LIMIT
    result = natural_pruning(lambda w: jnp.sum((w - 0.5) ** 2), big, 20, method="auto")
    assert result.method == "greedy" and result.mask.sum() == 20


# --- bad input -------------------------------------------------------------------------------


def nan_when_first_weight_is_zero(params):
    return jnp.sum(params["w"] ** 2) + jnp.where(params["w"][0] == 0, jnp.nan, 0.0)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda p, ids: natural_pruning(small_loss, p, -1),
            ValueError,
            "keep: expected an int >= 0",
        ),
        (lambda p, ids: natural_pruning(small_loss, p, 9), ValueError, "keep: expected an int in"),
        (lambda p, ids: prune(p, np.zeros(8), 9), ValueError, "keep: expected an int in"),
        (lambda p, ids: prune(p, np.zeros(8), 1.5), TypeError, "keep"),
        (lambda p, ids: prune(p, np.zeros(7), 2), ValueError, "scores: expected shape \\(8,\\)"),
        (lambda p, ids: prune(p, np.full(8, np.nan), 2), ValueError, "scores: NaN"),
        (
            lambda p, ids: natural_pruning(small_loss, p, 2, method="best"),
            ValueError,
            "method: expected one of",
        ),
        (
            lambda p, ids: hessian_importance(small_loss, p, None, method="lanczos"),
            ValueError,
            "method: expected one of",
        ),
        (
            lambda p, ids: hessian_importance(small_loss, p, None, num_probes=4),
            ValueError,
            "key and num_probes are for method='hutchinson'",
        ),
        (
            lambda p, ids: hessian_importance(small_loss, p, None, method="hutchinson"),
            ValueError,
            "needs both key and num_probes",
        ),
        (
            lambda p, ids: natural_importance(small_loss, p, ids),
            ValueError,
            "group_ids must have the same pytree structure",
        ),
        (
            lambda p, ids: natural_importance(small_loss, p, None, chunk_size=0),
            ValueError,
            "chunk_size",
        ),
        (
            lambda p, ids: natural_importance(small_loss, p, None, reference={"w": np.zeros(5)}),
            ValueError,
            "reference: expected a pytree with the structure",
        ),
        (
            lambda p, ids: natural_importance(small_loss, p, [{"w": True}]),
            ValueError,
            "group_ids\\[0\\]: a set must have the pytree structure",
        ),
        (
            lambda p, ids: natural_importance(small_loss, p, [{"w": np.ones(2, bool), "v": True}]),
            ValueError,
            "group_ids\\[0\\]: a leaf of shape \\(2,\\) does not broadcast",
        ),
        (lambda p, ids: natural_importance(small_loss, p, []), ValueError, "non-empty sequence"),
        (
            lambda p, ids: natural_pruning(small_loss, p, 2, group_ids=[{"w": True, "v": False}]),
            TypeError,
            "needs a group-id pytree",
        ),
        (
            lambda p, ids: natural_importance(lambda q: q["w"] * 2, p, None),
            ValueError,
            "loss_fn: expected a scalar loss",
        ),
        (
            lambda p, ids: natural_importance(nan_when_first_weight_is_zero, p, None),
            ValueError,
            "loss_fn: NaN loss with groups \\[3\\] replaced",
        ),
        (
            lambda p, ids: natural_pruning(nan_when_first_weight_is_zero, p, 7, method="greedy"),
            ValueError,
            "NaN loss during greedy elimination",
        ),
        (
            lambda p, ids: natural_pruning(nan_when_first_weight_is_zero, p, 7, method="exact"),
            ValueError,
            "NaN loss on 1 of 8 supports, e.g. keeping groups \\[0, 1, 2, 4, 5, 6, 7\\]",
        ),
        (
            lambda p, ids: natural_importance(lambda q: jnp.nan * q["w"].sum(), p, None),
            ValueError,
            "the loss of params is nan",
        ),
        (
            lambda p, ids: magnitude_importance({"w": np.array([np.nan]), "v": p["v"]}, None),
            ValueError,
            "params\\['w'\\]: 1 non-finite",
        ),
        (
            lambda p, ids: natural_pruning(lambda w: jnp.sum(w), np.zeros(40), 20, method="exact"),
            ValueError,
            "EXACT_SUPPORT_LIMIT",
        ),
        (
            lambda p, ids: natural_importance_from_gates(gated_mlp_loss, 0),
            ValueError,
            "num_groups: expected a positive int, got 0",
        ),
        (
            lambda p, ids: natural_importance_from_gates(gated_mlp_loss, 9.0),
            TypeError,
            "num_groups",
        ),
        (
            lambda p, ids: natural_importance_from_gates(gated_mlp_loss, 9, chunk_size=0),
            ValueError,
            "chunk_size",
        ),
        (
            lambda p, ids: natural_importance_from_gates("loss", 9),
            TypeError,
            "gated_loss_fn: expected a callable",
        ),
        (
            lambda p, ids: natural_importance_from_gates(lambda g: g * 2, 3),
            ValueError,
            "gated_loss_fn: expected a scalar loss",
        ),
        (
            lambda p, ids: natural_importance_from_gates(
                lambda g: jnp.sum(g) + jnp.where(g[2] == 0, jnp.nan, 0.0), 4
            ),
            ValueError,
            "gated_loss_fn: NaN loss with groups \\[2\\] replaced",
        ),
        (
            lambda p, ids: natural_importance_from_gates(lambda g: jnp.sum(g) / 0.0, 4),
            ValueError,
            "gated_loss_fn: the loss of all gates 1 is inf",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(jnp.sum, np.ones((3, 4)), np.ones(4)),
            ValueError,
            "inputs, kernel: expected shapes \\(..., p\\) and \\(p, m\\)",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                jnp.sum, np.ones((3, 4)), np.ones((5, 2))
            ),
            ValueError,
            "got \\(3, 4\\) and \\(5, 2\\)",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                jnp.sum, np.ones((3, 0)), np.ones((0, 2))
            ),
            ValueError,
            "kernel: expected p >= 1",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                jnp.sum, np.array([[1.0, np.nan]]), np.ones((2, 2))
            ),
            ValueError,
            "inputs: 1 non-finite",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                jnp.sum, np.ones((3, 2)), np.full((2, 2), np.inf)
            ),
            ValueError,
            "kernel: 4 non-finite",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                None, np.ones((3, 2)), np.ones((2, 2))
            ),
            TypeError,
            "loss_of_outputs: expected a callable",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                lambda z: z, np.ones((3, 2)), np.ones((2, 2))
            ),
            ValueError,
            "loss_of_outputs: expected a scalar loss",
        ),
        (
            lambda p, ids: natural_importance_of_dense_inputs(
                jnp.sum, np.ones((3, 2)), np.ones((2, 2)), chunk_size=-1
            ),
            ValueError,
            "chunk_size",
        ),
    ],
)
def test_bad_input_raises_clearly(call, error, message):
    params, *_ = small_problem()
    _, _, network_ids, *_ = network()
    with pytest.raises(error, match=message):
        call(params, network_ids)
