"""Greedy forward selection of the hidden neurons of a two-layer network, on one device or
sharded over a device mesh.

The network of Wolfe et al. (2023), eqs. 1–2, is the mean of ``N`` neuron outputs,
``f(x) = (1/N) Σ_i N·b_i·σ(a_iᵀx)``.  Over a dataset of ``m`` inputs, neuron ``i`` is the vector
``Φ_i = (N·b_i·σ(a_iᵀx_j))_j`` (:func:`neuron_outputs`), and a subnetwork that uses neuron ``i``
``c_i`` times (``k = Σ c_i``) outputs ``u = (1/k) Σ_i c_i Φ_i`` (eq. 3 with repetition, reading
GS-2 of docs/readings.md).  Greedy forward selection (eqs. 9–11) grows it one neuron per step:

    z_0 = 0,   q_k = argmin_i ℓ((z_{k-1} + Φ_i) / k),   z_k = z_{k-1} + Φ_{q_k},   u_k = z_k / k.

:func:`greedy_forward_selection` runs the whole search as one compiled ``lax.while_loop``: each
step evaluates every candidate's loss in one vectorized pass over ``Φ`` (``z`` is carried, never
recomputed; for the squared loss the pass is one matrix-vector product, since
``ℓ((z + Φ_i)/k) = ½‖r‖² + ⟨r, Φ_i⟩/k + ½‖Φ_i‖²/k²`` with ``r = z/k − y``) and takes the
smallest index among identical neurons.  With ``mesh=`` the candidates are
split along the mesh's axis with ``shard_map`` (Wolfe et al. (2023), App. E, Algorithm 3 with
reading GS-4): every device proposes its best candidate as a ``(loss, index)`` pair, the
smallest pair wins everywhere, and the winner's ``Φ`` row reaches every device by one ``psum``
(exact: all other devices add zeros).  The picks equal the one-device search for any ``N``
(padding candidates score ``+inf``), and the same code runs on several hosts once
``jax.distributed.initialize`` has joined them (see :func:`greedy_forward_selection`).

:func:`lemma1_bound` is the guarantee of Lemma 1 (eq. 12) for the squared loss and
:func:`subnetwork` the compacted two-layer model of the selection (output weights
``N·c_i·b_i/k``), which reproduces ``u_k`` on the data.

References:
  Wolfe et al. (2023), Sec. 2, eqs. (1)–(4); Sec. 3, eqs. (6)–(11) (greedy forward selection as
  the polytope iteration); Sec. 4, Lemma 1, eq. (12), and Lemma 2 (the hull's diameter);
  App. E, Algorithm 3 (distributed selection); readings GS-2 and GS-4 of docs/readings.md.
  Ye et al. (2020), Sec. 3 (greedy forward selection of neurons, with replacement).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxprune._validation import check_choice, check_finite_tree, check_positive_int, check_real
from jaxprune.models import two_layer
from jaxprune.typing import PyTree

__all__ = [
    "LOSSES",
    "GreedySelection",
    "greedy_forward_selection",
    "hull_diameter",
    "lemma1_bound",
    "neuron_outputs",
    "selection_loss",
    "subnetwork",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _squared(u: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(jnp.square(u - y))


def _binary_cross_entropy(u: jax.Array, y: jax.Array) -> jax.Array:
    # -[y log σ(u) + (1 - y) log(1 - σ(u))] = softplus(u) - y u, summed over the examples.
    return jnp.sum(jax.nn.softplus(u) - y * u)


def _softmax_cross_entropy(u: jax.Array, y: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(u, y[:, None], axis=-1)[:, 0]
    return jnp.sum(jax.nn.logsumexp(u, axis=-1) - picked)


_LOSSES: dict[str, LossFn] = {
    "squared": _squared,
    "binary_cross_entropy": _binary_cross_entropy,
    "softmax_cross_entropy": _softmax_cross_entropy,
}

LOSSES = tuple(_LOSSES)
"""Built-in losses ``ℓ(u)``, each summed over the ``m`` examples like eq. (4):

