"""Switch FFN and Switch encoder: NumPy references, capacity drops, aux loss, gates, compaction."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.masks.groups import build_group_ids, experts
from jaxprune.masks.mask import apply_group_mask
from jaxprune.models.moe import (
    SwitchFFN,
    compact_experts,
    expert_capacity,
    total_aux_loss,
    total_dropped_tokens,
)
from jaxprune.models.switch import (
    Switch,
    SwitchConfig,
    compact_per_layer,
    flops,
    from_preset,
    group_ids,
    split_gates,
)

ALPHA = 1e-2


# ---------------------------------------------------------------------------------------------
# NumPy references.


def np_switch_ffn(p, x, capacity, *, gates=None, exclude_zero=True, token_mask=None):
    """Token-by-token Switch FFN in float64: returns (y, aux_loss, dropped)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    n, t, _ = x.shape
    e = p["experts"]["wi"].shape[0]
    gates = np.ones(e) if gates is None else np.asarray(gates, np.float64)
    real = np.ones((n, t), bool) if token_mask is None else np.asarray(token_mask, bool)
    y = np.zeros_like(x)
    counts_f, sum_p, dropped = np.zeros(e), np.zeros(e), 0
    for s in range(n):
        load = np.zeros(e, int)
        for i in range(t):
            if not real[s, i]:
                continue
            logits = x[s, i] @ p["router"]["kernel"] + p["router"].get("bias", 0.0)
            if exclude_zero:
                logits = np.where(gates == 0, -np.inf, logits)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            k = int(np.argmax(probs))
            counts_f[k] += 1
            sum_p += probs
            if load[k] >= capacity:
                dropped += 1
                continue
            load[k] += 1
            ex = p["experts"]
            h = np.maximum(x[s, i] @ ex["wi"][k] + ex["bi"][k], 0.0)
            y[s, i] = gates[k] * probs[k] * (h @ ex["wo"][k] + ex["bo"][k])
    tokens = real.sum()
    active = (gates != 0).sum() if exclude_zero else e
    aux = ALPHA * active * np.sum((counts_f / tokens) * (sum_p / tokens))
    return y, aux, dropped


