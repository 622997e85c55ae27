"""Bad-input tables of the criteria, methods, optimizers, models, data and training engine: one
parametrized test per public module.

Each case is ``(id, call, error, match)``: ``call()`` must raise ``error`` with a message matching
``match``, which names the offending argument.  The tables collect the argument checks the
modules' own tests exercise (they stay there too) and the checks added for the obvious mistakes
of a caller: wrong types (a list for an array, a float for an int, a string for an optimizer or
a seed for a PRNG key), out-of-range numbers, mismatched pytrees and shapes, NaN or inf inputs
and losses that would otherwise give silent NaN results, non-scalar losses that would otherwise
fail inside JAX, and unknown names.  A few positive cases follow: traced arguments skip the
value checks, and 0/1 float masks are accepted where a boolean mask is expected.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_raises, make_mlp, table, tiny_mlp_apply, tiny_mlp_problem

from jaxprune import criteria
from jaxprune.data import (
    DataConfig,
    Splits,
    dataset_inputs,
    decaying_theta,
    docstring_corpus,
    epoch_batches,
    gaussian_mixture,
    iterate_batches,
    load_builtin,
    load_dataset,
    load_digits,
    load_tfds,
    mask_tokens,
    num_to_mask,
    pack_sequences,
    prefetch,
    read_text_files,
    scaled_linear_regression,
    scaling_diagonal,
    teacher_student,
    train_tokenizer,
)
from jaxprune.masks import GroupLayout, iterative_magnitude, lth_schedule, one_shot
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.methods import directional, greedy, importance, pl_gating
from jaxprune.models import (
    MLP,
    VGG,
    Bert,
    BertConfig,
    MobileNetV2Config,
    ResNet,
    ResNet34Config,
    ResNetConfig,
    Switch,
    SwitchFFN,
    TwoLayer,
    TwoLayerConfig,
    VGGConfig,
    bert,
    mlp,
    mobilenet_v2,
    model_spec,
    register_model,
    resnet,
    resnet34,
    switch,
    two_layer,
    vgg,
)
from jaxprune.optim import apply_mask, grda, grda_threshold, masked, set_mask, soft_threshold
from jaxprune.spectra import SplitLoss
from jaxprune.train import (
    MetricsLogger,
    TrainConfig,
    build_model,
    checkpoint_paths,
    criterion_pruner,
    data_mesh,
    evaluate,
    lth_pruner,
    make_pruner,
    make_task,
    mlm,
    pl_gating_pruner,
    plot_curves,
    register_pruner,
    restore_checkpoint,
    save_checkpoint,
    summary_table,
    train,
)
from jaxprune.train.parallel import check_batch_size

KEY = jax.random.key(0)
NONFINITE = r"non-finite value\(s\) \(NaN or inf\); expected finite values"
NOT_A_KEY = r"key: expected a PRNG key \(jax.random.key\(seed\)\), got"


def replaced(array, index, value):
    """A NumPy copy of ``array`` with ``array[index] = value``."""
    out = np.array(array)
    out[index] = value
    return out


def with_leaf(tree, path, value):
    """A copy of the nested dicts ``tree`` with the leaf at ``path`` (keys) replaced."""
    if not path:
        return value
    return {**tree, path[0]: with_leaf(tree[path[0]], path[1:], value)}


def in_temporary_directory(call):
    """``call(directory)`` in a fresh temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory() as directory:
        return call(Path(directory))


# ---------------------------------------------------------------------------------------------
# jaxprune.criteria


@functools.cache
def _mlp():
    """The 4-7-5-3 tanh MLP of conftest: groups 0-6 are Dense_0's units, 7-11 Dense_1's."""
    model, params, x = make_mlp(jnp.float32)
    y = jax.random.normal(jax.random.key(7), (x.shape[0], 3))
    ids, layout = build_group_ids(params, neurons(r"Dense_[01]$"))
    return model, params, ids, layout, x, y


def _loss(params, batch=None):
    model, _, _, _, x, y = _mlp()
    inputs, targets = (x, y) if batch is None else batch
    return 0.5 * jnp.mean(jnp.sum((model.apply(params, inputs) - targets) ** 2, axis=-1))


def _outputs(params):
    """A vector "loss": the model outputs."""
    model, _, _, _, x, _ = _mlp()
    return model.apply(params, x)


CRITERIA = {
    "magnitude": lambda loss, p, g: criteria.magnitude_scores(p, g),
    "snip": criteria.snip_scores,
    "grasp": criteria.grasp_scores,
    "taylor": criteria.gate_gradient_scores,
    "hessian-exact": functools.partial(criteria.hessian_diagonal_scores, exact=True),
    "hessian-hutchinson": functools.partial(
        criteria.hessian_diagonal_scores, key=KEY, num_probes=2
    ),
    "fpgm": lambda loss, p, g: criteria.fpgm_scores(p, g),
}
LOSS_CRITERIA = ("snip", "grasp", "taylor", "hessian-exact", "hessian-hutchinson")


def _criterion(name, loss=_loss, params=None, ids=None):
    _, default_params, default_ids, *_ = _mlp()
    params = default_params if params is None else params
    return CRITERIA[name](loss, params, default_ids if ids is None else ids)


TINY_PARAMS = {"w": jnp.array([1.0, -2.0, 0.5])}
TINY_IDS = {"w": np.arange(3, dtype=np.int32)}


def _tiny_nan_loss(params, batch=None):
    """NaN at every ``params``, as a loss on data holding a NaN."""
    return jnp.sum(params["w"] ** 2) * jnp.nan


def _nan_params():
    params = _mlp()[1]
    kernel = params["params"]["Dense_1"]["kernel"]
    return with_leaf(params, ("params", "Dense_1", "kernel"), kernel.at[0, 0].set(jnp.nan))


def _without_dense_2(ids):
    return {"params": {k: v for k, v in ids["params"].items() if k != "Dense_2"}}


def _ids_as(dtype):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), _mlp()[2])


CRITERIA_CASES = [
    *[
        (
            f"{name}-nan-params",
            functools.partial(_criterion, name, params=_nan_params()),
            ValueError,
            r"params\['params'\]\['Dense_1'\]\['kernel'\]: 1 " + NONFINITE,
        )
        for name in CRITERIA
    ],
    *[
        (
            f"{name}-group-ids-structure",
            functools.partial(_criterion, name, ids=_without_dense_2(_mlp()[2])),
            ValueError,
            r"group_ids must have the same pytree structure as params: missing .*Dense_2",
        )
        for name in CRITERIA
    ],
    *[
        (
            f"{name}-vector-loss",
            functools.partial(_criterion, name, loss=_outputs),
            ValueError,
            r"loss_fn: expected a scalar loss \(shape \(\)\), got an output of shape \(6, 3\)",
        )
        for name in LOSS_CRITERIA
    ],
    *[
        (
            f"{name}-nan-loss",
            functools.partial(CRITERIA[name], _tiny_nan_loss, TINY_PARAMS, TINY_IDS),
            ValueError,
            r"loss_fn: expected a finite loss at params, got nan",
        )
        for name in LOSS_CRITERIA
    ],
    *[
        (
            f"{name}-loss-not-callable",
            functools.partial(_criterion, name, loss=None),
            TypeError,
            r"loss_fn: expected a callable, got None \(NoneType\)",
        )
        for name in LOSS_CRITERIA
    ],
    (
        "taylor-nan-loss-on-a-batch",
        lambda: criteria.gate_gradient_scores(
            lambda p, b: _loss(p, b) * b[1][0, 0],
            _mlp()[1],
            _mlp()[2],
            batches=[(_mlp()[4], _mlp()[5]), (_mlp()[4], _mlp()[5] * jnp.nan)],
        ),
        ValueError,
        r"loss_fn: expected a finite loss at params on batch 1, got nan",
    ),
    (
        "taylor-batches-not-iterable",
        lambda: criteria.gate_gradient_scores(_loss, _mlp()[1], _mlp()[2], batches=5),
        TypeError,
        r"batches: expected an iterable of batches or None, got 5 \(int\)",
    ),
    (
        "taylor-batches-empty",
        lambda: criteria.gate_gradient_scores(_loss, _mlp()[1], _mlp()[2], batches=[]),
        ValueError,
        "batches must contain at least one batch, got an empty iterable",
    ),
    (
        "taylor-normalize-by-size",
        lambda: criteria.gate_gradient_scores(
            _loss, _mlp()[1], _mlp()[2], normalize_by=GroupLayout.from_sizes(("a",), (11,))
        ),
        ValueError,
        r"normalize_by describes 11 groups but group_ids has 12 groups",
    ),
    (
        "taylor-normalize-by-dict",
        lambda: criteria.gate_gradient_scores(_loss, _mlp()[1], _mlp()[2], normalize_by={}),
        TypeError,
        "normalize_by must be a GroupLayout, got dict",
    ),
    (
        "magnitude-norm",
        lambda: criteria.magnitude_scores(_mlp()[1], _mlp()[2], norm="l3"),
        ValueError,
        r"norm: expected one of \('l1', 'l2'\), got 'l3'",
    ),
    (
        "magnitude-norm-int",
        lambda: criteria.magnitude_scores(_mlp()[1], _mlp()[2], norm=2),
        TypeError,
        r"norm: expected one of \('l1', 'l2'\), got 2 \(int\)",
    ),
    (
        "group-ids-float",
        lambda: criteria.magnitude_scores(_mlp()[1], _ids_as(np.float32)),
        TypeError,
        r"group_ids\['params'\]\['Dense_0'\]\['bias'\]: expected an integer array, got dtype",
    ),
    (
        "group-ids-below-minus-one",
        lambda: criteria.magnitude_scores({"w": jnp.ones(3)}, {"w": np.array([0, -2, 0])}),
        ValueError,
        r"group_ids\['w'\]: ids must be -1 \(ungrouped\) or >= 0, got -2",
    ),
    (
        "group-ids-shape",
        lambda: criteria.magnitude_scores({"w": jnp.ones((2, 3))}, {"w": np.zeros(2, np.int32)}),
        ValueError,
        r"group_ids\['w'\]: shape \(2,\) does not broadcast to the parameter's shape \(2, 3\)",
    ),
    (
        "group-ids-empty-group",
        lambda: criteria.magnitude_scores({"w": jnp.ones(3)}, {"w": np.array([0, 2, 2])}),
        ValueError,
        r"group_ids: groups \[1\] of \[0, 3\) contain no weight",
    ),
    (
        "group-ids-params-a-list",
        lambda: criteria.magnitude_scores([[1.0, 2.0]], [np.array([0, 1])]),
        ValueError,
        "group_ids must have the same pytree structure as params",
    ),
    (
        "hessian-num-probes-zero",
        lambda: criteria.hessian_diagonal_scores(
            _loss, _mlp()[1], _mlp()[2], key=KEY, num_probes=0
        ),
        ValueError,
        "num_probes: expected a positive int, got 0",
    ),
    (
        "hessian-num-probes-float",
        lambda: criteria.hessian_diagonal_scores(
            _loss, _mlp()[1], _mlp()[2], key=KEY, num_probes=2.5
        ),
        TypeError,
        r"num_probes: expected a positive int, got 2\.5",
    ),
    (
        "hessian-exact-with-probes",
        lambda: criteria.hessian_diagonal_scores(
            _loss, _mlp()[1], _mlp()[2], num_probes=3, exact=True
        ),
        ValueError,
        r"with exact=True pass neither, got key=None, num_probes=3",
    ),
    (
        "hessian-no-key",
        lambda: criteria.hessian_diagonal_scores(_loss, _mlp()[1], _mlp()[2], num_probes=3),
        ValueError,
        r"needs both key and num_probes, got key=None, num_probes=3",
    ),
    (
        "hessian-key-a-seed",
        lambda: criteria.hessian_diagonal_scores(_loss, _mlp()[1], _mlp()[2], key=0, num_probes=2),
        TypeError,
        NOT_A_KEY + r" 0 \(int\)",
    ),
    (
        "hessian-distribution",
        lambda: criteria.hessian_diagonal_score_estimate(
            _loss, _mlp()[1], _mlp()[2], KEY, num_probes=2, distribution="uniform"
        ),
        ValueError,
        r"distribution: expected one of \('rademacher', 'gaussian'\), got 'uniform'",
    ),
    (
        "hessian-batch-size-zero",
        lambda: criteria.hessian_diagonal_score_estimate(
            _loss, _mlp()[1], _mlp()[2], KEY, num_probes=2, batch_size=0
        ),
        ValueError,
        "batch_size: expected a positive int, got 0",
    ),
    (
        "random-num-groups-zero",
        lambda: criteria.random_scores(KEY, 0),
        ValueError,
        "num_groups: expected a positive int, got 0",
    ),
    (
        "random-num-groups-float",
        lambda: criteria.random_scores(KEY, 3.0),
        TypeError,
        r"num_groups: expected a positive int, got 3\.0",
    ),
    (
        "random-key-a-seed",
        lambda: criteria.random_scores(0, 3),
        TypeError,
        NOT_A_KEY + r" 0 \(int\)",
    ),
    (
        "random-key-floats",
        lambda: criteria.random_scores(np.zeros(2), 3),
        TypeError,
        NOT_A_KEY + r" an array of dtype float64 and shape \(2,\)",
    ),
    (
        "fpgm-layout-size",
        lambda: criteria.fpgm_scores(
            _mlp()[1], _mlp()[2], layout=GroupLayout.from_sizes(("a",), (11,))
        ),
        ValueError,
        r"layout describes 11 groups but group_ids has 12 groups",
    ),
    (
        "fpgm-layout-dict",
        lambda: criteria.fpgm_scores(_mlp()[1], _mlp()[2], layout={}),
        TypeError,
        "layout must be a GroupLayout, got dict",
    ),
    (
        "fpgm-unequal-groups",
        lambda: criteria.fpgm_scores(
            _mlp()[1], _mlp()[2], layout=GroupLayout.from_sizes(("hidden",), (12,))
        ),
        ValueError,
        r"groups of the layer 'hidden' hold different numbers of weights in "
        r"params\['params'\]\['Dense_0'\]\['bias'\]",
    ),
]


@table(CRITERIA_CASES)
def test_criteria_bad_input(call, error, match):
    assert_raises(call, error, match)


@pytest.mark.parametrize("name", ["snip", "taylor"])
def test_criteria_skip_value_checks_when_traced(name):
    # Inside jit the loss and the parameters are traced: a NaN loss gives NaN scores (which
    # topk_mask refuses) instead of an error at trace time.
    scores = jax.jit(lambda p: CRITERIA[name](_tiny_nan_loss, p, TINY_IDS))(TINY_PARAMS)
    assert scores.shape == (3,) and np.all(np.isnan(scores))


# ---------------------------------------------------------------------------------------------
# jaxprune.methods.pl_gating

PL_MODEL = MLP(hidden=(4, 3), num_outputs=2, activation=jnp.tanh)  # 7 neuron groups, 2 layers
PL_CONFIG = pl_gating.PLGatingConfig(hidden=4, gating_steps=3, num_probes=2, feature_batch_size=6)
PL_LAYOUT = GroupLayout.from_sizes(("a", "b"), (3, 2))


def _pl_apply(params, x):
    return PL_MODEL.apply(params, x)


def _squared_loss(outputs, batch):
    return 0.5 * jnp.mean(jnp.sum((outputs - batch[1]) ** 2, axis=-1))


def _pl_loss(params, batch):
    return _squared_loss(_pl_apply(params, batch[0]), batch)


PL_SPLIT_LOSS = SplitLoss(lambda params, batch: _pl_apply(params, batch[0]), _squared_loss)


@functools.cache
def _pl():
    """``(params, group_ids, layout, x, y, normalized_features, v)`` of a 3-4-3-2 tanh MLP,
    drawn in NumPy (nothing to compile)."""
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(6, 2)))
    shapes = jax.eval_shape(lambda: PL_MODEL.init(KEY, x))
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape)), shapes)
    ids, layout = mlp.group_ids(params, PL_MODEL)
    normalized = jnp.asarray(rng.normal(size=(7, 2)))
    w1 = jnp.asarray(rng.normal(size=(2, 4)))
    return params, ids, layout, x, y, normalized, pl_gating.GatingParams(w1, w1[0], w1[1])


def _gating_loss(*, v=None, features=None, batch=None, **options):
    params, ids, _, x, y, normalized, v0 = _pl()
    return pl_gating.gating_loss(
        v0 if v is None else v,
        _pl_loss,
        _pl_apply,
        params,
        ids,
        normalized if features is None else features,
        (x, y) if batch is None else batch,
        KEY,
        **{"num_probes": 1, **options},
    )


def _train_gating(batches=None, **options):
    params, ids, _, x, y, normalized, v = _pl()
    batches = [(x, y)] * 2 if batches is None else batches
    return pl_gating.train_gating(
        options.pop("v", v),
        _pl_loss,
        _pl_apply,
        params,
        ids,
        normalized,
        batches,
        KEY,
        **{"num_probes": 1, "hessian": "gauss_newton", "split_loss": PL_SPLIT_LOSS, **options},
    )


def _prune(ratio=0.5, config=PL_CONFIG, *, layout=None, x=None, batches=(), **options):
    params, ids, default_layout, default_x, *_ = _pl()
    return pl_gating.prune(
        KEY,
        _pl_loss,
        _pl_apply,
        params,
        ids,
        default_layout if layout is None else layout,
        default_x if x is None else x,
        batches,
        ratio,
        config,
        **options,
    )


def _group_features(p):
    """:class:`GroupFeatures` of ``p`` groups (all ones)."""
    return pl_gating.GroupFeatures(*([jnp.ones(p)] * len(pl_gating.GroupFeatures._fields)))


def _pl_nan(tree):
    return jax.tree_util.tree_map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), tree)