* ``"squared"``: ``½‖u − y‖²`` (eq. 8), ``u`` and ``y`` of shape ``(m,)`` or ``(m, K)``;
* ``"binary_cross_entropy"``: the outputs are logits of a sigmoid and ``y ∈ [0, 1]^m``
  (Wolfe et al. (2023), Sec. 6.1's setup), ``Σ_j softplus(u_j) − y_j u_j``;
* ``"softmax_cross_entropy"``: ``K`` logits per example and integer labels ``y ∈ [0, K)^m``.
"""


class GreedySelection(NamedTuple):
    """Result of :func:`greedy_forward_selection` after ``k`` steps.

    Attributes:
      counts: ``(N,)`` int32 multiplicities ``c`` of the neurons, ``Σ c = k``.
      losses: ``(k,)`` the loss ``ℓ(z_t / t)`` of the subnetwork after each step ``t = 1..k``.
      order: ``(k,)`` int32 index ``q_t`` of the neuron chosen at each step.
    """

    counts: jax.Array
    losses: jax.Array
    order: jax.Array


def _network_params(params: PyTree) -> tuple[jax.Array, jax.Array]:
    inner = params.get("params", params) if isinstance(params, dict) else None
    try:
        hidden = jnp.asarray(inner["hidden"]["kernel"])
        output = jnp.asarray(inner["output"]["kernel"])
    except (KeyError, TypeError):
        raise ValueError(
            "params: expected the two-layer model's parameters {'hidden': {'kernel': (d, N)}, "
            "'output': {'kernel': (N, K)}} (optionally under 'params')"
        ) from None
    if hidden.ndim != 2 or output.ndim != 2 or hidden.shape[1] != output.shape[0]:
        raise ValueError(
            f"params: expected hidden kernel (d, N) and output kernel (N, K), got "
            f"{hidden.shape} and {output.shape}"
        )
    return hidden, output


def neuron_outputs(params: PyTree, x: Any, *, activation: str = "relu") -> jax.Array:
    """The neuron output vectors ``Φ_i`` of a two-layer network over a dataset.

    ``φ_ij = N·b_i·σ(a_iᵀx_j)`` (Wolfe et al. (2023), eq. 1), so the network's output on
    ``x_j`` is ``(1/N) Σ_i φ_ij`` (eq. 2) and a subnetwork's is a convex combination of rows.

    Args:
      params: parameters (or variables) of :class:`jaxprune.models.TwoLayer`: hidden kernel
        ``A`` ``(d, N)`` and output kernel ``B`` ``(N, K)``.
      x: ``(m, ...)`` inputs, flattened to ``(m, d)``.
      activation: the model's hidden activation, one of ``two_layer.ACTIVATIONS``.

    Returns:
      ``Φ`` of shape ``(N, m)`` when ``K = 1``, else ``(N, m, K)``.

    Raises:
      ValueError: parameters not of a two-layer model, ``x`` not matching ``d``, or
        non-finite ``x``.

    References:
      Wolfe et al. (2023), Sec. 2, eqs. (1)–(2); Sec. 3 (the vectors ``Φ_i``).
    """
    check_choice(activation, tuple(two_layer.ACTIVATIONS), "activation")
    hidden, output = _network_params(params)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.size != x.shape[0] * hidden.shape[0]:
        raise ValueError(
            f"x: expected (m, ...) inputs with {hidden.shape[0]} features each, got shape {x.shape}"
        )
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("x: expected finite inputs, got NaN or Inf")
    return _neuron_outputs(hidden, output, x.reshape(x.shape[0], -1), activation)


@functools.partial(jax.jit, static_argnames="activation")
def _neuron_outputs(
    hidden: jax.Array, output: jax.Array, x: jax.Array, activation: str
) -> jax.Array:
    width = hidden.shape[1]
    h = two_layer.ACTIVATIONS[activation](x.astype(hidden.dtype) @ hidden)  # (m, N)
    phi = width * h.T[:, :, None] * output[:, None, :]  # (N, m, K)
    return phi[:, :, 0] if output.shape[1] == 1 else phi


def _resolve_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    return _LOSSES[check_choice(loss, LOSSES, "loss")]


def _check_problem(phi: Any, y: Any, loss: str | LossFn) -> tuple[jax.Array, jax.Array]:
    phi = jnp.asarray(phi)
    if phi.ndim not in (2, 3) or 0 in phi.shape:
        raise ValueError(
            f"phi: expected neuron outputs of shape (N, m) or (N, m, K), got {phi.shape}"
        )
    if not jnp.issubdtype(phi.dtype, jnp.floating):
        raise TypeError(f"phi: expected a floating array, got dtype {phi.dtype}")
    if not bool(jnp.all(jnp.isfinite(phi))):
        raise ValueError("phi: expected finite neuron outputs, got NaN or Inf")
    y = jnp.asarray(y)
    output_shape = phi.shape[1:]
    if loss == "softmax_cross_entropy":
        if phi.ndim != 3 or y.shape != output_shape[:1]:
            raise ValueError(
                f"y: 'softmax_cross_entropy' expects phi (N, m, K) and integer labels (m,), got "
                f"phi {phi.shape} and y {y.shape}"
            )
        labels = np.asarray(y)
        if not np.issubdtype(labels.dtype, np.integer) or (
            labels.min() < 0 or labels.max() >= phi.shape[2]
        ):
            raise ValueError(
                f"y: expected integer labels in [0, {phi.shape[2]}), got dtype {labels.dtype} "
                f"with range [{labels.min()}, {labels.max()}]"
            )
        return phi, y
    if y.shape != output_shape:
        raise ValueError(
            f"y: expected shape {output_shape} (the network outputs over the data, phi.shape"
            f"[1:]), got {y.shape}"
        )
    y = y.astype(phi.dtype)
    if not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError("y: expected finite targets, got NaN or Inf")
    if loss == "binary_cross_entropy" and bool(jnp.any((y < 0) | (y > 1))):
        raise ValueError("y: 'binary_cross_entropy' expects targets in [0, 1]")
    if callable(loss):
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct(output_shape, phi.dtype), y)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"loss: expected a callable loss(u, y) -> scalar, got output shape "
                f"{getattr(out, 'shape', out)}"
            )
    return phi, y


def selection_loss(loss: str | LossFn, u: Any, y: Any) -> jax.Array:
    """``ℓ(u)`` of a subnetwork's outputs ``u`` for the built-in ``loss`` name or a callable.

    Args:
      loss: one of :data:`LOSSES` or ``loss(u, y) -> scalar``.
      u: ``(m,)`` or ``(m, K)`` outputs (e.g. ``z_k / k``).
      y: targets as in :func:`greedy_forward_selection`.

    Returns:
      Scalar loss, summed over the examples for the built-in losses.

    Raises:
      ValueError: an unknown loss name, or ``y`` whose shape does not fit ``u`` for a built-in
        loss (``u.shape``, or ``u.shape[:1]`` labels for ``"softmax_cross_entropy"``).
    """
    loss_fn = _resolve_loss(loss)
    u, y = jnp.asarray(u), jnp.asarray(y)
    if not callable(loss):
        expected = u.shape[:1] if loss == "softmax_cross_entropy" else u.shape
        if y.shape != expected:
            raise ValueError(f"y: expected shape {expected} for outputs u {u.shape}, got {y.shape}")
    return loss_fn(u, y)


def _step_losses(loss_fn: LossFn, phi: jax.Array, z: jax.Array, y: jax.Array, k) -> jax.Array:
    """``ℓ((z + Φ_i) / k)`` for every row ``i`` of ``phi``: one vectorized pass over ``Φ``."""
    return jax.vmap(lambda row: loss_fn((z + row) / k, y))(phi)


def _squared_step_scores(phi, row_norms, z, y, k) -> jax.Array:
    """``ℓ((z + Φ_i)/k) − ½‖z/k − y‖²`` for the squared loss: ``⟨r, Φ_i⟩/k + ½‖Φ_i‖²/k²`` with
    ``r = z/k − y``, one matrix-vector product over ``Φ`` (the constant does not change the
    argmin, and it is the same on every device of a mesh)."""
    residual = (z / k - y).reshape(-1)
    return (phi.reshape(phi.shape[0], -1) @ residual) / k + 0.5 * row_norms / (k * k)


def _search_loop(
    loss_fn: LossFn,
    phi: jax.Array,
    y: jax.Array,
    tol: jax.Array,
    num_steps: int,
    choose: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    num_candidates: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The while-loop of eqs. 9–11; ``choose(step_scores) -> (index, row)`` picks the winner
    (the smallest score; scores order the candidates as their losses do)."""
    dtype = phi.dtype
    z0 = jnp.zeros(phi.shape[1:], dtype)
    if loss_fn is _squared:
        row_norms = jnp.sum(jnp.square(phi.reshape(phi.shape[0], -1)), axis=1)

        def scores(z, step):
            return _squared_step_scores(phi, row_norms, z, y, step)
    else:

        def scores(z, step):
            return _step_losses(loss_fn, phi, z, y, step)

    def cond(carry):
        k, _, _, losses, _ = carry
        last = jnp.where(k > 0, losses[jnp.maximum(k - 1, 0)], jnp.inf)
        return (k < num_steps) & ~(last <= tol)

    def body(carry):
        k, z, counts, losses, order = carry
        step = (k + 1).astype(dtype)
        index, row = choose(scores(z, step))
        z = z + row
        return (
            k + 1,
            z,
            counts.at[index].add(1),
            losses.at[k].set(loss_fn(z / step, y)),
            order.at[k].set(index),
        )

    carry = (
        jnp.int32(0),
        z0,
        jnp.zeros((num_candidates,), jnp.int32),
        jnp.full((num_steps,), jnp.nan, dtype),
        jnp.full((num_steps,), -1, jnp.int32),
    )
    k, _, counts, losses, order = jax.lax.while_loop(cond, body, carry)
    return k, counts, losses, order


def _first_copies(phi: jax.Array) -> np.ndarray:
    """``(N,)`` int32: the smallest index of a neuron whose ``Φ`` row is bit-identical to row
    ``i`` (one hash of each row's bytes, ``O(N m)``).

    Identical rows have equal losses in exact arithmetic, but a matrix-vector product may round
    two copies differently (rows in a block's tail take another code path), so the winner is
    mapped to its first copy: ties among identical neurons go to the smallest index.
    """
    flat = np.asarray(phi).reshape(phi.shape[0], -1)
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(row.tobytes(), i) for i, row in enumerate(flat)], np.int32)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps"))
def _select_local(phi, first_copy, y, tol, *, loss_fn, num_steps):
    def choose(step_scores):
        best = jnp.argmin(step_scores)
        return first_copy[best], phi[best]

    return _search_loop(loss_fn, phi, y, tol, num_steps, choose, phi.shape[0])


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps", "mesh", "num_real"))
def _select_sharded(phi, first_copy, y, tol, *, loss_fn, num_steps, mesh, num_real):
    axis = mesh.axis_names[0]
    num_shards = mesh.devices.size
    local_size = phi.shape[0] // num_shards

    def program(local_phi, local_first_copy, y, tol):
        shard = jax.lax.axis_index(axis)
        offset = shard * local_size
        real = offset + jnp.arange(local_size) < num_real
        largest = jnp.iinfo(jnp.int32).max

        def choose(step_scores):
            # Each shard proposes its best (score, index); the smallest pair wins everywhere
            # (reading GS-4), and exactly one shard holding it sends its row.
            step_scores = jnp.where(real, step_scores, jnp.inf)
            local = jnp.argmin(step_scores)
            scores = jax.lax.all_gather(step_scores[local], axis)
            proposed = jax.lax.all_gather(local_first_copy[local], axis)
            tied = scores == jnp.min(scores)
            index = jnp.min(jnp.where(tied, proposed, largest))
            sender = jnp.argmax(tied & (proposed == index))
            row = jnp.where(shard == sender, local_phi[local], 0)
            return index, jax.lax.psum(row, axis)

        return _search_loop(loss_fn, local_phi, y, tol, num_steps, choose, phi.shape[0])

    return jax.shard_map(
        program,
        mesh=mesh,
        in_specs=(P(axis), P(axis), P(), P()),
        out_specs=(P(), P(), P(), P()),
        check_vma=False,
    )(phi, first_copy, y, tol)


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a 1-D :class:`~jax.sharding.Mesh`, else a clear error."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if mesh.devices.ndim != 1:
        raise ValueError(
            f"mesh: expected a 1-D mesh (one axis to split the candidates along), got axes "
            f"{mesh.axis_names} of shape {mesh.devices.shape}"
        )
    return mesh


