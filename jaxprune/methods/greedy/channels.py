"""Greedy forward selection of channels in deep networks, layer by layer from the input.

Wolfe et al. (2023), App. D, Algorithm 2 (the layer-wise scheme of Ye et al. 2020): the layers
of a network's filter (channel, neuron) groups are visited in the order of the model's
:class:`~jaxprune.masks.GroupLayout`, which runs from the input to the output for the zoo's
CNNs (``conv_0`` first for VGG, ``block_0`` first for ResNet).  A visited layer starts *empty*
(all its gates 0; earlier layers keep what was selected, later layers are full); then, one step
at a time, a fresh minibatch is drawn (line 5) and the not-yet-selected channel whose gate
gives the lowest loss on it is added (line 6, reading GS-3: never re-picked), until the
subnetwork is within ε of the layer's unpruned loss on the same minibatch (line 4 with the
inequality of reading GS-3; the default relative criterion is reading GS-11) or an exact
per-layer budget is reached.  Gates are 0/1 (reading GS-12): the result is the compacted model
with the selected channels' weights unchanged.

All candidates of a step are scored by one compiled program: the candidates' gates are
``vmap``-ed in blocks of ``chunk_size`` lanes that share the parameters (a ``lax.fori_loop``
over the blocks, like ``lax.map(..., batch_size=chunk_size)`` but stopping after the last block
that holds a real candidate), and the candidate list is padded to a fixed length per layer, so
a layer compiles once however many steps it takes (and shrinking candidate lists cost no padded
blocks).  The evaluation receives the gates as one piece per layer and only the searched
layer's piece varies across lanes; the zoo's models take such pieces
(:func:`jaxprune.models.base.split_gates`), so everything upstream of the searched layer is
computed once per step, not once per candidate, and shared with the whole layer's reference
evaluation (``experiments/benchmarks/bench_greedy_channels.py`` measures it).  Ye et al.'s
speed-up of scoring a random subset of the candidates is ``max_candidates``.

:func:`greedy_channel_selection` works on a zoo model (:class:`~jaxprune.train.Bound`) in
evaluation mode and returns the compacted subnetwork; :func:`greedy_gate_selection` is the
same search on any ``gated_eval(operands, gates, batch)`` (the pruner registry's ``"greedy"``
uses it with the training engine's loss).

References:
  Wolfe et al. (2023), App. D, Algorithm 2; readings GS-3, GS-11 and GS-12 (docs/readings.md).
  Ye et al. (2020), layer-wise greedy forward selection for deep networks (a random subset of
  candidates per step; a fine-tune between layers).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxprune._validation import (
    check_choice,
    check_int,
    check_iterable,
    check_positive_int,
    check_real,
)
from jaxprune.masks.layout import GroupLayout
from jaxprune.methods.greedy.selection import check_mesh
from jaxprune.methods.importance.scores import default_chunk_size
from jaxprune.typing import PyTree

__all__ = [
    "CRITERIA",
    "GROUP_KINDS",
    "ChannelSelection",
    "GateSelection",
    "LayerSelection",
    "cross_entropy_loss",
    "flat_gates",
    "greedy_channel_selection",
    "greedy_gate_selection",
]

#: Stopping criteria of a layer (reading GS-11): ``"relative"`` ``L_S ≤ (1 + ε)·L_full``,
#: ``"absolute"`` ``L_S ≤ L_full + ε``, ``"accuracy"`` ``acc_S ≥ (1 − ε)·acc_full``.
CRITERIA = ("relative", "absolute", "accuracy")

#: Group kinds :func:`greedy_channel_selection` accepts: units whose gate scales one channel.
GROUP_KINDS = ("filters", "channels", "neurons")

#: ``gated_eval(operands, gate_pieces, batch) -> (loss, accuracy)``, two scalars;
#: ``gate_pieces`` holds one array per layout layer (:func:`flat_gates` joins them).
GatedEval = Callable[
    [PyTree, tuple[jax.Array, ...], Mapping[str, Any]], tuple[jax.Array, jax.Array]
]


class LayerSelection(NamedTuple):
    """The greedy steps of one layer.

    Attributes:
      layer: index of the layer in the layout.
      name: its name (``layout.layer_names[layer]``).
      candidates: ``(n,)`` the layer's groups that could be selected (ascending global group
        indices; groups pruned before the search are excluded).
      order: ``(k,)`` the selected groups in the order they were added.
      losses: ``(k,)`` loss after step ``t``'s addition on step ``t``'s minibatch.
      full_losses: ``(k,)`` loss with the whole layer (all ``candidates``) on the same
        minibatch: the reference of the stopping criterion.
      accuracies: ``(k,)`` accuracy after each addition (``criterion="accuracy"``; else None).
      full_accuracies: ``(k,)`` the whole layer's accuracy likewise, or None.
      scored: ``(k, s)`` the candidates scored at each step (``-1`` pads steps that scored
        fewer than ``s``): all not-yet-selected ones, or a random subset of
        ``s = max_candidates``.
    """

    layer: int
    name: str
    candidates: np.ndarray
    order: np.ndarray
    losses: np.ndarray
    full_losses: np.ndarray
    accuracies: np.ndarray | None
    full_accuracies: np.ndarray | None
    scored: np.ndarray


class GateSelection(NamedTuple):
    """Result of :func:`greedy_gate_selection`.

    Attributes:
      mask: ``(p,)`` float32 0/1 group mask: the selected groups of the searched layers, the
        initially alive groups of the others.
      layers: one :class:`LayerSelection` per searched layer, in layout order.
      operands: the operands after the last fine-tune (the input ones without ``finetune``).
    """

    mask: np.ndarray
    layers: tuple[LayerSelection, ...]
    operands: PyTree


class ChannelSelection(NamedTuple):
    """Result of :func:`greedy_channel_selection`.

    Attributes:
      mask: ``(p,)`` float32 0/1 group mask over the input model's groups.
      model: the compacted :class:`~jaxprune.train.Bound` without the unselected groups, or
        None when the model is not compactable.
      variables: the compacted model's variables (the full model's, fine-tuned if asked,
        when it is not compactable).
      layers: one :class:`LayerSelection` per searched layer, in layout order.
    """

    mask: np.ndarray
    model: Any
    variables: PyTree
    layers: tuple[LayerSelection, ...]


def cross_entropy_loss(outputs: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
    """Mean softmax cross-entropy of ``(n, K)`` logits against integer labels ``batch["y"]``
    ``(n,)``: the default loss of :func:`greedy_channel_selection`."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, batch["y"]).mean()