PL_CONFIG_CASES = [
    ("hidden", 0, ValueError, "hidden: expected a positive int, got 0"),
    ("hidden", 4.0, TypeError, r"hidden: expected a positive int, got 4\.0"),
    ("scaling", "sigmoid", ValueError, r"scaling: expected one of \('mean_one', 'softmax'\)"),
    ("alpha", -1.0, ValueError, r"alpha: expected a number in \[0, inf\], got -1"),
    ("alpha", float("inf"), ValueError, "alpha: expected a finite number, got inf"),
    ("num_probes", 0, ValueError, "num_probes: expected a positive int, got 0"),
    ("gating_steps", 1.5, TypeError, r"gating_steps: expected a positive int, got 1\.5"),
    ("learning_rate", 0.0, ValueError, r"learning_rate: expected a number in \(0, inf\)"),
    ("learning_rate", float("nan"), ValueError, "learning_rate: expected a finite number"),
    ("learning_rate", "1e-3", TypeError, "learning_rate: expected a real number, got '1e-3'"),
    ("feature_batch_size", 1, ValueError, "feature_batch_size: expected an int >= 2, got 1"),
    ("output_projections", 0, ValueError, "output_projections: expected a positive int, got 0"),
    ("hessian", "fisher", ValueError, r"hessian: expected one of \('auto', 'outputs'"),
    ("trace_wrt", "both", ValueError, r"trace_wrt: expected one of \('gated', 'weights'\)"),
    ("min_per_layer", -1, ValueError, "min_per_layer: expected an int >= 0, got -1"),
    ("lambda_min", "smallest", ValueError, r"lambda_min: expected one of \('nonzero'"),
    ("per_layer", 1, TypeError, "per_layer: expected a bool, got 1"),
    ("feature_normalization", "batch", ValueError, "feature_normalization: expected one of"),
    ("feature_dtype", "float7", ValueError, "feature_dtype: expected a floating compute dtype"),
    ("feature_dtype", jnp.int32, ValueError, "feature_dtype: expected a floating compute dtype"),
]

PL_CASES = [
    *[
        (
            f"config-{field}-{value}",
            functools.partial(pl_gating.PLGatingConfig, **{field: value}),
            error,
            match,
        )
        for field, value, error, match in PL_CONFIG_CASES
    ],
    (
        "objective-alpha",
        lambda: pl_gating.GatingObjective(alpha=-1.0),
        ValueError,
        r"alpha: expected a number in \[0, inf\], got -1",
    ),
    (
        "objective-inputs-of",
        lambda: pl_gating.GatingObjective(inputs_of=0),
        TypeError,
        "inputs_of: expected a callable, got 0",
    ),
    (
        "objective-trace-scale",
        lambda: pl_gating.GatingObjective(trace_scale=0.0),
        ValueError,
        r"trace_scale: expected a number in \(0, inf\), got 0",
    ),
    (
        "objective-distribution",
        lambda: pl_gating.GatingObjective(distribution="uniform"),
        ValueError,
        r"distribution: expected one of \('rademacher', 'gaussian'\), got 'uniform'",
    ),
    (
        "objective-num-probes-float",
        lambda: pl_gating.GatingObjective(num_probes=2.5),
        TypeError,
        r"num_probes: expected a positive int, got 2\.5",
    ),
    (
        "objective-loss-scale-nan",
        lambda: pl_gating.GatingObjective(loss_scale=float("nan")),
        ValueError,
        "loss_scale: expected a finite number, got nan",
    ),
    (
        "init-gating-hidden",
        lambda: pl_gating.init_gating(KEY, 0),
        ValueError,
        "hidden: expected a positive int, got 0",
    ),
    (
        "init-gating-key-a-seed",
        lambda: pl_gating.init_gating(0, 4),
        TypeError,
        NOT_A_KEY + r" 0 \(int\)",
    ),
    (
        "gate-scaling",
        lambda: pl_gating.gate(_pl()[6], _pl()[5], scaling="sigmoid"),
        ValueError,
        r"scaling: expected one of \('mean_one', 'softmax'\), got 'sigmoid'",
    ),
    (
        "gate-features-shape",
        lambda: pl_gating.gate(_pl()[6], jnp.ones((7, 3))),
        ValueError,
        r"normalized_features: expected shape \(p, 2\) with p >= 1 .* got \(7, 3\)",
    ),
    (
        "gate-features-nan",
        lambda: pl_gating.gate(_pl()[6], _pl()[5].at[2, 1].set(jnp.nan)),
        ValueError,
        "normalized_features: 1 " + NONFINITE,
    ),
    (
        "gate-v-a-tuple",
        lambda: pl_gating.gate((np.ones((2, 4)), np.ones(4), np.ones(4)), _pl()[5]),
        TypeError,
        r"v: expected GatingParams \(from init_gating\), got tuple",
    ),
    (
        "features-one-example",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3][:1], _pl()[1]),
        ValueError,
        r"x: the feature batch needs at least 2 examples",
    ),
    (
        "features-x-a-list",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3].tolist(), _pl()[1]),
        TypeError,
        "x: expected an array with a leading batch axis, got list",
    ),
    (
        "features-x-nan",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3].at[0, 0].set(jnp.nan), _pl()[1]),
        ValueError,
        "x: 1 " + NONFINITE,
    ),
    (
        "features-params-nan",
        lambda: pl_gating.features(_pl_apply, _pl_nan(_pl()[0]), _pl()[3], _pl()[1]),
        ValueError,
        r"params\['params'\]\['Dense_0'\]\['bias'\]: 1 " + NONFINITE,
    ),
    (
        "features-projections-without-key",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3], _pl()[1], output_projections=8),
        ValueError,
        "key: required with output_projections, got None",
    ),
    (
        "features-projections-float",
        lambda: pl_gating.features(
            _pl_apply, _pl()[0], _pl()[3], _pl()[1], output_projections=2.5, key=KEY
        ),
        TypeError,
        r"output_projections: expected a positive int, got 2\.5",
    ),
    (
        "features-backend",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3], _pl()[1], backend="magic"),
        ValueError,
        r"backend: expected one of .* got 'magic'",
    ),
    (
        "features-lambda-min",
        lambda: pl_gating.features(_pl_apply, _pl()[0], _pl()[3], _pl()[1], lambda_min="min"),
        ValueError,
        r"lambda_min: expected one of \('nonzero', 'bound', 'literal'\), got 'min'",
    ),
    (
        "normalize-features-not-features",
        lambda: pl_gating.normalize_features((1.0, 2.0)),
        TypeError,
        r"feats: expected GroupFeatures \(from features\(\)\), got <class 'tuple'>",
    ),
    (
        "normalize-features-layer-without-layout",
        lambda: pl_gating.normalize_features(_group_features(3), within="layer"),
        TypeError,
        "layout",
    ),
    (
        "normalize-features-within",
        lambda: pl_gating.normalize_features(_group_features(5), PL_LAYOUT, within="model"),
        ValueError,
        r"within: expected one of \('global', 'layer'\), got 'model'",
    ),
    (
        "normalize-features-layout-size",
        lambda: pl_gating.normalize_features(_group_features(7), PL_LAYOUT, within="layer"),
        ValueError,
        "layout: has 5 groups, expected 7",
    ),
    (
        "gating-loss-feature-rows",
        lambda: _gating_loss(features=_pl()[5][:6]),
        ValueError,
        "6 rows, expected one per group",
    ),
    (
        "gating-loss-alpha",
        lambda: _gating_loss(alpha=-1.0),
        ValueError,
        r"alpha: expected a number in \[0, inf\]",
    ),
    (
        "gating-loss-num-probes",
        lambda: _gating_loss(num_probes=0),
        ValueError,
        "num_probes: expected a positive int, got 0",
    ),
    (
        "gating-loss-hessian",
        lambda: _gating_loss(hessian="fisher"),
        ValueError,
        "hessian: expected one of",
    ),
    (
        "gating-loss-trace-wrt",
        lambda: _gating_loss(trace_wrt="both"),
        ValueError,
        "trace_wrt: expected one of",
    ),
    (
        "gating-loss-split-loss-missing",
        lambda: _gating_loss(hessian="gauss_newton"),
        ValueError,
        "split_loss: required when hessian='gauss_newton'",
    ),
    (
        "gating-loss-split-loss-type",
        lambda: _gating_loss(hessian="gauss_newton", split_loss=_pl_loss),
        TypeError,
        r"split_loss: expected a SplitLoss\(forward, output_loss\) or None",
    ),
    (
        "gating-loss-split-loss-not-callable",
        lambda: _gating_loss(hessian="gauss_newton", split_loss=SplitLoss(3, _squared_loss)),
        TypeError,
        "split_loss.forward: expected a callable, got 3",
    ),
    (
        "gating-loss-objective-and-fields",
        lambda: _gating_loss(objective=pl_gating.GatingObjective(), alpha=1.0),
        TypeError,
        "objective: pass either",
    ),
    (
        "gating-loss-objective-type",
        lambda: _gating_loss(objective={"alpha": 1.0}, num_probes=None),
        TypeError,
        "objective: expected a GatingObjective, got dict",
    ),
    (
        "gating-loss-v-a-tuple",
        lambda: _gating_loss(v=tuple(_pl()[6])),
        TypeError,
        r"v: expected GatingParams \(from init_gating\), got tuple",
    ),
    (
        "gating-loss-params-nan",
        lambda: pl_gating.gating_loss(
            _pl()[6],
            _pl_loss,
            _pl_apply,
            _pl_nan(_pl()[0]),
            _pl()[1],
            _pl()[5],
            (_pl()[3], _pl()[4]),
            KEY,
            num_probes=1,
        ),
        ValueError,
        r"params\['params'\]\['Dense_0'\]\['bias'\]: 1 " + NONFINITE,
    ),
    (
        "gating-loss-vector-loss",
        lambda: jax.eval_shape(  # a shape error: found while tracing, nothing computed
            lambda: pl_gating.gating_loss(
                _pl()[6],
                lambda p, b: _pl_apply(p, b[0]),
                _pl_apply,
                _pl()[0],
                _pl()[1],
                _pl()[5],
                (_pl()[3], _pl()[4]),
                KEY,
                num_probes=1,
            )
        ),
        ValueError,
        r"loss_fn: expected a scalar loss \(shape \(\)\), got an output of shape \(6, 2\)",
    ),
    (
        "train-gating-too-few-batches",
        lambda: _train_gating([(_pl()[3], _pl()[4])] * 2, num_steps=5, alpha=0.0),
        ValueError,
        "batches: yielded 2 batches, expected 5",
    ),
    (
        "train-gating-no-batch",
        lambda: _train_gating([]),
        ValueError,
        "batches: yielded 0 batches, expected at least one",
    ),
    (
        "train-gating-batches-not-iterable",
        lambda: _train_gating(3),
        TypeError,
        r"batches: expected an iterable of batches, got 3 \(int\)",
    ),
    (
        "train-gating-num-steps",
        lambda: _train_gating(num_steps=0),
        ValueError,
        "num_steps: expected a positive int, got 0",
    ),
    (
        "train-gating-scale-probes",
        lambda: _train_gating(scale_probes=0),
        ValueError,
        "scale_probes: expected a positive int, got 0",
    ),
    (
        "train-gating-optimizer-a-name",
        lambda: _train_gating(optimizer="adam"),
        TypeError,
        r"optimizer: expected an optax GradientTransformation .* got 'adam' \(str\)",
    ),
    (
        "train-gating-v-a-list",
        lambda: _train_gating(v=list(_pl()[6])),
        TypeError,
        r"v: expected GatingParams \(from init_gating\), got list",
    ),
    (
        "train-gating-nan-batch",
        lambda: _train_gating([(_pl()[3], _pl()[4] * jnp.nan)] * 2, alpha=0.0),
        ValueError,
        "loss_fn: expected a finite loss at the initial gates on the first batch, got nan",
    ),
    (
        "resolve-hessian",
        lambda: pl_gating.resolve_hessian("fisher", _pl_apply, _pl()[0], _pl()[3], KEY),
        ValueError,
        r"hessian: expected one of \('auto', 'outputs', 'loss', 'gauss_newton'\)",
    ),
    (
        "resolve-hessian-params-nan",
        lambda: pl_gating.resolve_hessian("auto", _pl_apply, _pl_nan(_pl()[0]), _pl()[3], KEY),
        ValueError,
        r"params\['params'\]\['Dense_0'\]\['bias'\]: 1 " + NONFINITE,
    ),
    (
        "select-above-current-mask",
        lambda: pl_gating.select(
            np.array([0.9, 0.8, 0.7, 0.1, 0.2]), 5, PL_LAYOUT, current_mask=[0, 1, 1, 1, 1]
        ),
        ValueError,
        "k: 5 exceeds the 4 groups current_mask keeps",
    ),
    (
        "select-current-mask-not-binary",
        lambda: pl_gating.select(np.ones(5), 2, PL_LAYOUT, current_mask=[0.5, 1, 1, 1, 1]),
        ValueError,
        "current_mask: expected entries 0 or 1",
    ),
    (
        "select-current-mask-shape",
        lambda: pl_gating.select(np.ones(5), 2, PL_LAYOUT, current_mask=np.ones(4)),
        ValueError,
        r"current_mask: expected shape \(5,\), one entry per group, got \(4,\)",
    ),
    (
        "select-below-min-per-layer",
        lambda: pl_gating.select(np.ones(5), 1, PL_LAYOUT),
        ValueError,
        r"k: 1 is less than min_per_layer \(1\) × number of layers \(2\) = 2",
    ),
    (
        "select-k-float",
        lambda: pl_gating.select(np.ones(5), 2.0, PL_LAYOUT),
        TypeError,
        r"k: expected an int >= 0, got 2\.0",
    ),
    (
        "select-nan-gates",
        lambda: pl_gating.select(np.array([1.0, np.nan, 1.0, 1.0, 1.0]), 2, PL_LAYOUT),
        ValueError,
        r"scores: NaN at groups \[1\]",
    ),
    *[
        (f"prune-ratio-{ratio}", functools.partial(_prune, ratio), ValueError, "ratio: expected")
        for ratio in (1.0, -0.1, 1.5, float("nan"))
    ],
    ("prune-ratio-a-string", lambda: _prune("0.5"), TypeError, "ratio: expected a real number"),
    (
        "prune-below-min-per-layer",
        lambda: _prune(0.9),
        ValueError,
        r"ratio: 0.9 keeps 1 of 7 groups, fewer than config\.min_per_layer \(1\) x 2 layers",
    ),
    (
        "prune-layout-size",
        lambda: _prune(layout=PL_LAYOUT),
        ValueError,
        "layout: has 5 groups, expected 7",
    ),
    (
        "prune-layout-missing",
        lambda: pl_gating.prune(
            KEY, _pl_loss, _pl_apply, _pl()[0], _pl()[1], None, _pl()[3], [], 0.5, PL_CONFIG
        ),
        ValueError,
        r"layout: required when config\.min_per_layer > 0",
    ),
    (
        "prune-layout-a-dict",
        lambda: _prune(layout={"a": 3}),
        TypeError,
        "layout: expected a GroupLayout or None, got dict",
    ),
    (
        "prune-too-few-feature-rows",
        lambda: _prune(x=_pl()[3][:4]),
        ValueError,
        r"feature_inputs: has 4 examples, fewer than config\.feature_batch_size = 6",
    ),
    (
        "prune-feature-inputs-a-list",
        lambda: _prune(x=_pl()[3].tolist()),
        TypeError,
        "feature_inputs: expected an array with a leading batch axis, got list",
    ),
    (
        "prune-feature-inputs-nan",
        lambda: _prune(x=_pl()[3].at[1, 1].set(jnp.inf), batches=[(_pl()[3], _pl()[4])] * 3),
        ValueError,
        "x: 1 " + NONFINITE,
    ),
    (
        "prune-too-few-batches",
        lambda: _prune(batches=[(_pl()[3], _pl()[4])]),
        ValueError,
        "batches: yielded 1 batches, expected 3",
    ),
    (
        "prune-current-mask-shape",
        lambda: _prune(current_mask=np.ones(5)),
        ValueError,
        r"current_mask: expected shape \(7,\)",
    ),
    (
        "prune-above-current-mask",
        lambda: _prune(0.2, current_mask=np.array([1, 0, 0, 1, 0, 1, 0])),
        ValueError,
        "more than the 3 that current_mask keeps",
    ),
    (
        "prune-config-a-dict",
        lambda: _prune(config={"hidden": 4}),
        TypeError,
        "config: expected a PLGatingConfig, got dict",
    ),
    (
        "prune-v-a-tuple",
        lambda: _prune(v=(1, 2)),
        TypeError,
        r"v: expected GatingParams \(from init_gating\), got tuple",
    ),
    (
        "prune-optimizer-a-name",
        lambda: _prune(optimizer="adam"),
        TypeError,
        r"optimizer: expected an optax GradientTransformation .* got 'adam'",
    ),
    (
        "prune-batches-not-iterable",
        lambda: _prune(batches=3),
        TypeError,
        r"batches: expected an iterable of training batches, got 3 \(int\)",
    ),
]


@table(PL_CASES)
def test_methods_pl_gating_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_pl_gating_traced_features_skip_the_finite_check():
    v, normalized = _pl()[6], _pl()[5]
    gates = jax.jit(pl_gating.gate)(v, normalized.at[0, 0].set(jnp.nan))
    assert gates.shape == (7,) and np.all(np.isnan(gates))


# ---------------------------------------------------------------------------------------------
# jaxprune.methods.greedy

ONE_LAYER = GroupLayout(("dense",), np.zeros(4, np.int32))
TWO_LAYERS = GroupLayout.from_sizes(("first", "second"), (3, 2))
REGRESSION_BATCH = {"y": np.ones(4)}