def greedy_forward_selection(
    phi: Any,
    y: Any,
    num_steps: int,
    *,
    loss: str | LossFn = "squared",
    tol: float | None = None,
    mesh: Mesh | None = None,
) -> GreedySelection:
    """Greedy forward selection of neurons with replacement (eqs. 9–11).

    At step ``k = 1, 2, ...`` the neuron ``q_k = argmin_i ℓ((z_{k−1} + Φ_i)/k)`` is added
    (``z_0 = 0``; the smallest index among equal losses), ``z_k = z_{k−1} + Φ_{q_k}``, and the
    subnetwork's outputs are ``u_k = z_k / k``.  One compiled ``lax.while_loop``; each step is
    one vectorized pass over ``Φ``.  Before the loop ``Φ`` is read once on the host to map every
    neuron to its first bit-identical copy (one hash per row), which makes ties among identical
    neurons go to the smallest index however the device rounds them.

    Multi-host: start every process with ``jax.distributed.initialize(coordinator_address,
    num_processes, process_id)`` (on GPU/TPU clusters the arguments are usually detected), build
    ``mesh = jax.sharding.Mesh(np.array(jax.devices()), ("candidates",))`` over all global
    devices, and call this function with the same ``phi`` and ``y`` on every process; each
    device keeps its slice of the candidates and the results are replicated on every process.

    Args:
      phi: ``(N, m)`` or ``(N, m, K)`` neuron outputs (:func:`neuron_outputs`), finite.
      y: targets: ``phi.shape[1:]`` for ``"squared"``, ``"binary_cross_entropy"`` (in
        ``[0, 1]``) and callables; ``(m,)`` integer labels for ``"softmax_cross_entropy"``.
      num_steps: greedy steps ``k`` at most (``≥ 1``); the subnetwork has at most that many
        distinct neurons.
      loss: one of :data:`LOSSES` (sums over the examples) or ``loss(u, y) -> scalar`` (must be
        jax-traceable and hashable; it is a static argument of the compiled search).
      tol: stop after the first step whose loss is ``≤ tol`` (Algorithm 3's stopping
        criterion); ``None`` runs all ``num_steps``.
      mesh: a 1-D :class:`jax.sharding.Mesh` (any axis name) to split the candidates over its
        devices (Algorithm 3, reading GS-4); the picks equal the one-device search's.

    Returns:
      :class:`GreedySelection` of the ``k`` steps taken (``k = num_steps`` unless ``tol``
      stopped earlier): counts ``(N,)``, losses ``(k,)`` and order ``(k,)``.

    Raises:
      ValueError: ``num_steps < 1``, ``phi`` not ``(N, m[, K])`` or not finite, ``y`` not
        matching ``phi`` or the loss, ``tol`` not finite, or a mesh not 1-D.
      TypeError: ``mesh`` not a ``Mesh``, integer ``phi``.

    References:
      Wolfe et al. (2023), Sec. 3, eqs. (8)–(11); App. E, Algorithm 3 and reading GS-4
      (docs/readings.md); reading GS-2 (selection with replacement, integer counts).
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    phi, y = _check_problem(phi, y, loss)
    loss_fn = _resolve_loss(loss)
    tol = jnp.asarray(-jnp.inf if tol is None else check_real(tol, "tol"), phi.dtype)
    num_candidates = phi.shape[0]
    first_copy = _first_copies(phi)
    if mesh is None:
        k, counts, losses, order = _select_local(
            phi, first_copy, y, tol, loss_fn=loss_fn, num_steps=num_steps
        )
    else:
        mesh = check_mesh(mesh)
        padding = (-num_candidates) % mesh.devices.size
        padded = jnp.concatenate([phi, jnp.zeros((padding, *phi.shape[1:]), phi.dtype)])
        first_copy = np.concatenate([first_copy, num_candidates + np.arange(padding)])
        split = NamedSharding(mesh, P(mesh.axis_names[0]))
        replicated = NamedSharding(mesh, P())
        k, counts, losses, order = _select_sharded(
            jax.device_put(padded, split),
            jax.device_put(first_copy.astype(np.int32), split),
            jax.device_put(y, replicated),
            jax.device_put(tol, replicated),
            loss_fn=loss_fn,
            num_steps=num_steps,
            mesh=mesh,
            num_real=num_candidates,
        )
        counts = counts[:num_candidates]
    taken = int(k)
    return GreedySelection(counts, losses[:taken], order[:taken])


def hull_diameter(phi: Any, *, block_size: int = 1024) -> jax.Array:
    """``D_{M_N} = max_{i,j} ‖Φ_i − Φ_j‖``, the diameter of the polytope ``Conv{Φ_i}``.

    A convex hull's diameter is attained at two of its generating points (Lemma 2 bounds it
    by this maximum; for a finite point set the two are equal), so it is the largest pairwise
    distance between neuron output vectors, computed from Gram blocks of ``block_size`` rows
    (``O(N² m)`` work, ``O(block_size · N)`` memory).

    Args:
      phi: ``(N, m)`` or ``(N, m, K)`` neuron outputs (flattened per neuron).
      block_size: rows per Gram block.

    Returns:
      Scalar diameter.

    References:
      Wolfe et al. (2023), Sec. 4 (definition of ``D_{M_N}``) and Lemma 2.
    """
    block_size = check_positive_int(block_size, "block_size")
    phi = jnp.asarray(phi)
    if phi.ndim not in (2, 3) or 0 in phi.shape:
        raise ValueError(f"phi: expected shape (N, m) or (N, m, K), got {phi.shape}")
    check_finite_tree(phi, "phi")
    return _hull_diameter(phi.reshape(phi.shape[0], -1), min(block_size, phi.shape[0]))


@functools.partial(jax.jit, static_argnames="block_size")
def _hull_diameter(phi: jax.Array, block_size: int) -> jax.Array:
    num = phi.shape[0]
    padding = (-num) % block_size
    sq = jnp.sum(jnp.square(phi), axis=1)
    rows = jnp.concatenate([phi, jnp.broadcast_to(phi[:1], (padding, phi.shape[1]))])

    def block_max(block: jax.Array) -> jax.Array:
        block_sq = jnp.sum(jnp.square(block), axis=1)
        return jnp.max(block_sq[:, None] + sq[None, :] - 2.0 * block @ phi.T)

    blocks = rows.reshape(-1, block_size, phi.shape[1])
    # The Gram form can round a true 0 to a tiny negative; a distance is at least 0.
    return jnp.sqrt(jnp.maximum(jnp.max(jax.lax.map(block_max, blocks)), 0.0))


def lemma1_bound(phi: Any, y: Any, dense_loss: Any, k: Any) -> jax.Array:
    """Lemma 1's upper bound on the greedy subnetwork's squared loss after ``k`` steps.

    ``ℓ(u_k) ≤ (1/k) ℓ(u_1) + (1 + log k)/(2k) · D_{M_N}² + (k − 1)/k · L[f]`` (eq. 12), with
    ``ℓ(u_1) = min_i ½‖Φ_i − y‖²`` (the first greedy step), ``D_{M_N}`` the polytope's
    diameter (:func:`hull_diameter`) and ``L[f]`` the dense network's loss
    ``½‖(1/N) Σ_i Φ_i − y‖²``.  It holds for the ``"squared"`` loss of eq. (8).

    Args:
      phi: ``(N, m)`` or ``(N, m, K)`` neuron outputs.
      y: targets of shape ``phi.shape[1:]``.
      dense_loss: ``L[f]``, the dense network's loss on the same data (any real ``≥ 0``; the
        bound holds for any value at least ``min_{u ∈ M_N} ℓ(u)``).
      k: a step count ``≥ 1`` or an array of them.

    Returns:
      The bound, of the shape of ``k``.

    References:
      Wolfe et al. (2023), Sec. 4, Lemma 1, eq. (12).
    """
    phi, y = _check_problem(phi, y, "squared")
    dense_loss = check_real(dense_loss, "dense_loss", minimum=0.0)
    steps = np.asarray(k)
    if not np.issubdtype(steps.dtype, np.integer) or (steps < 1).any():
        raise ValueError(f"k: expected step counts >= 1 (integers), got {k!r}")
    first = jnp.min(_step_losses(_squared, phi, jnp.zeros_like(y), y, 1.0))
    diameter_sq = jnp.square(hull_diameter(phi))
    steps = jnp.asarray(steps, phi.dtype)
    return (
        first / steps
        + (1.0 + jnp.log(steps)) / (2.0 * steps) * diameter_sq
        + (steps - 1.0) / steps * dense_loss
    )


def subnetwork(
    params: PyTree, counts: Any, *, activation: str = "relu"
) -> tuple[PyTree, two_layer.TwoLayerConfig]:
    """The selected subnetwork as a compacted :class:`~jaxprune.models.TwoLayer`.

    Keeps the neurons with ``c_i > 0`` and gives them output weights ``N·c_i·b_i/k``, so the
    small dense model computes ``u_k = z_k / k`` (eq. 3 with repetition).

    Args:
      params: parameters (or variables) of the two-layer model of width ``N``.
      counts: ``(N,)`` non-negative integer multiplicities (``GreedySelection.counts``).
      activation: the model's hidden activation.

    Returns:
      ``(variables, config)`` of the subnetwork (``config.width`` = distinct neurons kept).

    References:
      Wolfe et al. (2023), eq. (3); reading GS-2 of docs/readings.md.
    """
    check_choice(activation, tuple(two_layer.ACTIVATIONS), "activation")
    hidden, output = _network_params(params)
    config = two_layer.TwoLayerConfig(
        input_dim=hidden.shape[0],
        width=hidden.shape[1],
        num_outputs=output.shape[1],
        activation=activation,
    )
    variables = {"params": {"hidden": {"kernel": hidden}, "output": {"kernel": output}}}
    return two_layer.compact_counts(variables, config, counts)