def np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def np_attention(p, x, pad):
    q = np.einsum("ntd,dhk->nthk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("ntd,dhk->nthk", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("ntd,dhk->nthk", x, p["value"]["kernel"]) + p["value"]["bias"]
    scores = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(pad[:, None, None, :], scores, -1e30)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    context = np.einsum("nhqk,nkhd->nqhd", w, v)
    return np.einsum("nqhd,hdf->nqf", context, p["out"]["kernel"]) + p["out"]["bias"]


def np_switch(params, config, tokens, pad):
    """Float64 forward pass of the Switch encoder written from the module docstring."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    t = tokens.shape[1]
    x = np_layer_norm(
        p["token_embed"]["embedding"][tokens] + p["position_embed"][:t], p["ln_embed"]
    )
    capacity = expert_capacity(t, config.capacity_factor, config.num_experts)
    for i in range(config.num_layers):
        layer = p[f"layer_{i}"]
        x = x + np_attention(layer["attention"], np_layer_norm(x, layer["ln_attention"]), pad)
        h = np_layer_norm(x, layer["ln_ffn"])
        if "moe" in layer:
            h = np_switch_ffn(layer["moe"], h, capacity, token_mask=pad)[0]
        else:
            ffn = layer["ffn"]
            h = np.maximum(h @ ffn["wi"]["kernel"] + ffn["wi"]["bias"], 0.0)
            h = h @ ffn["wo"]["kernel"] + ffn["wo"]["bias"]
        x = x + h
    x = np_layer_norm(x, p["ln_final"])
    return x @ p["token_embed"]["embedding"].T + p["mlm_bias"]


# ---------------------------------------------------------------------------------------------
# Helpers.

CONFIG = from_preset("tiny", vocab_size=50, max_length=12)


def _ffn(num_experts=4, capacity_factor=1.0, **kwargs):
    layer = SwitchFFN(num_experts, 8, 16, capacity_factor=capacity_factor, **kwargs)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 8))
    variables = layer.init(jax.random.PRNGKey(1), x)
    # Larger router weights than the 0.1-scaled init, so routing is decisive and uneven.
    variables["params"]["router"]["kernel"] *= 8.0
    return layer, variables, x


def _run(layer, variables, x, **kwargs):
    y, state = layer.apply(variables, x, mutable=["intermediates"], **kwargs)
    return np.asarray(y), float(total_aux_loss(state)), int(total_dropped_tokens(state))


@functools.cache
def _init_switch(config, n, t):
    model = Switch(config)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (n, t), 0, config.vocab_size)
    return model, jax.jit(model.init)(jax.random.PRNGKey(3), tokens), tokens


def _switch(config=CONFIG, n=2, t=9):
    """Model, variables (fresh dicts: tests may edit them) and tokens; inits are cached."""
    model, variables, tokens = _init_switch(config, n, t)
    return model, jax.tree_util.tree_map(lambda a: a, variables), tokens


def _apply(model, variables, tokens, **kwargs):
    logits, state = model.apply(variables, tokens, mutable=["intermediates"], **kwargs)
    return np.asarray(logits), float(total_aux_loss(state)), int(total_dropped_tokens(state))


# ---------------------------------------------------------------------------------------------
# The Switch FFN layer.


def test_capacity_formula():
    assert expert_capacity(10, 1.5, 4) == 4  # ceil(3.75)
    assert expert_capacity(8, 1.5, 4) == 3  # exactly 3, no float round-up
    assert expert_capacity(10, 1.0, 4) == 3
    assert expert_capacity(3, 0.1, 8) == 1


@pytest.mark.parametrize("padded", [False, True])
def test_switch_ffn_matches_numpy(padded):
    layer, variables, x = _ffn()
    gates = jnp.array([0.7, 1.0, 1.3, 0.9])
    mask = None
    if padded:
        mask = np.ones((3, 10), bool)
        mask[0, :3] = False
        mask[2, -4:] = False
    y, aux, dropped = _run(layer, variables, x, expert_gates=gates, token_mask=mask)
    ref_y, ref_aux, ref_dropped = np_switch_ffn(
        variables["params"], x, expert_capacity(10, 1.0, 4), gates=gates, token_mask=mask
    )
    assert ref_dropped > 0  # the case exercises drops
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux, ref_aux, rtol=1e-5)
    assert dropped == ref_dropped


def test_tokens_over_capacity_are_dropped_in_token_order():
    layer, variables, x = _ffn(capacity_factor=1.5, router_bias=True)
    p = variables["params"]
    p["router"]["kernel"] = jnp.zeros_like(p["router"]["kernel"])
    p["router"]["bias"] = jnp.array([3.0, 0.0, 0.0, 0.0])  # every token prefers expert 0
    capacity = expert_capacity(10, 1.5, 4)
    assert capacity == 4
    y, _, dropped = _run(layer, variables, x)
    ex = {k: np.asarray(v, np.float64) for k, v in p["experts"].items()}
    prob0 = math.exp(3.0) / (math.exp(3.0) + 3.0)
    xs = np.asarray(x, np.float64)
    expected = prob0 * (
        np.maximum(xs[:, :capacity] @ ex["wi"][0] + ex["bi"][0], 0.0) @ ex["wo"][0] + ex["bo"][0]
    )
    np.testing.assert_allclose(y[:, :capacity], expected, rtol=1e-5, atol=1e-6)
    assert np.all(y[:, capacity:] == 0.0)  # dropped: exactly zero
    assert dropped == 3 * (10 - capacity)
    # Padding takes no slot: with the first two tokens padded, tokens 2..5 are served.
    mask = np.ones((3, 10), bool)
    mask[:, :2] = False
    y, _, dropped = _run(layer, variables, x, token_mask=mask)
    assert np.all(y[:, :2] == 0.0) and np.all(y[:, 6:] == 0.0)
    assert np.all(np.abs(y[:, 2:6]).sum(-1) > 0)
    assert dropped == 3 * (8 - capacity)


def test_aux_loss_hand_checked():
    # E = 2, d = 2, one sequence of 4 tokens; router logits x W with W = I.
    layer = SwitchFFN(2, 2, 3, capacity_factor=2.0)
    x = jnp.array([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0]]])
    variables = layer.init(jax.random.PRNGKey(0), x)
    variables["params"]["router"]["kernel"] = jnp.eye(2)
    _, aux, dropped = _run(layer, variables, x)
    probs = np.array([[np.exp(a), np.exp(b)] for a, b in [(2, 0), (0, 1), (1, 0), (3, 0)]])
    probs /= probs.sum(1, keepdims=True)
    f = np.array([3, 1]) / 4  # tokens 0, 2, 3 choose expert 0, token 1 expert 1
    big_p = probs.mean(0)
    np.testing.assert_allclose(aux, ALPHA * 2 * np.sum(f * big_p), rtol=1e-6)
    assert dropped == 0  # capacity ceil(2 * 4 / 2) = 4
    # Uniform router: ties go to expert 0, f = (1, 0), P = (1/2, 1/2), loss = α.
    variables["params"]["router"]["kernel"] = jnp.zeros((2, 2))
    _, aux, dropped = _run(layer, variables, x)
    np.testing.assert_allclose(aux, ALPHA, rtol=1e-6)
    assert dropped == 0


def test_expert_gate_zero_equals_compacted():
    layer, variables, x = _ffn(router_bias=True)
    variables["params"]["router"]["bias"] = jnp.array([0.3, -0.2, 0.1, 0.0])
    keep = np.array([True, False, True, True])
    gated = _run(layer, variables, x, expert_gates=jnp.asarray(keep, jnp.float32))
    small = compact_experts(variables, "params", keep)
    assert small["params"]["experts"]["wi"].shape == (3, 8, 16)
    assert small["params"]["router"]["kernel"].shape == (8, 3)
    assert small["params"]["router"]["bias"].shape == (3,)
    compacted = _run(
        SwitchFFN(3, 8, 16, capacity_factor=1.0, capacity_experts=4, router_bias=True), small, x
    )
    np.testing.assert_allclose(gated[0], compacted[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gated[1], compacted[1], rtol=1e-6)
    assert gated[2] == compacted[2]
    ref = np_switch_ffn(variables["params"], x, expert_capacity(10, 1.0, 4), gates=keep)
    np.testing.assert_allclose(gated[0], ref[0], rtol=1e-5, atol=1e-6)


def test_masked_expert_weights_keep_routing():
    """Zeroing an expert's weights (apply_group_mask) is *not* gate 0: its tokens stay routed to
    it and get output 0, i.e. the reference without exclusion from routing."""
    layer, variables, x = _ffn()
    ids, layout = build_group_ids(variables, experts(r"experts$", 4))
    assert layout.num_groups == 4
    mask = jnp.array([1.0, 0.0, 1.0, 1.0])
    masked = _run(layer, apply_group_mask(variables, ids, mask), x)
    ref = np_switch_ffn(
        variables["params"], x, expert_capacity(10, 1.0, 4), gates=mask, exclude_zero=False
    )
    np.testing.assert_allclose(masked[0], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked[1], ref[1], rtol=1e-5)
    gated = _run(layer, variables, x, expert_gates=mask)
    assert not np.allclose(masked[0], gated[0])


# ---------------------------------------------------------------------------------------------
# The Switch encoder.


def test_switch_matches_numpy_and_is_per_example():
    model, variables, tokens = _switch()
    pad = np.ones(tokens.shape, bool)
    pad[1, -3:] = False
    logits, aux, _ = _apply(model, variables, tokens, mask=pad)
    np.testing.assert_allclose(
        logits, np_switch(variables, CONFIG, np.asarray(tokens), pad), rtol=2e-4, atol=2e-5
    )
    assert aux > 0
    alone, _, _ = _apply(model, variables, tokens[:1], mask=pad[:1])
    np.testing.assert_allclose(alone, logits[:1], rtol=1e-5, atol=1e-6)


def test_group_numbering_experts_heads():
    config = from_preset("tiny", vocab_size=50, max_length=12, num_layers=3, moe_every=1)
    _, variables, _ = _switch(config)
    e_ids, e_layout = group_ids(variables, config, "experts")
    h_ids, h_layout = group_ids(variables, config, "heads")
    both, layout = group_ids(variables, config, "experts+heads")
    assert e_layout.num_groups == 3 * 4 and h_layout.num_groups == 3 * 4
    assert layout.layer_names == (
        "params/layer_0/moe/experts",
        "params/layer_1/moe/experts",
        "params/layer_2/moe/experts",
        "params/layer_0/attention",
        "params/layer_1/attention",
        "params/layer_2/attention",
    )
    for i in range(3):
        p = both["params"][f"layer_{i}"]
        np.testing.assert_array_equal(p["moe"]["experts"]["wi"].ravel(), 4 * i + np.arange(4))
        np.testing.assert_array_equal(p["moe"]["router"]["kernel"], -1)
        np.testing.assert_array_equal(
            p["attention"]["query"]["kernel"].ravel(), 12 + 4 * i + np.arange(4)
        )
        np.testing.assert_array_equal(
            p["attention"]["out"]["kernel"].ravel(), 12 + 4 * i + np.arange(4)
        )
        np.testing.assert_array_equal(p["attention"]["out"]["bias"], -1)
        np.testing.assert_array_equal(
            h_ids["params"][f"layer_{i}"]["attention"]["value"]["bias"].ravel(),
            4 * i + np.arange(4),
        )
        np.testing.assert_array_equal(
            e_ids["params"][f"layer_{i}"]["moe"]["experts"]["bo"].ravel(), 4 * i + np.arange(4)
        )
    gates = split_gates(config, jnp.arange(24.0), "experts+heads")
    np.testing.assert_array_equal(gates["expert_gates"][2], [8, 9, 10, 11])
    np.testing.assert_array_equal(gates["head_gates"][1], [16, 17, 18, 19])
    assert split_gates(config, jnp.ones(12), "heads")["expert_gates"] is None


def test_heads_gate_zero_equals_masked_and_compacted():
    model, variables, tokens = _switch()
    mask = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    ids, _ = group_ids(variables, CONFIG, "heads")
    gated = _apply(model, variables, tokens, **split_gates(CONFIG, mask, "heads"))
    masked = _apply(model, apply_group_mask(variables, ids, mask), tokens)
    keep = [np.asarray(mask[:4], bool), np.asarray(mask[4:], bool)]
    small, config = compact_per_layer(variables, CONFIG, head_keep=keep)
    assert config.layer_heads == (3, 2)
    assert small["params"]["layer_1"]["attention"]["query"]["kernel"].shape == (64, 2, 16)
    compacted = _apply(Switch(config), small, tokens)
    for other in (masked, compacted):
        np.testing.assert_allclose(gated[0], other[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gated[1], other[1], rtol=1e-5)
        assert gated[2] == other[2]


def test_switch_expert_gate_zero_equals_compacted():
    config = from_preset("tiny", vocab_size=50, max_length=12, capacity_factor=1.0)
    model, variables, tokens = _switch(config, t=12)
    # A decisive router (capacity binds: drops are asserted below); removing expert 2, which
    # gets 9 of the 24 tokens, re-routes them (asserted against the zeroed-weights model).
    router = variables["params"]["layer_1"]["moe"]["router"]
    router["kernel"] = jax.random.normal(jax.random.PRNGKey(7), (64, 4))
    # experts of layer 1, then heads of layers 0 and 1
    mask = jnp.array([1.0, 1.0, 0.0, 1.0] + [1.0, 0.0, 0.0, 1.0] + [1.0] * 4)
    gates = split_gates(config, mask, "experts+heads")
    gated = _apply(model, variables, tokens, **gates)
    gated_heads = gates["head_gates"]
    keep = np.asarray(mask, bool)
    small, small_config = compact_per_layer(
        variables, config, expert_keep=[keep[:4]], head_keep=[keep[4:8], keep[8:]]
    )
    assert small_config.layer_experts == (3,) and small_config.layer_heads == (2, 4)
    compacted = _apply(Switch(small_config), small, tokens)
    assert gated[2] > 0
    ids, _ = group_ids(variables, config, "experts")
    zeroed = _apply(
        model, apply_group_mask(variables, ids, mask[:4]), tokens, head_gates=gated_heads
    )
    assert not np.allclose(zeroed[0], gated[0], rtol=1e-3, atol=1e-3)  # re-routing matters
    np.testing.assert_allclose(gated[0], compacted[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gated[1], compacted[1], rtol=1e-5)
    assert gated[2] == compacted[2]


def test_gates_are_differentiable():
    """Gradients in the gates equal central differences (float64 model; the router and the
    attention softmax stay float32 islands, whose round-off stays far below the tolerance)."""
    with jax.enable_x64(True):
        config = dataclasses.replace(CONFIG, dtype=jnp.float64)
        model, variables, tokens = _switch(config)
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
        labels = jax.random.randint(jax.random.PRNGKey(9), tokens.shape, 0, config.vocab_size)

        @jax.jit
        def loss(head_gates, expert_gates):
            logits, state = model.apply(
                variables,
                tokens,
                head_gates=head_gates,
                expert_gates=expert_gates,
                mutable=["intermediates"],
            )
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1).mean()
            return nll + total_aux_loss(state)

        heads0 = jnp.array([[1.0, 0.8, 1.1, 0.9], [0.7, 1.0, 1.2, 1.0]])
        experts0 = jnp.array([[0.9, 1.1, 1.0, 0.8]])
        grads = jax.grad(loss, argnums=(0, 1))(heads0, experts0)
        eps = 1e-3
        for which, (base, grad) in enumerate(zip((heads0, experts0), grads)):
            fd = np.zeros(base.shape)
            for index in np.ndindex(base.shape):
                plus, minus = [heads0, experts0], [heads0, experts0]
                plus[which] = base.at[index].add(eps)
                minus[which] = base.at[index].add(-eps)
                fd[index] = (loss(*plus) - loss(*minus)) / (2 * eps)
            scale = np.abs(fd).max()
            assert scale > 0
            np.testing.assert_allclose(grad, fd, rtol=1e-2, atol=1e-2 * scale)


def test_flops_hand_count():
    t, d, v, i, e = 9, 64, 50, 128, 4
    attention = 3 * t * d * d + 2 * t * t * d + t * d * d
    expected = 2 * (2 * attention + 2 * (2 * t * d * i) + t * d * e + t * d * v)
    assert flops(CONFIG, (t,)) == expected
    small = dataclasses.replace(CONFIG, layer_heads=(2, 4), layer_experts=(2,))
    attention0 = 3 * t * d * 32 + 2 * t * t * 32 + t * 32 * d
    assert flops(small, (t,)) == expected - 2 * (attention - attention0) - 2 * t * d * 2


def test_jit_dropout_and_bfloat16():
    config = from_preset("tiny", vocab_size=50, max_length=12, dropout_rate=0.1)
    model, variables, tokens = _switch(config)
    step = jax.jit(
        lambda v, key: model.apply(
            v, tokens, deterministic=False, rngs={"dropout": key}, mutable=["intermediates"]
        )
    )
    a, _ = step(variables, jax.random.PRNGKey(0))
    b, _ = step(variables, jax.random.PRNGKey(1))
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)
    bf16 = Switch(dataclasses.replace(CONFIG, dtype=jnp.bfloat16))
    variables = jax.jit(bf16.init)(jax.random.PRNGKey(3), tokens)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    logits = bf16.apply(variables, tokens)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


# ---------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_experts": 0}, "num_experts"),
        ({"capacity_factor": 0.0}, "capacity_factor"),
        ({"capacity_factor": -1.5}, "capacity_factor"),
        ({"num_heads": 5}, "num_heads"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"moe_every": 3}, "moe_every"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"layer_heads": (4,)}, "layer_heads"),
        ({"layer_experts": (5,)}, "layer_experts"),
    ],
)
def test_bad_configs(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_preset("tiny", **overrides)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown Switch preset 'huge'.*'tiny', 'small', 'base'"):
        from_preset("huge")
    with pytest.raises(ValueError, match="capacity_factor"):
        SwitchConfig(10, 8, 2, 2, 16, 2, 8, capacity_factor=float("nan"))
    layer, variables, x = _ffn()
    with pytest.raises(ValueError, match="expert_gates"):
        layer.apply(variables, x, expert_gates=jnp.ones(3))
    with pytest.raises(ValueError, match="num_experts"):
        SwitchFFN(0, 8, 16).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="kind"):
        group_ids(variables, CONFIG, "neurons")
    model, variables, tokens = _switch()
    with pytest.raises(ValueError, match="head_gates"):
        model.apply(variables, tokens, head_gates=[jnp.ones(4)])
    with pytest.raises(ValueError, match="max_length"):
        model.apply(variables, jnp.zeros((1, 13), jnp.int32))