def _gated_regression(weights, pieces, batch):
    """``(‖g ∗ w − y‖², NaN)``: a loss of the gates and no accuracy."""
    (gates,) = pieces
    return jnp.sum((gates * weights - batch["y"]) ** 2), jnp.full((), jnp.nan)


def _two_layer_regression(weights, pieces, batch):
    gates = greedy.flat_gates(pieces, TWO_LAYERS)
    return jnp.sum((gates * weights - batch["y"]) ** 2), jnp.zeros(())


def _gate_selection(batches=None, *, layout=TWO_LAYERS, **options):
    evaluation = _gated_regression if layout is ONE_LAYER else _two_layer_regression
    batches = [{"y": np.ones(layout.num_groups)}] * 8 if batches is None else batches
    options.setdefault("eps", None if "keep_per_layer" in options else 0.1)
    return greedy.greedy_gate_selection(
        evaluation, np.ones(layout.num_groups), layout, batches, **options
    )


def _forward_selection(**kwargs):
    arguments = {"phi": np.ones((4, 3), np.float32), "y": np.zeros(3), "num_steps": 2, **kwargs}
    return greedy.greedy_forward_selection(
        arguments.pop("phi"), arguments.pop("y"), arguments.pop("num_steps"), **arguments
    )


@functools.cache
def _two_layer_variables():
    return TwoLayer(TwoLayerConfig(input_dim=3, width=4)).init(KEY, jnp.zeros((1, 3)))


FORWARD_SELECTION_CASES = [
    ("num-steps", {"num_steps": 0}, ValueError, "num_steps: expected a positive int, got 0"),
    ("num-steps-float", {"num_steps": 2.0}, TypeError, r"num_steps: expected a positive int"),
    ("phi-rank", {"phi": np.ones((4, 3, 2, 1))}, ValueError, r"phi: expected neuron outputs"),
    ("phi-nan", {"phi": np.full((4, 3), np.nan)}, ValueError, "phi: expected finite"),
    ("phi-int", {"phi": np.ones((4, 3), np.int32)}, TypeError, "phi: expected a floating"),
    ("y-shape", {"y": np.zeros(4)}, ValueError, r"y: expected shape \(3,\)"),
    ("y-nan", {"y": np.full(3, np.nan)}, ValueError, "y: expected finite targets"),
    ("loss", {"loss": "hinge"}, ValueError, r"loss: expected one of \('squared'"),
    (
        "bce-targets",
        {"loss": "binary_cross_entropy", "y": np.full(3, 2.0)},
        ValueError,
        r"'binary_cross_entropy' expects targets in \[0, 1\]",
    ),
    (
        "softmax-shapes",
        {"loss": "softmax_cross_entropy"},
        ValueError,
        "y: 'softmax_cross_entropy' expects phi",
    ),
    ("vector-loss", {"loss": lambda u, t: u - t}, ValueError, "loss: expected a callable loss"),
    ("tol-nan", {"tol": float("nan")}, ValueError, "tol: expected a finite number, got nan"),
    ("mesh", {"mesh": "cpu"}, TypeError, "mesh: expected a jax.sharding.Mesh, got str"),
]

GREEDY_CASES = [
    *[
        (f"forward-{name}", functools.partial(_forward_selection, **kwargs), error, match)
        for name, kwargs, error, match in FORWARD_SELECTION_CASES
    ],
    (
        "neuron-outputs-x-features",
        lambda: greedy.neuron_outputs(_two_layer_variables(), np.zeros((2, 5))),
        ValueError,
        r"x: expected",
    ),
    (
        "neuron-outputs-x-nan",
        lambda: greedy.neuron_outputs(_two_layer_variables(), np.full((2, 3), np.nan)),
        ValueError,
        "x: expected finite",
    ),
    (
        "neuron-outputs-params",
        lambda: greedy.neuron_outputs({"dense": {}}, np.zeros((2, 3))),
        ValueError,
        "params",
    ),
    (
        "neuron-outputs-activation",
        lambda: greedy.neuron_outputs(_two_layer_variables(), np.zeros((2, 3)), activation="gelu"),
        ValueError,
        r"activation: expected one of \('relu', 'tanh'\), got 'gelu'",
    ),
    (
        "lemma1-k",
        lambda: greedy.lemma1_bound(np.ones((3, 2)), np.zeros(2), 0.0, 0),
        ValueError,
        "k: expected",
    ),
    (
        "lemma1-dense-loss",
        lambda: greedy.lemma1_bound(np.ones((3, 2)), np.zeros(2), -1.0, 1),
        ValueError,
        "dense_loss",
    ),
    (
        "lemma1-phi-nan",
        lambda: greedy.lemma1_bound(np.full((3, 2), np.nan), np.zeros(2), 0.0, 1),
        ValueError,
        "phi: expected finite neuron outputs",
    ),
    (
        "hull-diameter-block-size",
        lambda: greedy.hull_diameter(np.ones((4, 3)), block_size=0),
        ValueError,
        "block_size: expected a positive int, got 0",
    ),
    (
        "hull-diameter-nan",
        lambda: greedy.hull_diameter(replaced(np.ones((4, 3)), (1, 2), np.nan)),
        ValueError,
        "phi: 1 " + NONFINITE,
    ),
    (
        "hull-diameter-vector",
        lambda: greedy.hull_diameter(np.ones(4)),
        ValueError,
        r"phi: expected shape \(N, m\) or \(N, m, K\), got \(4,\)",
    ),
    (
        "subnetwork-negative-counts",
        lambda: greedy.subnetwork(_two_layer_variables(), np.array([1, -1, 0, 2])),
        ValueError,
        "counts: expected non-negative integers",
    ),
    (
        "subnetwork-counts-shape",
        lambda: greedy.subnetwork(_two_layer_variables(), np.ones(3, int)),
        ValueError,
        r"counts: expected shape \(4,\), one entry per neuron, got \(3,\)",
    ),
    (
        "selection-loss-name",
        lambda: greedy.selection_loss("hinge", np.ones(3), np.ones(3)),
        ValueError,
        r"loss: expected one of \('squared'",
    ),
    (
        "selection-loss-shapes",
        lambda: greedy.selection_loss("squared", np.ones(3), np.ones(4)),
        ValueError,
        r"y: expected shape \(3,\) for outputs u \(3,\), got \(4,\)",
    ),
    (
        "gates-eps-negative",
        lambda: _gate_selection(eps=-0.1),
        ValueError,
        r"eps: expected a number in \[0, inf\]",
    ),
    (
        "gates-eps-nan",
        lambda: _gate_selection(eps=float("nan")),
        ValueError,
        "eps: expected a finite number, got nan",
    ),
    (
        "gates-eps-and-budgets",
        lambda: _gate_selection(eps=0.1, keep_per_layer=(1, 1)),
        ValueError,
        "eps: pass exactly one of eps",
    ),
    (
        "gates-no-batches",
        lambda: _gate_selection(iter([])),
        ValueError,
        "batches: expected prepared minibatches, got none",
    ),
    (
        "gates-batches-exhausted",
        lambda: _gate_selection([{"y": np.ones(5)}] * 2, keep_per_layer=(3, 2)),
        ValueError,
        "batches: exhausted after 2",
    ),
    (
        "gates-batches-not-iterable",
        lambda: _gate_selection(3),
        TypeError,
        r"batches: expected an iterable of prepared minibatches, got 3 \(int\)",
    ),
    (
        "gates-budget-above-layer",
        lambda: _gate_selection(keep_per_layer=(1, 3)),
        ValueError,
        r"keep_per_layer\[1\]: 3 exceeds",
    ),
    (
        "gates-budget-zero",
        lambda: _gate_selection(keep_per_layer=(0, 1)),
        ValueError,
        r"keep_per_layer\[0\]: expected a positive int, got 0",
    ),
    (
        "gates-budget-float",
        lambda: _gate_selection(keep_per_layer=(1.5, 1)),
        TypeError,
        r"keep_per_layer\[0\]: expected a positive int, got 1\.5",
    ),
    (
        "gates-budget-count",
        lambda: _gate_selection(keep_per_layer=(1,)),
        ValueError,
        r"keep_per_layer: expected 2 counts \(one per searched layer\), got 1",
    ),
    (
        "gates-layer-name",
        lambda: _gate_selection(layers=["conv_9"]),
        ValueError,
        "layers: unknown layer name",
    ),
    (
        "gates-layers-repeated",
        lambda: _gate_selection(layers=[1, 1]),
        ValueError,
        "layers: expected distinct",
    ),
    (
        "gates-layer-index",
        lambda: _gate_selection(layers=[3]),
        ValueError,
        "layers: layer index 3 out of range for 2 layers",
    ),
    (
        "gates-candidates-without-key",
        lambda: _gate_selection(max_candidates=2),
        ValueError,
        "key: a PRNG key is required with max_candidates",
    ),
    (
        "gates-criterion",
        lambda: _gate_selection(criterion="loss"),
        ValueError,
        r"criterion: expected one of",
    ),
    (
        "gates-chunk-size",
        lambda: _gate_selection(chunk_size=0),
        ValueError,
        "chunk_size: expected a positive int, got 0",
    ),
    (
        "gates-alive-shape",
        lambda: _gate_selection(alive=np.ones(4, bool)),
        ValueError,
        r"alive: expected a boolean array of shape \(5,\)",
    ),
    (
        "gates-layout-a-dict",
        lambda: greedy.greedy_gate_selection(_gated_regression, np.ones(4), {}, [], eps=0.1),
        TypeError,
        "layout: expected a GroupLayout, got dict",
    ),
    (
        "gates-evaluation-not-callable",
        lambda: greedy.greedy_gate_selection(None, np.ones(4), ONE_LAYER, [], eps=0.1),
        TypeError,
        "gated_eval: expected a callable, got NoneType",
    ),
    (
        "gates-nan-loss",
        lambda: _gate_selection([{"y": np.full(4, np.nan)}] * 4, layout=ONE_LAYER),
        ValueError,
        r"loss: NaN at layer 'dense', step 0",
    ),
    (
        "gates-accuracy-missing",
        lambda: _gate_selection([REGRESSION_BATCH] * 4, layout=ONE_LAYER, criterion="accuracy"),
        ValueError,
        "criterion: 'accuracy' needs an accuracy",
    ),
    (
        "flat-gates-pieces",
        lambda: greedy.flat_gates([jnp.ones(4), jnp.ones(2)], ONE_LAYER),
        ValueError,
        "pieces: expected 1 per-layer pieces, got 2",
    ),
    (
        "channels-model-without-gates",
        lambda: greedy.greedy_channel_selection(
            build_model("cnn", num_outputs=3, input_shape=(8, 8, 3)), {}, [], eps=0.1
        ),
        ValueError,
        "model: 'cnn' takes no per-group gates",
    ),
    (
        "channels-model-of-heads",
        lambda: greedy.greedy_channel_selection(
            build_model("bert", num_outputs=32, input_shape=(8,)), {}, [], eps=0.1
        ),
        ValueError,
        "model: its group kind 'heads'",
    ),
    (
        "channels-model-a-module",
        lambda: greedy.greedy_channel_selection(MLP(hidden=(3,), num_outputs=2), {}, [], eps=0.1),
        TypeError,
        r"model: expected a jaxprune\.train\.Bound",
    ),
    (
        "channels-variables",
        lambda: greedy.greedy_channel_selection(
            build_model("mlp", num_outputs=2, input_shape=(3,), preset="4"), [], [], eps=0.1
        ),
        TypeError,
        r"variables: expected a mapping with 'params'",
    ),
    (
        "channels-loss",
        lambda: greedy.greedy_channel_selection(
            build_model("mlp", num_outputs=2, input_shape=(3,), preset="4"),
            {"params": {}},
            [],
            eps=0.1,
            loss="cross_entropy",
        ),
        TypeError,
        "loss: expected a callable or None, got str",
    ),
    (
        "channels-finetune",
        lambda: greedy.greedy_channel_selection(
            build_model("mlp", num_outputs=2, input_shape=(3,), preset="4"),
            {"params": {}},
            [],
            eps=0.1,
            finetune=1,
        ),
        TypeError,
        "finetune: expected a callable or None, got int",
    ),
]


@table(GREEDY_CASES)
def test_methods_greedy_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.methods.importance

P, N, SIGMA = 200, 120, 0.1  # the scaled linear model of the linear-risk tests
THETA_BAR = decaying_theta(P)
SMALL_PARAMS = {"w": np.linspace(-1.0, 1.0, 5), "v": np.array([0.5, -0.3, 0.2])}
NETWORK_IDS = {  # a 3-4-2 network's hidden units, in the structure of another model
    "hidden": {"kernel": np.arange(4, dtype=np.int32)[None, :], "bias": np.arange(4)},
    "out": {"kernel": np.arange(4, dtype=np.int32)[:, None], "bias": np.full(1, -1)},
}


def _small_loss(params):
    """A non-separable loss of 8 weights."""
    w = jnp.concatenate([params["w"], params["v"]])
    return jnp.sum(jnp.tanh(w) ** 2) + 0.1 * jnp.sum(w[:4] * w[4:])


def _nan_when_first_weight_is_zero(params):
    return jnp.sum(params["w"] ** 2) + jnp.where(params["w"][0] == 0, jnp.nan, 0.0)


def _linear_risk(function, **change):
    kwargs = {
        "lam_diag": np.ones(P),
        "theta_bar": THETA_BAR,
        "n": N,
        "sigma": SIGMA,
        "keep": [1],
        "method": "magnitude",
        "key": KEY,
        "num_draws": 2,
        **change,
    }
    if function is importance.empirical_risk:
        kwargs["num_trials"] = kwargs.pop("num_draws")
    return function(**kwargs)


@functools.cache
def _two_layer_net():
    """A float32 two-layer ReLU net: ``(params, apply, cross_entropy, x)``."""
    model = TwoLayer(TwoLayerConfig(input_dim=3, width=5, num_outputs=2))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    params = model.init(KEY, x)["params"]
    labels = jnp.array([0, 1, 0, 1, 1, 0])

    def apply(params, inputs):
        return model.apply({"params": params}, inputs)

    def cross_entropy(params):
        logits = jax.nn.log_softmax(apply(params, x))
        return -jnp.mean(jnp.take_along_axis(logits, labels[:, None], 1))

    return params, apply, cross_entropy, x


LINEAR_RISK_CASES = [
    ("n-not-below-p", {"n": P}, ValueError, "n: expected fewer examples"),
    ("n-kappa", {"n": 2 * P}, ValueError, "κ = 0.5"),
    ("n-zero", {"n": 0}, ValueError, "n: expected a positive int"),
    ("n-float", {"n": 1.5}, TypeError, "n: expected a positive int"),
    ("sigma-negative", {"sigma": -0.1}, ValueError, "sigma"),
    ("sigma-nan", {"sigma": np.nan}, ValueError, "sigma"),
    ("lam-negative", {"lam_diag": -np.ones(P)}, ValueError, "lam_diag: expected positive"),
    ("lam-zero", {"lam_diag": np.r_[0.0, np.ones(P - 1)]}, ValueError, "lam_diag: expected pos"),
    ("lam-inf", {"lam_diag": np.r_[np.inf, np.ones(P - 1)]}, ValueError, "lam_diag: expected fin"),
    ("lam-shape", {"lam_diag": np.ones(P - 1)}, ValueError, "theta_bar: expected shape"),
    ("theta-nan", {"theta_bar": np.full(P, np.nan)}, ValueError, "theta_bar: expected finite"),
    ("keep-negative", {"keep": [-1]}, ValueError, r"keep: expected sizes in \[0, p=200\]"),
    ("keep-above-p", {"keep": [P + 1]}, ValueError, r"keep: .*, got \[201\]"),
    ("keep-float", {"keep": [1.5]}, TypeError, "keep: expected ints"),
    ("keep-empty", {"keep": []}, ValueError, "keep: expected a non-empty"),
    ("method", {"method": "random"}, ValueError, "method: expected one of"),
]

