"""``importance_lambda`` (Li et al. (2020), Sec. 4, Figs. 2–4): the smoke preset writes its table,
results and plots; Lemma 4.1 holds at initialization in what it records; its Hessian diagonal
(Gauss–Newton) equals the exact ``jax.hessian`` diagonal of the ReLU net; pruning masks keep the
asked-for fraction globally or per layer."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.experiments import get_experiment
from jaxprune.experiments.importance_lambda import (
    EXPERIMENT,
    ImportanceLambdaSettings,
    curvature_diagonal,
    learning_rate_for,
    prune_masks,
)
from jaxprune.models.two_layer import TwoLayer, TwoLayerConfig


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("importance_lambda")
    return out, EXPERIMENT.run(EXPERIMENT.presets["smoke"], out, False)


def test_smoke_writes_outputs_and_obeys_lemma41_at_init(smoke):
    out, results = smoke
    assert get_experiment("importance_lambda") is EXPERIMENT
    for name in (
        "table.md",
        "results.json",
        "fig2_importance.png",
        "fig3_pruning.png",
        "fig4_layerwise.png",
    ):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    settings = EXPERIMENT.presets["smoke"]
    assert [row["lam"] for row in saved["rows"]] == list(settings.lambdas)
    assert "Figure 2" in (out / "table.md").read_text()
    # Lemma 4.1 at θ^λ_init (same θ^1_init for every λ at a seed): MI ∝ λ^{±2}, HI invariant,
    # and the PPLS constants (linearized features J_W ∝ 1/λ, J_V ∝ λ) scale as λ^{∓2}.
    base = next(r for r in results["runs"] if r["lam"] == 1.0)
    for run in results["runs"]:
        lam = run["lam"]
        np.testing.assert_allclose(
            run["mi_init"], np.multiply(base["mi_init"], [lam**2, lam**-2]), rtol=1e-4
        )
        np.testing.assert_allclose(run["hi_init"], base["hi_init"], rtol=1e-3)
        np.testing.assert_allclose(
            run["ppls_smoothness"],
            np.multiply(base["ppls_smoothness"], [lam**-2, lam**2]),
            rtol=1e-3,
        )
        # Init-pruning NI of the train loss is finite; every pruned net keeps the asked share.
        for record in run["pruning"]:
            assert 0.0 <= record["test_accuracy"] <= 1.0
        layerwise = [p for p in run["pruning"] if p["scope"] == "layer"]
        for record in layerwise:
            np.testing.assert_allclose(record["kept"], record["fraction"], rtol=0.35)


def test_curvature_diagonal_is_the_exact_hessian_diagonal():
    with jax.enable_x64(True):
        config = TwoLayerConfig(input_dim=4, width=6, num_outputs=3, dtype=jnp.float64)
        model = TwoLayer(config)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(7, 4))
        y = jnp.asarray(rng.integers(0, 3, size=7))
        params = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(0), x)["params"]
        )

        def apply(p, inputs):
            return model.apply({"params": p}, inputs)

        def loss(p):
            logits = apply(p, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        flat, unravel = jax.flatten_util.ravel_pytree(params)
        exact = np.diag(np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat)))
        diagonal = curvature_diagonal(apply, params, x, chunk=3)  # 3 chunks, the last padded
        np.testing.assert_allclose(
            jax.flatten_util.ravel_pytree(diagonal)[0], exact, rtol=1e-10, atol=1e-14
        )


def test_prune_masks_keep_the_top_scores():
    scores = {
        "hidden": {"kernel": np.arange(12.0).reshape(3, 4)},
        "output": {"kernel": np.array([[100.0], [-1.0]])},
    }
    global_mask = prune_masks(scores, 0.25, "global")  # 14 weights, keep round(3.5) = 4
    assert np.asarray(global_mask["output"]["kernel"]).ravel().tolist() == [1.0, 0.0]
    assert np.asarray(global_mask["hidden"]["kernel"]).ravel().tolist() == [0.0] * 9 + [1.0] * 3
    layer_mask = prune_masks(scores, 0.25, "layer")  # quotas 3 of 12 and 1 of 2
    assert float(layer_mask["hidden"]["kernel"].sum()) == 3
    assert np.asarray(layer_mask["hidden"]["kernel"]).ravel()[-3:].tolist() == [1.0] * 3
    assert np.asarray(layer_mask["output"]["kernel"]).ravel().tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="scope"):
        prune_masks(scores, 0.25, "neuron")
    with pytest.raises(ValueError, match="fraction"):
        prune_masks(scores, 1.0, "global")


def test_learning_rate_and_settings_validation():
    assert learning_rate_for(1.0, 4.0) == learning_rate_for(1.0, 0.25) == 1.0 / 16
    assert learning_rate_for(0.5, 1.0) == 0.5
    with pytest.raises(ValueError, match="lam"):
        learning_rate_for(1.0, 0.0)
    smoke = EXPERIMENT.presets["smoke"]
    for field, value, match in [
        ("lambdas", (), "lambdas"),
        ("lambdas", (1.0, -2.0), "lambdas"),
        ("keep_fractions", (0.0,), "keep_fractions"),
        ("keep_fractions", (), "keep_fractions"),
        ("seeds", (), "seeds"),
        ("learning_rate", 0.0, "learning_rate"),
        ("width", 0, "width"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(smoke, **{field: value})
    assert isinstance(smoke, ImportanceLambdaSettings)
