"""``prune_with``: any registered pruning method inside the caller's own optax training loop.

The reference is the engine (:func:`jaxprune.train.train`): with the same seed, schedule and
batches, a user loop with ``prune_with`` ends with the engine's masks and weights, for a
criterion inside one compiled step, LTH with rewinding, and PL gating and greedy selection on
host-side events.
Under 4 forced CPU devices, ``pmap`` and sharded ``jit`` give the one-device masks and weights.
Pruned weights stay exactly 0, the state round-trips through an orbax checkpoint mid-schedule,
and bad input fails with errors naming the argument.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from cpu_devices import cpu_devices_env

from jaxprune.data import load_dataset
from jaxprune.data.batches import iterate_batches
from jaxprune.masks import GroupLayout, iterative_magnitude, linear, one_shot
from jaxprune.optim import MaskedState, PruneWithState, event_due, grda, masked, prune_with
from jaxprune.spectra import SplitLoss
from jaxprune.train import TrainConfig, build_model, make_pruner, train
from jaxprune.train.events import event_batches
from jaxprune.train.steps import make_loss_fn
from jaxprune.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, SEED = 10, 16, 0
# Key purposes of the engine (jaxprune.train.engine): init 0, steps 1, events 2.
INIT, STEP_KEYS, EVENT_KEYS = 0, 1, 2


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,16")
    task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
    return splits, model, task


def _user_loop(digits, tx, schedule, *, host_events: bool):
    """The engine's run written as a plain loop over ``tx``: same initialization, batch order,
    step keys and event batches; the step is one ``jax.jit``, and with ``host_events`` the
    steps ``event_due`` names run uncompiled."""
    splits, model, task = digits
    key = jax.random.key(SEED)
    params = model.init(jax.random.fold_in(key, INIT), splits.train["x"][:1])["params"]
    model_loss = make_loss_fn(model, task)

    def loss_fn(p, batch):
        return model_loss(p, {}, None, batch, jax.random.key(0), True)[0]

    def apply_fn(p, x):
        return model.apply({"params": p}, x, train=False)[0]

    split_loss = SplitLoss(  # the loss split at the outputs: PL's Gauss-Newton target
        lambda p, batch: model.apply({"params": p}, batch["x"], train=True)[0],
        lambda outputs, batch: task.loss(outputs, batch)[0],
    )

    def train_step(params, state, batch, event_data):
        grads = jax.grad(loss_fn)(params, batch)
        updates, state = tx.update(
            grads,
            state,
            params,
            loss_fn=loss_fn,
            batches=event_data,
            apply_fn=apply_fn,
            split_loss=split_loss,
        )
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(train_step)
    state = tx.init(params)
    indices = iterate_batches(len(splits.train["x"]), BATCH, seed=SEED)
    for t in range(STEPS):
        rows, _ = next(indices)
        batch = {k: jnp.asarray(v[rows]) for k, v in splits.train.items()}
        prepare_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, STEP_KEYS), t))
        batch = task.prepare(batch, prepare_key[0])
        # The update of step t ends with the event of step t + 1: the engine's batches of it.
        event_key = jax.random.fold_in(jax.random.fold_in(key, EVENT_KEYS), t + 1)
        draw = event_batches(splits.train, task, BATCH, SEED, t + 1, event_key)
        if host_events and event_due(state, schedule):
            params, state = train_step(params, state, batch, draw)
        else:
            params, state = compiled(params, state, batch, draw(1))
    return params, state


CASES = {
    "snip": (one_shot(5, 0.5), {}, False),
    "lth": (iterative_magnitude(2, 4, 3, final_ratio=0.75), {}, False),
    "pl": (one_shot(5, 0.5), {"gating_steps": 3, "feature_batch_size": 8, "hidden": 4}, True),
    "greedy": (one_shot(5, 0.5), {"num_batches": 2}, True),
}


@pytest.mark.parametrize("method", CASES)
def test_user_loop_equals_the_engine(digits, method):
    schedule, options, host_events = CASES[method]
    splits, model, _ = digits
    config = TrainConfig(num_steps=STEPS, batch_size=BATCH, seed=SEED, progress=False)
    options = {**options, "seed": 3} if method == "pl" else options  # same v for both
    pruner = make_pruner(method, schedule, **options)
    engine = train(model, splits, optax.sgd(0.1), config, pruner=pruner)

    key = jax.random.fold_in(jax.random.key(SEED), EVENT_KEYS)
    params = model.init(jax.random.key(0), splits.train["x"][:1])["params"]
    group_ids, layout = model.group_ids(params)
    tx = prune_with(optax.sgd(0.1), method, schedule, group_ids, layout=layout, key=key, **options)
    params, state = _user_loop(digits, tx, schedule, host_events=host_events)

    np.testing.assert_array_equal(state.gates, engine.state.gates)
    assert 0 < state.gates.sum() < state.gates.size
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        params,
        engine.state.params,
    )
    pruned = jax.tree_util.tree_map(lambda m: np.asarray(m) == 0, state.mask)
    for w, off in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(pruned)):
        assert np.all(np.asarray(w)[off] == 0.0)


def _toy():
    """A two-layer tanh regression with 6 neuron groups (3 per layer) and its data."""
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
        "w3": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
    }
    ids = {
        "w1": np.arange(3, dtype=np.int32)[None, :],
        "w2": np.arange(3, 6, dtype=np.int32)[None, :],
        "w3": np.full((3, 2), -1, np.int32),
    }
    layout = GroupLayout(("w1", "w2"), np.array([0, 0, 0, 1, 1, 1]))
    x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(32, 2)), jnp.float32)
    return params, ids, layout, {"x": x, "y": y}


def _toy_apply(p, x):
    return jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) @ p["w3"]


def _toy_loss(p, batch):
    return 0.5 * jnp.mean(jnp.sum((_toy_apply(p, batch["x"]) - batch["y"]) ** 2, axis=-1))


def _run(tx, params, batch, steps, state=None):
    @jax.jit
    def step(params, state):
        grads = jax.grad(_toy_loss)(params, batch)
        updates, state = tx.update(grads, state, params, loss_fn=_toy_loss, batch=batch)
        return optax.apply_updates(params, updates), state

    state = tx.init(params) if state is None else state
    history = []
    for _ in range(steps):
        params, state = step(params, state)
        history.append((params, state))
    return params, state, history


def test_ordinary_steps_are_the_masked_optimizer():
    """Between events prune_with(adam) is masked(adam) with the event's mask and Adam state:
    bit-equal compiled steps before the event and after it."""
    params, ids, layout, batch = _toy()
    tx = prune_with(optax.adam(0.05), "magnitude", one_shot(3, 0.5), ids, layout=layout)
    _, state, history = _run(tx, params, batch, 6)
    reference = masked(optax.adam(0.05))
    for start, end in ((0, 2), (3, 6)):  # steps 1-2 unpruned; 4-6 after the event at step 3
        weights, ref_state = (params, None) if start == 0 else history[start - 1]
        ref_state = (
            reference.init(weights)
            if start == 0
            else MaskedState(ref_state.mask, ref_state.inner_state)
        )
        ref_weights, _, _ = _run(reference, weights, batch, end - start, state=ref_state)
        jax.tree_util.tree_map(np.testing.assert_array_equal, ref_weights, history[end - 1][0])
    assert int(state.gates.sum()) == 3


def test_pruned_weights_stay_zero_through_later_steps_with_adam_in_a_chain():
    params, ids, layout, batch = _toy()
    schedule = linear((2, 4), 2 / 3)  # 1 of 3 per layer at step 2, 2 of 3 at step 4
    pruner_tx = prune_with(optax.adamw(0.05, weight_decay=0.1), "snip", schedule, ids,
                           layout=layout, per_layer=True)  # fmt: skip
    tx = optax.chain(optax.clip_by_global_norm(1.0), pruner_tx)
    _, _, history = _run(tx, params, batch, 8)
    kept = [int(s[1].gates.sum()) for _, s in history]
    assert kept == [6, 4, 4, 2, 2, 2, 2, 2]  # events of steps 2 and 4 end updates 1 and 3
    for p, s in history[1:]:
        gates = np.asarray(s[1].gates)
        for name, layer in (("w1", slice(0, 3)), ("w2", slice(3, 6))):
            assert np.all(np.asarray(p[name])[:, gates[layer] == 0] == 0.0)
        assert np.all(np.asarray(s[1].inner_state[0].mu["w1"])[:, gates[:3] == 0] == 0.0)
    final = np.asarray(history[-1][1][1].gates)
    assert set(np.flatnonzero(final)) <= set(np.flatnonzero(history[1][1][1].gates))


def test_the_traced_selection_is_the_host_selection():
    """One compiled update and the same update run eagerly (the engine's host selection)
    pick the same masks and weights at every event."""
    params, ids, layout, batch = _toy()
    schedule = linear((1, 3), 2 / 3)
    for method, options in (("snip", {}), ("grasp", {"per_layer": True}), ("random", {})):
        tx = prune_with(optax.sgd(0.1), method, schedule, ids, layout=layout, **options)
        compiled = _run(tx, params, batch, 4)
        state, eager = tx.init(params), params
        for _ in range(4):
            grads = jax.grad(_toy_loss)(eager, batch)
            updates, state = tx.update(grads, state, eager, loss_fn=_toy_loss, batch=batch)
            eager = optax.apply_updates(eager, updates)
        np.testing.assert_array_equal(compiled[1].gates, state.gates)
        jax.tree_util.tree_map(
            functools.partial(np.testing.assert_allclose, rtol=1e-6), compiled[0], eager
        )


def test_gRDA_as_the_inner_optimizer_keeps_pruned_groups_at_zero():
    params, ids, layout, batch = _toy()
    tx = prune_with(grda(0.05, c=0.01, mu=0.6), "magnitude", one_shot(2, 0.5), ids, layout=layout)
    final, state, _ = _run(tx, params, batch, 6)
    assert int(state.gates.sum()) == 3
    off = np.asarray(state.gates) == 0
    assert np.all(np.asarray(final["w1"])[:, off[:3]] == 0.0)
    assert np.all(np.asarray(final["w2"])[:, off[3:]] == 0.0)


def test_the_state_round_trips_through_an_orbax_checkpoint_mid_schedule(tmp_path):
    """LTH: rewind point saved at step 1, checkpoint at step 4 (between events 3 and 5),
    restored into a fresh state, then continued: identical to the uninterrupted run."""
    params, ids, layout, batch = _toy()
    schedule = iterative_magnitude(2, 3, 1, final_ratio=2 / 3)  # events 3 and 5, rewind 1
    tx = prune_with(optax.adam(0.05), "lth", schedule, ids, layout=layout)
    uninterrupted, final_state, _ = _run(tx, params, batch, 7)

    middle, state, _ = _run(tx, params, batch, 4)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": middle, "opt_state": state})
    checkpointer.wait_until_finished()
    target = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert isinstance(restored["opt_state"], PruneWithState)
    resumed, resumed_state, _ = _run(tx, restored["params"], batch, 3, restored["opt_state"])
    np.testing.assert_array_equal(resumed_state.gates, final_state.gates)
    assert int(resumed_state.step) == 7 and int(final_state.gates.sum()) == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_a_compiled_update_refuses_a_host_side_event():
    """PL gating selects on the host: a jitted update reaching its event stops with the step."""
    params, ids, layout, batch = _toy()
    tx = prune_with(optax.sgd(0.1), "pl", one_shot(2, 0.5), ids, layout=layout, gating_steps=1,
                    feature_batch_size=8, hidden=2)  # fmt: skip
    state = tx.init(params)
    grads = jax.grad(_toy_loss)(params, batch)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=_toy_loss, batch=batch))
    _, state = step(grads, state, params)  # step 0 -> 1: no event
    assert not event_due(tx.init(params), one_shot(2, 0.5)) and event_due(state, one_shot(2, 0.5))
    with pytest.raises(Exception, match=r"step 2 is a pruning event of 'pl'.*outside jit"):
        jax.block_until_ready(step(grads, state, params))


def _bad_inputs():
    params, ids, layout, batch = _toy()
    schedule = one_shot(1, 0.5)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    def update(tx, **extra):
        state = tx.init(params)
        _, state = tx.update(grads, state, params, **extra)  # step 0 -> 1 ends with the event
        return state

    snip = prune_with(optax.sgd(0.1), "snip", schedule, ids, layout=layout)
    pl = prune_with(
        optax.sgd(0.1),
        "pl",
        schedule,
        ids,
        layout=layout,
        gating_steps=1,
        feature_batch_size=8,
        hidden=2,
    )
    skipped = prune_with(optax.sgd(0.1), "magnitude", one_shot(1, 0.5), ids, layout=layout)
    return [
        ("no loss_fn", lambda: update(snip, batch=batch), ValueError, "loss_fn: method 'snip'"),
        ("no batch", lambda: update(snip, loss_fn=_toy_loss), ValueError, "batch: method 'snip'"),
        (
            "no apply_fn",
            lambda: update(pl, loss_fn=_toy_loss, batch=batch),
            ValueError,
            "apply_fn: method 'pl'",
        ),
        (
            "too few batches",
            lambda: update(pl, loss_fn=_toy_loss, batches=[], apply_fn=None),
            ValueError,
            "batches: method 'pl' draws 1 batches",
        ),
        ("no params", lambda: snip.update(grads, snip.init(params)), ValueError, "params:"),
        ("ids structure", lambda: snip.init({"w1": params["w1"]}), ValueError, "group_ids:"),
        (
            "ids shape",
            lambda: prune_with(
                optax.sgd(0.1),
                "magnitude",
                schedule,
                {**ids, "w1": np.zeros((5, 3), np.int32)},
                layout=layout,
            ).init(params),
            ValueError,
            "group_ids\\['w1'\\]: shape",
        ),
        (
            "layout size",
            lambda: prune_with(
                optax.sgd(0.1), "snip", schedule, ids, layout=GroupLayout(("a",), np.zeros(4, int))
            ),
            ValueError,
            "layout: has 4 groups",
        ),
        (
            "unknown method",
            lambda: prune_with(optax.sgd(0.1), "obs", schedule, ids),
            ValueError,
            "method: expected one of",
        ),
        (
            "schedule type",
            lambda: prune_with(optax.sgd(0.1), "snip", "1:0.5", ids),
            TypeError,
            "schedule: expected a PruningSchedule",
        ),
        (
            "method type",
            lambda: prune_with(optax.sgd(0.1), 3, schedule, ids),
            TypeError,
            "method: expected a method name or a Pruner",
        ),
        (
            "pruner and options",
            lambda: prune_with(
                optax.sgd(0.1), make_pruner("snip", schedule), None, ids, num_batches=2
            ),
            ValueError,
            "method_options",
        ),
        (
            "schedule before the state's step",
            lambda: skipped.update(grads, skipped.init(params)._replace(step=jnp.int32(3)), params),
            ValueError,
            "step 3 is past the schedule's event at step 1",
        ),
        ("event_due state", lambda: event_due(params, schedule), TypeError, "state:"),
        (
            "guard_host_events",
            lambda: prune_with(optax.sgd(0.1), "pl", schedule, ids, guard_host_events="no"),
            TypeError,
            "guard_host_events",
        ),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_names_the_argument(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()


_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxprune.masks import GroupLayout, linear
    from jaxprune.optim import prune_with

    assert len(jax.local_devices()) == 4
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(4, 6)), "w2": rng.normal(size=(6, 2))}
    ids = {"w1": np.arange(6)[None, :], "w2": np.arange(6)[:, None]}
    layout = GroupLayout(("w1",), np.zeros(6, int))
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 2))

    def loss(p, batch):
        x, y = batch
        return 0.5 * jnp.mean(jnp.sum((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2, axis=-1))

    def make_step(tx, axis_name=None):
        def step(p, s, batch):
            g = jax.grad(loss)(p, batch)
            if axis_name:
                g = jax.lax.pmean(g, axis_name)
            u, s = tx.update(g, s, p, loss_fn=loss, batch=batch)
            return optax.apply_updates(p, u), s
        return step

    schedule = linear((2, 4), 0.5)
    def run(step, p, s, batch):
        for _ in range(7):
            p, s = step(p, s, batch)
        return p, s

    tx = prune_with(optax.sgd(0.1), "snip", schedule, ids, layout=layout)
    single = run(jax.jit(make_step(tx)), params, tx.init(params), (x, y))

    ptx = prune_with(optax.sgd(0.1), "snip", schedule, ids, layout=layout, axis_name="d")
    stack = lambda tree: jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * 4), tree)
    shard = lambda a: a.reshape(4, 8, *a.shape[1:])
    pmapped = run(jax.pmap(make_step(ptx, "d"), axis_name="d"), stack(params),
                  stack(ptx.init(params)), (shard(x), shard(y)))

    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    batch = (jax.device_put(x, rows), jax.device_put(y, rows))
    sharded = run(jax.jit(make_step(tx)), params, tx.init(params), batch)

    # shard_map: replicated params and state, batch rows split; with check_vma autodiff sums
    # the gradient of a replicated input over devices, so the step averages the loss.
    def smap_step(p, s, batch):
        g = jax.grad(lambda q: jax.lax.pmean(loss(q, batch), "data"))(p)
        u, s = ptx_smap.update(g, s, p, loss_fn=loss, batch=batch)
        return optax.apply_updates(p, u), s
    ptx_smap = prune_with(optax.sgd(0.1), "snip", schedule, ids, layout=layout, axis_name="data")
    smapped = jax.jit(jax.shard_map(smap_step, mesh=mesh, in_specs=(P(), P(), P("data")),
                                    out_specs=(P(), P())))
    mapped = run(smapped, params, ptx_smap.init(params), (x, y))

    assert 0 < single[1].gates.sum() < 6
    for name, (p, s) in (("pmap", pmapped), ("sharded jit", sharded), ("shard_map", mapped)):
        gates = np.asarray(s.gates)
        for g in (gates if name == "pmap" else [gates]):
            np.testing.assert_array_equal(g, single[1].gates, err_msg=name)
        for a, b in zip(jax.tree.leaves(single[0]), jax.tree.leaves(p)):
            b = np.asarray(b)
            for replica in (b if name == "pmap" else [b]):
                np.testing.assert_allclose(replica, a, rtol=1e-10, atol=1e-12, err_msg=name)
    print("parallel ok", single[1].gates)
    """
)