def _accuracy(outputs: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
    """Share of argmax predictions equal to integer labels ``batch["y"]`` (NaN when the batch
    has no such labels for these outputs)."""
    labels = batch.get("y")
    classes = (
        labels is not None
        and jnp.issubdtype(jnp.result_type(labels), jnp.integer)
        and jnp.ndim(labels) == outputs.ndim - 1
    )
    if not classes:
        return jnp.full((), jnp.nan)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def flat_gates(pieces: Sequence[jax.Array], layout: GroupLayout) -> jax.Array:
    """The ``(p,)`` gate vector of per-layer ``pieces`` (piece ``l`` holds the gates of
    ``layout.groups_in_layer(l)``, ascending), as a ``gated_eval`` receives them.

    Args:
      pieces: ``layout.num_layers`` arrays, piece ``l`` of shape ``(n_l,)``.
      layout: the groups' layout.

    Returns:
      ``(p,)`` gates in group order (traceable; a concatenation for contiguous layouts).
    """
    if len(pieces) != layout.num_layers:
        raise ValueError(
            f"pieces: expected {layout.num_layers} per-layer pieces, got {len(pieces)}"
        )
    order = np.concatenate([layout.groups_in_layer(i) for i in range(layout.num_layers)])
    joined = jnp.concatenate([jnp.asarray(piece) for piece in pieces])
    if np.array_equal(order, np.arange(layout.num_groups)):
        return joined
    return jnp.zeros_like(joined).at[order].set(joined)


def _contiguous(layout: GroupLayout) -> bool:
    """Layer ``l``'s groups are one consecutive run, after layer ``l - 1``'s."""
    return bool(np.all(np.diff(layout.layer_of_group) >= 0))


@dataclasses.dataclass(frozen=True)
class _ModelEvaluation:
    """``gated_eval`` of a zoo model in evaluation mode: the loss and the accuracy (hashable:
    the compiled scorer is cached per model and loss, shared by all criteria).  The zoo's
    models take their gates as per-layer pieces (:func:`jaxprune.models.base.split_gates`), so
    the pieces go to the model as they are when the layout is contiguous."""

    model: Any
    loss: Callable[[jax.Array, Mapping[str, Any]], jax.Array]
    layout: GroupLayout = dataclasses.field(compare=False, hash=False)

    def __call__(self, variables: PyTree, pieces: tuple, batch: Mapping[str, Any]):
        gates = list(pieces) if _contiguous(self.layout) else flat_gates(pieces, self.layout)
        outputs = self.model.apply(variables, batch["x"], train=False, gates=gates)[0]
        return self.loss(outputs, batch), _accuracy(outputs, batch)


def _scalar_pair(value: Any) -> tuple[jax.Array, jax.Array]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"gated_eval: expected a (loss, accuracy) pair, got {value!r}")
    loss, accuracy = jnp.asarray(value[0]), jnp.asarray(value[1])
    if loss.ndim or accuracy.ndim:
        raise ValueError(
            f"loss: expected scalar loss and accuracy, got shapes {loss.shape} and {accuracy.shape}"
        )
    return loss, accuracy


