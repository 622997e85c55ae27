"""Bad-input tables of the group, schedule and compaction modules, the group-id pytree, the
variance-reduced and Gauss-Newton trace estimators, the structured NTK path and ``analyze``:
one parametrized test per public module.

Each case is ``(id, call, error, match)``: ``call()`` must raise ``error`` with a message matching
``match``, which names the offending argument (and the value, and what was expected).  The
tables collect the checks the modules already had (from their own tests, which keep them too)
and the ones added where an obvious mistake used to end in a JAX- or NumPy-internal error or a
silent wrong number: an int seed for a PRNG key, a float mask passed as group ids, group ids of
another structure, a soft 0.5 keep mask (kept as True), a vector-valued or NaN Gauss-Newton
loss, an example without a batch axis.  Every case uses tiny shapes and fails before any
expensive work.
"""

from __future__ import annotations

import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_raises, make_mlp, table

from jaxprune.analyze import AnalyzeConfig, run_analyze
from jaxprune.group_ids import group_sizes, leaf_group_ids, num_groups, validate_group_ids
from jaxprune.masks.groups import build_group_ids, experts, filters, heads, neurons, unstructured
from jaxprune.masks.schedules import (
    PruningSchedule,
    iterative_magnitude,
    linear,
    lth_schedule,
    num_pruned,
    one_shot,
    per_epoch_from,
    polynomial,
)
from jaxprune.spectra.gauss_newton import (
    SplitLoss,
    gauss_newton_quadratic_form,
    gauss_newton_trace,
)
from jaxprune.spectra.structured import (
    LinearCall,
    find_linear_calls,
    plan_structured,
    structured_group_kernels,
)
from jaxprune.spectra.trace_estimators import deflated_trace, hutchpp_trace, xtrace

# ``jaxprune.masks.compact`` the module (the package exports the function of the same name).
compact_module = importlib.import_module("jaxprune.masks.compact")
Link, compact, keep_along, take = (
    compact_module.Link,
    compact_module.compact,
    compact_module.keep_along,
    compact_module.take,
)

KEY = jax.random.key(0)
PARAMS = {"w": np.array([1.0, -2.0, 0.5], np.float32), "b": np.float32(0.3)}
NONFINITE = r"non-finite value\(s\) \(NaN or inf\); expected finite values"


@functools.cache
def _mlp():
    """A 4-7-5-3 tanh MLP (Dense_0, Dense_1, Dense_2), its variables and a batch of 6."""
    return make_mlp(jnp.float32)


def _params():
    return _mlp()[1]


def _quartic(params):
    return jnp.sum(params["w"] ** 4) + params["b"] ** 2


def _vector_loss(params):
    return params["w"] ** 2


def _inf_loss(params):
    return _quartic(params) / 0.0


def _nan_params():
    return dict(PARAMS, b=np.float32(np.nan))


# ---------------------------------------------------------------------------------------------
# jaxprune.masks.groups