IMPORTANCE_CASES = [
    *[
        (f"{function.__name__}-{name}", functools.partial(_linear_risk, function, **change), e, m)
        for function in (importance.predicted_risk, importance.empirical_risk)
        for name, change, e, m in LINEAR_RISK_CASES
    ],
    (
        "predicted-risk-num-draws",
        functools.partial(_linear_risk, importance.predicted_risk, num_draws=1),
        ValueError,
        "num_draws",
    ),
    (
        "empirical-risk-num-trials",
        functools.partial(_linear_risk, importance.empirical_risk, method="hessian", num_draws=1),
        ValueError,
        "num_trials",
    ),
    (
        "leading-test-importance",
        lambda: importance.leading_test_importance(
            np.ones(P), THETA_BAR, sigma=SIGMA, leading=[P + 1]
        ),
        ValueError,
        "leading: expected sizes",
    ),
    (
        "identity-risk-n",
        lambda: importance.identity_risk(THETA_BAR, n=P, sigma=SIGMA),
        ValueError,
        "n: expected fewer",
    ),
    (
        "sample-auxiliary-type",
        lambda: importance.sample_auxiliary((1.0, 2.0), KEY, 3),
        TypeError,
        "aux: expected an AuxiliaryDistribution",
    ),
    (
        "population-loss-theta",
        lambda: importance.population_loss(np.ones(P + 1), np.ones(P), THETA_BAR, SIGMA),
        ValueError,
        "theta: expected shape",
    ),
    (
        "population-loss-sigma",
        lambda: importance.population_loss(np.ones(5), np.ones(5), np.ones(5), -1.0),
        ValueError,
        r"sigma: expected a number in \[0, inf\], got -1",
    ),
    (
        "min-norm-x-nan",
        lambda: importance.min_norm_solution(np.full((3, 5), np.nan), np.ones(3)),
        ValueError,
        "x: expected finite",
    ),
    (
        "min-norm-y-shape",
        lambda: importance.min_norm_solution(np.ones((3, 5)), np.ones(4)),
        ValueError,
        r"y: expected shape \(3,\)",
    ),
    (
        "min-norm-x-vector",
        lambda: importance.min_norm_solution(np.ones(3), np.ones(3)),
        ValueError,
        r"x: expected a 2-D \(n, p\) array, got shape \(3,\)",
    ),
    (
        "pruning-masks-theta",
        lambda: importance.pruning_masks(np.ones(P - 1), np.ones(P), keep=[1], method="hessian"),
        ValueError,
        r"theta: expected shape \(200,\)",
    ),
    (
        "natural-pruning-keep-negative",
        lambda: importance.natural_pruning(_small_loss, SMALL_PARAMS, -1),
        ValueError,
        "keep: expected an int >= 0",
    ),
    (
        "natural-pruning-keep-above",
        lambda: importance.natural_pruning(_small_loss, SMALL_PARAMS, 9),
        ValueError,
        "keep: expected an int in",
    ),
    (
        "prune-keep-above",
        lambda: importance.prune(SMALL_PARAMS, np.zeros(8), 9),
        ValueError,
        "keep: expected an int in",
    ),
    (
        "prune-keep-float",
        lambda: importance.prune(SMALL_PARAMS, np.zeros(8), 1.5),
        TypeError,
        "keep",
    ),
    (
        "prune-scores-shape",
        lambda: importance.prune(SMALL_PARAMS, np.zeros(7), 2),
        ValueError,
        r"scores: expected shape \(8,\)",
    ),
    (
        "prune-scores-nan",
        lambda: importance.prune(SMALL_PARAMS, np.full(8, np.nan), 2),
        ValueError,
        "scores: NaN",
    ),
    (
        "natural-pruning-method",
        lambda: importance.natural_pruning(_small_loss, SMALL_PARAMS, 2, method="best"),
        ValueError,
        "method: expected one of",
    ),
    (
        "hessian-importance-method",
        lambda: importance.hessian_importance(_small_loss, SMALL_PARAMS, None, method="lanczos"),
        ValueError,
        "method: expected one of",
    ),
    (
        "hessian-importance-probes-without-hutchinson",
        lambda: importance.hessian_importance(_small_loss, SMALL_PARAMS, None, num_probes=4),
        ValueError,
        "key and num_probes are for method='hutchinson'",
    ),
    (
        "hessian-importance-hutchinson-without-probes",
        lambda: importance.hessian_importance(_small_loss, SMALL_PARAMS, None, method="hutchinson"),
        ValueError,
        "needs both key and num_probes",
    ),
    (
        "hessian-importance-nan-params",
        lambda: importance.hessian_importance(
            _small_loss, {**SMALL_PARAMS, "w": np.full(5, np.nan)}, None
        ),
        ValueError,
        r"params\['w'\]: 5 " + NONFINITE,
    ),
    (
        "natural-importance-group-ids-structure",
        lambda: importance.natural_importance(_small_loss, SMALL_PARAMS, NETWORK_IDS),
        ValueError,
        "group_ids must have the same pytree structure",
    ),
    (
        "natural-importance-chunk-size",
        lambda: importance.natural_importance(_small_loss, SMALL_PARAMS, None, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    (
        "natural-importance-reference-structure",
        lambda: importance.natural_importance(
            _small_loss, SMALL_PARAMS, None, reference={"w": np.zeros(5)}
        ),
        ValueError,
        "reference: expected a pytree with the structure",
    ),
    (
        "natural-importance-reference-nan",
        lambda: importance.natural_importance(
            _small_loss, SMALL_PARAMS, None, reference={**SMALL_PARAMS, "w": np.full(5, np.nan)}
        ),
        ValueError,
        r"reference\['w'\]: 5 " + NONFINITE,
    ),
    (
        "natural-importance-set-structure",
        lambda: importance.natural_importance(_small_loss, SMALL_PARAMS, [{"w": True}]),
        ValueError,
        r"group_ids\[0\]: a set must have the pytree structure",
    ),
    (
        "natural-importance-set-shape",
        lambda: importance.natural_importance(
            _small_loss, SMALL_PARAMS, [{"w": np.ones(2, bool), "v": True}]
        ),
        ValueError,
        r"group_ids\[0\]: a leaf of shape \(2,\) does not broadcast",
    ),
    (
        "natural-importance-no-sets",
        lambda: importance.natural_importance(_small_loss, SMALL_PARAMS, []),
        ValueError,
        "non-empty sequence",
    ),
    (
        "natural-importance-loss-not-callable",
        lambda: importance.natural_importance(None, SMALL_PARAMS, None),
        TypeError,
        "loss_fn: expected a callable, got NoneType",
    ),
    (
        "natural-pruning-sets",
        lambda: importance.natural_pruning(
            _small_loss, SMALL_PARAMS, 2, group_ids=[{"w": True, "v": False}]
        ),
        TypeError,
        "needs a group-id pytree",
    ),
    (
        "natural-importance-vector-loss",
        lambda: importance.natural_importance(lambda q: q["w"] * 2, SMALL_PARAMS, None),
        ValueError,
        "loss_fn: expected a scalar loss",
    ),
    (
        "natural-importance-nan-with-group-replaced",
        lambda: importance.natural_importance(_nan_when_first_weight_is_zero, SMALL_PARAMS, None),
        ValueError,
        r"loss_fn: NaN loss with groups \[3\] replaced",  # w[0] is weight 3 (after v)
    ),
    (
        "natural-pruning-nan-greedy",
        lambda: importance.natural_pruning(
            _nan_when_first_weight_is_zero, SMALL_PARAMS, 7, method="greedy"
        ),
        ValueError,
        "NaN loss during greedy elimination",
    ),
    (
        "natural-pruning-nan-exact",
        lambda: importance.natural_pruning(
            _nan_when_first_weight_is_zero, SMALL_PARAMS, 7, method="exact"
        ),
        ValueError,
        r"NaN loss on 1 of 8 supports, e.g. keeping groups \[0, 1, 2, 4, 5, 6, 7\]",
    ),
    (
        "natural-importance-nan-loss",
        lambda: importance.natural_importance(lambda q: jnp.nan * q["w"].sum(), SMALL_PARAMS, None),
        ValueError,
        "the loss of params is nan",
    ),
    (
        "magnitude-importance-nan",
        lambda: importance.magnitude_importance({**SMALL_PARAMS, "w": np.array([np.nan])}, None),
        ValueError,
        r"params\['w'\]: 1 " + NONFINITE,
    ),
    (
        "natural-pruning-exact-limit",
        lambda: importance.natural_pruning(jnp.sum, np.zeros(40), 20, method="exact"),
        ValueError,
        "EXACT_SUPPORT_LIMIT",
    ),
    (
        "from-gates-num-groups",
        lambda: importance.natural_importance_from_gates(jnp.sum, 0),
        ValueError,
        "num_groups: expected a positive int, got 0",
    ),
    (
        "from-gates-num-groups-float",
        lambda: importance.natural_importance_from_gates(jnp.sum, 9.0),
        TypeError,
        "num_groups",
    ),
    (
        "from-gates-chunk-size",
        lambda: importance.natural_importance_from_gates(jnp.sum, 9, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    (
        "from-gates-not-callable",
        lambda: importance.natural_importance_from_gates("loss", 9),
        TypeError,
        "gated_loss_fn: expected a callable",
    ),
    (
        "from-gates-vector-loss",
        lambda: importance.natural_importance_from_gates(lambda g: g * 2, 3),
        ValueError,
        "gated_loss_fn: expected a scalar loss",
    ),
    (
        "from-gates-nan-with-group-replaced",
        lambda: importance.natural_importance_from_gates(
            lambda g: jnp.sum(g) + jnp.where(g[2] == 0, jnp.nan, 0.0), 4
        ),
        ValueError,
        r"gated_loss_fn: NaN loss with groups \[2\] replaced",
    ),
    (
        "from-gates-inf-loss",
        lambda: importance.natural_importance_from_gates(lambda g: jnp.sum(g) / 0.0, 4),
        ValueError,
        "gated_loss_fn: the loss of all gates 1 is inf",
    ),
    (
        "dense-inputs-shapes",
        lambda: importance.natural_importance_of_dense_inputs(jnp.sum, np.ones((3, 4)), np.ones(4)),
        ValueError,
        r"inputs, kernel: expected shapes \(..., p\) and \(p, m\)",
    ),
    (
        "dense-inputs-mismatch",
        lambda: importance.natural_importance_of_dense_inputs(
            jnp.sum, np.ones((3, 4)), np.ones((5, 2))
        ),
        ValueError,
        r"got \(3, 4\) and \(5, 2\)",
    ),
    (
        "dense-inputs-empty",
        lambda: importance.natural_importance_of_dense_inputs(
            jnp.sum, np.ones((3, 0)), np.ones((0, 2))
        ),
        ValueError,
        "kernel: expected p >= 1",
    ),
    (
        "dense-inputs-nan",
        lambda: importance.natural_importance_of_dense_inputs(
            jnp.sum, np.array([[1.0, np.nan]]), np.ones((2, 2))
        ),
        ValueError,
        "inputs: 1 non-finite",
    ),
    (
        "dense-kernel-inf",
        lambda: importance.natural_importance_of_dense_inputs(
            jnp.sum, np.ones((3, 2)), np.full((2, 2), np.inf)
        ),
        ValueError,
        "kernel: 4 non-finite",
    ),
    (
        "dense-loss-not-callable",
        lambda: importance.natural_importance_of_dense_inputs(
            None, np.ones((3, 2)), np.ones((2, 2))
        ),
        TypeError,
        "loss_of_outputs: expected a callable",
    ),
    (
        "dense-vector-loss",
        lambda: importance.natural_importance_of_dense_inputs(
            lambda z: z, np.ones((3, 2)), np.ones((2, 2))
        ),
        ValueError,
        "loss_of_outputs: expected a scalar loss",
    ),
    (
        "dense-chunk-size",
        lambda: importance.natural_importance_of_dense_inputs(
            jnp.sum, np.ones((3, 2)), np.ones((2, 2)), chunk_size=-1
        ),
        ValueError,
        "chunk_size",
    ),
    (
        "default-chunk-size",
        lambda: importance.default_chunk_size(0),
        ValueError,
        "num_params: expected a positive int, got 0",
    ),
    *[
        (f"theorem43-{name}", functools.partial(importance.theorem43_bounds, *args), ValueError, m)
        for name, args, m in [
            ("eta-large", ([1.0], [2.0], 1.0, 0, 1.0), "eta"),
            ("eta-zero", ([1.0], [2.0], 0.0, 0, 1.0), "eta"),
            ("mu-sum", ([0.0, 0.0], [1.0, 1.0], 0.1, 0, 1.0), "sum"),
            ("smoothness", ([2.0], [1.0], 0.1, 0, 1.0), "L_i >= mu_i"),
            ("shapes", ([1.0], [2.0, 3.0], 0.1, 0, 1.0), "shape"),
            ("mu-negative", ([-1.0], [2.0], 0.1, 0, 1.0), "mu"),
            ("tau-negative", ([1.0], [2.0], 0.1, -1, 1.0), "tau"),
            ("tau-float", ([1.0], [2.0], 0.1, 1.5, 1.0), "tau"),
            ("loss0", ([1.0], [2.0], 0.1, 0, -1.0), "loss0"),
            ("mu-nan", ([float("nan")], [2.0], 0.1, 0, 1.0), "mu"),
        ]
    ],
    ("lemma41-zero", lambda: importance.lemma41_factors(0.0), ValueError, "lam"),
    ("lemma41-nan", lambda: importance.lemma41_factors(float("nan")), ValueError, "lam"),
    ("lemma41-str", lambda: importance.lemma41_factors("2"), TypeError, "lam"),
    (
        "layer-group-ids",
        lambda: importance.layer_group_ids({"dense": {"kernel": np.ones(3)}}),
        ValueError,
        "params",
    ),
    (
        "layer-quantities-method",
        lambda: importance.layer_quantities(
            _two_layer_net()[2], _two_layer_net()[0], KEY, method="diagonal"
        ),
        ValueError,
        "method",
    ),
    (
        "layer-quantities-num-probes",
        lambda: importance.layer_quantities(
            _two_layer_net()[2], _two_layer_net()[0], KEY, num_probes=0
        ),
        ValueError,
        "num_probes",
    ),
    (
        "layer-quantities-nan-params",
        lambda: importance.layer_quantities(
            _two_layer_net()[2],
            jax.tree_util.tree_map(lambda a: a.at[0, 0].set(jnp.nan), _two_layer_net()[0]),
            KEY,
        ),
        ValueError,
        "non-finite",
    ),
    (
        "ppls-loss-scale",
        lambda: importance.ppls_constants(
            _two_layer_net()[1],
            _two_layer_net()[0],
            _two_layer_net()[3],
            importance.layer_group_ids(_two_layer_net()[0]),
            loss_scale=0.0,
        ),
        ValueError,
        "loss_scale",
    ),
    (
        "ppls-backend",
        lambda: importance.ppls_constants(
            _two_layer_net()[1],
            _two_layer_net()[0],
            _two_layer_net()[3],
            importance.layer_group_ids(_two_layer_net()[0]),
            backend="dense",
        ),
        ValueError,
        "backend",
    ),
    (
        "ppls-x-a-list",
        lambda: importance.ppls_constants(
            _two_layer_net()[1],
            _two_layer_net()[0],
            [1.0, 2.0],
            importance.layer_group_ids(_two_layer_net()[0]),
        ),
        TypeError,
        "x",
    ),
]


@table(IMPORTANCE_CASES)
def test_methods_importance_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.methods.directional

W = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0]])}
S = {"a": jnp.array([0.5, 1.0, -1.0]), "b": jnp.array([[0.0]])}
W0 = {"a": jnp.array(2.0), "b": jnp.array(0.5)}
W1 = {"a": jnp.array(0.5), "b": jnp.array(2.0)}


def _valley_loss(p, target=1.0):
    return (p["a"] * p["b"] - target) ** 2


def _fit_bezier(loss=_valley_loss, **options):
    return directional.fit_bezier_midpoint(
        loss, W0, W1, KEY, **{"num_steps": 2, "learning_rate": 0.1, **options}
    )


@functools.cache
def _tiny_mlp():
    params, x, y = tiny_mlp_problem(np.random.default_rng(3))
    params = jax.tree.map(jnp.asarray, params)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((tiny_mlp_apply(p, x) - y) ** 2, axis=-1))

    return params, loss


DIRECTIONAL_CASES = [
    (
        "solution-lam-negative",
        lambda: directional.directional_pruning_solution(W, S, -1.0),
        ValueError,
        r"lam: expected a number in \[0, inf\], got -1",
    ),
    (
        "solution-lam-nan",
        lambda: directional.directional_pruning_solution(W, S, float("nan")),
        ValueError,
        "lam: expected a finite number, got nan",
    ),
    (
        "solution-lam-a-string",
        lambda: directional.directional_pruning_solution(W, S, "1"),
        TypeError,
        "lam: expected a real number, got '1'",
    ),
    (
        "solution-structure",
        lambda: directional.directional_pruning_solution(W, {"a": S["a"]}, 1.0),
        ValueError,
        "scores: expected the pytree structure of w_sgd",
    ),
    (
        "solution-shape",
        lambda: directional.directional_pruning_solution(
            {"a": jnp.ones(3)}, {"a": jnp.ones(2)}, 1.0
        ),
        ValueError,
        r"scores\['a'\]: expected shape \(3,\) \(as in w_sgd\), got \(2,\)",
    ),
    (
        "solution-scores-nan",
        lambda: directional.directional_pruning_solution(
            W, {**S, "a": S["a"].at[1].set(jnp.nan)}, 1.0
        ),
        ValueError,
        r"scores\['a'\]: 1 " + NONFINITE,
    ),
    (
        "solution-weights-inf",
        lambda: directional.directional_pruning_solution({**W, "b": W["b"] * jnp.inf}, S, 1.0),
        ValueError,
        r"w_sgd\['b'\]: 1 " + NONFINITE,
    ),
    (
        "projection-not-orthonormal",
        lambda: directional.projection_scores({"w": jnp.ones(4)}, {"w": jnp.ones((2, 4))}),
        ValueError,
        "orthonormal",
    ),
    (
        "projection-no-leading-axis",
        lambda: directional.projection_scores({"w": jnp.ones(4)}, {"w": jnp.ones(4)}),
        ValueError,
        "leading axis",
    ),
    (
        "projection-structure",
        lambda: directional.projection_scores({"w": jnp.ones(4)}, {"v": jnp.eye(4)[:1]}),
        ValueError,
        "structure",
    ),
    (
        "flat-directions-k",
        lambda: directional.flat_direction_scores(_tiny_mlp()[1], _tiny_mlp()[0], KEY, k=0),
        ValueError,
        "k: expected a positive int, got 0",
    ),
    (
        "flat-directions-nan-params",
        lambda: directional.flat_direction_scores(
            _tiny_mlp()[1],
            {**_tiny_mlp()[0], "b1": _tiny_mlp()[0]["b1"].at[0].set(jnp.nan)},
            KEY,
            k=1,
        ),
        ValueError,
        r"params\['b1'\]: 1 " + NONFINITE,
    ),
    (
        "eigenspace-fraction-k",
        lambda: directional.top_eigenspace_fraction(
            {"a": np.ones((3, 2)), "b": np.ones(5)},
            {"a": np.zeros((4, 3, 2)), "b": np.zeros((3, 5))},
        ),
        ValueError,
        "leaves disagree",
    ),
    (
        "bezier-t-outside",
        lambda: directional.bezier_point(W0, W0, W1, 2.0),
        ValueError,
        r"t: expected a number in \[0, 1\], got 2",
    ),
    (
        "bezier-structure",
        lambda: directional.bezier_point(W0, {"a": W0["a"]}, W1, 0.5),
        ValueError,
        "theta: expected the pytree structure of w0",
    ),
    (
        "line-losses-ts-2d",
        lambda: directional.line_losses(_valley_loss, W0, W1, jnp.zeros((2, 2))),
        ValueError,
        r"ts must be a 1-D array of points in \[0, 1\], got shape \(2, 2\)",
    ),
    (
        "line-losses-ts-outside",
        lambda: directional.line_losses(_valley_loss, W0, W1, jnp.array([0.0, 1.5])),
        ValueError,
        r"ts: expected points in \[0, 1\], got \[1\.5\]",
    ),
    (
        "curve-losses-ts-nan",
        lambda: directional.curve_losses(_valley_loss, W0, W0, W1, jnp.array([0.5, jnp.nan])),
        ValueError,
        r"ts: expected points in \[0, 1\], got \[nan\]",
    ),
    (
        "fit-bezier-batches-ran-out",
        lambda: _fit_bezier(num_steps=5, batches=iter([jnp.array(1.0)] * 3)),
        ValueError,
        "batches ran out after 3 batches; expected num_steps = 5",
    ),
    (
        "fit-bezier-batches-empty",
        lambda: _fit_bezier(batches=[]),
        ValueError,
        "batches is empty; expected at least one batch",
    ),
    (
        "fit-bezier-num-steps",
        lambda: _fit_bezier(num_steps=0),
        ValueError,
        "num_steps: expected a positive int, got 0",
    ),
    (
        "fit-bezier-learning-rate",
        lambda: _fit_bezier(learning_rate=0.0),
        ValueError,
        r"learning_rate: expected a number in \(0, inf\), got 0",
    ),
    (
        "fit-bezier-endpoints",
        lambda: directional.fit_bezier_midpoint(
            _valley_loss, W0, {"a": W1["a"]}, KEY, num_steps=1, learning_rate=0.1
        ),
        ValueError,
        "w1: expected the pytree structure of w0",
    ),
    (
        "fit-bezier-vector-loss",
        lambda: _fit_bezier(lambda p: jnp.stack([p["a"], p["b"]])),
        ValueError,
        r"loss_fn: expected a scalar loss \(shape \(\)\), got an output of shape \(2,\)",
    ),
    (
        "fit-bezier-nan-loss",
        lambda: _fit_bezier(lambda p: _valley_loss(p) * jnp.nan),
        ValueError,
        "loss_fn: expected a finite loss on the straight line, got nan",
    ),
]