def test_pmap_shard_map_and_sharded_jit_select_the_one_device_masks():
    """Under 4 forced CPU devices: pmap and shard_map with the event's batches gathered over
    the axis, and jit over a batch sharded on a mesh, give the one-device masks and weights
    (float64, SGD)."""
    result = subprocess.run(
        [sys.executable, "-c", _PARALLEL_SCRIPT],
        cwd=ROOT,
        env=cpu_devices_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parallel ok" in result.stdout


def _readme_loop():
    text = (ROOT / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "event_due" in b]
    return snippet


def _run_snippet(snippet):
    namespace = {}
    exec(snippet, namespace)
    state, params = namespace["opt_state"], namespace["params"]
    assert int(state.step) == 300 and int(state.gates.sum()) == 64  # 25% of 2 x 128 neurons
    for w, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state.mask)):
        assert np.all(np.asarray(w)[np.asarray(m) == 0] == 0.0)
    return namespace


def test_readme_loop_runs_and_prunes():
    """The README's "Prune in your own loop" example, as printed (SNIP to 75% at step 100)."""
    namespace = _run_snippet(_readme_loop())
    assert float(namespace["loss"]) < 0.5


def test_readme_loop_with_its_pl_line():
    """The same loop with the optimizer line replaced by the README's commented PL line."""
    snippet = _readme_loop()
    (pl_line,) = re.findall(r"# PL gating instead: (tx = .*)", snippet)
    snippet = re.sub(r"(?m)^tx = .*$", lambda _: pl_line, snippet, count=1)
    namespace = _run_snippet(snippet)
    assert namespace["opt_state"].method_state is not None  # the gating network's parameters
    assert float(namespace["loss"]) < 0.5
