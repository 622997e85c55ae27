"""Greedy forward selection of two-layer networks (Wolfe et al. 2023, eqs. 9–12, Algorithm 3)
against a plain NumPy implementation, brute-force losses and the compacted subnetwork."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cpu_devices import cpu_devices_env

from jaxprune.methods import greedy
from jaxprune.models import TwoLayer, TwoLayerConfig

ROOT = Path(__file__).resolve().parents[3]


def numpy_loss(name, u, y):
    """Independent float64 NumPy losses, summed over the examples."""
    if name == "squared":
        return 0.5 * np.sum((u - y) ** 2)
    if name == "binary_cross_entropy":
        p = 1.0 / (1.0 + np.exp(-u))
        return -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
    shifted = u - u.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.sum(log_p[np.arange(len(y)), y])


def numpy_greedy(phi, y, num_steps, name="squared", tol=None):
    """Eqs. 9–11 written out: z_0 = 0, q_k = argmin_i ℓ((z + Φ_i)/k) (first index on ties)."""
    z = np.zeros(phi.shape[1:])
    order, losses = [], []
    for k in range(1, num_steps + 1):
        candidate = [numpy_loss(name, (z + row) / k, y) for row in phi]
        q = int(np.argmin(candidate))
        z = z + phi[q]
        order.append(q)
        losses.append(numpy_loss(name, z / k, y))
        if tol is not None and losses[-1] <= tol:
            break
    counts = np.bincount(order, minlength=phi.shape[0])
    return counts, np.array(losses), np.array(order)


def problem(loss, seed=0, n=23, m=17, k=3):
    rng = np.random.default_rng(seed)
    if loss == "softmax_cross_entropy":
        return rng.normal(size=(n, m, k)), rng.integers(0, k, size=m)
    phi = rng.normal(size=(n, m))
    if loss == "binary_cross_entropy":
        return 2.0 * phi, (rng.random(m) < 0.5).astype(np.float64)
    return phi, rng.normal(size=m) / np.sqrt(m)


@pytest.mark.parametrize("loss", greedy.LOSSES)
def test_picks_and_losses_equal_numpy_reference(loss):
    phi, y = problem(loss)
    with jax.enable_x64(True):
        result = greedy.greedy_forward_selection(phi, y, 30, loss=loss)
    counts, losses, order = numpy_greedy(phi, y, 30, loss)
    np.testing.assert_array_equal(np.asarray(result.order), order)
    np.testing.assert_array_equal(np.asarray(result.counts), counts)
    np.testing.assert_allclose(np.asarray(result.losses), losses, rtol=1e-12)
    assert int(result.counts.sum()) == 30
    # A neuron may be chosen more than once (selection with replacement, reading GS-2).
    assert counts.max() > 1


def test_exact_ties_go_to_the_smallest_index():
    """Duplicated neurons have identical losses at every step: the first copy always wins."""
    phi, y = problem("squared", seed=1, n=6)
    phi = np.concatenate([phi, phi])[[6, 7, 0, 8, 1, 9, 2, 10, 3, 11, 4, 5]]
    with jax.enable_x64(True):
        result = greedy.greedy_forward_selection(phi, y, 25)
    _, _, order = numpy_greedy(phi, y, 25)
    np.testing.assert_array_equal(np.asarray(result.order), order)
    first_copy = {}
    for index, row in enumerate(phi):
        first_copy.setdefault(row.tobytes(), index)
    assert all(first_copy[phi[q].tobytes()] == q for q in order)


def test_callable_loss_matches_builtin_and_tol_stops_early():
    phi, y = problem("squared", seed=2)
    with jax.enable_x64(True):
        builtin = greedy.greedy_forward_selection(phi, y, 40)
        tol = float(builtin.losses[11])
        custom = greedy.greedy_forward_selection(
            phi, y, 40, loss=lambda u, t: 0.5 * jnp.sum((u - t) ** 2), tol=tol
        )
    counts, _, order = numpy_greedy(phi, y, 40, tol=tol)
    stop = int(np.argmax(np.asarray(builtin.losses) <= tol)) + 1
    assert len(custom.order) == len(order) == stop <= 12
    np.testing.assert_array_equal(np.asarray(custom.order), order)
    np.testing.assert_array_equal(np.asarray(custom.counts), counts)
    assert int(custom.counts.sum()) == stop


def test_neuron_outputs_average_to_the_dense_model_and_subnetwork_reproduces_u_k():
    x = np.random.default_rng(3).normal(size=(9, 5))
    with jax.enable_x64(True):
        config = TwoLayerConfig(5, 12, num_outputs=1, activation="tanh", dtype=jnp.float64)
        variables = TwoLayer(config).init(jax.random.key(0), jnp.zeros((1, 5)))
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        phi = greedy.neuron_outputs(variables, x, activation="tanh")
        dense = TwoLayer(config).apply(variables, x)[:, 0]
        np.testing.assert_allclose(np.asarray(phi.mean(axis=0)), np.asarray(dense), rtol=1e-12)
        # φ_ij = N b_i σ(a_iᵀ x_j), element by element.
        a = np.asarray(variables["params"]["hidden"]["kernel"])
        b = np.asarray(variables["params"]["output"]["kernel"])[:, 0]
        np.testing.assert_allclose(np.asarray(phi), 12 * b[:, None] * np.tanh(x @ a).T, rtol=1e-12)
        y = np.sin(x[:, 0])
        result = greedy.greedy_forward_selection(phi, y, 7)
        small_vars, small_config = greedy.subnetwork(variables, result.counts, activation="tanh")
        z = np.asarray(phi)[np.asarray(result.order)].sum(axis=0)
        small_config = dataclasses.replace(small_config, dtype=jnp.float64)
        pruned = TwoLayer(small_config).apply(small_vars, x)[:, 0]
    assert small_config.width == int((np.asarray(result.counts) > 0).sum())
    np.testing.assert_allclose(np.asarray(pruned), z / 7, rtol=1e-10)
    np.testing.assert_allclose(0.5 * np.sum((z / 7 - y) ** 2), float(result.losses[-1]))


def test_neuron_outputs_with_several_outputs_has_a_class_axis():
    config = TwoLayerConfig(input_dim=4, width=6, num_outputs=3)
    variables = TwoLayer(config).init(jax.random.key(1), jnp.zeros((1, 4)))
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    phi = greedy.neuron_outputs(variables, x)
    assert phi.shape == (6, 5, 3)
    np.testing.assert_allclose(
        np.asarray(phi.mean(axis=0)), np.asarray(TwoLayer(config).apply(variables, x)), rtol=1e-5
    )


@pytest.mark.parametrize("seed", range(4))
def test_lemma1_bound_holds_along_the_run(seed):
    rng = np.random.default_rng(10 + seed)
    n, m = 40, 12
    phi = rng.normal(size=(n, m)) * rng.uniform(0.5, 3.0)
    y = rng.normal(size=m)
    steps = np.arange(1, 61)
    with jax.enable_x64(True):
        result = greedy.greedy_forward_selection(phi, y, 60)
        dense = 0.5 * np.sum((phi.mean(axis=0) - y) ** 2)
        bound = np.asarray(greedy.lemma1_bound(phi, y, dense, steps))
    diameter = max(np.linalg.norm(a - b) for a in phi for b in phi)
    np.testing.assert_allclose(float(greedy.hull_diameter(jnp.asarray(phi))), diameter)
    first = min(0.5 * np.sum((row - y) ** 2) for row in phi)
    expected = first / steps + (1 + np.log(steps)) / (2 * steps) * diameter**2
    np.testing.assert_allclose(bound, expected + (steps - 1) / steps * dense, rtol=1e-12)
    assert np.all(np.asarray(result.losses) <= bound + 1e-12)


def test_hull_diameter_blocks_do_not_change_the_result():
    phi = np.random.default_rng(5).normal(size=(37, 6))
    with jax.enable_x64(True):
        values = [float(greedy.hull_diameter(phi, block_size=b)) for b in (1, 5, 37, 64)]
    np.testing.assert_allclose(values, values[0], rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"phi": np.ones((4, 3, 2, 1))}, ValueError, "phi"),
        ({"phi": np.full((4, 3), np.nan)}, ValueError, "phi: expected finite"),
        ({"y": np.zeros(4)}, ValueError, "y: expected shape"),
        ({"loss": "hinge"}, ValueError, "loss"),
        ({"loss": "binary_cross_entropy", "y": np.full(3, 2.0)}, ValueError, r"\[0, 1\]"),
        ({"loss": "softmax_cross_entropy"}, ValueError, "softmax_cross_entropy"),
        ({"loss": lambda u, t: u - t}, ValueError, "scalar"),
        ({"tol": float("nan")}, ValueError, "tol"),
        ({"mesh": "cpu"}, TypeError, "mesh"),
        ({"phi": np.ones((4, 3), np.int32)}, TypeError, "phi"),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(kwargs, error, match):
    arguments = {"phi": np.ones((4, 3), np.float32), "y": np.zeros(3), "num_steps": 2}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        greedy.greedy_forward_selection(
            arguments.pop("phi"), arguments.pop("y"), arguments.pop("num_steps"), **arguments
        )


def test_neuron_outputs_and_bound_refuse_bad_input():
    variables = TwoLayer(TwoLayerConfig(input_dim=3, width=4)).init(
        jax.random.key(0), jnp.zeros((1, 3))
    )
    with pytest.raises(ValueError, match="x: expected"):
        greedy.neuron_outputs(variables, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="x: expected finite"):
        greedy.neuron_outputs(variables, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="params"):
        greedy.neuron_outputs({"dense": {}}, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k: expected"):
        greedy.lemma1_bound(np.ones((3, 2)), np.zeros(2), 0.0, 0)
    with pytest.raises(ValueError, match="dense_loss"):
        greedy.lemma1_bound(np.ones((3, 2)), np.zeros(2), -1.0, 1)


_DISTRIBUTED_SCRIPT = """
import jax, numpy as np
from jaxprune.methods import greedy
assert jax.device_count() == 4, jax.devices()
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("workers",))
two = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("pair",))
rng = np.random.default_rng(0)
cases = [(rng.normal(size=(n, 11)), "squared") for n in (13, 3)]
phi = rng.normal(size=(9, 11))
cases.append((np.concatenate([phi, phi])[rng.permutation(18)], "squared"))  # exact ties
cases.append((rng.normal(size=(14, 11, 3)), "softmax_cross_entropy"))
with jax.enable_x64(True):
    for phi, loss in cases:
        y = rng.integers(0, 3, 11) if loss != "squared" else rng.normal(size=11)
        one = greedy.greedy_forward_selection(phi, y, 25, loss=loss)
        for m in (mesh, two):
            many = greedy.greedy_forward_selection(phi, y, 25, loss=loss, mesh=m)
            np.testing.assert_array_equal(np.asarray(many.order), np.asarray(one.order))
            np.testing.assert_array_equal(np.asarray(many.counts), np.asarray(one.counts))
            # Same picks; each loss is one reduction, compiled in another program (round-off).
            np.testing.assert_allclose(np.asarray(many.losses), np.asarray(one.losses), rtol=1e-14)
    tol = float(one.losses[9])
    stopped = greedy.greedy_forward_selection(phi, y, 25, loss=loss, mesh=mesh, tol=tol)
    stop = int(np.argmax(np.asarray(one.losses) <= tol)) + 1
    np.testing.assert_array_equal(np.asarray(stopped.order), np.asarray(one.order[:stop]))