@table(DIRECTIONAL_CASES)
def test_methods_directional_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_directional_traced_values_skip_the_checks():
    # Under jit the scores, lam, t and ts are traced: no value check, the same results.
    out = jax.jit(directional.directional_pruning_solution)(W, S, 2.0)
    np.testing.assert_array_equal(np.asarray(out["a"]), [0.0, 0.0, 2.5])
    mid = jax.jit(lambda t: directional.bezier_point(W0, W0, W1, t))(0.5)
    assert float(mid["a"]) == pytest.approx(0.75 * 2.0 + 0.25 * 0.5)


# ---------------------------------------------------------------------------------------------
# jaxprune.optim

OPT_PARAMS = {"w": jnp.ones(3)}


def _update(tx, updates=OPT_PARAMS, params=OPT_PARAMS):
    return tx.update(updates, tx.init(OPT_PARAMS), params)


def _set_mask(mask):
    return set_mask(masked(optax.sgd(0.1)).init(OPT_PARAMS), mask)


GRDA_CASES = [
    ("c-negative", {"c": -1.0}, ValueError, r"c: expected a number in \[0, inf\], got -1"),
    ("c-nan", {"c": float("nan")}, ValueError, "c: expected a finite number, got nan"),
    ("c-a-string", {"c": "big"}, TypeError, "c: expected a real number"),
    ("mu-zero", {"mu": 0.0}, ValueError, r"mu: expected a number in \(0, inf\), got 0"),
    ("mu-negative", {"mu": -0.5}, ValueError, r"mu: expected a number in \(0, inf\)"),
    ("mu-nan", {"mu": float("nan")}, ValueError, "mu: expected a finite number, got nan"),
    ("lr-zero", {"learning_rate": 0.0}, ValueError, r"learning_rate: expected a number in \(0"),
    ("lr-negative", {"learning_rate": -0.1}, ValueError, r"learning_rate: expected a number in"),
    ("lr-nan", {"learning_rate": float("nan")}, ValueError, "learning_rate: expected a finite"),
    ("lr-inf", {"learning_rate": float("inf")}, ValueError, "learning_rate: expected a finite"),
    ("lr-a-string", {"learning_rate": "0.1"}, TypeError, "learning_rate: expected a real number"),
    ("mask-leaf", {"mask": {"w": 1.5}}, TypeError, r"mask\['w'\]: expected a bool"),
    ("mask-array", {"mask": {"w": np.ones(3)}}, TypeError, r"mask\['w'\]: expected a bool"),
]

SET_MASK_CASES = [
    ("structure", {"v": np.ones(3)}, ValueError, r"new_mask must have the pytree structure"),
    ("length", {"w": np.ones(4)}, ValueError, r"new_mask\['w'\]: shape \(4,\) does not broadcast"),
    ("rank", {"w": np.ones((2, 3))}, ValueError, r"new_mask\['w'\]: shape \(2, 3\) does not"),
    ("fraction", {"w": np.array([1.0, 0.5, 0.0])}, ValueError, r"0 or 1, got 0.5"),
    ("nan", {"w": np.array([1.0, np.nan, 0.0])}, ValueError, r"0 or 1, got nan"),
    ("complex", {"w": np.ones(3, np.complex64)}, TypeError, r"new_mask\['w'\]: expected a bool"),
]

OPTIM_CASES = [
    *[
        (
            f"grda-{name}",
            functools.partial(grda, **{"learning_rate": 0.1, "c": 0.1, "mu": 0.6, **kwargs}),
            error,
            match,
        )
        for name, kwargs, error, match in GRDA_CASES
    ],
    *[
        (f"set-mask-{name}", functools.partial(_set_mask, mask), error, match)
        for name, mask, error, match in SET_MASK_CASES
    ],
    (
        "grda-update-needs-params",
        lambda: _update(grda(0.1, 0.1, 0.6), params=None),
        ValueError,
        "grda: update needs params",
    ),
    (
        "grda-mask-structure",
        lambda: grda(0.1, 0.1, 0.6, mask={"v": True}).init(OPT_PARAMS),
        ValueError,
        "mask must be a pytree of bools with the structure of the parameters",
    ),
    (
        "grda-updates-structure",
        lambda: _update(grda(0.1, 0.1, 0.6), updates={"v": jnp.ones(3)}),
        ValueError,
        r"updates: expected the pytree structure of the parameters, PyTreeDef\(\{'w': \*\}\)",
    ),
    (
        "grda-params-structure",
        lambda: _update(grda(0.1, 0.1, 0.6), params=[jnp.ones(3)]),
        ValueError,
        "params: expected the pytree structure of the parameters",
    ),
    (
        "grda-threshold-schedule",
        lambda: grda_threshold(0.1, 0.6, optax.constant_schedule(0.1), 3),
        TypeError,
        "learning_rate must be a constant here",
    ),
    (
        "grda-threshold-n-negative",
        lambda: grda_threshold(0.1, 0.6, 0.1, -1),
        ValueError,
        "n: expected an int >= 0, got -1",
    ),
    (
        "grda-threshold-n-float",
        lambda: grda_threshold(0.1, 0.6, 0.1, 2.0),
        TypeError,
        r"n: expected an int >= 0, got 2\.0",
    ),
    (
        "soft-threshold-negative",
        lambda: soft_threshold(OPT_PARAMS, -1.0),
        ValueError,
        "threshold: expected finite values >= 0, got -1.0",
    ),
    (
        "soft-threshold-nan",
        lambda: soft_threshold(OPT_PARAMS, float("nan")),
        ValueError,
        "threshold: expected finite values >= 0, got nan",
    ),
    (
        "soft-threshold-negative-entry",
        lambda: soft_threshold(OPT_PARAMS, np.array([0.1, -1.0, 0.2])),
        ValueError,
        "threshold: expected finite values >= 0",
    ),
    (
        "soft-threshold-a-string",
        lambda: soft_threshold(OPT_PARAMS, "1"),
        TypeError,
        "threshold: expected a real number or array, got '1'",
    ),
    (
        "masked-update-needs-params",
        lambda: _update(masked(optax.adam(1e-3)), params=None),
        ValueError,
        "masked: update needs params",
    ),
    (
        "masked-updates-structure",
        lambda: _update(masked(optax.sgd(0.1)), updates={"v": jnp.ones(3)}),
        ValueError,
        r"updates: expected the pytree structure of the parameters, PyTreeDef\(\{'w': \*\}\)",
    ),
    (
        "masked-params-structure",
        lambda: _update(masked(optax.sgd(0.1)), params={"w": jnp.ones(3), "b": jnp.ones(1)}),
        ValueError,
        "params: expected the pytree structure of the parameters",
    ),
    (
        "masked-inner-a-name",
        lambda: masked("adam"),
        TypeError,
        r"inner: expected an optax GradientTransformation \(e\.g\. optax\.adam\(1e-3\)\), got "
        r"'adam' \(str\)",
    ),
    (
        "masked-inner-a-factory",
        lambda: masked(optax.adam),
        TypeError,
        r"inner: expected an optax GradientTransformation .* \(function\)",
    ),
    (
        "masked-initial-mask-values",
        lambda: masked(optax.sgd(0.1), initial_mask={"w": np.full(3, 2.0)}).init(OPT_PARAMS),
        ValueError,
        r"initial_mask\['w'\]: mask entries must be 0 or 1, got 2.0",
    ),
    (
        "masked-initial-mask-structure",
        lambda: masked(optax.sgd(0.1), initial_mask=lambda p: {"v": 1}).init(OPT_PARAMS),
        ValueError,
        "initial_mask must have the pytree structure of the parameters",
    ),
    (
        "set-mask-state",
        lambda: set_mask(optax.sgd(0.1).init(OPT_PARAMS), {"w": np.ones(3)}),
        TypeError,
        r"state must be a MaskedState \(the state of masked\(\.\.\.\)\), got tuple",
    ),
    (
        "apply-mask-structure",
        lambda: apply_mask(OPT_PARAMS, [np.ones(3)]),
        ValueError,
        "mask must have the pytree structure of the parameters",
    ),
    (
        "apply-mask-nan",
        lambda: apply_mask(OPT_PARAMS, {"w": np.array([1.0, np.nan, 0.0])}),
        ValueError,
        r"mask\['w'\]: mask entries must be 0 or 1, got nan",
    ),
]