@functools.lru_cache(maxsize=32)
def _step_scorer(
    gated_eval: GatedEval,
    chunk_size: int,
    layer_groups: tuple[tuple[int, ...], ...],
    layer: int,
    mesh: Mesh | None = None,
) -> Callable:
    """The jit-compiled scoring of one greedy step of layer ``layer``: ``score(operands,
    base_gates, full_gates, candidates, num_valid, batch) -> (losses, accuracies, full_loss,
    full_accuracy)``.

    ``gated_eval`` sees the gates as per-layer pieces (``layer_groups[l]`` are the groups of
    layout layer ``l``), and under the ``vmap`` over candidates only the searched layer's piece
    varies: whatever the evaluation computes upstream of that layer's gates is computed once
    for all lanes.  The whole layer's reference (``full_gates``, for the stopping criterion)
    is one more lane of the first block (a lane whose index is ``p``, the number of groups), so
    it shares that upstream pass too; as a separate call it cost one more upstream pass per
    step (VGG-16-bn width/8, batch 64: 15.6 ms against 8.4 ms for a step of the last layer).
    ``candidates`` is padded to a fixed length (a multiple of ``chunk_size``), so one program
    serves every step of a layer; a loop over the further blocks of ``chunk_size`` lanes stops
    after the block holding the last of the ``num_valid`` real candidates, so padding costs at
    most one partial block.  Entries past ``num_valid`` are meaningless (masked by the caller).

    With a ``mesh``, ``candidates`` (padded to a multiple of ``chunk_size`` times the mesh
    size) is split along the mesh's axis by ``shard_map``: every device scores its slice with
    the same blocks (its first block always, the others up to its last real candidate) and the
    reference on replicated operands and batch, and the scores come back in candidate order, so the caller's argmin,
    and therefore every pick, is the one-device search's (Wolfe et al. (2023), App. E, applied
    to a layer).
    """
    p = sum(len(groups) for groups in layer_groups)
    position = np.zeros(p, np.int32)
    for groups in layer_groups:
        position[list(groups)] = np.arange(len(groups))
    gathers = [np.asarray(groups, np.int32) for groups in layer_groups]

    def pieces_of(gates):
        return tuple(gates[index] for index in gathers)

    def lane(operands, base_pieces, full_piece, batch, index):
        pieces = list(base_pieces)
        switched = base_pieces[layer].at[jnp.asarray(position)[jnp.minimum(index, p - 1)]].set(1.0)
        pieces[layer] = jnp.where(index == p, full_piece, switched)
        return _scalar_pair(gated_eval(operands, tuple(pieces), batch))

    def score(operands, base_gates, full_gates, candidates, num_valid, batch):
        evaluate = jax.vmap(
            functools.partial(
                lane, operands, pieces_of(base_gates), pieces_of(full_gates)[layer], batch
            )
        )
        # the first block and the reference in one call: they share the upstream pass
        first = evaluate(jnp.append(candidates[:chunk_size], p))
        full_loss, full_accuracy = first[0][chunk_size], first[1][chunk_size]

        def block(i, scores):
            start = i * chunk_size
            indices = jax.lax.dynamic_slice_in_dim(candidates, start, chunk_size)
            return tuple(
                jax.lax.dynamic_update_slice_in_dim(out, new.astype(out.dtype), start, 0)
                for out, new in zip(scores, evaluate(indices))
            )

        empty = (  # like ``candidates``: varying over the mesh axis when sharded
            jnp.full_like(candidates, jnp.inf, full_loss.dtype)
            .at[:chunk_size]
            .set(first[0][:chunk_size]),
            jnp.zeros_like(candidates, full_accuracy.dtype)
            .at[:chunk_size]
            .set(first[1][:chunk_size]),
        )
        num_blocks = (num_valid + chunk_size - 1) // chunk_size
        losses, accuracies = jax.lax.fori_loop(1, num_blocks, block, empty)
        return losses, accuracies, full_loss, full_accuracy

    if mesh is None:
        return jax.jit(score)
    axis = mesh.axis_names[0]

    def shard(operands, base_gates, full_gates, candidates, num_valid, batch):
        local = candidates.shape[0]
        local_valid = jnp.clip(num_valid - jax.lax.axis_index(axis) * local, 0, local)
        losses, accuracies, full_loss, full_accuracy = score(
            operands, base_gates, full_gates, candidates, local_valid, batch
        )
        return losses, accuracies, full_loss[None], full_accuracy[None]

    sharded = jax.shard_map(
        shard,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(axis), P(), P()),
        out_specs=(P(axis), P(axis), P(axis), P(axis)),
    )

    def score_sharded(*args):
        losses, accuracies, full_loss, full_accuracy = sharded(*args)
        return losses, accuracies, full_loss[0], full_accuracy[0]  # every device's is the same

    return jax.jit(score_sharded)