GROUPS_CASES = [
    (
        "pattern-not-a-string",
        lambda: neurons(3),
        TypeError,
        "pattern: expected a regular expression string, got 3",
    ),
    (
        "pattern-invalid-regex",
        lambda: neurons("Dense", next_layer="("),
        ValueError,
        re.escape("next_layer: '(' is not a valid regular expression"),
    ),
    (
        "filters-batchnorm-regex",
        lambda: filters("Conv", batchnorm="["),
        ValueError,
        re.escape("batchnorm: '[' is not a valid regular expression"),
    ),
    ("heads-zero", lambda: heads("attn", 0), ValueError, "num_heads: expected a positive int"),
    (
        "heads-layout",
        lambda: heads("attn", 2, layout="bert"),
        ValueError,
        re.escape("layout: expected one of ('flax', 'dense'), got 'bert'"),
    ),
    (
        "heads-out-empty",
        lambda: heads("attn", 2, out=""),
        TypeError,
        "out: expected a non-empty layer name, got ''",
    ),
    (
        "heads-qkv-empty",
        lambda: heads("attn", 2, qkv=()),
        ValueError,
        "qkv: expected a non-empty sequence",
    ),
    (
        "experts-bool",
        lambda: experts("moe", True),
        TypeError,
        "num_experts: expected a positive int, got True",
    ),
    (
        "experts-axis-float",
        lambda: experts("moe", 2, axis=1.0),
        TypeError,
        re.escape("axis: expected an int, got 1.0"),
    ),
    (
        "unstructured-leaves-string",
        lambda: unstructured("Dense", leaves="kernel"),
        TypeError,
        "leaves: expected a non-empty sequence of strings, got 'kernel'",
    ),
    (
        "unstructured-leaves-empty",
        lambda: unstructured("Dense", leaves=()),
        ValueError,
        re.escape("leaves: expected a non-empty sequence of non-empty strings, got ()"),
    ),
    (
        "specs-empty",
        lambda: build_group_ids(_params(), []),
        ValueError,
        re.escape("specs: expected a non-empty sequence of group specs, got []"),
    ),
    (
        "specs-string",
        lambda: build_group_ids(_params(), "Dense_0"),
        ValueError,
        "specs: expected a non-empty sequence of group specs, got 'Dense_0'",
    ),
    (
        "specs-not-specs",
        lambda: build_group_ids(_params(), ["Dense_0"]),
        TypeError,
        "specs: expected specs made by neurons/filters/heads/experts/unstructured",
    ),
    (
        "params-without-leaves",
        lambda: build_group_ids(None, neurons("Dense")),
        ValueError,
        "params: expected a parameter pytree with at least one array leaf, got None",
    ),
    (
        "pattern-matches-nothing",
        lambda: build_group_ids(_params(), neurons("Conv")),
        ValueError,
        re.escape("pattern 'Conv' matches no layer path; layer paths are ['params/Dense_0'"),
    ),
    (
        "heads-match-no-module",
        lambda: build_group_ids(_params(), heads("attn", 2)),
        ValueError,
        "pattern 'attn' matches no module path",
    ),
    (
        "filters-on-dense-kernels",
        lambda: build_group_ids(_params(), filters("Dense_0$")),
        ValueError,
        re.escape("params/Dense_0/kernel has shape (4, 7); expected at least 3 dimensions"),
    ),
    (
        "next-layer-several",
        lambda: build_group_ids(_params(), neurons("Dense_0$", next_layer="Dense")),
        ValueError,
        "next_layer 'Dense' must match exactly one layer",
    ),
    (
        "next-layer-wrong-width",
        lambda: build_group_ids(_params(), neurons("Dense_0$", next_layer="Dense_2$")),
        ValueError,
        re.escape("next_layer params/Dense_2/kernel has 5 inputs"),
    ),
    (
        "next-layer-with-several-layers",
        lambda: build_group_ids(_params(), neurons("Dense_[01]$", next_layer="Dense_2$")),
        ValueError,
        "with next_layer the pattern must match exactly one layer",
    ),
    (
        "experts-count",
        lambda: build_group_ids(_params(), experts("Dense_0$", 3)),
        ValueError,
        re.escape("num_experts=3 does not match params/Dense_0/bias of shape (7,)"),
    ),
    (
        "experts-axis-out-of-range",
        lambda: build_group_ids(_params(), experts("Dense_0$", 7, axis=2)),
        ValueError,
        re.escape("axis 2 is out of range for params/Dense_0/bias of shape (7,)"),
    ),
    (
        "unstructured-no-such-leaf",
        lambda: build_group_ids(_params(), unstructured("Dense", leaves=("scale",))),
        ValueError,
        re.escape("no layer matched by 'Dense' has a leaf named in ('scale',)"),
    ),
    (
        "overlapping-specs",
        lambda: build_group_ids(_params(), [neurons("Dense_0$"), unstructured("Dense_0$")]),
        ValueError,
        re.escape("overlapping specs: params/Dense_0/bias is claimed by"),
    ),
]


@table(GROUPS_CASES)
def test_masks_groups_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.masks.schedules