@table(OPTIM_CASES)
def test_optim_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_optim_traced_threshold_and_masks_skip_the_value_checks():
    # Inside jit the threshold and the mask are traced: their values cannot be checked.
    out = jax.jit(soft_threshold)(OPT_PARAMS, -1.0)
    np.testing.assert_array_equal(out["w"], [2.0, 2.0, 2.0])  # S_g with g < 0 grows |v|
    pruned = jax.jit(apply_mask)(OPT_PARAMS, {"w": jnp.array([1.0, 0.0, 1.0])})
    np.testing.assert_array_equal(pruned["w"], [1.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# jaxprune.models


def _shapes(module, x):
    """The variables of ``module`` on inputs like ``x``, as shapes (nothing computed)."""
    return _cached_shapes(module, jax.ShapeDtypeStruct(x.shape, x.dtype))


@functools.cache
def _cached_shapes(module, example):
    return jax.eval_shape(lambda: module.init(KEY, jnp.zeros(example.shape, example.dtype)))


def _zeros(module, x):
    """Variables of ``module`` (all zeros, for shape-only functions such as compaction)."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(module, x))


def _traced_apply(module, x, **kwargs):
    """``module.apply`` on the variables' shapes: the argument checks, nothing computed."""
    return jax.eval_shape(lambda v: module.apply(v, x, **kwargs), _shapes(module, x))


MLP_MODEL = MLP(hidden=(4, 3), num_outputs=2)
IMAGES8 = jnp.zeros((2, 8, 8, 3))
TWO_LAYER = two_layer.from_preset("tiny")  # 4 inputs, 8 hidden units
BERT = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=4,
    intermediate_size=24,
    max_length=12,
    dropout_rate=0.0,
)
SWITCH = switch.from_preset("tiny", vocab_size=50, max_length=12)
TOKENS = jnp.ones((2, 7), jnp.int32)
RESNET = resnet.from_preset("resnet-tiny")  # 4 + 8 + 16 = 28 inner filters
RESNET34 = resnet34.from_preset("resnet34-tiny", stem="cifar")  # 60 inner filters
MOBILENET = mobilenet_v2.from_preset("mobilenet_v2-tiny")  # 240 hidden channels


def _without(size, units):
    """A boolean keep mask of ``size`` groups without ``units`` (a slice: a whole block)."""
    keep = np.ones(size, bool)
    keep[units] = False
    return keep


MODEL_CONFIG_CASES = [
    (
        "bert-vocab-size",
        lambda: dataclasses.replace(BERT, vocab_size=0),
        ValueError,
        "vocab_size",
    ),
    ("bert-hidden-size", lambda: dataclasses.replace(BERT, hidden_size=-4), ValueError, "hidden"),
    ("bert-layers", lambda: dataclasses.replace(BERT, num_layers=0), ValueError, "num_layers"),
    ("bert-heads", lambda: dataclasses.replace(BERT, num_heads=3), ValueError, "num_heads"),
    ("bert-max-length", lambda: dataclasses.replace(BERT, max_length=0), ValueError, "max_length"),
    (
        "bert-type-vocab",
        lambda: dataclasses.replace(BERT, type_vocab_size=0),
        ValueError,
        "type_vocab_size",
    ),
    (
        "bert-dropout",
        lambda: dataclasses.replace(BERT, dropout_rate=1.0),
        ValueError,
        "dropout_rate",
    ),
    ("bert-dtype", lambda: dataclasses.replace(BERT, dtype=jnp.int32), ValueError, "dtype"),
    *[
        (
            f"bert-heads-per-layer-{heads}",
            functools.partial(dataclasses.replace, BERT, heads_per_layer=heads),
            ValueError,
            "heads_per_layer",
        )
        for heads in ((1,), (1, 5), (0, 1))
    ],
    (
        "bert-intermediate-float",
        lambda: dataclasses.replace(BERT, intermediate_size=2.5),
        TypeError,
        "intermediate_size",
    ),
    *[
        (
            f"switch-{field}-{value}",
            functools.partial(switch.from_preset, "tiny", **{field: value}),
            ValueError,
            field,
        )
        for field, value in [
            ("num_experts", 0),
            ("capacity_factor", 0.0),
            ("capacity_factor", -1.5),
            ("capacity_factor", float("nan")),
            ("num_heads", 5),
            ("hidden_size", 0),
            ("moe_every", 3),
            ("dropout_rate", 1.0),
            ("layer_heads", (4,)),
            ("layer_experts", (5,)),
        ]
    ],
    (
        "two-layer-input-dim",
        lambda: TwoLayerConfig(input_dim=0, width=4),
        ValueError,
        "input_dim: expected a positive int, got 0",
    ),
    (
        "two-layer-outputs",
        lambda: TwoLayerConfig(input_dim=3, width=4, num_outputs=0),
        ValueError,
        "num_outputs: expected a positive int",
    ),
    (
        "two-layer-activation",
        lambda: TwoLayerConfig(input_dim=3, width=4, activation="gelu"),
        ValueError,
        r"activation: expected one of \['relu', 'tanh'\], got 'gelu'",
    ),
    (
        "two-layer-dtype",
        lambda: TwoLayerConfig(input_dim=3, width=4, dtype=jnp.int8),
        ValueError,
        "dtype: expected a floating",
    ),
    (
        "two-layer-width-float",
        lambda: TwoLayerConfig(input_dim=3, width=2.5),
        TypeError,
        r"width: expected a positive int, got 2\.5",
    ),
    *[
        (
            f"two-layer-counts-{name}",
            functools.partial(two_layer.counts_to_gates, counts),
            ValueError,
            match,
        )
        for name, counts, match in [
            ("negative", np.array([1, -1, 2]), "counts: expected non-negative integers"),
            ("fractional", np.array([0.5, 1.0]), "counts: expected non-negative integers"),
            ("zero", np.zeros(3), "counts: every count is 0"),
            ("matrix", np.ones((2, 2)), "counts: expected a 1-D array"),
        ]
    ],
    (
        "vgg-channels-count",
        lambda: VGGConfig(channels=(64,) * 12),
        ValueError,
        "channels: expected 13 channel counts",
    ),
    (
        "vgg-channel-zero",
        lambda: VGGConfig(channels=(64,) * 12 + (0,)),
        ValueError,
        r"channels\[12\]: expected a positive int, got 0",
    ),
    (
        "vgg-classes",
        lambda: VGGConfig(num_classes=0),
        ValueError,
        "num_classes: expected a positive int, got 0",
    ),
    (
        "vgg-batch-norm",
        lambda: VGGConfig(batch_norm="yes"),
        ValueError,
        "batch_norm: expected a bool, got 'yes'",
    ),
    ("vgg-dtype", lambda: VGGConfig(dtype=jnp.int32), ValueError, "dtype: expected a floating"),
    (
        "vgg-width-multiplier",
        lambda: vgg.vgg16_channels(0.0),
        ValueError,
        r"width_multiplier: expected a finite number > 0, got 0\.0",
    ),
    (
        "resnet-blocks",
        lambda: ResNetConfig(blocks_per_stage=0),
        ValueError,
        "blocks_per_stage: expected a positive int, got 0",
    ),
    (
        "resnet-widths",
        lambda: ResNetConfig(widths=(16, 8)),
        ValueError,
        "widths: expected non-decreasing",
    ),
    (
        "resnet-inner",
        lambda: ResNetConfig(blocks_per_stage=1, inner_channels=(4, 4)),
        ValueError,
        "inner_channels: expected 3 entries",
    ),
    (
        "resnet-classes",
        lambda: ResNetConfig(num_classes=-1),
        ValueError,
        "num_classes: expected a positive int, got -1",
    ),
    (
        "resnet34-blocks",
        lambda: ResNet34Config(blocks_per_stage=(3, 4, 0, 3)),
        ValueError,
        r"blocks_per_stage\[2\]: expected a positive int, got 0",
    ),
    (
        "resnet34-no-blocks",
        lambda: ResNet34Config(blocks_per_stage=()),
        ValueError,
        "blocks_per_stage: expected a non-empty tuple",
    ),
    (
        "resnet34-widths",
        lambda: ResNet34Config(widths=(64, 128, 256)),
        ValueError,
        "widths: expected 4 stage widths",
    ),
    (
        "resnet34-width",
        lambda: ResNet34Config(widths=(64, 128, 256, -1)),
        ValueError,
        r"widths\[3\]: expected a positive int, got -1",
    ),
    (
        "resnet34-stem",
        lambda: ResNet34Config(stem="tiny"),
        ValueError,
        r"stem: expected one of \('imagenet', 'cifar'\), got 'tiny'",
    ),
    (
        "resnet34-stem-none",
        lambda: ResNet34Config(stem=None),
        TypeError,
        "stem: expected one of",
    ),
    (
        "resnet34-inner",
        lambda: ResNet34Config(inner_channels=(64,) * 15),
        ValueError,
        "inner_channels: expected 16 entries",
    ),
    (
        "resnet34-classes",
        lambda: ResNet34Config(num_classes=0),
        ValueError,
        "num_classes: expected a positive int, got 0",
    ),
    (
        "resnet34-dtype",
        lambda: ResNet34Config(dtype=jnp.int32),
        ValueError,
        "dtype: expected a floating compute dtype",
    ),
    (
        "mobilenet-width-multiplier",
        lambda: MobileNetV2Config(width_multiplier=0.0),
        ValueError,
        r"width_multiplier: expected a number in \(0, inf\), got 0",
    ),
    (
        "mobilenet-width-multiplier-nan",
        lambda: MobileNetV2Config(width_multiplier=float("nan")),
        ValueError,
        "width_multiplier: expected a finite number, got nan",
    ),
    (
        "mobilenet-stage-fields",
        lambda: MobileNetV2Config(stages=((6, 24, 2),)),
        ValueError,
        r"stages\[0\]: expected \(expansion, channels, repeats, stride\)",
    ),
    (
        "mobilenet-stage-repeats",
        lambda: MobileNetV2Config(stages=((6, 24, 0, 1),)),
        ValueError,
        r"stages\[0\].repeats: expected a positive int, got 0",
    ),
    (
        "mobilenet-no-stages",
        lambda: MobileNetV2Config(stages=()),
        ValueError,
        "stages: expected a non-empty tuple",
    ),
    (
        "mobilenet-hidden-count",
        lambda: MobileNetV2Config(hidden_channels=(32,) * 16),
        ValueError,
        r"hidden_channels: expected 17 entries \(one per block\), got 16",
    ),
    (
        "mobilenet-hidden-expansion-one",
        lambda: MobileNetV2Config(hidden_channels=(16, *(96,) * 16)),
        ValueError,
        r"hidden_channels\[0\]: block 0 has expansion 1 .* input width 32, got 16",
    ),
    (
        "mobilenet-hidden-zero",
        lambda: MobileNetV2Config(hidden_channels=(32, 0, *(96,) * 15)),
        ValueError,
        r"hidden_channels\[1\]: expected a positive int, got 0",
    ),
    (
        "mobilenet-stem-stride",
        lambda: MobileNetV2Config(stem_stride=0),
        ValueError,
        "stem_stride: expected a positive",
    ),
    (
        "mobilenet-classes",
        lambda: MobileNetV2Config(num_classes=0),
        ValueError,
        "num_classes: expected a positive",
    ),
    (
        "mobilenet-dtype",
        lambda: MobileNetV2Config(dtype=jnp.int8),
        ValueError,
        "dtype: expected a floating",
    ),
    (
        "mobilenet-make-divisible",
        lambda: mobilenet_v2.make_divisible(-1.0),
        ValueError,
        r"value: expected a number in \(0, inf\)",
    ),
]

MODEL_CASES = [
    *MODEL_CONFIG_CASES,
    (
        "model-spec-unknown",
        lambda: model_spec("gpt"),
        ValueError,
        "unknown model 'gpt'; expected one of mlp, two_layer, cnn",
    ),
    (
        "model-spec-a-list",
        lambda: model_spec(["mlp"]),
        ValueError,
        r"unknown model \['mlp'\]; expected one of mlp",
    ),
    (
        "register-not-a-spec",
        lambda: register_model("mlp"),
        TypeError,
        "spec: expected a ModelSpec, got str",
    ),
    (
        "register-taken-name",
        lambda: register_model(mlp.SPEC),
        ValueError,
        "spec: a model named 'mlp' is already registered",
    ),
    (
        "spec-default-preset",
        lambda: dataclasses.replace(mlp.SPEC, default_preset="nope"),
        ValueError,
        "default_preset: expected one of",
    ),
    (
        "spec-both-gate-arguments",
        lambda: dataclasses.replace(switch.SPEC, gate_keyword="gates"),
        ValueError,
        "expected gate_keyword or split_gates, not both",
    ),
    (
        "flops-switch-shape",
        lambda: switch.flops(switch.PRESETS["tiny"], (9, 2)),
        ValueError,
        r"input_shape: expected \(seq_len,\)",
    ),
    (
        "flops-bert-length",
        lambda: bert.flops(BERT, (0,)),
        ValueError,
        "seq_len: expected a positive int, got 0",
    ),
    (
        "flops-vgg-shape",
        lambda: vgg.flops(vgg.PRESETS["vgg16-tiny"], (32, 32)),
        ValueError,
        r"input_shape: expected \(height, width, channels\)",
    ),
    (
        "flops-vgg-too-small",
        lambda: vgg.flops(vgg.from_preset("vgg16"), (16, 16, 3)),
        ValueError,
        r"input_shape: \(16, 16, 3\) is too small",
    ),
    (
        "flops-two-layer-features",
        lambda: two_layer.flops(TWO_LAYER, (5,)),
        ValueError,
        "input_shape: expected 4 features",
    ),
    (
        "flops-resnet34-side",
        lambda: resnet34.flops(resnet34.from_preset("resnet34"), (224, 0, 3)),
        ValueError,
        r"input_shape\[1\]: expected a positive int, got 0",
    ),
    (
        "flops-mobilenet-shape",
        lambda: mobilenet_v2.flops(MOBILENET, (8, 8)),
        ValueError,
        r"input_shape: expected \(height, width, channels\)",
    ),
    *[
        (f"preset-{name}", call, ValueError, match)
        for name, call, match in [
            ("mlp", lambda: mlp.from_preset("nope"), "unknown MLP preset 'nope'.*digits"),
            ("two-layer", lambda: two_layer.from_preset("mlp"), r"'mlp'.*'paper002-mnist'"),
            ("switch", lambda: switch.from_preset("huge"), r"'huge'.*'tiny', 'small', 'base'"),
            ("bert", lambda: bert.from_preset("huge"), r"'base', 'small', 'tiny'"),
            ("vgg", lambda: vgg.from_preset("vgg19"), r"'vgg19'.*'vgg16', 'vgg16-bn'"),
            ("resnet", lambda: resnet.from_preset("resnet110"), r"'resnet110'.*'resnet-tiny'"),
            ("resnet34", lambda: resnet34.from_preset("resnet50"), r"'resnet50'.*'resnet18'"),
            ("mobilenet", lambda: mobilenet_v2.from_preset("mobilenet_v3"), "'mobilenet_v3'"),
        ]
    ],
    (
        "make-config-resnet34-flat",
        lambda: resnet34.make_config("resnet34", num_outputs=10, input_shape=(784,)),
        ValueError,
        r"input_shape: expected \(height, width, channels\)",
    ),
    (
        "make-config-mobilenet-flat",
        lambda: mobilenet_v2.make_config("mobilenet_v2-tiny", num_outputs=3, input_shape=(64,)),
        ValueError,
        r"input_shape: expected \(height, width, channels\)",
    ),
    (
        "build-unknown-model",
        lambda: build_model("gpt", num_outputs=2, input_shape=(3,)),
        ValueError,
        "unknown model 'gpt'; expected one of mlp, two_layer, cnn",
    ),
    (
        "build-unknown-kind",
        lambda: build_model("mlp", num_outputs=2, input_shape=(3,), kind="heads"),
        ValueError,
        r"kind 'heads' is not a group kind of mlp; expected one of \('neurons',\)",
    ),
    (
        "build-num-outputs-zero",
        lambda: build_model("mlp", num_outputs=0, input_shape=(3,)),
        ValueError,
        "num_outputs: expected a positive int, got 0",
    ),
    (
        "build-num-outputs-float",
        lambda: build_model("mlp", num_outputs=2.5, input_shape=(3,)),
        TypeError,
        r"num_outputs: expected a positive int, got 2\.5",
    ),
    (
        "build-input-shape-an-int",
        lambda: build_model("mlp", num_outputs=2, input_shape=3),
        TypeError,
        r"input_shape: expected the shape of one example, a non-empty tuple of ints .* got 3",
    ),
    (
        "build-input-shape-negative",
        lambda: build_model("mlp", num_outputs=2, input_shape=(-3,)),
        ValueError,
        r"input_shape\[0\]: expected a positive int, got -3",
    ),
    (
        "build-image-model-on-vectors",
        lambda: build_model("vgg", num_outputs=2, input_shape=(32, 32)),
        ValueError,
        r"input_shape: expected \(height, width, channels\), got \(32, 32\)",
    ),
    (
        "build-cnn-on-vectors",
        lambda: build_model("cnn", num_outputs=2, input_shape=(64,)),
        ValueError,
        r"input_shape: expected \(height, width, channels\), got \(64,\)",
    ),
    (
        "build-token-model-on-images",
        lambda: build_model("bert", num_outputs=2, input_shape=(8, 8, 3)),
        ValueError,
        r"input_shape: expected \(seq_len,\) for token ids, got \(8, 8, 3\)",
    ),
    (
        "build-preset-widths",
        lambda: build_model("mlp", num_outputs=2, input_shape=(3,), preset="64,x"),
        ValueError,
        "preset: expected comma-separated positive widths such as '128,64', got '64,x'",
    ),
    (
        "build-preset-width-zero",
        lambda: build_model("mlp", num_outputs=2, input_shape=(3,), preset="0,4"),
        ValueError,
        "preset: expected comma-separated positive widths such as '128,64', got '0,4'",
    ),
    (
        "build-preset-an-int",
        lambda: build_model("mlp", num_outputs=2, input_shape=(3,), preset=64),
        TypeError,
        r"preset: expected a str or None, got 64 \(int\)",
    ),
    (
        "build-overrides-a-list",
        lambda: build_model("mlp", num_outputs=2, input_shape=(3,), overrides=[("dtype", 1)]),
        TypeError,
        "overrides: expected a mapping of config fields",
    ),
    (
        "bound-compact-unsupported",
        lambda: build_model("cnn", num_outputs=3, input_shape=(8, 8, 3)).compact({}, np.ones(3)),
        ValueError,
        "model 'cnn' does not support compaction",
    ),
    (
        "bound-compact-fractional-keep",
        lambda: build_model("mlp", num_outputs=2, input_shape=(5,), preset="4,3").compact(
            _zeros(MLP_MODEL, jnp.zeros((1, 5))), np.full(7, 0.5)
        ),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\), got float64 values \[0\.5\]",
    ),
    (
        "mlp-widths",
        lambda: _shapes(MLP(hidden=(0,), num_outputs=2), jnp.zeros((1, 3))),
        ValueError,
        "MLP: widths must be >= 1",
    ),
    (
        "mlp-gates-shape",
        lambda: _traced_apply(MLP_MODEL, jnp.zeros((2, 5)), neuron_gates=jnp.ones(3)),
        ValueError,
        r"neuron_gates: expected shape \(7,\)",
    ),
    (
        "mlp-gate-pieces",
        lambda: _traced_apply(MLP_MODEL, jnp.zeros((2, 5)), neuron_gates=[jnp.ones(4)]),
        ValueError,
        r"neuron_gates: expected 2 per-layer pieces of sizes \(4, 3\), got 1 pieces",
    ),
    (
        "mlp-compact-keep-shape",
        lambda: mlp.compact(_zeros(MLP_MODEL, jnp.zeros((1, 5))), MLP_MODEL, np.ones(4, bool)),
        ValueError,
        r"keep: expected shape \(7,\), one entry per neuron, got \(4,\)",
    ),
    (
        "mlp-compact-keep-nan",
        lambda: mlp.compact(_zeros(MLP_MODEL, jnp.zeros((1, 5))), MLP_MODEL, np.full(7, np.nan)),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\), got float64 values \[nan\]",
    ),
    (
        "mlp-compact-kind",
        lambda: mlp.compact(_zeros(MLP_MODEL, jnp.zeros((1, 5))), MLP_MODEL, np.ones(7), "heads"),
        ValueError,
        r"kind: expected one of \('neurons',\), got 'heads'",
    ),
    (
        "two-layer-rescale",
        lambda: two_layer.rescale(_zeros(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))), -1.0),
        ValueError,
        r"lam: expected a finite scalar > 0, got -1\.0",
    ),
    (
        "two-layer-counts-shape",
        lambda: _traced_apply(TwoLayer(TWO_LAYER), jnp.zeros((2, 4)), counts=np.ones(7)),
        ValueError,
        r"counts: expected shape \(8,\)",
    ),
    (
        "two-layer-gates-shape",
        lambda: _traced_apply(TwoLayer(TWO_LAYER), jnp.zeros((2, 4)), neuron_gates=np.ones(9)),
        ValueError,
        r"neuron_gates: expected shape \(8,\)",
    ),
    (
        "two-layer-input-features",
        lambda: jax.eval_shape(
            lambda v: TwoLayer(TWO_LAYER).apply(v, jnp.zeros((2, 3))),
            _shapes(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))),
        ),
        ValueError,
        "x: expected 4 input features",
    ),
    (
        "two-layer-compact-keep-shape",
        lambda: two_layer.compact(
            _zeros(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))), TWO_LAYER, np.ones(3, bool)
        ),
        ValueError,
        r"keep: expected shape \(8,\)",
    ),
    (
        "two-layer-compact-nothing",
        lambda: two_layer.compact(
            _zeros(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))), TWO_LAYER, np.zeros(8, bool)
        ),
        ValueError,
        "keeps no unit",
    ),
    (
        "two-layer-compact-fractional-keep",
        lambda: two_layer.compact(
            _zeros(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))), TWO_LAYER, np.full(8, 0.5)
        ),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\)",
    ),
    (
        "two-layer-group-ids-width",
        lambda: two_layer.group_ids(
            _zeros(TwoLayer(TWO_LAYER), jnp.zeros((1, 4))), two_layer.from_preset("tiny", width=16)
        ),
        ValueError,
        "config: width 16 does not match the 8 hidden units",
    ),
    (
        "switch-ffn-gates-shape",
        lambda: _traced_apply(SwitchFFN(4, 8, 16), jnp.zeros((3, 10, 8)), expert_gates=jnp.ones(3)),
        ValueError,
        "expert_gates",
    ),
    (
        "switch-ffn-no-experts",
        lambda: _shapes(SwitchFFN(0, 8, 16), jnp.zeros((3, 10, 8))),
        ValueError,
        "num_experts",
    ),
    (
        "switch-kind",
        lambda: switch.group_ids(_shapes(Switch(SWITCH), TOKENS), SWITCH, "neurons"),
        ValueError,
        "kind",
    ),
    (
        "switch-head-gates",
        lambda: _traced_apply(Switch(SWITCH), TOKENS, head_gates=[jnp.ones(4)]),
        ValueError,
        "head_gates: expected 2 per-layer entries, got 1",
    ),
    (
        "switch-max-length",
        lambda: _traced_apply(Switch(SWITCH), jnp.zeros((1, 13), jnp.int32)),
        ValueError,
        r"tokens: expected shape \(n, T\) with T <= max_length 12, got \(1, 13\)",
    ),
    (
        "switch-float-tokens",
        lambda: _traced_apply(Switch(SWITCH), jnp.zeros((1, 7))),
        TypeError,
        "tokens: expected integer token ids, got dtype float32",
    ),
    (
        "switch-tokens-out-of-vocabulary",
        lambda: Switch(SWITCH).apply(_zeros(Switch(SWITCH), TOKENS), TOKENS.at[0, 3].set(50)),
        ValueError,
        r"tokens: expected ids in \[0, vocab_size=50\), got ids in \[1, 50\]",
    ),
    (
        "switch-compact-fractional-keep",
        lambda: switch.compact(_zeros(Switch(SWITCH), TOKENS), SWITCH, np.full(8, 0.5)),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\)",
    ),
    (
        "bert-head-gates-shape",
        lambda: _traced_apply(Bert(BERT), TOKENS, head_gates=np.ones((2, 3))),
        ValueError,
        "head_gates",
    ),
    (
        "bert-max-length",
        lambda: _traced_apply(Bert(BERT), jnp.zeros((1, 13), jnp.int32)),
        ValueError,
        r"tokens: expected shape \(n, T\) with T <= max_length 12, got \(1, 13\)",
    ),
    (
        "bert-tokens-one-sequence",
        lambda: _traced_apply(Bert(BERT), jnp.zeros(7, jnp.int32)),
        ValueError,
        r"tokens: expected shape \(n, T\) with T <= max_length 12, got \(7,\)",
    ),
    (
        "bert-float-tokens",
        lambda: _traced_apply(Bert(BERT), jnp.zeros((1, 7))),
        TypeError,
        "tokens: expected integer token ids, got dtype float32",
    ),
    (
        "bert-negative-tokens",
        lambda: Bert(BERT).apply(_zeros(Bert(BERT), TOKENS), TOKENS.at[1, 1].set(-1)),
        ValueError,
        r"tokens: expected ids in \[0, vocab_size=50\), got ids in \[-1, 1\]",
    ),
    (
        "bert-compact-layer-without-heads",
        lambda: bert.compact(_zeros(Bert(BERT), TOKENS), BERT, np.array([[True] * 4, [False] * 4])),
        ValueError,
        r"keep: layers \[1\] keep no head",
    ),
    (
        "bert-compact-fractional-keep",
        lambda: bert.compact(_zeros(Bert(BERT), TOKENS), BERT, np.full((2, 4), 0.5)),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\), got float64 values \[0\.5\]",
    ),
    (
        "bert-kind",
        lambda: bert.group_ids(_shapes(Bert(BERT), TOKENS), BERT, "neurons"),
        ValueError,
        "kind",
    ),
    (
        "resnet-gates-shape",
        lambda: _traced_apply(ResNet(RESNET), IMAGES8, filter_gates=jnp.ones(27)),
        ValueError,
        r"filter_gates: expected shape \(28,\)",
    ),
    (
        "resnet-compact-keep-shape",
        lambda: resnet.compact(_zeros(ResNet(RESNET), IMAGES8), RESNET, np.ones(5, bool)),
        ValueError,
        r"keep: expected shape \(28,\)",
    ),
    (
        "resnet-compact-empty-block",
        lambda: resnet.compact(_zeros(ResNet(RESNET), IMAGES8), RESNET, _without(28, slice(0, 4))),
        ValueError,
        "keeps no unit",
    ),
    (
        "resnet-kind",
        lambda: resnet.group_ids(_shapes(ResNet(RESNET), IMAGES8), RESNET, kind="neurons"),
        ValueError,
        r"kind: expected one of \('filters',\), got 'neurons'",
    ),
    (
        "vgg-compact-fractional-keep",
        lambda: vgg.compact(
            _zeros(VGG(vgg.from_preset("vgg16-tiny")), jnp.zeros((1, 32, 32, 3))),
            vgg.from_preset("vgg16-tiny"),
            np.full(vgg.from_preset("vgg16-tiny").num_filters, 2),
        ),
        ValueError,
        r"keep: expected a boolean keep mask \(or entries 0 and 1\), got int64 values \[2\]",
    ),
    (
        "resnet34-image",
        lambda: _traced_apply(resnet34.ResNet34(RESNET34), IMAGES8[0]),
        ValueError,
        r"x: expected \(n, height, width, channels\) images",
    ),
    (
        "resnet34-gates-shape",
        lambda: _traced_apply(resnet34.ResNet34(RESNET34), IMAGES8, filter_gates=jnp.ones(59)),
        ValueError,
        r"filter_gates: expected shape \(60,\)",
    ),
    (
        "resnet34-compact-keep-shape",
        lambda: resnet34.compact(
            _zeros(resnet34.ResNet34(RESNET34), IMAGES8), RESNET34, np.ones(4, bool)
        ),
        ValueError,
        r"keep: expected shape \(60,\)",
    ),
    (
        "resnet34-kind",
        lambda: resnet34.group_ids(
            _shapes(resnet34.ResNet34(RESNET34), IMAGES8), RESNET34, "heads"
        ),
        ValueError,
        r"kind: expected one of \('filters',\), got 'heads'",
    ),
    (
        "resnet34-compact-empty-block",
        lambda: resnet34.compact(
            _zeros(resnet34.ResNet34(RESNET34), IMAGES8), RESNET34, _without(60, slice(4, 12))
        ),
        ValueError,
        "keeps no unit",
    ),
    (
        "resnet34-compact-kind",
        lambda: resnet34.compact(
            _zeros(resnet34.ResNet34(RESNET34), IMAGES8), RESNET34, np.ones(60, bool), kind="heads"
        ),
        ValueError,
        r"kind: expected one of \('filters',\), got 'heads'",
    ),
    (
        "mobilenet-compact-empty-block",
        lambda: mobilenet_v2.compact(
            _zeros(mobilenet_v2.MobileNetV2(MOBILENET), IMAGES8),
            MOBILENET,
            _without(240, slice(48, 96)),
        ),
        ValueError,
        r"keep\['params/block_2_expand'\] keeps no unit",
    ),
    (
        "mobilenet-gates-shape",
        lambda: _traced_apply(
            mobilenet_v2.MobileNetV2(MOBILENET), IMAGES8, channel_gates=jnp.ones(239)
        ),
        ValueError,
        r"channel_gates: expected shape \(240,\)",
    ),
    (
        "mobilenet-compact-keep-shape",
        lambda: mobilenet_v2.compact(
            _zeros(mobilenet_v2.MobileNetV2(MOBILENET), IMAGES8), MOBILENET, np.ones(5, bool)
        ),
        ValueError,
        r"keep: expected shape \(240,\)",
    ),
    (
        "mobilenet-kind",
        lambda: mobilenet_v2.group_ids(
            _shapes(mobilenet_v2.MobileNetV2(MOBILENET), IMAGES8), MOBILENET, kind="filters"
        ),
        ValueError,
        r"kind: expected one of \('channels',\), got 'filters'",
    ),
    (
        "mobilenet-hidden-channels",
        lambda: mobilenet_v2.group_ids(
            _shapes(mobilenet_v2.MobileNetV2(MOBILENET), IMAGES8),
            dataclasses.replace(MOBILENET, hidden_channels=(8, 40, 48, 48, 96)),
        ),
        ValueError,
        r"232 hidden channels .* do not match the 240",
    ),
]


