"""Bad-input tables: every argument check of the spectral and mask modules, one test per module.

Each case is ``(id, call, error, match)``: ``call()`` must raise ``error`` with a message matching
``match``, which names the offending argument.  The cases cover the checks added for bad numeric
input (non-finite or non-symmetric kernels, NaN inputs, NaN masks, vector-valued or NaN losses)
and the checks that already existed, collected from the modules' own tests.  A few positive cases
follow: half-precision kernels are computed in float32, round-off asymmetry within the stated
tolerance is accepted, and traced arguments skip the value checks.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_raises, make_mlp, table, tiny_mlp_apply, tiny_mlp_problem

from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import (
    apply_group_mask,
    group_mask_from_param_mask,
    param_mask,
    ratio_to_k,
    sparsity,
    topk_mask,
    topk_mask_jax,
)
from jaxprune.spectra import empirical_ntk, sketch_outputs
from jaxprune.spectra.hessian import (
    gauss_newton_diagonal,
    group_hessian_traces,
    hessian_diagonal,
    hessian_trace,
    output_hessian_trace,
)
from jaxprune.spectra.lanczos import (
    hessian_eigenvalues,
    hessian_spectral_density,
    lanczos_tridiagonal,
)
from jaxprune.spectra.pl import pl_condition, proposition8_bound
from jaxprune.spectra.spectrum import SYMMETRY_RTOL, spectrum_features


def replaced(array, index, value):
    """A NumPy copy of ``array`` with ``array[index] = value``."""
    out = np.array(array)
    out[index] = value
    return out


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.spectrum


KERNEL = np.diag([4.0, 3.0, 1.0]).astype(np.float32)  # eigenvalues 4, 3, 1
STACK = np.stack([KERNEL, 2 * KERNEL])
NONFINITE = r"non-finite value\(s\) \(NaN or inf\); expected finite values"
ASYMMETRIC = r"expected a symmetric matrix \(max\|A - Aᵀ\| <= 0\.01 max\|A\|\), got "

SPECTRUM_CASES = [
    (
        "not-square",
        lambda: spectrum_features(np.ones((3, 4))),
        ValueError,
        r"kernel: expected a square \(n, n\) or \(p, n, n\) array .* got shape \(3, 4\)",
    ),
    ("vector", lambda: spectrum_features(np.ones(3)), ValueError, r"kernel: expected a square"),
    (
        "4-d",
        lambda: spectrum_features(np.ones((2, 2, 2, 2))),
        ValueError,
        r"kernel: expected a square",
    ),
    (
        "empty",
        lambda: spectrum_features(np.ones((0, 0))),
        ValueError,
        r"kernel: expected a square .* n >= 1, got shape \(0, 0\)",
    ),
    (
        "max-rank-zero",
        lambda: spectrum_features(np.eye(3), max_rank=0),
        ValueError,
        r"max_rank: expected ints >= 1, got 0",
    ),
    (
        "max-rank-float",
        lambda: spectrum_features(np.eye(3), max_rank=1.5),
        ValueError,
        r"max_rank: expected ints >= 1, got 1\.5",
    ),
    (
        "max-rank-length",
        lambda: spectrum_features(STACK, max_rank=np.array([1, 2, 3])),
        ValueError,
        r"max_rank: expected an int or one entry per kernel, got shape \(3,\)",
    ),
    (
        "nan",
        lambda: spectrum_features(replaced(KERNEL, (0, 0), np.nan)),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "inf",
        lambda: spectrum_features(replaced(KERNEL, (1, 1), np.inf)),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "nan-float64-on-host",
        lambda: spectrum_features(replaced(KERNEL, (0, 2), np.nan), dtype=np.float64),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "nan-in-stack",
        lambda: spectrum_features(replaced(STACK, (1, 2, 2), np.nan)),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "nan-bfloat16",
        lambda: spectrum_features(jnp.asarray(replaced(KERNEL, (2, 2), np.nan), jnp.bfloat16)),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "nan-device-array",
        lambda: spectrum_features(jnp.asarray(replaced(KERNEL, (0, 1), np.nan))),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "non-symmetric",
        lambda: spectrum_features(replaced(KERNEL, (0, 1), 2.0)),
        ValueError,
        "kernel: " + ASYMMETRIC + r"max\|A - Aᵀ\| = 2 with max\|A\| = 4$",
    ),
    (
        "non-symmetric-float64-on-host",
        lambda: spectrum_features(replaced(KERNEL, (0, 1), 2.0), dtype=np.float64),
        ValueError,
        "kernel: " + ASYMMETRIC,
    ),
    (
        "non-symmetric-in-stack",
        lambda: spectrum_features(replaced(STACK, (1, 2, 0), 0.5)),
        ValueError,
        "kernel: " + ASYMMETRIC + r".* in matrix \[1\]$",
    ),
    (
        "non-symmetric-float16",
        lambda: spectrum_features(jnp.asarray(replaced(KERNEL, (0, 1), 2.0), jnp.float16)),
        ValueError,
        # 16 eps(float16) = 2⁻⁶ is above the 1e-2 floor.
        re.escape("kernel: expected a symmetric matrix (max|A - Aᵀ| <= 0.015625 max|A|)"),
    ),
]


@table(SPECTRUM_CASES)
def test_spectra_spectrum_bad_input(call, error, match):
    assert_raises(call, error, match)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_kernels_are_computed_in_float32(dtype):
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0]
    kernel = jnp.asarray(q @ np.diag([8.0, 4.0, 2.0, 1.0, 0.0]) @ q.T, dtype)  # rank 4 of 5
    upcast = kernel.astype(jnp.float32)
    eps = float(jnp.finfo(dtype).eps)
    got = spectrum_features(kernel)
    # The kernel carries half-precision round-off: the default zero tolerance is 5 eps(half).
    want = spectrum_features(upcast, rtol=5 * eps)
    for name, value, reference in zip(got._fields, got, want, strict=True):
        assert jnp.result_type(value) == jnp.result_type(reference), name
        np.testing.assert_array_equal(value, reference, err_msg=name)
    assert got.eigenvalues.dtype == jnp.float32
    np.testing.assert_allclose(got.tolerance, 5 * eps * got.lambda_max, rtol=1e-6)
    np.testing.assert_allclose(
        got.eigenvalues[:4],
        np.linalg.eigvalsh(np.asarray(upcast, np.float64))[::-1][:4],
        rtol=1e-5,
    )
    assert bool(got.rank_deficient) and int(got.rank) == 4
    condition = pl_condition(kernel)
    np.testing.assert_array_equal(condition.pl_constant, got.lambda_min)
    np.testing.assert_array_equal(condition.lipschitz, jnp.sqrt(got.lambda_max))


def test_symmetry_tolerance_is_relative_to_each_kernel():
    a = np.random.default_rng(1).normal(size=(4, 4))
    kernel = a @ a.T
    antisymmetric = np.zeros((4, 4))
    antisymmetric[0, 3], antisymmetric[3, 0] = 1.0, -1.0
    scale = np.abs(kernel).max()
    # max|K - Kᵀ| = 2 s for the perturbation s (K_03 + s, K_30 - s).
    inside = kernel + 0.25 * SYMMETRY_RTOL * scale * antisymmetric
    outside = kernel + 1.0 * SYMMETRY_RTOL * scale * antisymmetric
    got = spectrum_features(inside, dtype=np.float64)
    want = np.linalg.eigvalsh(0.5 * (inside + inside.T))[::-1]
    np.testing.assert_allclose(got.eigenvalues, want, rtol=1e-12)
    for tiny in (1e-12, 1.0):  # the tolerance scales with the kernel
        assert_raises(lambda t=tiny: spectrum_features(t * outside), ValueError, "kernel: ")
        spectrum_features(tiny * inside)


def test_model_kernels_with_round_off_are_accepted():
    # NTK-vector products give the kernel column by column: not exactly symmetric in float32.
    model, params, x = make_mlp(jnp.float32)
    kernel = empirical_ntk(model.apply, params, x, backend="ntvp")
    got = spectrum_features(kernel, dtype=np.float64)
    k = np.asarray(kernel, np.float64)
    np.testing.assert_allclose(
        got.eigenvalues, np.linalg.eigvalsh(0.5 * (k + k.T))[::-1], rtol=1e-9, atol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.pl

PL_CASES = [
    (
        "loss-scale-zero",
        lambda: pl_condition(np.eye(2), loss_scale=0.0),
        ValueError,
        r"loss_scale: expected a number in \(0, inf\), got 0",
    ),
    (
        "loss-scale-nan",
        lambda: pl_condition(np.eye(2), loss_scale=float("nan")),
        ValueError,
        r"loss_scale: expected a finite number, got nan",
    ),
    (
        "radius-negative",
        lambda: proposition8_bound(np.eye(2), hessian_norm=1.0, radius=-1.0),
        ValueError,
        r"radius: expected a number in \[0, inf\], got -1",
    ),
    (
        "nan-kernel",
        lambda: pl_condition(replaced(KERNEL, (0, 0), np.nan)),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "inf-kernel-float64",
        lambda: pl_condition(replaced(KERNEL, (0, 0), np.inf), dtype=np.float64),
        ValueError,
        "kernel: 1 " + NONFINITE,
    ),
    (
        "non-symmetric-kernel",
        lambda: pl_condition(replaced(KERNEL, (2, 1), 1.0)),
        ValueError,
        "kernel: " + ASYMMETRIC,
    ),
    (
        "non-square-kernel",
        lambda: pl_condition(np.ones((2, 3))),
        ValueError,
        r"kernel: expected a square",
    ),
    (
        "nan-kernel-at-w0",
        lambda: proposition8_bound(replaced(KERNEL, (1, 1), np.nan), hessian_norm=1.0, radius=1.0),
        ValueError,
        "kernel_at_w0: 1 " + NONFINITE,
    ),
    (
        "non-symmetric-kernel-at-w0",
        lambda: proposition8_bound(replaced(KERNEL, (1, 0), 1.0), hessian_norm=1.0, radius=1.0),
        ValueError,
        "kernel_at_w0: " + ASYMMETRIC,
    ),
    (
        "non-square-kernel-at-w0",
        lambda: proposition8_bound(np.ones((2, 3)), hessian_norm=1.0, radius=1.0),
        ValueError,
        r"kernel_at_w0: expected a square \(n, n\) or \(p, n, n\) array .* got shape \(2, 3\)",
    ),
]


@table(PL_CASES)
def test_spectra_pl_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.ntk


@functools.cache
def _mlp():
    """The conftest 4-7-5-3 MLP in float32, its parameters and 6 inputs."""
    return make_mlp(jnp.float32)


def _ntk(*, x=None, x2=None, params=None, edit_ids=None, **kwargs):
    """``empirical_ntk`` of the MLP, with ``x``/``params`` replaced or the neuron ids edited."""
    model, base_params, base_x = _mlp()
    params = base_params if params is None else params
    if edit_ids is not None:
        ids = build_group_ids(base_params, neurons(r"Dense_\d+$"))[0]
        edit_ids(ids["params"])
        kwargs["group_ids"] = ids
    return empirical_ntk(model.apply, params, base_x if x is None else x, x2, **kwargs)


def _nan_bias(params):
    bias = params["params"]["Dense_1"]["bias"]
    return {
        "params": {
            **params["params"],
            "Dense_1": {**params["params"]["Dense_1"], "bias": bias.at[0].set(jnp.nan)},
        }
    }


def _set(path, value):
    """An editor of the group-id dict at ``path`` (layer, leaf); ``value`` None deletes the layer."""

    def edit(ids):
        if value is None:
            del ids[path[0]]
        else:
            ids[path[0]][path[1]] = value(ids[path[0]][path[1]])

    return edit


NTK_CASES = [
    (
        "ids-missing-layer",
        lambda: _ntk(edit_ids=_set(("Dense_1",), None)),
        ValueError,
        r"group_ids.*Dense_1",
    ),
    (
        "ids-not-broadcastable",
        lambda: _ntk(edit_ids=_set(("Dense_0", "kernel"), lambda _: np.zeros((3, 3), np.int32))),
        ValueError,
        r"group_ids\['params'\]\['Dense_0'\]\['kernel'\].*does not broadcast",
    ),
    (
        "ids-out-of-range",
        lambda: _ntk(edit_ids=_set(("Dense_0", "bias"), lambda _: np.full(7, -2, np.int32))),
        ValueError,
        r"group_ids\['params'\]\['Dense_0'\]\['bias'\].*-2",
    ),
    (
        "ids-empty-groups",
        lambda: _ntk(edit_ids=_set(("Dense_2", "kernel"), lambda g: g + 100)),
        ValueError,
        r"group_ids: groups .* contain no weight",
    ),
    (
        "ids-float",
        lambda: _ntk(
            group_ids=jax.tree_util.tree_map(lambda a: np.zeros((1,) * a.ndim), _mlp()[1])
        ),
        TypeError,
        r"group_ids.*integer",
    ),
    (
        "params-non-finite",
        lambda: _ntk(params=_nan_bias(_mlp()[1])),
        ValueError,
        r"params\['params'\]\['Dense_1'\]\['bias'\]: 1 " + NONFINITE,
    ),
    (
        "backend-unknown",
        lambda: _ntk(backend="fast"),
        ValueError,
        r"backend must be one of .*, got 'fast'",
    ),
    (
        "chunk-size-zero",
        lambda: _ntk(chunk_size=0),
        ValueError,
        r"chunk_size: expected a positive int, got 0",
    ),
    (
        "ntvp-groups",
        lambda: _ntk(edit_ids=lambda ids: None, backend="ntvp"),
        ValueError,
        r"backend='ntvp' computes whole-model kernels only",
    ),
    (
        "x2-shape",
        lambda: _ntk(x2=jnp.ones((2, 5))),
        ValueError,
        r"x2: expected examples of shape \(4,\) \(as x\), got \(5,\)",
    ),
    (
        "x-no-batch-axis",
        lambda: _ntk(x=jnp.ones(())),
        ValueError,
        r"x: expected a leading batch axis of length >= 1, got shape \(\)",
    ),
    (
        "x-not-an-array",
        lambda: _ntk(x=[[1.0] * 4]),
        TypeError,
        r"x: expected an array with a leading batch axis, got list",
    ),
    (
        "x2-empty-batch",
        lambda: _ntk(x2=jnp.ones((0, 4))),
        ValueError,
        r"x2: expected a leading batch axis of length >= 1, got shape \(0, 4\)",
    ),
    ("x-nan", lambda: _ntk(x=_mlp()[2].at[0, 0].set(jnp.nan)), ValueError, "x: 1 " + NONFINITE),
    (
        "x-inf-numpy",
        lambda: _ntk(x=replaced(_mlp()[2], (1, 2), np.inf)),
        ValueError,
        "x: 1 " + NONFINITE,
    ),
    ("x2-nan", lambda: _ntk(x2=_mlp()[2].at[2, 1].set(jnp.nan)), ValueError, "x2: 1 " + NONFINITE),
    (
        "x-nan-with-groups",
        lambda: _ntk(x=_mlp()[2].at[0, 0].set(jnp.nan), edit_ids=lambda ids: None),
        ValueError,
        "x: 1 " + NONFINITE,
    ),
]


@table(NTK_CASES)
def test_spectra_ntk_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.hessian

HESSIAN_PARAMS = {"w": np.array([1.0, -2.0, 0.5], np.float32), "b": np.float32(0.3)}
HESSIAN_X = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)


def quartic(params):
    return jnp.sum(params["w"] ** 4) + params["b"] ** 2


def linear_apply(params, x):
    return jnp.tanh(x @ params["w"] + params["b"])[:, None]


ESTIMATORS = {
    "hessian_trace": lambda p, **kw: hessian_trace(quartic, p, jax.random.key(0), **kw),
    "output_hessian_trace": lambda p, **kw: output_hessian_trace(
        linear_apply, p, HESSIAN_X, jax.random.key(0), **kw
    ),
    "group_hessian_traces": lambda p, **kw: group_hessian_traces(
        quartic,
        p,
        {"w": np.arange(3, dtype=np.int32), "b": np.int32(0)},
        jax.random.key(0),
        **kw,
    ),
    "hessian_diagonal": lambda p, **kw: hessian_diagonal(quartic, p, jax.random.key(0), **kw),
}
SHARED_ARGUMENT_CASES = [
    (
        "num-probes-zero",
        {"num_probes": 0},
        ValueError,
        r"num_probes: expected a positive int, got 0",
    ),
    (
        "num-probes-float",
        {"num_probes": 2.5},
        TypeError,
        r"num_probes: expected a positive int, got 2\.5",
    ),
    (
        "num-probes-bool",
        {"num_probes": True},
        TypeError,
        r"num_probes: expected a positive int, got True",
    ),
    (
        "distribution",
        {"num_probes": 2, "distribution": "uniform"},
        ValueError,
        r"distribution: expected one of \('rademacher', 'gaussian'\), got 'uniform'",
    ),
    (
        "batch-size-zero",
        {"num_probes": 2, "batch_size": 0},
        ValueError,
        r"batch_size: expected a positive int, got 0",
    ),
    (
        "params-non-finite",
        {"num_probes": 2, "nan_params": True},
        ValueError,
        r"params\['w'\]: 1 " + NONFINITE,
    ),
]


def _estimate(name, nan_params=False, **kwargs):
    params = dict(HESSIAN_PARAMS, w=replaced(HESSIAN_PARAMS["w"], 1, np.nan))
    return ESTIMATORS[name](params if nan_params else HESSIAN_PARAMS, **kwargs)


HESSIAN_CASES = [
    (f"{name}-{case}", functools.partial(_estimate, name, **kwargs), error, match)
    for name in ESTIMATORS
    for case, kwargs, error, match in SHARED_ARGUMENT_CASES
] + [
    (
        "gauss-newton-loss-hessian-shape",
        lambda: gauss_newton_diagonal(
            linear_apply, HESSIAN_PARAMS, HESSIAN_X, loss_hessian=np.eye(3)
        ),
        ValueError,
        r"loss_hessian: expected shape \(1, 1\) or \(2, 1, 1\) .* got \(3, 3\)",
    ),
    (
        "gauss-newton-x-no-batch",
        lambda: gauss_newton_diagonal(linear_apply, HESSIAN_PARAMS, np.float32(1.0)),
        ValueError,
        r"x: expected a leading batch axis",
    ),
    (
        "group-ids-no-weight",
        lambda: group_hessian_traces(
            quartic,
            HESSIAN_PARAMS,
            {"w": np.int32(1), "b": np.int32(1)},
            jax.random.key(0),
            num_probes=2,
        ),
        ValueError,
        r"group_ids: groups \[0\] of \[0, 2\) contain no weight",
    ),
    (
        "output-trace-x-no-batch",
        lambda: output_hessian_trace(
            linear_apply, HESSIAN_PARAMS, np.float32(1.0), jax.random.key(0), num_probes=2
        ),
        ValueError,
        r"x: expected a leading batch axis",
    ),
    (
        "vector-loss",
        lambda: hessian_trace(
            lambda p: p["w"] ** 2, HESSIAN_PARAMS, jax.random.key(0), num_probes=2
        ),
        ValueError,
        r"loss_fn: expected a scalar loss \(shape \(\)\), got an output of shape \(3,\)",
    ),
    (
        "length-one-loss",
        lambda: hessian_trace(
            lambda p: jnp.sum(p["w"] ** 2, keepdims=True),
            HESSIAN_PARAMS,
            jax.random.key(0),
            num_probes=2,
        ),
        ValueError,
        r"loss_fn: expected a scalar loss \(shape \(\)\), got an output of shape \(1,\)",
    ),
    (
        "nan-loss",
        lambda: hessian_trace(
            lambda p: jnp.log(p["w"][1]) + quartic(p),
            HESSIAN_PARAMS,
            jax.random.key(0),
            num_probes=2,
        ),
        ValueError,
        r"loss_fn: expected a finite loss at params, got nan",
    ),
    (
        "inf-loss",
        lambda: hessian_trace(
            lambda p: quartic(p) / 0.0,
            HESSIAN_PARAMS,
            jax.random.key(0),
            num_probes=3,
            batch_size=2,
        ),
        ValueError,
        r"loss_fn: expected a finite loss at params, got inf",
    ),
    (
        "output-trace-x-nan",
        lambda: output_hessian_trace(
            linear_apply,
            HESSIAN_PARAMS,
            replaced(HESSIAN_X, (1, 1), np.nan),
            jax.random.key(0),
            num_probes=2,
        ),
        ValueError,
        "x: 1 " + NONFINITE,
    ),
    (
        "output-trace-nan-outputs",
        lambda: output_hessian_trace(
            lambda p, x: jnp.log(linear_apply(p, x) - 2.0),
            HESSIAN_PARAMS,
            HESSIAN_X,
            jax.random.key(0),
            num_probes=2,
        ),
        ValueError,
        r"apply_fn: expected finite outputs at params and x, got a sum of nan",
    ),
]


@table(HESSIAN_CASES)
def test_spectra_hessian_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_traced_arguments_skip_value_checks():
    """Inside jit values are unknown: no error, the NaN propagates visibly; shapes still fail."""

    @jax.jit
    def trace_of_nan_loss(params):
        return hessian_trace(
            lambda p: quartic(p) * jnp.nan, params, jax.random.key(0), num_probes=2
        ).estimate

    assert np.isnan(trace_of_nan_loss(HESSIAN_PARAMS))
    with pytest.raises(ValueError, match=re.escape("loss_fn: expected a scalar loss")):
        jax.jit(
            lambda p: hessian_trace(lambda q: q["w"], p, jax.random.key(0), num_probes=2).estimate
        )(HESSIAN_PARAMS)
    asymmetric = replaced(KERNEL, (0, 1), 2.0)
    features = jax.jit(spectrum_features)(jnp.asarray(asymmetric))  # not checked: symmetrized
    symmetrized = 0.5 * (asymmetric + asymmetric.T).astype(np.float64)
    np.testing.assert_allclose(
        features.eigenvalues, np.linalg.eigvalsh(symmetrized)[::-1], rtol=1e-6
    )
    params = {"w": np.ones((2, 3), np.float32)}
    ids = {"w": np.arange(3, dtype=np.int32)[None, :]}
    masked = jax.jit(lambda m: apply_group_mask(params, ids, m))(jnp.array([1.0, jnp.nan, 0.0]))
    np.testing.assert_array_equal(masked["w"], [[1.0, np.nan, 0.0]] * 2)


# ---------------------------------------------------------------------------------------------
# jaxprune.masks.mask


@functools.cache
def _grouped_mlp():
    """The MLP's parameters and their 12 neuron groups of Dense_0 and Dense_1."""
    _, params, _ = _mlp()
    return params, build_group_ids(params, neurons(r"Dense_[01]$"))[0]