SCHEDULES_CASES = [
    (
        "ratios-per-step",
        lambda: PruningSchedule((1, 2), (0.5,)),
        ValueError,
        "one ratio per event step",
    ),
    (
        "ratios-decreasing",
        lambda: PruningSchedule((1, 2), (0.5, 0.4)),
        ValueError,
        "event_ratios must be non-decreasing, got 0.5 then 0.4",
    ),
    (
        "ratio-one",
        lambda: PruningSchedule((1,), (1.0,)),
        ValueError,
        re.escape("event_ratios[0]: expected a fraction in [0, 1)"),
    ),
    (
        "rewind-after-event",
        lambda: PruningSchedule((3, 5), (0.1, 0.2), rewind_step=3),
        ValueError,
        "rewind_step must precede the first event step 3, got 3",
    ),
    (
        "steps-string",
        lambda: linear("123", 0.5),
        TypeError,
        re.escape("times must be a sequence, got '123' (str)"),
    ),
    (
        "steps-unsorted",
        lambda: linear([5, 3], 0.5),
        ValueError,
        "times must be strictly increasing, got 5 then 3",
    ),
    ("steps-empty", lambda: linear([], 0.5), ValueError, "times must hold at least one step"),
    (
        "one-shot-negative-step",
        lambda: one_shot(-1, 0.5),
        ValueError,
        "step: expected an int >= 0, got -1",
    ),
    (
        "one-shot-float-step",
        lambda: one_shot(2.0, 0.5),
        TypeError,
        re.escape("step: expected an int >= 0, got 2.0"),
    ),
    (
        "one-shot-ratio",
        lambda: one_shot(1, 1.5),
        ValueError,
        re.escape("ratio: expected a fraction in (0, 1), got 1.5"),
    ),
    (
        "one-shot-ratio-nan",
        lambda: one_shot(1, float("nan")),
        ValueError,
        "ratio: expected a finite number, got nan",
    ),
    (
        "per-epoch-end-before-start",
        lambda: per_epoch_from(5, 3, 0.5, 10),
        ValueError,
        "end: expected an int >= 5, got 3",
    ),
    (
        "per-epoch-steps-per-epoch",
        lambda: per_epoch_from(0, 3, 0.5, 0),
        ValueError,
        "steps_per_epoch: expected a positive int, got 0",
    ),
    (
        "polynomial-initial-above-final",
        lambda: polynomial(0.6, 0.5, 0, 10, 1),
        ValueError,
        "initial_ratio must be below final_ratio=0.5, got 0.6",
    ),
    (
        "polynomial-end-before-begin",
        lambda: polynomial(0.0, 0.5, 10, 5, 1),
        ValueError,
        "end_step must exceed begin_step=10, got 5",
    ),
    (
        "polynomial-power",
        lambda: polynomial(0.0, 0.5, 0, 10, 2, power=0.0),
        ValueError,
        re.escape("power: expected a number in (0, inf), got 0"),
    ),
    (
        "polynomial-frequency-multiple",
        lambda: polynomial(0.0, 0.5, 0, 10, 3),
        ValueError,
        "end_step - begin_step = 10 must be a multiple of frequency=3",
    ),
    (
        "iterative-rewind",
        lambda: iterative_magnitude(3, 10, 10, final_ratio=0.5),
        ValueError,
        "rewind_step must be below round_length=10, got 10",
    ),
    (
        "iterative-both-ratios",
        lambda: iterative_magnitude(3, 10, 1, final_ratio=0.5, ratio_per_round=0.2),
        ValueError,
        "give exactly one of ratio_per_round and final_ratio",
    ),
    (
        "lth-too-few-steps",
        lambda: lth_schedule(4, 0.5),
        ValueError,
        "num_steps: 4 steps are too few for 3 LTH rounds",
    ),
    (
        "lth-rewind-fraction",
        lambda: lth_schedule(300, 0.5, rewind_fraction=0.0),
        ValueError,
        re.escape("rewind_fraction: expected a fraction in (0, 1)"),
    ),
    (
        "num-pruned-groups",
        lambda: num_pruned(0.5, 0),
        ValueError,
        "num_groups: expected a positive int, got 0",
    ),
    (
        "is-event-float-step",
        lambda: one_shot(1, 0.5).is_event(1.0),
        TypeError,
        "step must be an integer or an integer array, got dtype float32",
    ),
    (
        "ratio-float-step",
        lambda: one_shot(1, 0.5).ratio(jnp.float32(1.0)),
        TypeError,
        "step must be an integer or an integer array, got dtype float32",
    ),
]


@table(SCHEDULES_CASES)
def test_masks_schedules_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.masks.compact

KEEP7 = np.ones(7, bool)
CHAIN = [Link("params/Dense_0", "params/Dense_1")]