print("distributed ok")

# Channel selection (Algorithm 2) with each step's candidates split over the mesh: a tiny
# ResNet with 3, 5, 5 prunable filters, chunks of 2 per device, so candidate counts are not
# multiples of the lanes and some devices get only padding.
from jaxprune.train import build_model
model = build_model("resnet", num_outputs=3, input_shape=(8, 8, 3), preset="resnet-tiny",
                    overrides={"inner_channels": (3, 5, 5)})
variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
batches = [{"x": rng.normal(size=(8, 8, 8, 3)).astype(np.float32), "y": rng.integers(0, 3, 8)}
           for _ in range(20)]
for options in ({"eps": 0.01}, {"keep_per_layer": (2, 3, 4)}):
    one = greedy.greedy_channel_selection(model, variables, iter(batches), chunk_size=2,
                                          **options)
    for m in (mesh, two):
        many = greedy.greedy_channel_selection(model, variables, iter(batches), chunk_size=2,
                                               mesh=m, **options)
        np.testing.assert_array_equal(many.mask, one.mask)
        for a, b in zip(many.layers, one.layers):
            np.testing.assert_array_equal(a.order, b.order)
            np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
            np.testing.assert_allclose(a.full_losses, b.full_losses, rtol=1e-6)
print("distributed channels ok")
"""


def test_distributed_selection_equals_one_device_on_four_cpu_devices():
    """Algorithm 3 over 4 (and 2) forced CPU devices, N not a multiple of the device count;
    then Algorithm 2's channel search with its candidates split the same way."""
    result = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTED_SCRIPT],
        cwd=ROOT,
        env=cpu_devices_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "distributed ok" in result.stdout
    assert "distributed channels ok" in result.stdout


_MULTI_HOST_SCRIPT = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jaxprune.methods import greedy
assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("candidates",))
rng = np.random.default_rng(0)
phi, y = rng.normal(size=(13, 11)).astype(np.float32), rng.normal(size=11).astype(np.float32)
result = greedy.greedy_forward_selection(phi, y, 20, mesh=mesh)
print("order", np.asarray(result.order).tolist(), np.asarray(result.counts).tolist())
"""


def test_multi_host_selection_through_jax_distributed_equals_one_device():
    """Two processes of two CPU devices each, joined by ``jax.distributed`` (the same call as
    on a cluster): every process gets the one-device picks."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        address = f"localhost:{sock.getsockname()[1]}"
    env = cpu_devices_env(2)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _MULTI_HOST_SCRIPT, address, str(rank)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, out + err
    rng = np.random.default_rng(0)
    phi, y = rng.normal(size=(13, 11)).astype(np.float32), rng.normal(size=11).astype(np.float32)
    one = greedy.greedy_forward_selection(phi, y, 20)
    expected = f"order {np.asarray(one.order).tolist()} {np.asarray(one.counts).tolist()}"
    for out, _ in outputs:
        assert expected in out.splitlines()