@table(MODEL_CASES)
def test_models_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_models_accept_zero_one_float_keep_masks():
    # A group mask (floats 0 and 1) compacts like the boolean mask it stands for.
    variables = _zeros(MLP_MODEL, jnp.zeros((1, 5)))
    keep = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
    small, config = mlp.compact(variables, MLP_MODEL, keep)
    assert config.hidden == (3, 2)
    assert small["params"]["Dense_0"]["kernel"].shape == (5, 3)


# ---------------------------------------------------------------------------------------------
# jaxprune.data

TOKEN_ROWS = np.array([[1, 5, 6, 7], [1, 8, 9, 2]], np.int32)


def _mask_tokens(tokens=TOKEN_ROWS, **options):
    return mask_tokens(
        KEY, tokens, **{"vocab_size": 10, "mask_id": 4, "special_ids": (0,), **options}
    )


DATA_CASES = [
    (
        "epoch-batch-size",
        lambda: epoch_batches(10, 0, seed=0, epoch=0),
        ValueError,
        "batch_size: expected a positive int, got 0",
    ),
    (
        "epoch-negative",
        lambda: epoch_batches(10, 2, seed=0, epoch=-1),
        ValueError,
        "epoch: expected an int >= 0, got -1",
    ),
    (
        "epoch-seed-float",
        lambda: epoch_batches(10, 2, seed=0.5, epoch=0),
        TypeError,
        r"seed: expected an int >= 0, got 0\.5",
    ),
    (
        "iterate-batch-above-examples",
        lambda: next(iterate_batches(10, 11, seed=0)),
        ValueError,
        "batch_size=11 > num_examples=10: no batches",
    ),
    (
        "iterate-start-triple",
        lambda: next(iterate_batches(10, 2, seed=0, start=(0, 1, 2))),
        TypeError,
        r"start: expected a BatchPosition or an \(epoch, step\) pair, got \(0, 1, 2\)",
    ),
    (
        "iterate-start-step",
        lambda: next(iterate_batches(10, 2, seed=0, start=(0, -1))),
        ValueError,
        "start.step: expected an int >= 0, got -1",
    ),
    (
        "iterate-num-epochs-negative",
        lambda: list(iterate_batches(10, 2, seed=0, num_epochs=-1)),
        ValueError,
        "num_epochs: expected an int >= 0, got -1",
    ),
    (
        "iterate-num-epochs-float",
        lambda: list(iterate_batches(10, 2, seed=0, num_epochs=1.5)),
        TypeError,
        r"num_epochs: expected an int >= 0, got 1\.5",
    ),
    (
        "prefetch-size",
        lambda: next(prefetch([1], size=0)),
        ValueError,
        "size: expected a positive int, got 0",
    ),
    (
        "prefetch-not-iterable",
        lambda: next(prefetch(3)),
        TypeError,
        r"iterator: expected an iterable, got 3 \(int\)",
    ),
    (
        "digits-image-size",
        lambda: load_digits(image_size=12),
        ValueError,
        "image_size: expected a positive multiple of 8, got 12",
    ),
    (
        "digits-channels",
        lambda: load_digits(channels=0),
        ValueError,
        "channels: expected a positive int, got 0",
    ),
    (
        "load-dataset-unknown",
        lambda: load_dataset("cifar"),
        ValueError,
        r"unknown dataset 'cifar'.*digits32.*tfds:cifar10",
    ),
    (
        "load-dataset-an-int",
        lambda: load_dataset(3),
        TypeError,
        r"config: expected a DataConfig or a dataset name, got 3 \(int\)",
    ),
    (
        "dataset-inputs-none",
        lambda: dataset_inputs(None),
        ValueError,
        "unknown dataset None; expected one of digits",
    ),
    ("config-seed", lambda: DataConfig(seed=-1), ValueError, "seed: expected an int >= 0, got -1"),
    (
        "config-seed-float",
        lambda: DataConfig(seed=1.5),
        TypeError,
        r"seed: expected an int >= 0, got 1\.5",
    ),
    (
        "config-test-fraction",
        lambda: DataConfig(test_fraction=1.0),
        ValueError,
        r"test_fraction: expected a fraction in \(0, 1\), got 1",
    ),
    (
        "config-num-examples",
        lambda: DataConfig(num_examples=1),
        ValueError,
        "num_examples: expected an int >= 2, got 1",
    ),
    (
        "config-scale-nan",
        lambda: DataConfig(name="linear", scale=float("nan")),
        ValueError,
        "scale: expected a finite number, got nan",
    ),
    (
        "config-scale-zero",
        lambda: DataConfig(name="linear", scale=0.0),
        ValueError,
        r"scale: expected a number in \(0, inf\), got 0",
    ),
    (
        "config-max-chars",
        lambda: DataConfig(max_chars=0),
        ValueError,
        "max_chars: expected a positive int, got 0",
    ),
    (
        "config-data-dir",
        lambda: DataConfig(data_dir=3),
        TypeError,
        r"data_dir: expected a directory path or None, got 3 \(int\)",
    ),
    (
        "builtin-unknown",
        lambda: load_builtin("cifar", KEY),
        ValueError,
        "unknown dataset 'cifar'; expected one of digits, teacher_student, gaussian_mixture",
    ),
    (
        "builtin-num-examples",
        lambda: load_builtin("teacher_student", KEY, num_examples=0),
        ValueError,
        "num_examples: expected a positive int, got 0",
    ),
    (
        "teacher-student-key-a-seed",
        lambda: teacher_student(0, 4),
        TypeError,
        NOT_A_KEY + r" 0 \(int\)",
    ),
    (
        "teacher-student-num-examples-float",
        lambda: teacher_student(KEY, 2.5),
        TypeError,
        r"num_examples: expected a positive int, got 2\.5",
    ),
    (
        "teacher-student-noise",
        lambda: teacher_student(KEY, 4, noise=-1.0),
        ValueError,
        r"noise: expected a number in \[0, inf\], got -1",
    ),
    (
        "teacher-student-noise-nan",
        lambda: teacher_student(KEY, 4, noise=float("nan")),
        ValueError,
        "noise: expected a finite number, got nan",
    ),
    (
        "teacher-student-width",
        lambda: teacher_student(KEY, 4, teacher_width=0),
        ValueError,
        "teacher_width: expected a positive int, got 0",
    ),
    (
        "mixture-classes",
        lambda: gaussian_mixture(KEY, 4, num_classes=0),
        ValueError,
        "num_classes: expected a positive int, got 0",
    ),
    (
        "mixture-input-dim",
        lambda: gaussian_mixture(KEY, 4, input_dim=0),
        ValueError,
        "input_dim: expected a positive int, got 0",
    ),
    (
        "mixture-separation",
        lambda: gaussian_mixture(KEY, 4, separation=float("nan")),
        ValueError,
        "separation: expected a finite number, got nan",
    ),
    (
        "linear-scale",
        lambda: scaled_linear_regression(KEY, 4, 8, scale=-1.0),
        ValueError,
        r"scale: expected a number in \(0, inf\), got -1",
    ),
    (
        "linear-fraction",
        lambda: scaled_linear_regression(KEY, 4, 8, fraction=2.0),
        ValueError,
        r"fraction: expected a number in \[0, 1\], got 2",
    ),
    (
        "linear-noise",
        lambda: scaled_linear_regression(KEY, 4, 8, noise=float("inf")),
        ValueError,
        "noise: expected a finite number, got inf",
    ),
    (
        "linear-theta",
        lambda: decaying_theta(0),
        ValueError,
        "p: expected a positive int, got 0",
    ),
    (
        "linear-diagonal",
        lambda: scaling_diagonal(5, -1.0, 0.5),
        ValueError,
        r"lam: expected a number in \(0, inf\), got -1",
    ),
    (
        "corpus-max-chars",
        lambda: docstring_corpus(max_chars=0),
        ValueError,
        "max_chars: expected a positive int, got 0",
    ),
    (
        "text-files-not-paths",
        lambda: read_text_files([3]),
        TypeError,
        "paths must hold str or Path, got 3",
    ),
    (
        "text-files-one-path",
        lambda: read_text_files("wiki.train.tokens"),
        TypeError,
        r"paths: expected an iterable of file paths \(a list, also for one file\), got "
        r"'wiki.train.tokens' \(str\)",
    ),
    (
        "text-files-missing",
        lambda: read_text_files(["/nonexistent/wiki.train.tokens"]),
        ValueError,
        r"paths: expected readable UTF-8 text files, got '/nonexistent/wiki.train.tokens' "
        r"\(no such file\)",
    ),
    (
        "tokenizer-vocab-size",
        lambda: train_tokenizer(["a"], 5),
        ValueError,
        "vocab_size: expected an int >= 6, got 5",
    ),
    (
        "tokenizer-one-text",
        lambda: train_tokenizer("a b c", 20),
        TypeError,
        r"texts: expected an iterable of documents \(a list of str\), got 'a b c' \(str\)",
    ),
    (
        "pack-sequences-length",
        lambda: pack_sequences([[5, 6]], 1),
        ValueError,
        "seq_len: expected an int >= 2, got 1",
    ),
    (
        "mask-rate-zero",
        lambda: _mask_tokens(rate=0.0),
        ValueError,
        r"rate: expected a number in \(0, 1\], got 0",
    ),
    (
        "mask-rate-nan",
        lambda: _mask_tokens(rate=float("nan")),
        ValueError,
        "rate: expected a finite number, got nan",
    ),
    (
        "mask-rate-a-string",
        lambda: _mask_tokens(rate="0.1"),
        TypeError,
        "rate: expected a real number, got '0.1'",
    ),
    (
        "mask-float-tokens",
        lambda: _mask_tokens(TOKEN_ROWS.astype(np.float32)),
        TypeError,
        "tokens must hold integers, got dtype float32",
    ),
    (
        "mask-id",
        lambda: _mask_tokens(vocab_size=4),
        ValueError,
        r"mask_id must lie in \[0, vocab_size=4\), got 4",
    ),
    (
        "mask-vocab-size-float",
        lambda: _mask_tokens(vocab_size=10.5),
        TypeError,
        r"vocab_size: expected a positive int, got 10\.5",
    ),
    (
        "mask-tokens-out-of-vocabulary",
        lambda: _mask_tokens(TOKEN_ROWS * 2),
        ValueError,
        r"tokens: expected ids in \[0, vocab_size=10\), got ids in \[2, 18\]",
    ),
    (
        "mask-no-replacement",
        lambda: _mask_tokens(TOKEN_ROWS % 4, vocab_size=5, special_ids=(0, 1, 2, 3)),
        ValueError,
        "leave no token to sample",
    ),
    (
        "num-to-mask-rate",
        lambda: num_to_mask(jnp.array([4]), 2.0),
        ValueError,
        r"rate: expected a number in \(0, 1\], got 2",
    ),
    (
        "tfds-unknown",
        lambda: load_tfds("imagenet", "train"),
        ValueError,
        r"name must be one of \['cifar10', 'cifar100', 'fashion_mnist', 'mnist'\], got 'imagenet'",
    ),
    (
        "tfds-split",
        lambda: load_tfds("mnist", 0),
        TypeError,
        "split must be a str, got int",
    ),
]


@table(DATA_CASES)
def test_data_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_data_traced_tokens_and_rate_skip_the_value_checks():
    # Inside jit (the engine's MLM step) the token ids are traced: no range check there.
    inputs, _, _ = jax.jit(lambda t: _mask_tokens(t))(jnp.asarray(TOKEN_ROWS))
    assert inputs.shape == TOKEN_ROWS.shape
    counts = jax.jit(num_to_mask)(jnp.array([4, 0]), 0.5)
    np.testing.assert_array_equal(counts, [2, 0])


# ---------------------------------------------------------------------------------------------
# jaxprune.train