COMPACT_CASES = [
    (
        "links-string",
        lambda: compact(_params(), "params/Dense_0", {"params/Dense_0": KEEP7}),
        TypeError,
        "links: expected a list of Link, got str",
    ),
    (
        "links-entry",
        lambda: compact(_params(), [("params/Dense_0", None)], {}),
        TypeError,
        re.escape("links[0]: expected a Link, got ('params/Dense_0', None)"),
    ),
    (
        "positions-zero",
        lambda: compact(_params(), [Link("params/Dense_0", "params/Dense_1", positions=0)], {}),
        ValueError,
        re.escape("links[0].positions: expected a positive int, got 0"),
    ),
    (
        "keep-not-a-mapping",
        lambda: compact(_params(), CHAIN, KEEP7),
        TypeError,
        "keep: expected a mapping of layer path to boolean mask, got ndarray",
    ),
    (
        "keep-unknown-layer",
        lambda: compact(_params(), CHAIN, {"params/Dense_9": KEEP7}),
        ValueError,
        re.escape("keep names layers that are not in links: ['params/Dense_9']"),
    ),
    (
        "keep-shape",
        lambda: compact(_params(), CHAIN, {"params/Dense_0": np.ones(6, bool)}),
        ValueError,
        re.escape("keep['params/Dense_0'] must be a boolean array of shape (7,), got (6,)"),
    ),
    (
        "keep-nothing",
        lambda: compact(_params(), CHAIN, {"params/Dense_0": np.zeros(7, bool)}),
        ValueError,
        re.escape("keep['params/Dense_0'] keeps no unit; at least one must remain"),
    ),
    (
        "keep-soft-gates",
        lambda: compact(_params(), CHAIN, {"params/Dense_0": np.full(7, 0.5)}),
        ValueError,
        re.escape("keep['params/Dense_0']: expected a boolean (or 0/1) mask, got values [0.5]"),
    ),
    (
        "keep-strings",
        lambda: compact(_params(), CHAIN, {"params/Dense_0": np.array(["yes"] * 7)}),
        ValueError,
        re.escape("keep['params/Dense_0']: expected a boolean (or 0/1) mask"),
    ),
    (
        "layer-missing",
        lambda: compact(_params(), [Link("params/Dense_7")], {"params/Dense_7": KEEP7}),
        ValueError,
        re.escape("path 'params/Dense_7/kernel' not found in the variables"),
    ),
    (
        "next-layer-positions",
        lambda: compact(
            _params(),
            [Link("params/Dense_0", "params/Dense_1", positions=2)],
            {"params/Dense_0": KEEP7},
        ),
        ValueError,
        re.escape("params/Dense_1/kernel: axis -2 has length 7, expected 7 units x 2 positions"),
    ),
    (
        "batchnorm-missing",
        lambda: compact(
            _params(), [Link("params/Dense_0", batchnorm="bn")], {"params/Dense_0": KEEP7}
        ),
        ValueError,
        re.escape("path 'params/bn' not found in the variables"),
    ),
    (
        "keep-along-2d",
        lambda: keep_along(_params(), [("params/Dense_0/kernel", 1)], KEEP7[:, None]),
        ValueError,
        "keep must be a non-empty 1-D boolean mask keeping >= 1 unit",
    ),
    (
        "keep-along-length",
        lambda: keep_along(_params(), [("params/Dense_0/kernel", 1)], np.ones(6, bool)),
        ValueError,
        "params/Dense_0/kernel: axis 1 has length 7, expected 6 units",
    ),
    (
        "keep-along-axis-out-of-range",
        lambda: keep_along(_params(), [("params/Dense_0/kernel", 5)], KEEP7),
        ValueError,
        re.escape("params/Dense_0/kernel: axis 5 is out of range for a leaf of shape (4, 7)"),
    ),
    (
        "keep-along-repeats",
        lambda: keep_along(_params(), [("params/Dense_0/kernel", 1)], KEEP7, repeats=0),
        ValueError,
        "repeats: expected a positive int, got 0",
    ),
    (
        "keep-along-path",
        lambda: keep_along(_params(), [("params/Dense_9/kernel", 1)], KEEP7),
        ValueError,
        re.escape("path 'params/Dense_9/kernel' not found in the variables"),
    ),
    (
        "take-path",
        lambda: take(_params(), "params/nope/kernel", np.arange(2), 0),
        ValueError,
        re.escape("path 'params/nope/kernel': no entry 'nope'"),
    ),
]


@table(COMPACT_CASES)
def test_masks_compact_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_compact_accepts_zero_one_float_keep_masks():
    keep = np.array([1.0, 0, 1, 1, 0, 1, 1])
    small = compact(_params(), CHAIN, {"params/Dense_0": keep})
    assert small["params"]["Dense_0"]["kernel"].shape == (4, 5)
    assert small["params"]["Dense_1"]["kernel"].shape == (5, 5)


