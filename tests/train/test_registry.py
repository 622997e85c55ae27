"""The pruner registry: every registered name builds a Pruner on the given schedule, bad names
and options fail clearly, and adding a method is one registration (engine and CLI see it)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.cli import main
from jaxprune.data import load_dataset
from jaxprune.masks import GroupLayout, iterative_magnitude, lth_schedule, one_shot, topk_mask
from jaxprune.methods.pl_gating import PLGatingConfig
from jaxprune.train import (
    CRITERIA,
    PruneContext,
    Pruner,
    TrainConfig,
    build_model,
    make_pruner,
    pruner_entry,
    pruner_names,
    register_pruner,
    train,
)
from jaxprune.train import pruning as pruning_module

ONE_SHOT = one_shot(2, 0.5)
REWINDING = iterative_magnitude(2, 4, 1, final_ratio=0.5)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(pruning_module, "_PRUNERS", dict(pruning_module._PRUNERS))


def test_every_criterion_lth_and_pl_are_registered_in_order():
    assert pruner_names() == (*CRITERIA, "lth", "pl", "greedy")
    for name in pruner_names():
        assert pruner_entry(name).description


@pytest.mark.parametrize("name", pruner_names())
def test_make_pruner_builds_the_named_method_on_the_schedule(name):
    schedule = REWINDING if name == "lth" else ONE_SHOT
    pruner = make_pruner(name, schedule)
    assert isinstance(pruner, Pruner)
    assert pruner.name == name and pruner.schedule is schedule and callable(pruner.select)


def test_options_reach_the_method():
    pruner = make_pruner("pl", ONE_SHOT, gating_steps=3, hidden=5, seed=1)
    assert pruner.initial_state(jax.random.key(0)).w2.shape == (5,)
    config = PLGatingConfig(gating_steps=3)
    assert make_pruner("pl", ONE_SHOT, config=config).name == "pl"
    assert make_pruner("lth", lth_schedule(100, 0.5), per_layer=True).name == "lth"


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: make_pruner("obs", ONE_SHOT), ValueError, "method: expected one of"),
        (lambda: make_pruner("snip", ONE_SHOT, gating_steps=3), ValueError, "unknown \\['gating"),
        (lambda: make_pruner("pl", ONE_SHOT, hiden=3), ValueError, "unknown \\['hiden'\\]"),
        (lambda: make_pruner("lth", ONE_SHOT), ValueError, "expected a rewinding schedule"),
        (lambda: make_pruner("snip", "0:0.5"), TypeError, "schedule: expected a PruningSchedule"),
        (lambda: make_pruner("snip", ONE_SHOT, num_batches=0), ValueError, "num_batches"),
        (
            lambda: make_pruner("pl", ONE_SHOT, config=PLGatingConfig(), alpha=2.0),
            ValueError,
            "either config or PLGatingConfig fields",
        ),
    ],
)
def test_bad_names_and_options_raise(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_a_taken_name_needs_replace(scratch_registry):
    with pytest.raises(ValueError, match="'snip' is already registered"):
        register_pruner("snip", lambda schedule: None)
    register_pruner("snip", lambda schedule: "new", replace=True)
    assert make_pruner("snip", ONE_SHOT) == "new"


def _first_groups(schedule, *, min_per_layer: int = 1) -> Pruner:
    """A custom method: keep the lowest-numbered live groups of every event."""

    def select(context, state):
        scores = np.where(context.gates > 0, -np.arange(len(context.gates), dtype=float), -np.inf)
        mask = topk_mask(
            scores, context.num_keep, layout=context.layout, min_per_layer=min_per_layer
        )
        return mask, state + 1, {"scores": scores}

    return Pruner("first", schedule, select, init_state=0)


def test_one_registration_makes_a_method_trainable_by_the_engine_and_the_cli(
    scratch_registry, tmp_path, capsys
):
    register_pruner("first", _first_groups, description="keep the first groups (test)")
    assert pruner_entry("first").options == ("min_per_layer",)

    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="8")
    config = TrainConfig(num_steps=4, batch_size=16, log_every=2, progress=False)
    pruner = make_pruner("first", one_shot(2, 0.5), min_per_layer=1)
    result = train(model, splits, optax.sgd(0.1), config, pruner=pruner, run_dir=tmp_path / "e")
    assert result.summary["group_sparsity"] == pytest.approx(0.5)
    mask = np.load(tmp_path / "e" / "event_2.npz")["mask"]
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0, 0, 0])

    out = tmp_path / "cli"
    args = ["train", "--model-preset", "8", "--steps", "4", "--batch-size", "16", "--method"]
    args += ["first", "--prune-at", "2", "--log-every", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "groups pruned 50.0%" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["group_sparsity"] == 0.5


def test_natural_criterion_keeps_the_groups_whose_zeroing_raises_the_batch_loss_most():
    """``"natural"``: Li et al. (2020)'s Def. 2.1 NI of each group on the event's batches, by a
    loop zeroing one hidden unit at a time; previously pruned groups stay pruned."""
    rng = np.random.default_rng(0)
    params = {"hidden": rng.normal(size=(3, 6)), "out": rng.normal(size=(6, 2))}
    ids = {"hidden": np.arange(6, dtype=np.int32)[None, :], "out": np.arange(6)[:, None]}
    batches = [{"x": rng.normal(size=(5, 3)), "y": rng.normal(size=(5, 2))} for _ in range(2)]

    def loss_fn(p, batch):
        return jnp.mean((jnp.tanh(batch["x"] @ p["hidden"]) @ p["out"] - batch["y"]) ** 2)

    def mean_loss(p):
        return float(sum(loss_fn(p, b) for b in batches) / 2)

    gates = np.array([1, 1, 1, 1, 1, 0], np.float32)
    params["hidden"][:, 5] = params["out"][5] = 0.0  # group 5 was pruned earlier
    layout = GroupLayout(("hidden",), np.zeros(6, np.int32))
    context = PruneContext(
        step=2, ratio=0.5, num_keep=3, params=params, collections={}, gates=gates,
        group_ids=ids, layout=layout, key=jax.random.key(0), loss_fn=loss_fn,
        apply_fn=None, batches=lambda n: batches[:n],
    )  # fmt: skip
    pruner = make_pruner("natural", ONE_SHOT, num_batches=2)
    mask, state, record = pruner.select(context, None)
    importance = []
    for j in range(6):
        zeroed = {"hidden": params["hidden"].copy(), "out": params["out"].copy()}
        zeroed["hidden"][:, j] = zeroed["out"][j] = 0.0
        importance.append(mean_loss(zeroed) - mean_loss(params))
    np.testing.assert_allclose(record["scores"][:5], importance[:5], rtol=1e-5, atol=1e-6)
    assert record["scores"][5] == -np.inf and state is None
    np.testing.assert_array_equal(mask, np.isin(np.arange(6), np.argsort(importance[:5])[-3:]))


def test_natural_pruning_trains_through_the_cli(tmp_path, capsys):
    out = tmp_path / "natural"
    args = ["train", "--model-preset", "8", "--steps", "4", "--batch-size", "16", "--method"]
    args += ["natural", "--prune-at", "2", "--log-every", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "groups pruned 50.0%" in capsys.readouterr().out


def test_event_split_loss_composes_to_the_event_loss_and_drives_gauss_newton_pl(tmp_path):
    """``PruneContext.split_loss`` is the event's training-mode loss split at the outputs (a
    BatchNorm CNN: batch statistics in both), and PL gating trains on its Gauss-Newton trace."""
    splits = load_dataset("digits_image")
    model = build_model("cnn", num_outputs=10, input_shape=(8, 8, 1), preset="small")
    config = TrainConfig(num_steps=3, batch_size=16, log_every=1, progress=False)
    seen = []

    def select(context, state):
        for batch in context.batches(2):
            outputs = context.split_loss.forward(context.params, batch)
            seen.append(
                (
                    context.split_loss.output_loss(outputs, batch),
                    context.loss_fn(context.params, batch),
                )
            )
        return np.arange(len(context.gates)) < context.num_keep, state, {}

    train(model, splits, optax.sgd(0.1), config, pruner=Pruner("check", ONE_SHOT, select))
    assert len(seen) == 2
    for split, whole in seen:
        np.testing.assert_allclose(split, whole, rtol=1e-6)

    pruner = make_pruner(
        "pl", ONE_SHOT, gating_steps=2, feature_batch_size=8, hessian="gauss_newton", hidden=4
    )
    result = train(model, splits, optax.sgd(0.1), config, pruner=pruner, run_dir=tmp_path)
    event = np.load(tmp_path / "event_2.npz")
    assert str(event["hessian"]) == "gauss_newton"
    assert np.all(np.isfinite(event["history_trace"])) and np.all(event["history_trace"] > 0)
    assert result.summary["group_sparsity"] == pytest.approx(0.5)
