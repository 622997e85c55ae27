"""Greedy forward selection of CNN channels (Wolfe et al. (2023), App. D, Algorithm 2): the
compiled, vmap-ed search equals a plain loop of one forward pass per candidate, the compacted
subnetwork equals the gated model, every option does what it says, and the ``"greedy"`` pruner
keeps exactly the per-layer quotas inside a training run."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.data import load_dataset
from jaxprune.masks import GroupLayout, one_shot, topk_mask
from jaxprune.methods.greedy.channels import (
    CRITERIA,
    ChannelSelection,
    greedy_channel_selection,
    greedy_gate_selection,
)
from jaxprune.train import PruneContext, TrainConfig, build_model, make_pruner, train

NUM_CLASSES = 3
NUM_BATCHES = 40
INNER = (3, 5, 5)  # inner filters of the three ResNet blocks: the layout's layers
EPS = {"relative": 0.02, "absolute": 0.0005, "accuracy": 0.0}


@pytest.fixture(scope="module")
def problem():
    """A tiny float64 ResNet (blocks of 3, 5, 5 prunable filters) on 8×8 images, a sharpened
    classifier, labels drawn from its own predictions, and 40 fixed minibatches of 16."""

    def resnet(dtype):
        return build_model(
            "resnet",
            num_outputs=NUM_CLASSES,
            input_shape=(8, 8, 3),
            preset="resnet-tiny",
            overrides={"inner_channels": INNER, "dtype": dtype},
        )

    model = resnet(jnp.float64)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(resnet(jnp.float32).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: _initial_value(jax.tree_util.keystr(path), s.shape, rng), shapes
    )
    with jax.enable_x64(True):
        forward = jax.jit(lambda v, g, x: model.apply(v, x, train=False, gates=g)[0])
        ones = np.ones(sum(INNER))
        batches = []
        for _ in range(NUM_BATCHES):
            x = rng.normal(size=(16, 8, 8, 3))
            logits = np.asarray(forward(variables, ones, x))
            noisy = logits + 0.0 * rng.gumbel(size=logits.shape)
            batches.append({"x": x, "y": np.argmax(noisy, axis=1)})
    return model, variables, batches, forward


def _initial_value(path: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Float64 variables drawn in NumPy (random initialisation compiles for every shape)."""
    if path.endswith("['var']"):
        return rng.uniform(0.5, 2.0, shape)
    if path.endswith("['kernel']"):
        scale = 100.0 if "classifier" in path else np.sqrt(2.0 / np.prod(shape[:-1]))
        return rng.normal(0.0, scale, shape)
    return rng.normal(0.0, 0.3, shape)  # BatchNorm scale/bias/mean, classifier bias