# ---------------------------------------------------------------------------------------------
# jaxprune.group_ids

IDS = {"w": np.arange(3, dtype=np.int32), "b": np.int32(0)}

GROUP_IDS_CASES = [
    (
        "structure",
        lambda: validate_group_ids(PARAMS, {"w": IDS["w"]}),
        ValueError,
        re.escape("group_ids must have the same pytree structure as params: missing for params"),
    ),
    (
        "float-ids",
        lambda: validate_group_ids(PARAMS, dict(IDS, w=np.zeros(3))),
        TypeError,
        re.escape("group_ids['w']: expected an integer array, got dtype float64"),
    ),
    (
        "shape",
        lambda: validate_group_ids(PARAMS, dict(IDS, w=np.zeros(2, np.int32))),
        ValueError,
        re.escape("group_ids['w']: shape (2,) does not broadcast to the parameter's shape (3,)"),
    ),
    (
        "below-minus-one",
        lambda: validate_group_ids(PARAMS, dict(IDS, w=np.full(3, -2, np.int32))),
        ValueError,
        re.escape("group_ids['w']: ids must be -1 (ungrouped) or >= 0, got -2"),
    ),
    (
        "all-ungrouped",
        lambda: validate_group_ids(PARAMS, {"w": np.full(3, -1, np.int32), "b": np.int32(-1)}),
        ValueError,
        re.escape("group_ids: every weight is ungrouped (-1); expected at least one group"),
    ),
    (
        "empty-group",
        lambda: validate_group_ids(PARAMS, {"w": np.full(3, 2, np.int32), "b": np.int32(0)}),
        ValueError,
        re.escape("group_ids: groups [1] of [0, 3) contain no weight"),
    ),
    (
        "traced-ids",
        lambda: jax.jit(lambda ids: validate_group_ids(PARAMS, ids))(IDS),
        TypeError,
        re.escape("group_ids['b']: group ids must be concrete arrays, got a tracer"),
    ),
    (
        "num-groups-float-mask",
        lambda: num_groups({"w": np.ones(3)}),
        TypeError,
        re.escape("group_ids['w']: expected an integer array, got dtype float64"),
    ),
    (
        "leaf-ids-structure",
        lambda: leaf_group_ids(PARAMS, {"w": IDS["w"]}),
        ValueError,
        re.escape("group_ids: expected the pytree structure of params (2 leaves), got 1 leaves"),
    ),
    (
        "leaf-ids-shape",
        lambda: leaf_group_ids(PARAMS, dict(IDS, w=np.zeros(2, np.int32))),
        ValueError,
        re.escape("group_ids['w']: shape (2,) does not broadcast to the parameter's shape (3,)"),
    ),
    (
        "group-sizes-structure",
        lambda: group_sizes(PARAMS, {"w": IDS["w"]}),
        ValueError,
        re.escape("group_ids: expected the pytree structure of params (2 leaves), got 1 leaves"),
    ),
]


@table(GROUP_IDS_CASES)
def test_group_ids_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.trace_estimators (hutchpp_trace, xtrace, deflated_trace)

