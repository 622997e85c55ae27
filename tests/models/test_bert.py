"""BERT and gated self-attention against hand-written NumPy forward passes and hand counts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxprune.masks.mask import apply_group_mask
from jaxprune.models.attention import SelfAttention, head_keep_targets
from jaxprune.models.bert import (
    PRESETS,
    Bert,
    BertConfig,
    attention_flops,
    compact,
    flops,
    from_preset,
    group_ids,
    mlm_loss,
    parameter_count,
)

CONFIG = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=4,
    intermediate_size=24,
    max_length=12,
    dropout_rate=0.0,
)
N, T = 3, 7


# ---------------------------------------------------------------------------------------------
# NumPy reference (float64).


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _layer_norm(x, p, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _attention(p, x, mask, gates):
    """Per head h: softmax(q_h k_hᵀ/√Dh) v_h, times ξ_h, then Σ_h (·) W_out[h] + b_out."""
    num_heads, head_dim = p["query"]["bias"].shape
    out = np.broadcast_to(p["out"]["bias"], x.shape).copy()
    for h in range(num_heads):
        q, k, v = (x @ p[n]["kernel"][:, h, :] + p[n]["bias"][h] for n in ("query", "key", "value"))
        scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(head_dim)  # (n, T, T)
        if mask is not None:
            scores = np.where(mask[:, None, :], scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        gate = 1.0 if gates is None else gates[h]
        out += gate * (weights @ v) @ p["out"]["kernel"][h]
    return out


def _bert(params, config, tokens, token_types=None, mask=None, gates=None):
    """BERT MLM logits (n, T, V); ``gates`` is a list of per-layer head-gate vectors."""
    p = _np(params["params"])
    token_types = np.zeros_like(tokens) if token_types is None else token_types
    x = (
        p["token_embed"]["embedding"][tokens]
        + p["position_embed"]["embedding"][: tokens.shape[1]][None]
        + p["type_embed"]["embedding"][token_types]
    )
    x = _layer_norm(x, p["embed_norm"])
    for layer in range(config.num_layers):
        q = p[f"layer_{layer}"]
        a = _attention(q["attention"], x, mask, None if gates is None else gates[layer])
        x = _layer_norm(x + a, q["attention_norm"])
        h = _gelu(x @ q["intermediate"]["kernel"] + q["intermediate"]["bias"])
        x = _layer_norm(x + h @ q["output"]["kernel"] + q["output"]["bias"], q["output_norm"])
    x = _gelu(x @ p["mlm_transform"]["kernel"] + p["mlm_transform"]["bias"])
    x = _layer_norm(x, p["mlm_norm"])
    return x @ p["token_embed"]["embedding"].T + p["mlm_bias"]


def _inputs(config=CONFIG, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (N, T))
    token_types = rng.integers(0, 2, (N, T))
    mask = np.ones((N, T), bool)
    mask[0, 5:] = False
    mask[2, 3:] = False
    return tokens, token_types, mask


def _init(config=CONFIG, seed=1):
    variables = Bert(config).init(jax.random.key(seed), jnp.zeros((1, T), jnp.int32))
    # Non-zero biases, LayerNorm shifts and MLM bias so that every parameter is exercised.
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [w + 0.1 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------
# Forward pass.


def test_self_attention_matches_numpy_reference_with_padding_and_gates():
    model = SelfAttention(num_heads=3, head_dim=4)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6))
    variables = model.init(jax.random.key(1), x)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    gates = np.array([0.3, -1.2, 2.0])
    out = model.apply(variables, x, mask=mask, head_gates=gates)
    expected = _attention(_np(variables["params"]), np.asarray(x, np.float64), mask, gates)
    assert out.shape == (2, 5, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_self_attention_head_keep_targets_name_heads_axes():
    assert head_keep_targets("params/a") == [
        ("params/a/query/kernel", 1),
        ("params/a/query/bias", 0),
        ("params/a/key/kernel", 1),
        ("params/a/key/bias", 0),
        ("params/a/value/kernel", 1),
        ("params/a/value/bias", 0),
        ("params/a/out/kernel", 0),
    ]


def test_bert_matches_numpy_reference():
    variables = _init()
    tokens, token_types, mask = _inputs()
    gates = np.random.default_rng(2).uniform(0.0, 1.5, (2, 4))
    logits = Bert(CONFIG).apply(
        variables, tokens, token_types=token_types, mask=mask, head_gates=gates
    )
    expected = _bert(variables, CONFIG, tokens, token_types, mask, list(gates))
    assert logits.shape == (N, T, CONFIG.vocab_size)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_dropout_is_active_only_when_not_deterministic():
    config = dataclasses.replace(CONFIG, dropout_rate=0.3)
    variables = _init(config)
    tokens, _, _ = _inputs()
    model = Bert(config)
    dense = model.apply(variables, tokens)
    np.testing.assert_allclose(dense, _bert(variables, config, tokens), rtol=1e-4, atol=1e-4)
    rngs = {"dropout": jax.random.key(3)}
    dropped = model.apply(variables, tokens, deterministic=False, rngs=rngs)
    assert np.abs(np.asarray(dropped) - np.asarray(dense)).max() > 1e-2
    np.testing.assert_array_equal(
        dropped, model.apply(variables, tokens, deterministic=False, rngs=rngs)
    )


# ---------------------------------------------------------------------------------------------
# Heads: gates, masks, compaction.


def test_gate_zero_equals_masked_weights_equals_compacted_model():
    variables = _init()
    tokens, token_types, mask = _inputs()
    keep = np.array([[True, False, True, True], [False, False, True, False]])
    ids, layout = group_ids(variables, CONFIG, "heads")
    assert layout.layer_names == ("params/layer_0/attention", "params/layer_1/attention")
    np.testing.assert_array_equal(layout.layer_of_group, [0, 0, 0, 0, 1, 1, 1, 1])

    kwargs = {"token_types": token_types, "mask": mask}
    gated = Bert(CONFIG).apply(variables, tokens, head_gates=keep.astype(np.float32), **kwargs)
    masked_params = apply_group_mask(variables, ids, keep.reshape(-1).astype(np.float32))
    masked = Bert(CONFIG).apply(masked_params, tokens, **kwargs)
    small, small_config = compact(variables, CONFIG, keep)
    compacted = Bert(small_config).apply(small, tokens, **kwargs)

    assert small_config.heads_per_layer == (3, 1)
    assert small["params"]["layer_1"]["attention"]["query"]["kernel"].shape == (16, 1, 4)
    assert small["params"]["layer_0"]["attention"]["out"]["kernel"].shape == (3, 4, 16)
    reference = _bert(variables, CONFIG, tokens, token_types, mask, list(keep.astype(float)))
    np.testing.assert_allclose(gated, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(masked, gated, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compacted, gated, rtol=1e-5, atol=1e-5)

    # The compacted model keeps working with heads: its groups and flat gates.
    _, small_layout = group_ids(small["params"], small_config)
    np.testing.assert_array_equal(small_layout.layer_of_group, [0, 0, 0, 1])
    flat = np.array([1.0, 0.0, 1.0, 1.0])
    again, _ = compact(small, small_config, flat.astype(bool))
    np.testing.assert_allclose(
        Bert(small_config).apply(small, tokens, head_gates=flat, **kwargs),
        Bert(dataclasses.replace(small_config, heads_per_layer=(2, 1))).apply(
            again, tokens, **kwargs
        ),
        rtol=1e-5,
        atol=1e-5,
    )


def test_head_gate_gradient_matches_finite_differences():
    tokens, token_types, mask = _inputs()
    labels = np.random.default_rng(4).integers(0, CONFIG.vocab_size, (N, T))
    weights = (np.random.default_rng(5).uniform(size=(N, T)) < 0.4) & mask
    gates0 = np.random.default_rng(6).uniform(0.5, 1.5, (2, 4))
    with jax.enable_x64(True):
        config = dataclasses.replace(CONFIG, dtype=jnp.float64)
        variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), _init())

        @jax.jit
        def loss(gates):
            logits = Bert(config).apply(
                variables, tokens, token_types=token_types, mask=mask, head_gates=gates
            )
            return mlm_loss(logits, labels, weights)

        grad = np.asarray(jax.grad(loss)(jnp.asarray(gates0)))
        eps = 1e-6
        numeric = np.zeros_like(gates0)
        for index in np.ndindex(gates0.shape):
            step = np.zeros_like(gates0)
            step[index] = eps
            numeric[index] = (loss(gates0 + step) - loss(gates0 - step)) / (2 * eps)
    assert np.abs(grad).min() > 1e-6  # every head matters
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Tied embeddings and parameter counts.


def _hand_count(v, d, layers, inter, positions, types=2, mlm_head=True, pooler=False):
    """BERT's parameter count from the architecture (Devlin et al. 2019)."""
    embeddings = v * d + positions * d + types * d + 2 * d  # tables + LayerNorm
    layer = (4 * d * d + 4 * d) + (2 * d * inter + inter + d) + 2 * 2 * d  # attn, FFN, 2 LN
    head = (d * d + d + 2 * d + v) if mlm_head else 0  # transform + LN + output bias, tied E
    return embeddings + layers * layer + head + ((d * d + d) if pooler else 0)