def _resolve_layers(layers: Any, layout: GroupLayout) -> tuple[int, ...]:
    """``layers`` (indices or names of layout layers) as sorted layout indices."""
    if layers is None:
        return tuple(range(layout.num_layers))
    if isinstance(layers, (str, int, np.integer)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers: expected a sequence of layer indices or names, got {layers!r}")
    resolved = []
    for entry in layers:
        if isinstance(entry, str):
            if entry not in layout.layer_names:
                raise ValueError(
                    f"layers: unknown layer name {entry!r}; expected one of {layout.layer_names}"
                )
            resolved.append(layout.layer_names.index(entry))
        else:
            index = check_int(entry, "layers", minimum=0)
            if index >= layout.num_layers:
                raise ValueError(
                    f"layers: layer index {index} out of range for {layout.num_layers} layers"
                )
            resolved.append(index)
    if not resolved:
        raise ValueError("layers: expected at least one layer, got an empty sequence")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers: expected distinct layers, got {list(layers)!r}")
    return tuple(sorted(resolved))


def _check_alive(alive: Any, p: int) -> np.ndarray:
    if alive is None:
        return np.ones(p, bool)
    alive = np.asarray(alive)
    if alive.shape != (p,) or alive.dtype != bool:
        raise ValueError(
            f"alive: expected a boolean array of shape ({p},), got {alive.dtype} {alive.shape}"
        )
    return alive


def _check_budgets(keep_per_layer: Any, sizes: Sequence[int]) -> tuple[int, ...] | None:
    if keep_per_layer is None:
        return None
    if isinstance(keep_per_layer, (str, bytes)) or not isinstance(keep_per_layer, Sequence):
        raise TypeError(f"keep_per_layer: expected a sequence of ints, got {keep_per_layer!r}")
    if len(keep_per_layer) != len(sizes):
        raise ValueError(
            f"keep_per_layer: expected {len(sizes)} counts (one per searched layer), got "
            f"{len(keep_per_layer)}"
        )
    budgets = []
    for i, (count, size) in enumerate(zip(keep_per_layer, sizes)):
        count = check_positive_int(count, f"keep_per_layer[{i}]")
        if count > size:
            raise ValueError(
                f"keep_per_layer[{i}]: {count} exceeds the layer's {size} selectable groups"
            )
        budgets.append(count)
    return tuple(budgets)


def _stopped(criterion: str, eps: float, loss, full_loss, accuracy, full_accuracy) -> bool:
    """Whether a layer's subnetwork meets the tolerance (reading GS-11)."""
    if criterion == "relative":
        return loss <= (1.0 + eps) * full_loss
    if criterion == "absolute":
        return loss <= full_loss + eps
    return accuracy >= (1.0 - eps) * full_accuracy


def _next_batch(batches: Any, drawn: int) -> Mapping[str, Any]:
    try:
        batch = next(batches)
    except StopIteration:
        if drawn == 0:
            raise ValueError("batches: expected prepared minibatches, got none") from None
        raise ValueError(
            f"batches: exhausted after {drawn} minibatches before the selection finished; "
            "pass more (e.g. itertools.cycle(list_of_batches) to reuse them)"
        ) from None
    if not isinstance(batch, Mapping):
        raise TypeError(f"batches: expected mappings like {{'x': ..., 'y': ...}}, got {batch!r}")
    return batch


class _Search(NamedTuple):
    """The fixed settings of one search."""

    criterion: str
    eps: float | None
    max_candidates: int | None
    key: jax.Array | None
    chunk_size: int
    mesh: Mesh | None


def _search_layer(
    scorer_of: Callable[[int, int], Callable],
    operands: PyTree,
    mask: np.ndarray,
    layer: int,
    name: str,
    groups: np.ndarray,
    budget: int | None,
    batches: Any,
    drawn: int,
    search: _Search,
) -> tuple[np.ndarray, LayerSelection, int]:
    """One layer of Algorithm 2: ``(mask, record, minibatches drawn so far)``."""
    size = len(groups) if search.max_candidates is None else min(search.max_candidates, len(groups))
    chunk = min(search.chunk_size, size)
    lanes = chunk * (1 if search.mesh is None else search.mesh.devices.size)
    padded = math.ceil(size / lanes) * lanes
    scorer = scorer_of(chunk, layer)
    full_gates = mask.copy()
    full_gates[groups] = 1.0
    base = mask.copy()
    base[groups] = 0.0
    remaining = list(groups)
    order, losses, full_losses, accuracies, full_accuracies, scored = [], [], [], [], [], []
    while remaining and (budget is None or len(order) < budget):
        batch = _next_batch(batches, drawn)
        candidates = np.asarray(remaining)
        if len(candidates) > size:
            step_key = jax.random.fold_in(search.key, drawn)
            chosen = np.asarray(jax.random.choice(step_key, len(candidates), (size,), False))
            candidates = candidates[np.sort(chosen)]
        drawn += 1
        padding = padded - len(candidates)
        valid = np.arange(padded) < len(candidates)
        indices = np.concatenate([candidates, np.full(padding, candidates[0])]).astype(np.int32)
        num_valid = np.int32(len(candidates))
        raw, raw_accuracy, full_loss, full_accuracy = jax.device_get(
            scorer(operands, base, full_gates, indices, num_valid, batch)
        )
        if np.isnan(raw[valid]).any() or np.isnan(full_loss):
            raise ValueError(
                f"loss: NaN at layer {name!r}, step {len(order)} (candidates "
                f"{candidates[np.isnan(raw[valid])].tolist()}); check the model and the batches"
            )
        best = int(np.argmin(np.where(valid, raw, np.inf)))  # first minimum: smallest index
        if search.criterion == "accuracy" and np.isnan([raw_accuracy[best], full_accuracy]).any():
            raise ValueError(
                "criterion: 'accuracy' needs an accuracy from gated_eval (for a model: (n, K) "
                "outputs and integer labels batch['y']), got NaN"
            )
        pick = int(indices[best])
        base[pick] = 1.0
        remaining.remove(pick)
        order.append(pick)
        losses.append(float(raw[best]))
        full_losses.append(float(full_loss))
        accuracies.append(float(raw_accuracy[best]))
        full_accuracies.append(float(full_accuracy))
        scored.append(np.concatenate([candidates, np.full(size - len(candidates), -1)]))
        values = (losses[-1], full_losses[-1], accuracies[-1], full_accuracies[-1])
        if budget is None and _stopped(search.criterion, search.eps, *values):
            break
    with_accuracy = search.criterion == "accuracy"
    record = LayerSelection(
        layer=layer,
        name=name,
        candidates=np.asarray(groups),
        order=np.asarray(order, np.int64),
        losses=np.asarray(losses),
        full_losses=np.asarray(full_losses),
        accuracies=np.asarray(accuracies) if with_accuracy else None,
        full_accuracies=np.asarray(full_accuracies) if with_accuracy else None,
        scored=np.asarray(scored, np.int64).reshape(len(order), size),
    )
    return base, record, drawn


def greedy_gate_selection(
    gated_eval: GatedEval,
    operands: PyTree,
    layout: GroupLayout,
    batches: Iterable[Mapping[str, Any]],
    *,
    eps: float | None = None,
    keep_per_layer: Sequence[int] | None = None,
    layers: Sequence[int | str] | None = None,
    criterion: str = "relative",
    alive: np.ndarray | None = None,
    max_candidates: int | None = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    finetune: Callable[[PyTree, np.ndarray, int], PyTree] | None = None,
    mesh: Mesh | None = None,
) -> GateSelection:
    """Layer-wise greedy forward selection of gated groups (Algorithm 2) on any evaluation.

    Each searched layer (layout order) starts with its gates at 0 and adds, one step at a
    time, the not-yet-selected group ``j`` minimising ``gated_eval(operands, g + e_j, batch)``
    (``g`` the current gates, a fresh ``batch`` from ``batches`` per step; ties go to the
    smallest group index), until the criterion holds against the whole layer's value on the
    same batch, or until ``keep_per_layer`` groups are selected.  A layer that never meets the
    criterion ends full.  Between layers ``finetune(operands, mask, layer) -> operands`` may
    update the operands (not after the last layer).

    Args:
      gated_eval: ``gated_eval(operands, gate_pieces, batch) -> (loss, accuracy)`` scalars, a
        JAX-traceable function of the gates as one piece per layout layer (piece ``l`` holds
        the gates of ``layout.groups_in_layer(l)``; :func:`flat_gates` gives the ``(p,)``
        vector), hashable (the compiled scorer is cached per object); the
        accuracy is read only with ``criterion="accuracy"`` (return NaN when undefined).
      operands: pytree of arrays passed to ``gated_eval`` (parameters shared by all candidates).
      layout: the groups' :class:`~jaxprune.masks.GroupLayout` (``p`` groups).
      batches: an iterable of prepared minibatches (mappings); one is consumed per greedy step,
        across layers; running out before the selection ends is an error.
      eps: tolerance ``ε >= 0`` of the criterion; exactly one of ``eps`` and ``keep_per_layer``.
      keep_per_layer: groups to select in each searched layer (one count ``>= 1`` per searched
        layer, layout order), instead of a tolerance.
      layers: layout layers to search (indices or names); None: all.  The others keep their
        ``alive`` groups.
      criterion: one of :data:`CRITERIA` (reading GS-11).
      alive: ``(p,)`` bool, the groups that may be kept (the others stay 0 and are never
        candidates); None: all.
      max_candidates: score a uniformly random subset of this many not-yet-selected groups
        per step (Ye et al. 2020); None: all of them (exact search).
      key: PRNG key of the subsets (required with ``max_candidates``).
      chunk_size: candidates evaluated together (``vmap``); memory grows with it (about
        ``chunk_size`` forward passes' activations on one minibatch); None:
        :func:`~jaxprune.methods.importance.scores.default_chunk_size` (4 on CPU, 64 on
        accelerators).
      finetune: optional ``finetune(operands, mask (p,), layer) -> operands`` run after every
        searched layer but the last, with the current 0/1 mask.
      mesh: a 1-D :class:`jax.sharding.Mesh` over this process's devices (any axis name):
        each step's candidates are split along its axis (``shard_map``), operands and batch
        replicated; the picks equal the one-device search's.  ``chunk_size`` is then per
        device.

    Returns:
      :class:`GateSelection`.

    Raises:
      ValueError: ``eps`` negative or NaN, both or neither of ``eps``/``keep_per_layer``, bad
        layers or budgets, a searched layer without alive groups, no or too few batches, a
        NaN loss, a non-scalar loss, ``max_candidates`` without ``key``.
      TypeError: arguments of the wrong type.

    References:
      Wolfe et al. (2023), App. D, Algorithm 2; readings GS-3 and GS-11 (docs/readings.md);
      Ye et al. (2020) (random candidate subsets, fine-tuning between layers).
    """
    if not isinstance(layout, GroupLayout):
        raise TypeError(f"layout: expected a GroupLayout, got {type(layout).__name__}")
    if not callable(gated_eval):
        raise TypeError(f"gated_eval: expected a callable, got {type(gated_eval).__name__}")
    criterion = check_choice(criterion, CRITERIA, "criterion")
    check_iterable(batches, "batches", "an iterable of prepared minibatches")
    if (eps is None) == (keep_per_layer is None):
        raise ValueError(
            "eps: pass exactly one of eps (a tolerance) and keep_per_layer (budgets), got "
            f"eps={eps!r}, keep_per_layer={keep_per_layer!r}"
        )
    if eps is not None:
        eps = check_real(eps, "eps", minimum=0.0)
    if max_candidates is not None:
        max_candidates = check_positive_int(max_candidates, "max_candidates")
        if key is None:
            raise ValueError("key: a PRNG key is required with max_candidates")
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if finetune is not None and not callable(finetune):
        raise TypeError(f"finetune: expected a callable or None, got {type(finetune).__name__}")
    alive = _check_alive(alive, layout.num_groups)
    searched = _resolve_layers(layers, layout)
    layer_groups = []
    for layer in searched:
        groups = layout.groups_in_layer(layer)
        groups = groups[alive[groups]]
        if not len(groups):
            raise ValueError(f"layers: layer {layout.layer_names[layer]!r} has no alive groups")
        layer_groups.append(groups)
    budgets = _check_budgets(keep_per_layer, [len(g) for g in layer_groups])
    if mesh is not None:
        mesh = check_mesh(mesh)
    search = _Search(criterion, eps, max_candidates, key, chunk_size, mesh)
    layout_groups = tuple(
        tuple(int(g) for g in layout.groups_in_layer(layer)) for layer in range(layout.num_layers)
    )

    def scorer_of(chunk: int, layer: int) -> Callable:
        return _step_scorer(gated_eval, chunk, layout_groups, layer, mesh)

    structure = jax.tree_util.tree_structure(operands)
    batches = iter(batches)
    mask = alive.astype(np.float32)
    records, drawn = [], 0
    for position, (layer, groups) in enumerate(zip(searched, layer_groups)):
        budget = None if budgets is None else budgets[position]
        name = layout.layer_names[layer]
        mask, record, drawn = _search_layer(
            scorer_of, operands, mask, layer, name, groups, budget, batches, drawn, search
        )
        records.append(record)
        if finetune is not None and position < len(searched) - 1:
            operands = finetune(operands, mask.copy(), layer)
            if jax.tree_util.tree_structure(operands) != structure:
                raise ValueError(
                    "finetune: expected operands with the input structure "
                    f"{structure}, got {jax.tree_util.tree_structure(operands)}"
                )
    return GateSelection(mask, tuple(records), operands)


def _check_model(model: Any) -> None:
    # Imported here: jaxprune.train imports the pruner registry, which imports this module.
    from jaxprune.train.zoo import Bound

    if not isinstance(model, Bound):
        raise TypeError(
            f"model: expected a jaxprune.train.Bound (build_model), got {type(model).__name__}"
        )
    if model.spec.gate_keyword is None and model.spec.split_gates is None:
        raise ValueError(
            f"model: {model.name!r} takes no per-group gates (its spec has neither gate_keyword "
            "nor split_gates); greedy selection scores candidates through the gates"
        )
    if model.kind not in GROUP_KINDS:
        raise ValueError(
            f"model: its group kind {model.kind!r} is not one of {GROUP_KINDS} (filter, channel "
            "or neuron groups)"
        )


def greedy_channel_selection(
    model: Any,
    variables: PyTree,
    batches: Iterable[Mapping[str, Any]],
    *,
    eps: float | None = None,
    layers: Sequence[int | str] | None = None,
    max_candidates: int | None = None,
    finetune: Callable[[Any, PyTree, np.ndarray, int], PyTree] | None = None,
    keep_per_layer: Sequence[int] | None = None,
    criterion: str = "relative",
    loss: Callable[[jax.Array, Mapping[str, Any]], jax.Array] | None = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> ChannelSelection:
    """Greedy forward selection of a zoo model's channels, layer by layer (Algorithm 2).

    Layers are the model's group layout (input to output); every searched layer starts empty
    and adds, per step and on a fresh minibatch, the not-yet-selected channel whose gate gives
    the lowest loss of the model in evaluation mode (BatchNorm running statistics), until

    * ``criterion="relative"`` (default, reading GS-11): ``L_S ≤ (1 + ε)·L_full``,
    * ``"absolute"``: ``L_S ≤ L_full + ε``,
    * ``"accuracy"`` (Ye et al.'s criterion): ``acc_S ≥ (1 − ε)·acc_full``,

    where ``L_S``/``acc_S`` are the loss/accuracy after the step's addition and ``L_full`` /
    ``acc_full`` those with the whole layer, both on that step's minibatch (earlier layers as
    selected, later layers full); or until ``keep_per_layer`` channels are selected.  Ties go
    to the smallest group index.  All candidates of a step are one compiled, ``vmap``-ed
    evaluation (see the module docstring), compiled once per layer.

    Args:
      model: a :class:`~jaxprune.train.Bound` whose spec takes gates (``gate_keyword`` or
        ``split_gates``) and whose kind is one of :data:`GROUP_KINDS`.
      variables: its ``{"params": ..., "batch_stats"?: ...}``.
      batches: an iterable of prepared minibatches ``{"x": ..., "y": ...}``, one consumed per
        step (across layers; a list must hold enough, ``itertools.cycle`` reuses one); e.g.
        ``iter(context.batches(n))`` or a generator over the training data.
      eps: tolerance ``ε >= 0``; exactly one of ``eps`` and ``keep_per_layer``.
      layers: layout layers to search (indices or names); None: all.  The others stay full.
      max_candidates: score a random subset of this many not-yet-selected channels per step
        (Ye et al. 2020); None: the exact search over all.
      finetune: optional ``finetune(model, variables, mask (p,), layer) -> variables`` run
        after every searched layer but the last (Ye et al.'s short fine-tune between layers):
        ``mask`` is the current 0/1 group mask (later layers full), ``layer`` the layout index
        just searched; the returned variables (same structure) are used from then on.  It is
        the user's training loop, e.g. a few masked steps of :func:`jaxprune.train.train`.
      keep_per_layer: exact channel counts, one per searched layer (layout order), ``>= 1``.
      criterion: one of :data:`CRITERIA`.
      loss: ``loss(outputs, batch) -> scalar``; None: :func:`cross_entropy_loss`.  The
        relative criterion assumes a nonnegative loss.  ``"accuracy"`` needs ``(n, K)``
        outputs and integer labels ``batch["y"]``.
      key: PRNG key of the random subsets (required with ``max_candidates``).
      chunk_size: candidates evaluated together (memory: about ``chunk_size`` forward passes'
        activations); None: ``default_chunk_size()`` (4 on CPU, 64 on accelerators).
      mesh: a 1-D device mesh to split each step's candidates over (the distributed search
        of App. E applied to channels; same picks as one device); see
        :func:`greedy_gate_selection`.

    Returns:
      :class:`ChannelSelection`: the mask, the compacted model and variables (when
      ``model.compactable``), and the steps of every searched layer.

    Raises:
      ValueError: ``eps`` negative or NaN; a model without gates or without filter/channel/
        neuron groups; bad ``layers``/``keep_per_layer``; no or too few batches; a NaN loss.
      TypeError: ``model`` not a ``Bound``; ``loss``/``finetune`` not callable.

    References:
      Wolfe et al. (2023), App. D, Algorithm 2; readings GS-3 and GS-11 (docs/readings.md);
      Ye et al. (2020) (layer-wise selection, random candidates, fine-tuning between layers).
    """
    _check_model(model)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError("variables: expected a mapping with 'params' (model.init output)")
    loss = cross_entropy_loss if loss is None else loss
    if not callable(loss):
        raise TypeError(f"loss: expected a callable or None, got {type(loss).__name__}")
    if finetune is not None and not callable(finetune):
        raise TypeError(f"finetune: expected a callable or None, got {type(finetune).__name__}")
    _, layout = model.group_ids(variables["params"])
    gated_eval = _ModelEvaluation(model, loss, layout)

    def finetune_operands(operands: PyTree, mask: np.ndarray, layer: int) -> PyTree:
        return dict(finetune(model, operands, mask, layer))

    result = greedy_gate_selection(
        gated_eval,
        dict(variables),
        layout,
        batches,
        eps=eps,
        keep_per_layer=keep_per_layer,
        layers=layers,
        criterion=criterion,
        max_candidates=max_candidates,
        key=key,
        chunk_size=chunk_size,
        finetune=None if finetune is None else finetune_operands,
        mesh=mesh,
    )
    if not model.compactable:
        return ChannelSelection(result.mask, None, result.operands, result.layers)
    small, small_variables = model.compact(result.operands, result.mask > 0)
    return ChannelSelection(result.mask, small, small_variables, result.layers)