def _loss_and_accuracy(forward, variables, gates, batch):
    logits = forward(variables, gates, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return float(loss), float(np.mean(np.argmax(logits, axis=1) == batch["y"]))


def brute_force(problem, criterion, eps=None, budgets=None, layers=(0, 1, 2)):
    """Algorithm 2 as a plain loop: one forward pass per candidate, a fresh batch per step."""
    _, variables, batches, forward = problem
    sizes = np.cumsum((0, *INNER))
    mask = np.ones(sizes[-1])
    batch_iter = iter(batches)
    result = []
    with jax.enable_x64(True):
        for position, layer in enumerate(layers):
            groups = list(range(sizes[layer], sizes[layer + 1]))
            full = mask.copy()
            mask[groups] = 0.0
            steps = []
            while groups:
                batch = next(batch_iter)
                best = None
                for j in groups:  # ascending, strict <: ties go to the smallest index
                    gates = mask.copy()
                    gates[j] = 1.0
                    value = _loss_and_accuracy(forward, variables, gates, batch)
                    if best is None or value[0] < best[1][0]:
                        best = (j, value)
                pick, (loss, accuracy) = best
                full_loss, full_accuracy = _loss_and_accuracy(forward, variables, full, batch)
                mask[pick] = 1.0
                groups.remove(pick)
                steps.append((pick, loss, full_loss, accuracy, full_accuracy))
                if budgets is not None:
                    if len(steps) == budgets[position]:
                        break
                elif criterion == "relative" and loss <= (1 + eps) * full_loss:
                    break
                elif criterion == "absolute" and loss <= full_loss + eps:
                    break
                elif criterion == "accuracy" and accuracy >= (1 - eps) * full_accuracy:
                    break
            result.append(steps)
    return mask, result


def _select(problem, **options) -> ChannelSelection:
    model, variables, batches, _ = problem
    with jax.enable_x64(True):
        return greedy_channel_selection(model, variables, iter(batches), **options)


@pytest.fixture(scope="module")
def selections(problem):
    return {c: _select(problem, eps=EPS[c], criterion=c) for c in CRITERIA}


@pytest.mark.parametrize("criterion", CRITERIA)
def test_picks_losses_and_stopping_steps_equal_a_loop_of_one_forward_per_candidate(
    problem, selections, criterion
):
    mask, reference = brute_force(problem, criterion, eps=EPS[criterion])
    result = selections[criterion]
    np.testing.assert_array_equal(result.mask, mask)
    assert [r.layer for r in result.layers] == [0, 1, 2]
    for record, steps in zip(result.layers, reference):
        pick, loss, full_loss, accuracy, full_accuracy = map(np.asarray, zip(*steps))
        np.testing.assert_array_equal(record.order, pick)
        np.testing.assert_allclose(record.losses, loss, rtol=1e-12)
        np.testing.assert_allclose(record.full_losses, full_loss, rtol=1e-12)
        if criterion == "accuracy":
            np.testing.assert_array_equal(record.accuracies, accuracy)
            np.testing.assert_array_equal(record.full_accuracies, full_accuracy)
        else:
            assert record.accuracies is None and record.full_accuracies is None
    if criterion == "relative":  # not trivial: some layer takes several steps, some stop early
        lengths = [len(r.order) for r in result.layers]
        assert max(lengths) > 1 and any(n < size for n, size in zip(lengths, INNER))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_layer_stops_at_the_first_step_meeting_its_criterion(selections, criterion):
    eps = EPS[criterion]
    for record, size in zip(selections[criterion].layers, INNER):
        if criterion == "relative":
            met = record.losses <= (1 + eps) * record.full_losses
        elif criterion == "absolute":
            met = record.losses <= record.full_losses + eps
        else:
            met = record.accuracies >= (1 - eps) * record.full_accuracies
        assert not met[:-1].any()
        assert met[-1] or len(record.order) == size


def test_the_compacted_subnetwork_computes_the_gated_model(problem, selections):
    _, variables, batches, forward = problem
    result = selections["relative"]
    assert result.model.config.inner == tuple(len(r.order) for r in result.layers)
    with jax.enable_x64(True):
        x = batches[0]["x"]
        compacted = result.model.apply(result.variables, x, train=False)[0]
        np.testing.assert_allclose(compacted, forward(variables, result.mask, x), rtol=1e-10)


def test_budgets_select_exactly_that_many_in_the_exact_search_order(problem):
    budgets = (1, 3, 5)
    result = _select(problem, keep_per_layer=budgets)
    mask, reference = brute_force(problem, None, budgets=budgets)
    np.testing.assert_array_equal(result.mask, mask)
    for record, steps, budget in zip(result.layers, reference, budgets):
        assert len(record.order) == budget
        np.testing.assert_array_equal(record.order, [s[0] for s in steps])


def test_layers_searches_only_the_named_layers_and_leaves_the_others_full(problem):
    by_name = _select(problem, eps=0.02, layers=["block_1_conv1"])
    by_index = _select(problem, eps=0.02, layers=[1])
    np.testing.assert_array_equal(by_name.mask, by_index.mask)
    assert [r.layer for r in by_name.layers] == [1]
    np.testing.assert_array_equal(by_name.mask[:3], 1.0)
    np.testing.assert_array_equal(by_name.mask[8:], 1.0)
    mask, _ = brute_force(problem, "relative", eps=0.02, layers=(1,))
    np.testing.assert_array_equal(by_name.mask, mask)


def test_max_candidates_picks_the_best_of_a_random_subset_of_unselected_channels(problem):
    _, variables, batches, forward = problem
    result = _select(problem, eps=0.0, max_candidates=3, key=jax.random.key(3))
    sizes = np.cumsum((0, *INNER))
    mask, step = np.ones(sizes[-1]), 0
    subsets = set()
    with jax.enable_x64(True):
        for record in result.layers:
            mask[record.candidates] = 0.0
            for pick, scored in zip(record.order, record.scored):
                scored = scored[scored >= 0]
                remaining = [g for g in record.candidates if mask[g] == 0]
                assert len(scored) == min(3, len(remaining)) and set(scored) <= set(remaining)
                losses = []
                for j in scored:
                    gates = mask.copy()
                    gates[j] = 1.0
                    losses.append(_loss_and_accuracy(forward, variables, gates, batches[step])[0])
                assert pick == scored[int(np.argmin(losses))]
                mask[pick] = 1.0
                subsets.add(tuple(scored))
                step += 1
    assert len(subsets) > len(INNER)  # not always the same subset


def test_ties_go_to_the_smallest_index_and_each_layer_compiles_once(problem):
    traces = []

    def constant_loss(outputs, batch):
        traces.append(outputs.shape)  # runs when a program is traced, not when it runs
        return 0.0 * outputs.sum() + 1.0

    layers = ["block_1_conv1", "block_2_conv1"]  # five filters each, one program per layer
    result = _select(problem, eps=0.0, criterion="absolute", loss=constant_loss, layers=layers)
    assert [list(r.order) for r in result.layers] == [[3], [8]]  # 1 <= 1 + 0 at once
    assert len(traces) == 4  # per layer: the candidates' lanes and the whole-layer reference
    result = _select(problem, keep_per_layer=(4, 5), loss=constant_loss, layers=layers)
    assert [list(r.order) for r in result.layers] == [[3, 4, 5, 6], [8, 9, 10, 11, 12]]
    assert len(traces) == 4  # nine more steps, no new compilation


def test_finetune_runs_between_layers_and_its_variables_are_used(problem):
    model, variables, batches, _ = problem
    calls = []

    def finetune(bound, current, mask, layer):
        calls.append((layer, mask.copy()))
        params = dict(current["params"])
        params["classifier"] = {**params["classifier"], "bias": params["classifier"]["bias"] + 1}
        return {**current, "params": params}

    with jax.enable_x64(True):
        result = greedy_channel_selection(
            model, variables, iter(batches), keep_per_layer=(1, 2, 2), finetune=finetune
        )
    assert [layer for layer, _ in calls] == [0, 1]
    np.testing.assert_array_equal(calls[0][1][:3], result.mask[:3])
    np.testing.assert_array_equal(calls[0][1][3:], 1.0)
    bias = variables["params"]["classifier"]["bias"]
    np.testing.assert_allclose(result.variables["params"]["classifier"]["bias"], bias + 2)


def test_bad_input_raises_naming_the_argument(problem):
    model, variables, batches, _ = problem

    def run(**options):
        options.setdefault("eps", 0.1)
        options.setdefault("batches", iter(batches))
        options.setdefault("model", model)
        with jax.enable_x64(True):
            greedy_channel_selection(
                options.pop("model"), variables, options.pop("batches"), **options
            )

    for eps, message in (
        (-0.1, "eps: expected a number in"),
        (float("nan"), "eps: expected a finite"),
    ):
        with pytest.raises(ValueError, match=message):
            run(eps=eps)
    with pytest.raises(ValueError, match="exactly one of eps"):
        run(keep_per_layer=(1, 1, 1))
    with pytest.raises(ValueError, match="batches: expected prepared minibatches, got none"):
        run(batches=iter([]))
    with pytest.raises(ValueError, match="batches: exhausted after 2"):
        run(batches=iter(batches[:2]), eps=None, keep_per_layer=(5,), layers=[2])
    with pytest.raises(ValueError, match="keep_per_layer\\[2\\]: 6 exceeds"):
        run(eps=None, keep_per_layer=(1, 1, 6))
    with pytest.raises(ValueError, match="layers: unknown layer name"):
        run(layers=["conv_9"])
    with pytest.raises(ValueError, match="layers: expected distinct"):
        run(layers=[1, 1])
    with pytest.raises(ValueError, match="key: a PRNG key is required"):
        run(max_candidates=2)
    with pytest.raises(ValueError, match="criterion"):
        run(criterion="loss")
    # NaN logits through the classifier's bias.  A NaN input image is not a reliable way to get
    # them: XLA:CPU's ReLU fused into the global average pool gave 0, not NaN, for NaN inputs
    # from 64 rows on (float32 and float64), and a block of 4 lanes of this batch has 64 rows
    params = dict(variables["params"])
    params["classifier"] = {**params["classifier"], "bias": np.full(NUM_CLASSES, np.nan)}
    with pytest.raises(ValueError, match="loss: NaN at layer 'block_0_conv1', step 0"):
        with jax.enable_x64(True):
            greedy_channel_selection(model, {**variables, "params": params}, iter(batches), eps=0.1)
    layout = GroupLayout(("dense",), np.zeros(4, np.int32))

    def without_accuracy(weights, pieces, batch):
        (gates,) = pieces  # one layer: its piece is the whole gate vector
        return jnp.sum((gates * weights - batch["y"]) ** 2), jnp.full((), jnp.nan)

    regression = {"y": np.ones(4)}
    with pytest.raises(ValueError, match="criterion: 'accuracy' needs an accuracy"):
        greedy_gate_selection(
            without_accuracy, np.ones(4), layout, [regression], eps=0.1, criterion="accuracy"
        )
    cnn = build_model("cnn", num_outputs=3, input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="model: 'cnn' takes no per-group gates"):
        run(model=cnn)
    bert = build_model("bert", num_outputs=32, input_shape=(8,))
    with pytest.raises(ValueError, match="model: its group kind 'heads'"):
        run(model=bert)
    with pytest.raises(TypeError, match=r"model: expected a jaxprune\.train\.Bound"):
        run(model=model.module)


# The "greedy" pruner of the registry -------------------------------------------------------


def _mlp_context(gates, num_keep):
    """A PruneContext of a 3-6-6-2 tanh MLP whose two hidden layers are the groups."""
    rng = np.random.default_rng(1)
    params = {
        "h1": rng.normal(size=(3, 6)),
        "h2": rng.normal(size=(6, 6)),
        "out": rng.normal(size=(6, 2)),
    }
    ids = {
        "h1": np.arange(6, dtype=np.int32)[None, :],
        "h2": np.arange(6, 12, dtype=np.int32)[None, :],
        "out": np.full((1, 1), -1, np.int32),
    }
    batches = [{"x": rng.normal(size=(5, 3)), "y": rng.normal(size=(5, 2))} for _ in range(12)]

    def loss_fn(p, batch):
        hidden = jnp.tanh(jnp.tanh(batch["x"] @ p["h1"]) @ p["h2"])
        return jnp.mean((hidden @ p["out"] - batch["y"]) ** 2)

    layout = GroupLayout(("h1", "h2"), np.repeat([0, 1], 6).astype(np.int32))
    context = PruneContext(
        step=2, ratio=1 - num_keep / 12, num_keep=num_keep, params=params, collections={},
        gates=gates, group_ids=ids, layout=layout, key=jax.random.key(0), loss_fn=loss_fn,
        apply_fn=None, batches=lambda n: batches[:n],
    )  # fmt: skip
    return context, batches


def test_greedy_pruner_keeps_the_per_layer_quotas_chosen_by_a_brute_force_loop():
    gates = np.ones(12, np.float32)
    gates[[2, 7]] = 0.0  # pruned at an earlier event: they stay pruned
    with jax.enable_x64(True):
        context, batches = _mlp_context(gates, num_keep=5)
        mask, state, record = make_pruner("greedy", one_shot(2, 0.5)).select(context, None)
        quotas = np.bincount(
            np.repeat([0, 1], 6)[topk_mask(np.zeros(12), 5, layout=context.layout, per_layer=True,
                                           min_per_layer=1) > 0], minlength=2
        )  # fmt: skip
        current = gates.copy()
        order, batch_iter = [], itertools.cycle(batches[: int(quotas.sum())])
        for layer, quota in enumerate(quotas):
            groups = [g for g in range(6 * layer, 6 * layer + 6) if gates[g] > 0]
            current[groups] = 0.0
            for _ in range(quota):
                batch = next(batch_iter)
                losses = []
                for j in groups:
                    trial = current.copy()
                    trial[j] = 1.0
                    masked = {
                        "h1": context.params["h1"] * trial[:6],
                        "h2": context.params["h2"] * trial[6:],
                        "out": context.params["out"],
                    }
                    losses.append(float(context.loss_fn(masked, batch)))
                pick = groups.pop(int(np.argmin(losses)))
                current[pick] = 1.0
                order.append(pick)
    assert state is None and mask.sum() == 5
    np.testing.assert_array_equal(mask, current)
    np.testing.assert_array_equal(record["order"], order)
    assert mask[2] == 0 and mask[7] == 0
    np.testing.assert_array_equal(np.bincount(np.repeat([0, 1], 6)[mask > 0]), quotas)


def test_greedy_pruner_refuses_a_quota_above_the_alive_groups():
    gates = np.zeros(12, np.float32)
    gates[[0, 6, 7, 8, 9, 10]] = 1.0  # layer h1 has one alive group, its quota is 2
    context, _ = _mlp_context(gates, num_keep=4)
    with pytest.raises(ValueError, match="layer 'h1' must keep 2 groups but only 1 are alive"):
        make_pruner("greedy", one_shot(2, 0.5)).select(context, None)


def test_greedy_pruner_in_a_training_run_keeps_num_keep_groups(tmp_path):
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="8,8")
    config = TrainConfig(num_steps=4, batch_size=16, log_every=2, progress=False)
    pruner = make_pruner("greedy", one_shot(2, 0.5), num_batches=3)
    result = train(model, splits, optax.sgd(0.1), config, pruner=pruner, run_dir=tmp_path)
    assert result.summary["group_sparsity"] == pytest.approx(0.5)
    event = np.load(tmp_path / "event_2.npz")
    assert event["mask"].sum() == 8
    np.testing.assert_array_equal(np.bincount(np.repeat([0, 1], 8)[event["mask"] > 0]), [4, 4])
    assert sorted(event["order"]) == sorted(np.flatnonzero(event["mask"]))
    assert np.all(np.isfinite(event["losses"]))