def _masked(function, mask):
    params, ids = _grouped_mlp()
    return function(params, ids, mask)


def _bad_pmask():
    params, ids = _grouped_mlp()
    pmask = jax.tree_util.tree_map(lambda w: np.ones(np.shape(w)), params)
    pmask["params"]["Dense_0"]["kernel"] = np.ones((2, 2))
    return group_mask_from_param_mask(params, ids, pmask)


def _int_params():
    params, ids = _grouped_mlp()
    ints = jax.tree_util.tree_map(lambda w: np.ones(np.shape(w), np.int32), params)
    return apply_group_mask(ints, ids, np.ones(12))


LAYOUT = GroupLayout.from_sizes(("a", "b"), (3, 2))
SCORES = np.arange(5.0)
NAN_MASK = replaced(np.ones(12, np.float32), 3, np.nan)

MASK_CASES = [
    (
        "apply-mask-shape",
        lambda: _masked(apply_group_mask, np.ones(11)),
        ValueError,
        re.escape("mask: expected shape (12,), one entry per group, got (11,)"),
    ),
    (
        "apply-mask-complex",
        lambda: _masked(apply_group_mask, np.ones(12, np.complex64)),
        TypeError,
        "mask: expected a real or boolean array, got dtype complex64",
    ),
    (
        "apply-mask-nan",
        lambda: _masked(apply_group_mask, NAN_MASK),
        ValueError,
        re.escape("mask: non-finite entries (NaN or inf) at groups [3]; expected finite values"),
    ),
    (
        "apply-mask-inf-device",
        lambda: _masked(apply_group_mask, jnp.ones(12).at[0].set(jnp.inf).at[7].set(-jnp.inf)),
        ValueError,
        re.escape("mask: non-finite entries (NaN or inf) at groups [0, 7]"),
    ),
    (
        "param-mask-nan",
        lambda: _masked(param_mask, NAN_MASK),
        ValueError,
        re.escape("mask: non-finite entries (NaN or inf) at groups [3]"),
    ),
    (
        "apply-int-params",
        _int_params,
        TypeError,
        re.escape("params['params']['Dense_0']['bias']: grouped weights must be floating point"),
    ),
    (
        "pmask-structure",
        lambda: _masked(group_mask_from_param_mask, {"params": {}}),
        ValueError,
        "pmask: expected the pytree structure of params",
    ),
    (
        "pmask-broadcast",
        _bad_pmask,
        ValueError,
        re.escape("pmask: a leaf of shape (2, 2) does not broadcast"),
    ),
    (
        "ratio-one",
        lambda: ratio_to_k(10, 1),
        ValueError,
        r"ratio: expected a fraction in \[0, 1\), got 1",
    ),
    (
        "ratio-negative",
        lambda: ratio_to_k(10, -0.1),
        ValueError,
        re.escape("ratio: expected a fraction in [0, 1), got -0.1"),
    ),
    (
        "ratio-nan",
        lambda: ratio_to_k(10, float("nan")),
        ValueError,
        "ratio: expected a finite number, got nan",
    ),
    ("ratio-string", lambda: ratio_to_k(10, "0.5"), TypeError, "ratio: expected a real number"),
    (
        "num-groups-zero",
        lambda: ratio_to_k(0, 0.5),
        ValueError,
        "num_groups: expected a positive int, got 0",
    ),
    (
        "ratio-keeps-nothing",
        lambda: ratio_to_k(3, 0.9),
        ValueError,
        re.escape("ratio: pruning 0.9 of 3 groups keeps 0.3, which rounds to 0 groups"),
    ),
    (
        "topk-jax-nan",
        lambda: topk_mask_jax(jnp.array([1.0, jnp.nan]), 1),
        ValueError,
        re.escape("scores: NaN at groups [1]"),
    ),
    (
        "topk-jax-shape",
        lambda: topk_mask_jax(jnp.ones((2, 2)), 1),
        ValueError,
        re.escape("scores: expected shape (p,) with p >= 1, got (2, 2)"),
    ),
    (
        "topk-jax-bool",
        lambda: topk_mask_jax(jnp.ones(3, bool), 1),
        TypeError,
        "scores: expected a real array, got dtype bool",
    ),
    (
        "topk-jax-k",
        lambda: topk_mask_jax(jnp.ones(3), 4),
        ValueError,
        re.escape("k: expected an int in [0, 3] (the number of groups), got 4"),
    ),
    (
        "topk-nan",
        lambda: topk_mask(np.array([1.0, 2.0, np.nan]), 1),
        ValueError,
        re.escape("scores: NaN at groups [2]"),
    ),
    (
        "topk-k-too-large",
        lambda: topk_mask(SCORES, 6),
        ValueError,
        re.escape("k: expected an int in [0, 5] (the number of groups), got 6"),
    ),
    (
        "topk-k-float",
        lambda: topk_mask(SCORES, 2.0),
        TypeError,
        re.escape("k: expected an int >= 0, got 2.0"),
    ),
    (
        "topk-layout-missing",
        lambda: topk_mask(SCORES, 2, per_layer=True),
        ValueError,
        "layout: required when per_layer=True or min_per_layer > 0",
    ),
    (
        "topk-layout-size",
        lambda: topk_mask(SCORES[:4], 2, layout=LAYOUT, min_per_layer=1),
        ValueError,
        re.escape("layout: has 5 groups, expected 4"),
    ),
    (
        "topk-k-below-minimum",
        lambda: topk_mask(SCORES, 1, layout=LAYOUT, min_per_layer=1),
        ValueError,
        re.escape("k: 1 is less than min_per_layer (1) × number of layers (2) = 2"),
    ),
    (
        "topk-min-per-layer-too-large",
        lambda: topk_mask(SCORES, 5, layout=LAYOUT, min_per_layer=3),
        ValueError,
        "min_per_layer: 3 exceeds the 2 groups of layer 'b'",
    ),
    (
        "topk-min-per-layer-negative",
        lambda: topk_mask(SCORES, 2, layout=LAYOUT, min_per_layer=-1),
        ValueError,
        "min_per_layer: expected an int >= 0, got -1",
    ),
    (
        "topk-shape",
        lambda: topk_mask(np.ones((2, 2)), 1),
        ValueError,
        re.escape("scores: expected shape (p,) with p >= 1, got (2, 2)"),
    ),
    (
        "topk-traced",
        lambda: jax.jit(lambda s: topk_mask(s, 1))(jnp.ones(3)),
        TypeError,
        "scores: topk_mask needs concrete scores; inside jit use topk_mask_jax",
    ),
    (
        "topk-bool",
        lambda: topk_mask(np.ones(3, bool), 1),
        TypeError,
        "scores: expected a real array, got dtype bool",
    ),
    (
        "sparsity-flops",
        lambda: sparsity(*_grouped_mlp(), np.ones(12), group_flops=-np.ones(12)),
        ValueError,
        re.escape("group_flops: expected (12,) finite non-negative FLOPs"),
    ),
    (
        "sparsity-nan",
        lambda: sparsity(*_grouped_mlp(), np.full(12, np.nan)),
        ValueError,
        "mask: contains NaN",
    ),
    (
        "sparsity-shape",
        lambda: sparsity(*_grouped_mlp(), np.ones(3)),
        ValueError,
        re.escape("mask: expected shape (12,), one entry per group, got (3,)"),
    ),
]