def test_base_parameter_count_equals_published_architecture():
    base = PRESETS["base"]
    encoder = _hand_count(30522, 768, 12, 3072, 512, mlm_head=False)
    assert encoder == 108_891_648  # BERT-Base without the pooler
    assert _hand_count(30522, 768, 12, 3072, 512, mlm_head=False, pooler=True) == 109_482_240
    # This model: embeddings + encoder + MLM head (transform, LayerNorm, output bias), no pooler.
    assert parameter_count(base) == _hand_count(30522, 768, 12, 3072, 512) == 109_514_298
    assert parameter_count(base) == encoder + 768 * 768 + 768 + 2 * 768 + 30522


def test_output_projection_is_the_tied_embedding_matrix():
    tiny = PRESETS["tiny"]
    assert parameter_count(tiny) == _hand_count(1000, 64, 2, 128, 64)  # no separate (d, V)
    variables = _init()
    shapes = {tuple(w.shape) for w in jax.tree_util.tree_leaves(variables)}
    assert (CONFIG.hidden_size, CONFIG.vocab_size) not in shapes

    tokens, _, _ = _inputs()
    unused = int(np.setdiff1d(np.arange(CONFIG.vocab_size), tokens)[0])
    delta = np.asarray(jax.random.normal(jax.random.key(7), (CONFIG.hidden_size,)))
    changed = jax.tree_util.tree_map(lambda a: a, variables)
    changed["params"]["token_embed"]["embedding"] = (
        variables["params"]["token_embed"]["embedding"].at[unused].add(delta)
    )
    model = Bert(CONFIG)
    before, state = model.apply(
        variables, tokens, capture_intermediates=lambda m, _: m.name == "mlm_norm"
    )
    hidden = np.asarray(state["intermediates"]["mlm_norm"]["__call__"][0], np.float64)
    after = model.apply(changed, tokens)
    others = np.arange(CONFIG.vocab_size) != unused
    np.testing.assert_array_equal(after[..., others], before[..., others])
    np.testing.assert_allclose(
        after[..., unused] - before[..., unused], hidden @ delta, rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# FLOPs.


def _dot_flops(jaxpr) -> int:
    """2 × multiply-adds of every dot_general in a jaxpr (and its sub-jaxprs)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            free = [s for i, s in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
            total += 2 * int(np.prod(lhs)) * int(np.prod(free))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += _dot_flops(inner)
    return total


def test_flops_of_tiny_match_a_hand_count():
    t, d, h, dh, inter, v = 16, 64, 4, 16, 128, 1000
    per_layer = (
        3 * 2 * t * d * h * dh  # query, key, value projections
        + 2 * t * t * h * dh  # scores q kᵀ
        + 2 * t * t * h * dh  # context = probabilities × values
        + 2 * t * h * dh * d  # output projection
        + 2 * t * d * inter  # intermediate
        + 2 * t * inter * d  # output
    )
    hand = 2 * per_layer + 2 * t * d * d + 2 * t * d * v
    assert hand == 4_407_296
    assert flops(PRESETS["tiny"], (t,)) == hand
    assert attention_flops(PRESETS["tiny"], t) == 2 * (per_layer - 4 * t * d * inter)


@pytest.mark.parametrize("heads_per_layer", [None, (3, 1)])
def test_flops_match_the_matrix_products_of_the_traced_model(heads_per_layer):
    config = dataclasses.replace(CONFIG, heads_per_layer=heads_per_layer)
    model = Bert(config)
    tokens = jnp.zeros((1, 9), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
    jaxpr = jax.make_jaxpr(model.apply)(variables, tokens).jaxpr
    assert _dot_flops(jaxpr) == flops(config, (9,))


# ---------------------------------------------------------------------------------------------
# Loss, dtypes, validation.


def test_mlm_loss_is_weighted_cross_entropy():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 3, 5))
    labels = rng.integers(0, 5, (2, 3))
    weights = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected = (weights * nll).sum() / weights.sum()
    np.testing.assert_allclose(mlm_loss(logits, labels, weights), expected, rtol=1e-6)
    assert float(mlm_loss(logits, labels, np.zeros((2, 3)))) == 0.0


def test_bfloat16_compute_stays_close_to_float32():
    variables = _init()
    tokens, token_types, mask = _inputs()
    kwargs = {"token_types": token_types, "mask": mask}
    full = np.asarray(Bert(CONFIG).apply(variables, tokens, **kwargs), np.float64)
    config = dataclasses.replace(CONFIG, dtype=jnp.bfloat16)
    half = Bert(config).apply(variables, tokens, **kwargs)
    assert half.dtype == jnp.bfloat16
    params = Bert(config).init(jax.random.key(0), tokens)
    assert {w.dtype for w in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    # bfloat16 keeps 8 significant bits (unit round-off 2^-8 ≈ 0.4%); ~15 rounded matmuls and
    # LayerNorms in sequence give errors of a few times that, not more: bound the relative error
    # of the logits at 3%, while a wrong computation is off by O(100%).
    error = np.linalg.norm(np.asarray(half, np.float64) - full) / np.linalg.norm(full)
    assert error < 3e-2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("hidden_size", -4),
        ("num_layers", 0),
        ("num_heads", 3),  # does not divide 16
        ("max_length", 0),
        ("type_vocab_size", 0),
        ("dropout_rate", 1.0),
        ("dtype", jnp.int32),
        ("heads_per_layer", (1,)),
        ("heads_per_layer", (1, 5)),
        ("heads_per_layer", (0, 1)),
    ],
)
def test_bad_configs_raise(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CONFIG, **{field: value})


def test_a_float_size_is_a_type_error():
    with pytest.raises(TypeError, match="intermediate_size"):
        dataclasses.replace(CONFIG, intermediate_size=2.5)


def test_presets_and_argument_errors():
    assert from_preset("small", dropout_rate=0.0).hidden_size == 256
    with pytest.raises(ValueError, match=r"'base', 'small', 'tiny'"):
        from_preset("huge")
    variables = _init()
    tokens, _, _ = _inputs()
    with pytest.raises(ValueError, match="head_gates"):
        Bert(CONFIG).apply(variables, tokens, head_gates=np.ones((2, 3)))
    with pytest.raises(ValueError, match="max_length"):
        Bert(CONFIG).apply(variables, np.zeros((1, 13), np.int32))
    with pytest.raises(ValueError, match="keep"):
        compact(variables, CONFIG, np.array([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="kind"):
        group_ids(variables, CONFIG, "neurons")