def _splits(task="classification", *, x_shape=(4,), num_outputs=3, n=24, y=None):
    """Synthetic :class:`Splits` of ``n`` training and 8 test examples."""
    rng = np.random.default_rng(0)

    def split(size):
        x = rng.normal(size=(size, *x_shape)).astype(np.float32)
        if task == "regression":
            targets = rng.normal(size=(size, num_outputs)).astype(np.float32)
        else:
            targets = rng.integers(0, num_outputs, size).astype(np.int32)
        return {"x": x, "y": targets if y is None else y[:size]}

    return Splits(split(n), split(8), task, num_outputs, {})


def _with_train_x(splits, index, value):
    return splits._replace(train={**splits.train, "x": replaced(splits.train["x"], index, value)})


SMALL_MLP = build_model("mlp", num_outputs=3, input_shape=(4,), preset="4")
RUN = TrainConfig(num_steps=2, batch_size=8, eval_batch_size=8, log_every=1, progress=False)


def _train(model=SMALL_MLP, splits=None, optimizer=None, config=RUN, **options):
    splits = _splits() if splits is None else splits
    return train(
        model, splits, optax.sgd(0.1) if optimizer is None else optimizer, config, **options
    )


class _FakeMesh:
    """What check_batch_size reads of a mesh: its devices."""

    def __init__(self, size):
        self.devices = np.zeros(size)


@functools.cache
def _saved_checkpoint():
    """A directory holding checkpoint 5 of ``{"w": zeros((2, 3)), "k": key(0)}`` (it lives as
    long as the test process)."""
    directory = tempfile.TemporaryDirectory()
    save_checkpoint(directory.name, 5, {"w": jnp.zeros((2, 3)), "k": jax.random.key(0)})
    return directory


def _restore(target, step=None):
    return restore_checkpoint(_saved_checkpoint().name, target, step)


def _legacy_restore(directory):
    (directory / "checkpoint_10.msgpack").write_bytes(b"\x80")
    return restore_checkpoint(directory, {"w": jnp.zeros(2)})


def _log_twice(directory, first, second):
    with MetricsLogger(directory, tensorboard=False) as logger:
        logger.log(*first)
        logger.log(*second)


TRAIN_CONFIG_CASES = [
    ("num_steps", 0, ValueError, "num_steps: expected a positive int, got 0"),
    ("num_steps", 10.0, TypeError, r"num_steps: expected a positive int, got 10\.0"),
    ("batch_size", 0, ValueError, "batch_size: expected a positive int, got 0"),
    ("log_every", -5, ValueError, "log_every: expected a positive int, got -5"),
    ("eval_every", -1, ValueError, "eval_every: expected an int >= 0, got -1"),
    ("checkpoint_every", 2.5, TypeError, r"checkpoint_every: expected an int >= 0, got 2\.5"),
    ("seed", -1, ValueError, "seed: expected an int >= 0, got -1"),
    ("analysis_projections", 0, ValueError, "analysis_projections: expected a positive int"),
    ("prefetch", -1, ValueError, "prefetch: expected an int >= 0, got -1"),
    ("num_devices", 0, ValueError, "num_devices: expected a positive int, got 0"),
    ("num_devices", 1.5, TypeError, r"num_devices: expected a positive int, got 1\.5"),
    ("compact", 1, TypeError, r"compact: expected a bool, got 1 \(int\)"),
    ("progress", "no", TypeError, r"progress: expected a bool, got 'no' \(str\)"),
    ("tensorboard", None, TypeError, "tensorboard: expected a bool, got None"),
]

TRAIN_CASES = [
    *[
        (f"config-{field}-{value}", functools.partial(TrainConfig, **{field: value}), e, m)
        for field, value, e, m in TRAIN_CONFIG_CASES
    ],
    (
        "train-model-a-module",
        lambda: _train(SMALL_MLP.module),
        TypeError,
        r"model: expected a Bound \(jaxprune\.train\.build_model\), got MLP",
    ),
    (
        "train-splits-a-dict",
        lambda: _train(splits={"train": _splits().train}),
        TypeError,
        r"splits: expected Splits \(jaxprune\.data\.load_dataset\), got dict",
    ),
    (
        "train-optimizer-a-name",
        lambda: _train(optimizer="adam"),
        TypeError,
        r"optimizer: expected an optax GradientTransformation .* got 'adam' \(str\)",
    ),
    (
        "train-optimizer-a-factory",
        lambda: _train(optimizer=optax.adam),
        TypeError,
        r"optimizer: expected an optax GradientTransformation .* \(function\)",
    ),
    (
        "train-config-a-dict",
        lambda: _train(config={"num_steps": 2}),
        TypeError,
        "config: expected a TrainConfig, got dict",
    ),
    (
        "train-pruner-a-name",
        lambda: _train(pruner="snip"),
        TypeError,
        r"pruner: expected a Pruner \(jaxprune\.train\.make_pruner\) or None, got str",
    ),
    (
        "train-run-dir-an-int",
        lambda: _train(run_dir=3),
        TypeError,
        "run_dir: expected a directory path or None, got int",
    ),
    (
        "train-resume-a-string",
        lambda: _train(resume="no"),
        TypeError,
        r"resume: expected a bool, got 'no' \(str\)",
    ),
    (
        "train-run-info-a-list",
        lambda: _train(run_info=["adam"]),
        TypeError,
        "run_info: expected a dict or None, got list",
    ),
    (
        "train-batch-above-examples",
        lambda: _train(config=dataclasses.replace(RUN, batch_size=32)),
        ValueError,
        "batch_size=32 exceeds the 24 training examples",
    ),
    (
        "train-batch-not-divisible",
        lambda: check_batch_size(33, _FakeMesh(4)),
        ValueError,
        "batch_size=33",
    ),
    (
        "train-nan-inputs",
        lambda: _train(splits=_with_train_x(_splits(), (3, 1), np.nan)),
        ValueError,
        r"splits\.train\['x'\]: 1 " + NONFINITE,
    ),
    (
        "train-inf-targets",
        lambda: _train(splits=_splits("regression", y=np.full((24, 3), np.inf, np.float32))),
        ValueError,
        r"splits\.train\['y'\]: 72 " + NONFINITE,
    ),
    (
        "train-model-on-other-inputs",
        lambda: _train(build_model("bert", num_outputs=3, input_shape=(8,))),
        ValueError,
        r"model: 'bert' cannot take the inputs of splits\.train\['x'\] \(examples of shape "
        r"\(4,\), dtype float32\): tokens: expected integer token ids",
    ),
    (
        "train-too-few-outputs",
        lambda: _train(build_model("mlp", num_outputs=2, input_shape=(4,), preset="4")),
        ValueError,
        r"model: 'mlp' gives outputs of shape \(2,\) per example, expected 3 classes "
        r"\(splits\.num_outputs\); build it with num_outputs=splits\.num_outputs",
    ),
    (
        "train-regression-output-shape",
        lambda: _train(splits=_splits("regression", num_outputs=1)),
        ValueError,
        r"model: 'mlp' gives outputs of shape \(3,\) per example, expected the targets' "
        r"shape \(1,\) \(splits\.train\['y'\]\)",
    ),
    (
        "train-schedule-beyond-the-run",
        lambda: _train(pruner=criterion_pruner("random", one_shot(2, 0.5))),
        ValueError,
        "pruning schedule event at step 2 is beyond the run's num_steps=2",
    ),
    (
        "train-compact-unsupported",
        lambda: _train(
            build_model("cnn", num_outputs=3, input_shape=(8, 8, 3)),
            _splits(x_shape=(8, 8, 3)),
            config=dataclasses.replace(RUN, compact=True),
            pruner=criterion_pruner("random", one_shot(1, 0.5)),
        ),
        ValueError,
        r"config\.compact: model 'cnn' does not support compaction",
    ),
    (
        "make-pruner-unknown",
        lambda: make_pruner("obs", one_shot(2, 0.5)),
        ValueError,
        r"method: expected one of \('magnitude', 'random'",
    ),
    (
        "make-pruner-option-of-another-method",
        lambda: make_pruner("snip", one_shot(2, 0.5), gating_steps=3),
        ValueError,
        r"options: 'snip' takes .* got unknown \['gating_steps'\]",
    ),
    (
        "make-pruner-misspelt-option",
        lambda: make_pruner("pl", one_shot(2, 0.5), hiden=3),
        ValueError,
        r"unknown \['hiden'\]",
    ),
    (
        "make-pruner-lth-without-rewinding",
        lambda: make_pruner("lth", one_shot(2, 0.5)),
        ValueError,
        "schedule: expected a rewinding schedule",
    ),
    (
        "make-pruner-schedule-a-string",
        lambda: make_pruner("snip", "0:0.5"),
        TypeError,
        "schedule: expected a PruningSchedule, got str",
    ),
    (
        "make-pruner-num-batches",
        lambda: make_pruner("snip", one_shot(2, 0.5), num_batches=0),
        ValueError,
        "num_batches: expected a positive int, got 0",
    ),
    (
        "make-pruner-config-and-fields",
        lambda: make_pruner("pl", one_shot(2, 0.5), config=pl_gating.PLGatingConfig(), alpha=2.0),
        ValueError,
        "options: pass either config or PLGatingConfig fields",
    ),
    (
        "make-pruner-pl-field",
        lambda: make_pruner("pl", one_shot(2, 0.5), hidden=0),
        ValueError,
        "hidden: expected a positive int, got 0",
    ),
    (
        "make-pruner-pl-seed",
        lambda: make_pruner("pl", one_shot(2, 0.5), seed=1.5),
        TypeError,
        r"seed: expected an int >= 0, got 1\.5",
    ),
    (
        "pl-pruner-config-a-dict",
        lambda: pl_gating_pruner(one_shot(2, 0.5), {"hidden": 4}),
        TypeError,
        "config: expected a PLGatingConfig or None, got dict",
    ),
    (
        "criterion-pruner-per-layer",
        lambda: criterion_pruner("snip", one_shot(2, 0.5), per_layer=2),
        TypeError,
        r"per_layer: expected a bool, got 2 \(int\)",
    ),
    (
        "criterion-pruner-min-per-layer",
        lambda: criterion_pruner("snip", one_shot(2, 0.5), min_per_layer=-1),
        ValueError,
        "min_per_layer: expected an int >= 0, got -1",
    ),
    (
        "criterion-pruner-min-per-layer-float",
        lambda: criterion_pruner("snip", one_shot(2, 0.5), min_per_layer=1.5),
        TypeError,
        r"min_per_layer: expected an int >= 0, got 1\.5",
    ),
    (
        "criterion-pruner-unknown",
        lambda: criterion_pruner("obs", one_shot(2, 0.5)),
        ValueError,
        r"criterion: expected one of \('magnitude'",
    ),
    (
        "lth-pruner-min-per-layer",
        lambda: lth_pruner(lth_schedule(100, 0.5), min_per_layer=-2),
        ValueError,
        "min_per_layer: expected an int >= 0, got -2",
    ),
    *[
        (
            f"greedy-pruner-{name}",
            functools.partial(make_pruner, "greedy", one_shot(2, 0.5), **{name: 0}),
            ValueError,
            f"{name}: expected a positive int, got 0",
        )
        for name in ("num_batches", "min_per_layer", "max_candidates", "chunk_size")
    ],
    (
        "register-taken-name",
        lambda: register_pruner("snip", lambda schedule: None),
        ValueError,
        "'snip' is already registered",
    ),
    (
        "register-factory",
        lambda: register_pruner("mine", 3),
        TypeError,
        "factory: expected a callable, got int",
    ),
    (
        "register-name",
        lambda: register_pruner(3, lambda schedule: None),
        TypeError,
        "name: expected a non-empty string, got 3",
    ),
    ("schedule-step", lambda: one_shot(-1, 0.5), ValueError, "step: expected an int >= 0, got -1"),
    (
        "schedule-ratio",
        lambda: one_shot(1, 1.5),
        ValueError,
        r"ratio: expected a fraction in \(0, 1\), got 1\.5",
    ),
    (
        "schedule-step-float",
        lambda: one_shot(1.5, 0.5),
        TypeError,
        r"step: expected an int >= 0, got 1\.5",
    ),
    (
        "schedule-rewind",
        lambda: iterative_magnitude(2, 1, 1, final_ratio=0.5),
        ValueError,
        "rewind_step must be below round_length=1, got 1",
    ),
    (
        "task-unknown",
        lambda: make_task("segmentation", num_outputs=3, info={}),
        ValueError,
        "task must be classification, regression or mlm, got 'segmentation'",
    ),
    (
        "task-num-outputs",
        lambda: make_task("classification", num_outputs=0, info={}),
        ValueError,
        "num_outputs: expected a positive int, got 0",
    ),
    (
        "task-mlm-mask-id",
        lambda: mlm(vocab_size=10, mask_id=12, special_ids=(0,)),
        ValueError,
        r"mask_id: expected an id in \[0, vocab_size=10\), got 12",
    ),
    (
        "evaluate-batch-size",
        lambda: evaluate(None, None, {}, batch_size=0, key=KEY, mesh=None, task="regression"),
        ValueError,
        "batch_size: expected a positive int, got 0",
    ),
    (
        "data-mesh-devices",
        lambda: data_mesh(0),
        ValueError,
        r"num_devices must be an int in \[1, ",
    ),
    (
        "logger-resume-step",
        lambda: in_temporary_directory(lambda d: MetricsLogger(d, resume_step=-1)),
        ValueError,
        "resume_step: expected an int >= 0, got -1",
    ),
    (
        "logger-step-decreases",
        lambda: in_temporary_directory(lambda d: _log_twice(d, (4, {"loss": 1.0}), (4, {}))),
        ValueError,
        "step must increase",
    ),
    (
        "logger-vector-value",
        lambda: in_temporary_directory(lambda d: _log_twice(d, (1, {"loss": np.ones(2)}), ())),
        TypeError,
        "'loss'",
    ),
    (
        "logger-complex-value",
        lambda: in_temporary_directory(lambda d: _log_twice(d, (1, {"z": 1j}), ())),
        TypeError,
        "'z'",
    ),
    (
        "logger-step-float",
        lambda: in_temporary_directory(lambda d: _log_twice(d, (1.0, {"loss": 1.0}), ())),
        TypeError,
        "step",
    ),
    (
        "summary-table-key",
        lambda: summary_table([{"step": 1, "loss": 1.0}], ["missing"]),
        ValueError,
        "'missing'",
    ),
    (
        "plot-curves-key",
        lambda: in_temporary_directory(
            lambda d: (
                _log_twice(d, (1, {"loss": 1.0}), (2, {"loss": 0.5})),
                plot_curves(d, ["nope"]),
            )
        ),
        ValueError,
        "keys: metric 'nope' was never logged in",
    ),
    (
        "checkpoint-paths-step",
        lambda: checkpoint_paths("runs", -1),
        ValueError,
        "step: expected an int >= 0, got -1",
    ),
    (
        "checkpoint-paths-step-a-string",
        lambda: checkpoint_paths("runs", "a"),
        TypeError,
        r"step: expected an int >= 0, got 'a' \(str\)",
    ),
    (
        "restore-nothing",
        lambda: in_temporary_directory(lambda d: restore_checkpoint(d, {"w": jnp.zeros(2)})),
        FileNotFoundError,
        "no checkpoint in directory",
    ),
    (
        "restore-legacy-format",
        lambda: in_temporary_directory(_legacy_restore),
        FileNotFoundError,
        "format before orbax",
    ),
    (
        "restore-step-negative",
        lambda: _restore({"w": jnp.zeros((2, 3))}, -1),
        ValueError,
        "step: expected an int >= 0, got -1",
    ),
    (
        "restore-step-a-string",
        lambda: _restore({"w": jnp.zeros((2, 3))}, "5"),
        TypeError,
        r"step: expected an int >= 0, got '5' \(str\)",
    ),
    (
        "restore-step-absent",
        lambda: _restore({"w": jnp.zeros((2, 3))}, 7),
        FileNotFoundError,
        r"no checkpoint for step 7 in .* \(committed: \[5\]\)",
    ),
    (
        "restore-shape",
        lambda: _restore({"w": jnp.zeros((3, 2)), "k": jax.random.key(0)}),
        ValueError,
        r"\['w'\].*shape \(2, 3\).*shape \(3, 2\)",
    ),
    (
        "restore-dtype",
        lambda: _restore({"w": jnp.zeros((2, 3), jnp.float16), "k": jax.random.key(0)}),
        ValueError,
        r"\['w'\].*float32.*float16",
    ),
    (
        "restore-structure",
        lambda: _restore({"v": jnp.zeros((2, 3)), "k": jax.random.key(0)}),
        ValueError,
        r"does not fit the target.*\['v'\].*\['w'\]",
    ),
    *[
        (
            f"save-{name}",
            lambda kw=kwargs: in_temporary_directory(
                lambda d: save_checkpoint(d, kw.pop("step", 1), kw.pop("state", {"x": 0.0}), **kw)
            ),
            error,
            match,
        )
        for name, kwargs, error, match in [
            ("step", {"step": -1}, ValueError, "step: expected an int >= 0, got -1"),
            ("step-float", {"step": 1.5}, TypeError, r"step: expected an int >= 0, got 1\.5"),
            ("keep", {"keep": 0}, ValueError, "keep: expected a positive int, got 0"),
            ("metadata-object", {"metadata": {"f": object()}}, TypeError, "metadata"),
            ("metadata-nan", {"metadata": {"f": float("nan")}}, TypeError, "metadata"),
            ("metadata-list", {"metadata": [1]}, TypeError, "metadata: expected a dict or None"),
            ("state-string", {"state": {"name": "a string"}}, TypeError, "state"),
        ]
    ],
]


@table(TRAIN_CASES)
def test_train_bad_input(call, error, match):
    assert_raises(call, error, match)