@table(MASK_CASES)
def test_masks_mask_bad_input(call, error, match):
    assert_raises(call, error, match)


# ---------------------------------------------------------------------------------------------
# jaxprune.spectra.lanczos and jaxprune.spectra.sketch (existing checks)

LANCZOS_PARAMS, LANCZOS_X, LANCZOS_Y = tiny_mlp_problem(np.random.default_rng(1))


def lanczos_loss(params):
    return 0.5 * jnp.mean(jnp.sum((tiny_mlp_apply(params, LANCZOS_X) - LANCZOS_Y) ** 2, axis=-1))


def _lanczos(function, bad=False, **kwargs):
    params = dict(LANCZOS_PARAMS)
    if bad:
        params["b1"] = replaced(params["b1"], 0, np.inf)
    return function(lanczos_loss, params, jax.random.key(0), **kwargs)


LANCZOS_CASES = [
    (
        "k-too-large",
        lambda: _lanczos(hessian_eigenvalues, k=39),
        ValueError,
        r"k must be <= the number of parameters P = 38, got 39",
    ),
    (
        "k-zero",
        lambda: _lanczos(hessian_eigenvalues, k=0),
        ValueError,
        "k: expected a positive int, got 0",
    ),
    (
        "k-float",
        lambda: _lanczos(hessian_eigenvalues, k=1.5),
        TypeError,
        "k: expected a positive int",
    ),
    (
        "iterations-below-k",
        lambda: _lanczos(hessian_eigenvalues, k=5, num_iterations=3),
        ValueError,
        "num_iterations",
    ),
    (
        "tridiagonal-iterations",
        lambda: lanczos_tridiagonal(lambda v: v, 4, jax.random.key(0), 5, jnp.float32),
        ValueError,
        "num_iterations",
    ),
    (
        "eigenvalues-non-finite",
        lambda: _lanczos(hessian_eigenvalues, bad=True, k=1),
        ValueError,
        r"params\['b1'\]: 1 " + NONFINITE,
    ),
    (
        "density-non-finite",
        lambda: _lanczos(hessian_spectral_density, bad=True),
        ValueError,
        r"params\['b1'\]: 1 " + NONFINITE,
    ),
    (
        "density-num-probes-zero",
        lambda: _lanczos(hessian_spectral_density, num_probes=0),
        ValueError,
        "num_probes: expected a positive int, got 0",
    ),
    (
        "density-num-probes-float",
        lambda: _lanczos(hessian_spectral_density, num_probes=2.5),
        TypeError,
        "num_probes: expected a positive int",
    ),
    (
        "density-grid-size",
        lambda: _lanczos(hessian_spectral_density, grid_size=1),
        ValueError,
        "grid_size",
    ),
    ("density-sigma", lambda: _lanczos(hessian_spectral_density, sigma=-1.0), ValueError, "sigma"),
    (
        "sketch-projections",
        lambda: sketch_outputs(linear_apply, HESSIAN_PARAMS, HESSIAN_X, jax.random.key(0), 0),
        ValueError,
        "num_projections: expected a positive int, got 0",
    ),
    (
        "sketch-x-list",
        lambda: sketch_outputs(linear_apply, HESSIAN_PARAMS, [1.0], jax.random.key(0), 8),
        TypeError,
        "x: expected an array with a leading batch axis, got list",
    ),
]


@table(LANCZOS_CASES)
def test_spectra_lanczos_and_sketch_bad_input(call, error, match):
    assert_raises(call, error, match)


def test_training_analysis_of_a_diverged_state_logs_nan():
    """A diverged run's NTK is NaN: the training analysis logs NaN metrics instead of stopping
    on the kernel check (the run itself is not this check's to stop)."""
    from jaxprune.train.analysis import analyze_state
    from jaxprune.train.steps import TrainState

    def diverged(params, mask, collections, gates, probe, key):
        return jnp.full((2, 2), jnp.nan), jnp.float32(1.5)

    state = TrainState(jnp.int32(3), {"w": jnp.ones(2)}, {}, (), None)
    metrics = analyze_state(diverged, state, {}, jax.random.key(0))
    assert metrics["hessian_trace"] == 1.5
    for name in ("ntk_lambda_max", "ntk_lambda_min", "ntk_condition"):
        assert np.isnan(metrics[name]), name
