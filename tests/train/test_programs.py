"""Compiled programs shared across runs: one compiled step per (model, task, optimizer, mesh),
results unchanged by the sharing, and criteria that compile once for new data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from jaxprune.criteria import grasp_scores, magnitude_scores, snip_scores
from jaxprune.criteria._reduce import _shared_jit
from jaxprune.criteria.grasp import _grasp_scores
from jaxprune.criteria.magnitude import _magnitude_scores
from jaxprune.criteria.snip import _snip_scores
from jaxprune.data import load_dataset
from jaxprune.masks import one_shot
from jaxprune.train import TrainConfig, build_model, make_pruner, train
from jaxprune.train.parallel import data_mesh
from jaxprune.train.programs import clear_program_cache, model_programs, pruning_optimizer
from jaxprune.train.tasks import make_task, mlm


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model():
    return build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12")


def _run(digits, optimizer, seed, method="snip"):
    pruner = make_pruner(method, one_shot(5, 0.5), per_layer=True)
    config = TrainConfig(
        num_steps=12, batch_size=32, log_every=4, seed=seed, progress=False, compact=True
    )
    return train(_model(), digits, optimizer, config, pruner=pruner)


def _pruned_run_programs(model, task, optimizer):
    """The entry the engine uses for a pruned run of ``model`` with ``optimizer``."""
    return model_programs(
        model, task, pruning_optimizer(optimizer), data_mesh(None), num_probes=8, projections=None
    )


def test_runs_sharing_an_optimizer_share_compiled_steps_and_match_fresh_programs(digits):
    clear_program_cache()
    optimizer = optax.adam(1e-2)
    first = _run(digits, optimizer, seed=0)
    task = make_task(digits.task, num_outputs=digits.num_outputs, info=digits.info)
    programs = _pruned_run_programs(first.model, task, optimizer)
    # Equal models (a second build, the compacted model rebuilt) and the same optimizer object
    # find the same entry; the compacted model's step compiled once for both seeds.
    second = _run(digits, optimizer, seed=1)
    again = _pruned_run_programs(second.model, task, optimizer)
    assert again is programs
    assert programs.train_step._cache_size() == 1
    # A fresh cache builds new programs, and the run is bit-identical to the shared one.
    clear_program_cache()
    fresh = _run(digits, optimizer, seed=1)
    for a, b in zip(
        jax.tree_util.tree_leaves(second.state.params),
        jax.tree_util.tree_leaves(fresh.state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r.get("train_loss") for r in second.rows] == [r.get("train_loss") for r in fresh.rows]


def test_different_optimizer_objects_get_different_programs(digits):
    task = make_task(digits.task, num_outputs=digits.num_outputs, info=digits.info)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    a, b = optax.sgd(0.1), optax.sgd(0.1)
    pa = model_programs(_model(), task, a, mesh, num_probes=8, projections=None)
    pb = model_programs(_model(), task, b, mesh, num_probes=8, projections=None)
    assert pa is not pb
    assert model_programs(_model(), task, a, mesh, num_probes=8, projections=None) is pa
    assert model_programs(_model(), task, a, mesh, num_probes=4, projections=None) is not pa
    assert pruning_optimizer(a) is pruning_optimizer(a)
    assert pruning_optimizer(a) is not pruning_optimizer(b)


def test_mlm_tasks_with_equal_arguments_are_one_object():
    assert mlm(vocab_size=30, mask_id=1, special_ids=[0, 1]) is mlm(
        vocab_size=30, mask_id=1, special_ids=(0, 1)
    )
    assert mlm(vocab_size=30, mask_id=1, special_ids=(0, 1)) is not mlm(
        vocab_size=31, mask_id=1, special_ids=(0, 1)
    )


def _loss(params, x):
    hidden = jnp.tanh(x @ params["w1"])
    return jnp.mean((hidden @ params["w2"]) ** 2)


def _data_first_loss(x, params):
    return _loss(params, x)


def test_criteria_compile_once_for_new_data_and_equal_their_closures():
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(key1, (4, 6)), "w2": jax.random.normal(key2, (6, 2))}
    group_ids = {"w1": np.arange(6)[None, :], "w2": np.arange(6)[:, None]}
    compiled = [
        _shared_jit(_snip_scores, (3,)),
        _shared_jit(_grasp_scores, (3,)),
        _magnitude_scores,
    ]
    before = [f._cache_size() for f in compiled]
    for i in range(3):
        x = jax.random.normal(jax.random.fold_in(key3, i), (5, 4))
        bound = Partial(_data_first_loss, x)

        def closure(p, x=x):  # the reference: a new closure per call, as before
            return _loss(p, x)

        for criterion in (snip_scores, grasp_scores):
            np.testing.assert_allclose(
                criterion(bound, params, group_ids),
                criterion(closure, params, group_ids),
                rtol=1e-6,
            )
        np.testing.assert_allclose(
            magnitude_scores(params, group_ids),
            jnp.sum(jnp.abs(params["w1"]), 0) + jnp.sum(jnp.abs(params["w2"]), 1),
            rtol=1e-6,
        )
    # The Partial calls share one program per criterion (closures compile their own, not kept).
    assert [f._cache_size() - b for f, b in zip(compiled, before, strict=True)] == [1, 1, 1]