TRACE_ESTIMATORS = {
    "hutchpp": (hutchpp_trace, 3),
    "xtrace": (xtrace, 4),
    "deflated": (deflated_trace, 4),
}
SHARED_TRACE_CASES = [
    (
        "loss-not-callable",
        {"loss_fn": 3},
        TypeError,
        re.escape("loss_fn: expected a callable, got 3 (int)"),
    ),
    (
        "int-seed-key",
        {"key": 0},
        TypeError,
        re.escape("key: expected a PRNG key (jax.random.key(seed)), got 0 (int)"),
    ),
    (
        "num-probes-float",
        {"num_probes": 4.0},
        TypeError,
        re.escape("num_probes: expected"),
    ),
    (
        "distribution",
        {"distribution": "uniform"},
        ValueError,
        re.escape("distribution: expected one of ('rademacher', 'gaussian'), got 'uniform'"),
    ),
    ("batch-size", {"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
    ("params-nan", {"params": "nan"}, ValueError, r"params\['b'\]: 1 " + NONFINITE),
    (
        "vector-loss",
        {"loss_fn": _vector_loss},
        ValueError,
        re.escape("loss_fn: expected a scalar loss (shape ()), got an output of shape (3,)"),
    ),
    (
        "inf-loss",
        {"loss_fn": _inf_loss},
        ValueError,
        r"loss_fn: expected (a finite loss at params, got inf|finite Hessian products at params)",
    ),
]


def _trace(name, **overrides):
    estimator, num_probes = TRACE_ESTIMATORS[name]
    arguments = {"loss_fn": _quartic, "params": PARAMS, "key": KEY, "num_probes": num_probes}
    arguments.update(overrides)
    if arguments["params"] == "nan":
        arguments["params"] = _nan_params()
    loss_fn, params, key = arguments.pop("loss_fn"), arguments.pop("params"), arguments.pop("key")
    return estimator(loss_fn, params, key, **arguments)


TRACE_ESTIMATOR_CASES = [
    (f"{name}-{case}", functools.partial(_trace, name, **overrides), error, match)
    for name in TRACE_ESTIMATORS
    for case, overrides, error, match in SHARED_TRACE_CASES
] + [
    (
        "hutchpp-too-few-probes",
        lambda: _trace("hutchpp", num_probes=2),
        ValueError,
        "num_probes: expected an int >= 3, got 2",
    ),
    (
        "xtrace-odd-probes",
        lambda: _trace("xtrace", num_probes=5),
        ValueError,
        re.escape("num_probes: expected an even int in [4, 2P] = [4, 8]"),
    ),
    (
        "xtrace-too-many-probes",
        lambda: _trace("xtrace", num_probes=10),
        ValueError,
        re.escape("num_probes: expected an even int in [4, 2P] = [4, 8]"),
    ),
    (
        "deflated-too-few-probes",
        lambda: _trace("deflated", num_probes=1),
        ValueError,
        "num_probes: expected an int >= 2, got 1",
    ),
    (
        "deflated-lanczos-steps",
        lambda: _trace("deflated", num_lanczos_steps=4),
        ValueError,
        re.escape("num_lanczos_steps: expected an int in [1, min(num_probes - 1, P)] = [1, 3]"),
    ),
    (
        "deflated-lanczos-steps-zero",
        lambda: _trace("deflated", num_lanczos_steps=0),
        ValueError,
        "num_lanczos_steps: expected a positive int, got 0",
    ),
]


@table(TRACE_ESTIMATOR_CASES)
def test_spectra_trace_estimators_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.gauss_newton

BATCH = (np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32))


def _forward(params, batch):
    return (batch[0] @ params["w"] + params["b"])[:, None]


def _squared_error(outputs, batch):
    return jnp.mean((outputs - batch[1]) ** 2)


SPLIT = SplitLoss(_forward, _squared_error)
VECTOR_SPLIT = SplitLoss(_forward, lambda y, b: (y - b[1]) ** 2)
NAN_SPLIT = SplitLoss(_forward, lambda y, b: jnp.mean(jnp.log(y - 100.0)))


def _gn_trace(split_loss=SPLIT, params=PARAMS, key=KEY, **kwargs):
    return gauss_newton_trace(split_loss, params, BATCH, key, **{"num_probes": 2, **kwargs})


GAUSS_NEWTON_CASES = [
    (
        "split-loss-tuple",
        lambda: _gn_trace((_forward, _squared_error)),
        TypeError,
        re.escape("split_loss: expected a SplitLoss(forward, output_loss), got tuple"),
    ),
    (
        "split-loss-not-callable",
        lambda: _gn_trace(SplitLoss(_forward, 3)),
        TypeError,
        re.escape("split_loss.output_loss: expected a callable, got 3"),
    ),
    (
        "int-seed-key",
        lambda: _gn_trace(key=0),
        TypeError,
        re.escape("key: expected a PRNG key (jax.random.key(seed)), got 0 (int)"),
    ),
    (
        "num-probes-zero",
        lambda: _gn_trace(num_probes=0),
        ValueError,
        "num_probes: expected a positive int, got 0",
    ),
    (
        "distribution",
        lambda: _gn_trace(distribution="uniform"),
        ValueError,
        "distribution: expected one of",
    ),
    (
        "params-nan",
        lambda: _gn_trace(params=_nan_params()),
        ValueError,
        r"params\['b'\]: 1 " + NONFINITE,
    ),
    (
        "vector-output-loss",
        lambda: _gn_trace(VECTOR_SPLIT),
        ValueError,
        re.escape(
            "split_loss.output_loss: expected a scalar loss (shape ()), got an output of shape "
            "(2, 1)"
        ),
    ),
    (
        "nan-loss",
        lambda: _gn_trace(NAN_SPLIT),
        ValueError,
        "split_loss: expected a finite loss at params and batch, got nan",
    ),
    (
        "form-split-loss-tuple",
        lambda: gauss_newton_quadratic_form((_forward, _squared_error), PARAMS, BATCH, PARAMS),
        TypeError,
        "split_loss: expected a SplitLoss",
    ),
    (
        "form-tangent-structure",
        lambda: gauss_newton_quadratic_form(SPLIT, PARAMS, BATCH, {"w": PARAMS["w"]}),
        ValueError,
        "tangent: expected the pytree structure of params",
    ),
    (
        "form-tangent-shape",
        lambda: gauss_newton_quadratic_form(
            SPLIT, PARAMS, BATCH, dict(PARAMS, w=np.ones(2, np.float32))
        ),
        ValueError,
        re.escape("tangent['w']: expected shape (3,) (as in params), got (2,)"),
    ),
    (
        "form-vector-output-loss",
        lambda: gauss_newton_quadratic_form(VECTOR_SPLIT, PARAMS, BATCH, PARAMS),
        ValueError,
        re.escape("split_loss.output_loss: expected a scalar loss (shape ())"),
    ),
]


@table(GAUSS_NEWTON_CASES)
def test_spectra_gauss_newton_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_gauss_newton_nan_loss_is_not_checked_when_traced():
    """Inside jit the loss is not concrete: the estimate is computed (as for hessian_trace)."""
    estimate = jax.jit(lambda p: _gn_trace(NAN_SPLIT, p).estimate)(PARAMS)
    assert np.isfinite(float(estimate))


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.structured


def _calls():
    model, params, x = _mlp()
    return find_linear_calls(model.apply, params, x)


def _plan():
    _, params, _ = _mlp()
    ids, _ = build_group_ids(params, neurons("Dense_[01]$"))
    leaves = jax.tree_util.tree_leaves(params)
    return plan_structured(
        _calls(), leaf_group_ids(params, ids), [np.shape(leaf) for leaf in leaves]
    )[0]


def _kernels(x1=None, x2=None, p=12):
    model, params, x = _mlp()
    x1 = x if x1 is None else x1
    return structured_group_kernels(model.apply, params, x1, x2, _calls(), _plan(), p)


STRUCTURED_CASES = [
    (
        "apply-not-callable",
        lambda: find_linear_calls(3, _params(), _mlp()[2]),
        TypeError,
        re.escape("apply_fn: expected a callable, got 3 (int)"),
    ),
    (
        "x-list",
        lambda: find_linear_calls(_mlp()[0].apply, _params(), [[1.0] * 4]),
        TypeError,
        "x: expected an array with a leading batch axis, got list",
    ),
    (
        "x-scalar",
        lambda: find_linear_calls(_mlp()[0].apply, _params(), np.float32(1.0)),
        ValueError,
        re.escape("x: expected a leading batch axis of length >= 1, got shape ()"),
    ),
    (
        "x-empty",
        lambda: find_linear_calls(_mlp()[0].apply, _params(), np.zeros((0, 4), np.float32)),
        ValueError,
        re.escape("x: expected a leading batch axis of length >= 1, got shape (0, 4)"),
    ),
    (
        "plan-calls-string",
        lambda: plan_structured("Dense_0", [], []),
        TypeError,
        re.escape("calls: expected a list of LinearCall (find_linear_calls), got str"),
    ),
    (
        "plan-calls-entry",
        lambda: plan_structured([(0, None, 4, 7, 1, 0)], [], []),
        TypeError,
        "calls\\[0\\]: expected a LinearCall, got tuple",
    ),
    (
        "plan-lengths",
        lambda: plan_structured([], [np.zeros(3, np.int32)], []),
        ValueError,
        re.escape("leaf_ids: expected one entry per leaf of leaf_shapes (0), got 1"),
    ),
    (
        "plan-leaf-index",
        lambda: plan_structured([LinearCall(5, None, 4, 7, 1, 0)], [np.zeros(1)], [(4, 7)]),
        ValueError,
        re.escape("calls[0].kernel_leaf: expected a leaf index in [0, 1) of leaf_shapes, got 5"),
    ),
    (
        "kernels-p-zero",
        lambda: _kernels(p=0),
        ValueError,
        "p: expected a positive int, got 0",
    ),
    (
        "kernels-x1-no-batch",
        lambda: _kernels(x1=np.float32(1.0)),
        ValueError,
        re.escape("x1: expected a leading batch axis of length >= 1, got shape ()"),
    ),
    (
        "kernels-x2-examples",
        lambda: _kernels(x2=np.ones((2, 5), np.float32)),
        ValueError,
        re.escape("x2: expected examples of shape (4,) (as x1), got (5,)"),
    ),
]


@table(STRUCTURED_CASES)
def test_spectra_structured_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.analyze

ANALYZE_CASES = [
    (
        "dataset",
        lambda: AnalyzeConfig(dataset="mnist"),
        ValueError,
        re.escape("dataset: expected one of ('digits', 'teacher_student', 'gaussian_mixture')"),
    ),
    (
        "activation",
        lambda: AnalyzeConfig(activation="sigmoid"),
        ValueError,
        re.escape("activation: expected one of ('tanh', 'relu', 'gelu'), got 'sigmoid'"),
    ),
    (
        "hidden-string",
        lambda: AnalyzeConfig(hidden="64,64"),
        TypeError,
        re.escape("hidden: expected a sequence of widths >= 1 (e.g. (64, 64)), got '64,64'"),
    ),
    (
        "hidden-empty",
        lambda: AnalyzeConfig(hidden=()),
        ValueError,
        re.escape("hidden: expected one or more widths >= 1, got ()"),
    ),
    (
        "hidden-zero",
        lambda: AnalyzeConfig(hidden=(0,)),
        ValueError,
        "hidden: expected a positive int, got 0",
    ),
    (
        "train-steps",
        lambda: AnalyzeConfig(train_steps=-1),
        ValueError,
        "train_steps: expected an int >= 0, got -1",
    ),
    (
        "batch-size-float",
        lambda: AnalyzeConfig(batch_size=8.0),
        TypeError,
        re.escape("batch_size: expected a positive int, got 8.0"),
    ),
    (
        "probe-examples",
        lambda: AnalyzeConfig(probe_examples=0),
        ValueError,
        "probe_examples: expected a positive int, got 0",
    ),
    ("num-probes", lambda: AnalyzeConfig(num_probes=0), ValueError, "num_probes: expected"),
    ("top-k", lambda: AnalyzeConfig(top_k=0), ValueError, "top_k: expected a positive int"),
    (
        "learning-rate",
        lambda: AnalyzeConfig(learning_rate=0.0),
        ValueError,
        re.escape("learning_rate: expected a number in (0, inf), got 0"),
    ),
    (
        "learning-rate-nan",
        lambda: AnalyzeConfig(learning_rate=float("nan")),
        ValueError,
        "learning_rate: expected a finite number, got nan",
    ),
    ("seed", lambda: AnalyzeConfig(seed=-1), ValueError, "seed: expected an int >= 0, got -1"),
    (
        "float64-int",
        lambda: AnalyzeConfig(float64=1),
        TypeError,
        re.escape("float64: expected a bool, got 1 (int)"),
    ),
    (
        "out-int",
        lambda: AnalyzeConfig(out=3),
        TypeError,
        "out: expected a directory path, got 3",
    ),
    (
        "run-config-dict",
        lambda: run_analyze({"dataset": "digits"}),
        TypeError,
        "config: expected an AnalyzeConfig, got dict",
    ),
    (
        "run-progress",
        lambda: run_analyze(AnalyzeConfig(), progress="yes"),
        TypeError,
        "progress: expected a bool, got 'yes'",
    ),
    (
        "run-probe-examples-above-dataset",
        lambda: run_analyze(AnalyzeConfig(probe_examples=100_000, out="/nonexistent/never")),
        ValueError,
        "probe_examples: expected at most the 1797 examples of dataset 'digits', got 100000",
    ),
]


@table(ANALYZE_CASES)
def test_analyze_bad_input(call, error, match):
    assert_raises(call, error, match)


@pytest.mark.parametrize("hidden", [(8,), [8, 4]])
def test_analyze_config_accepts_width_sequences(hidden):
    assert AnalyzeConfig(hidden=hidden).hidden == hidden
