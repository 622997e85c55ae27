"""The training engine: pruning events, resume == uninterrupted, evaluation, analysis, and
data-parallel == single device (in a subprocess with 4 forced CPU devices)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from cpu_devices import cpu_devices_env

from jaxprune.data import DataConfig, load_dataset
from jaxprune.masks import PruningSchedule, apply_group_mask, linear, lth_schedule, one_shot
from jaxprune.methods.pl_gating import PLGatingConfig
from jaxprune.spectra import empirical_ntk, spectrum_features
from jaxprune.train import (
    RunMismatchError,
    TrainConfig,
    build_model,
    criterion_pruner,
    evaluate,
    lth_pruner,
    make_pruner,
    pl_gating_pruner,
    train,
)
from jaxprune.train import engine as engine_module
from jaxprune.train.identity import run_identity
from jaxprune.train.parallel import compile_step, data_mesh, forced_cpu_devices_env
from jaxprune.train.pruning import greedy_pruner
from jaxprune.train.steps import make_eval_step
from jaxprune.train.tasks import make_task


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mlp(digits):
    return build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12")


def _config(**overrides):
    defaults = dict(num_steps=30, batch_size=32, log_every=5, progress=False)
    return TrainConfig(**{**defaults, **overrides})


def test_events_fire_at_scheduled_steps_with_scheduled_sparsity(digits, mlp, tmp_path):
    schedule = linear([5, 10, 20], 0.75)
    pruner = criterion_pruner("magnitude", schedule)
    result = train(mlp, digits, optax.adam(1e-2), _config(), pruner=pruner, run_dir=tmp_path)
    p = 28
    expected = [(5, 0.25), (10, 0.5), (20, 0.75)]
    assert [(e["step"], e["ratio"]) for e in result.events] == expected
    kept = [round((1 - r) * p) for _, r in expected]
    assert [e["kept"] for e in result.events] == kept
    masks = [np.load(tmp_path / f"event_{s}.npz")["mask"] for s, _ in expected]
    assert [int(m.sum()) for m in masks] == kept
    for earlier, later in itertools.pairwise(masks):  # masks only shrink
        assert np.all(later <= earlier)
    logged = {r["step"]: r["group_sparsity"] for r in result.rows if "group_sparsity" in r}
    assert logged == {s: pytest.approx(1 - k / p) for (s, _), k in zip(expected, kept)}
    # Pruned groups are exactly zero at the end, after 10 more updates.
    ids, _ = mlp.group_ids(result.state.params)
    final = masks[-1]
    zeroed = apply_group_mask(result.state.params, ids, final)
    for a, b in zip(
        jax.tree_util.tree_leaves(zeroed), jax.tree_util.tree_leaves(result.state.params)
    ):
        np.testing.assert_array_equal(a, b)
    assert result.summary["group_sparsity"] == pytest.approx(1 - kept[-1] / p)


def test_schedule_beyond_the_run_is_an_error(digits, mlp):
    pruner = criterion_pruner("random", one_shot(30, 0.5))
    with pytest.raises(ValueError, match="beyond the run's num_steps=30"):
        train(mlp, digits, optax.sgd(0.1), _config(), pruner=pruner)


def _interrupt_after(monkeypatch, calls: int):
    """Make the engine's batch placement fail on call ``calls + 1``: a kill mid-run."""
    original = engine_module.shard_batch
    count = {"n": 0}

    def failing(batch, mesh):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt("simulated kill")
        return original(batch, mesh)

    monkeypatch.setattr(engine_module, "shard_batch", failing)


@pytest.mark.parametrize("compact", [False, True])
def test_resume_equals_uninterrupted(digits, mlp, tmp_path, monkeypatch, compact):
    # LTH-style schedule: rewind to step 4, events at 8 and 18 (before and after the kill).
    schedule = PruningSchedule((8, 18), (0.25, 0.5), rewind_step=4)
    config = _config(num_steps=26, checkpoint_every=6, eval_every=13, compact=compact)
    make = lambda: criterion_pruner("magnitude", schedule)  # noqa: E731
    whole = train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "a")

    _interrupt_after(monkeypatch, 15)  # killed during step 15; last checkpoint at step 12
    with pytest.raises(KeyboardInterrupt):
        train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "b")
    monkeypatch.undo()
    resumed = train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "b")

    for a, b in zip(
        jax.tree_util.tree_leaves(whole.state.params),
        jax.tree_util.tree_leaves(resumed.state.params),
    ):
        np.testing.assert_array_equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(whole.rows) == strip(resumed.rows)
    assert [e["step"] for e in resumed.events] == [8, 18]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == whole.rows


def _killed_in_event(pruner, step):
    """``pruner`` whose selection at ``step`` is killed (once)."""
    state = {"killed": False}

    def select(context, method_state):
        if context.step == step and not state["killed"]:
            state["killed"] = True
            raise KeyboardInterrupt("simulated kill during the pruning event")
        return pruner.select(context, method_state)

    return dataclasses.replace(pruner, select=select)


def _killed_after_checkpoint(monkeypatch, step):
    """A kill right after the checkpoint of ``step`` is written."""
    original = engine_module.save_run

    def save_then_die(directory, done, *args, **kwargs):
        original(directory, done, *args, **kwargs)
        if done == step:
            raise KeyboardInterrupt("simulated kill right after a checkpoint")

    monkeypatch.setattr(engine_module, "save_run", save_then_die)


@pytest.mark.parametrize("kill", ["checkpoint 12", "checkpoint 18", "batch 16", "event 18"])
def test_a_run_killed_anywhere_ends_with_the_rows_of_an_uninterrupted_one(
    digits, mlp, tmp_path, monkeypatch, kill
):
    """Kills right after the checkpoints of steps 12 and 18 (rows being assembled, not yet
    written), at the 16th batch placement, and inside the pruning event at step 18 (a
    checkpoint step): every row, the checkpoint step's included, is in the resumed run's
    metrics."""
    schedule = PruningSchedule((8, 18), (0.25, 0.5))
    config = _config(num_steps=24, checkpoint_every=6, eval_every=12, compact=True)
    make = lambda: criterion_pruner("magnitude", schedule)  # noqa: E731
    whole = train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "a")
    kind, at = kill.split()
    pruner = make()
    if kind == "checkpoint":
        _killed_after_checkpoint(monkeypatch, int(at))
    elif kind == "batch":
        _interrupt_after(monkeypatch, int(at))
    else:
        pruner = _killed_in_event(pruner, int(at))
    with pytest.raises(KeyboardInterrupt):
        train(mlp, digits, optax.adam(1e-2), config, pruner=pruner, run_dir=tmp_path / "b")
    monkeypatch.undo()
    resumed = train(mlp, digits, optax.adam(1e-2), config, pruner=pruner, run_dir=tmp_path / "b")
    assert resumed.rows == whole.rows
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == whole.rows
    assert [r["step"] for r in whole.rows] == [5, 8, 10, 12, 15, 18, 20, 24]


def test_resume_refuses_a_different_run_naming_the_fields(digits, mlp, tmp_path):
    config = _config(num_steps=12, checkpoint_every=6)
    snip = criterion_pruner("snip", one_shot(3, 0.5))
    train(mlp, digits, optax.adam(1e-2), config, pruner=snip, run_dir=tmp_path)
    other = make_pruner("magnitude", one_shot(9, 0.5))
    with pytest.raises(RunMismatchError, match=r"method\.name: 'snip' -> 'magnitude'.*--fresh"):
        train(mlp, digits, optax.adam(1e-2), config, pruner=other, run_dir=tmp_path)
    wider = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,16")
    with pytest.raises(RunMismatchError, match=r"model\.config\.hidden"):
        train(wider, digits, optax.adam(1e-2), config, pruner=snip, run_dir=tmp_path)
    with pytest.raises(RunMismatchError, match=r"run_info\.learning_rate: <absent> -> 0\.1"):
        train(
            mlp,
            digits,
            optax.adam(1e-2),
            config,
            pruner=snip,
            run_dir=tmp_path,
            run_info={"learning_rate": 0.1},
        )
    # The same run resumes (its last checkpoint is the end: nothing left to train) ...
    again = train(mlp, digits, optax.adam(1e-2), config, pruner=snip, run_dir=tmp_path)
    assert again.rows[-1]["step"] == 12
    # ... and operational settings may change.
    quiet = dataclasses.replace(config, progress=True, checkpoint_every=4, keep_checkpoints=3)
    train(mlp, digits, optax.adam(1e-2), quiet, pruner=snip, run_dir=tmp_path)
    # resume=False starts over and removes the earlier run's checkpoints first.
    train(
        mlp,
        digits,
        optax.adam(1e-2),
        _config(num_steps=10),
        pruner=other,
        run_dir=tmp_path,
        resume=False,
    )
    assert not list((tmp_path / "checkpoints").iterdir())


def test_resume_refuses_changed_options_of_a_pruner_built_directly(digits, mlp, tmp_path):
    """The factories record their resolved options, defaults included, so a resume with a
    pruner built by the Python API (not make_pruner) is refused when an option changed."""
    config = _config(num_steps=12, checkpoint_every=6)
    layered = criterion_pruner("snip", one_shot(3, 0.5), per_layer=True)
    train(mlp, digits, optax.adam(1e-2), config, pruner=layered, run_dir=tmp_path)
    changed = criterion_pruner("snip", one_shot(3, 0.5), per_layer=False)
    with pytest.raises(RunMismatchError, match=r"method\.settings\.per_layer: True -> False"):
        train(mlp, digits, optax.adam(1e-2), config, pruner=changed, run_dir=tmp_path)
    same = criterion_pruner("snip", one_shot(3, 0.5), per_layer=True)
    assert train(mlp, digits, optax.adam(1e-2), config, pruner=same, run_dir=tmp_path).rows


def test_every_factory_records_its_resolved_options():
    schedule, rewinding = one_shot(3, 0.5), lth_schedule(40, 0.5)
    cases = [
        (criterion_pruner("snip", schedule), make_pruner("snip", schedule)),
        (criterion_pruner("snip", schedule, num_probes=16), make_pruner("snip", schedule)),
        (lth_pruner(rewinding), make_pruner("lth", rewinding, per_layer=False)),
        (greedy_pruner(schedule), make_pruner("greedy", schedule, min_per_layer=1)),
        (pl_gating_pruner(schedule), make_pruner("pl", schedule, num_probes=4)),
        (pl_gating_pruner(schedule, PLGatingConfig(alpha=0.5)), make_pruner("pl", schedule,
                                                                           alpha=0.5)),
    ]  # fmt: skip
    for direct, by_name in cases:
        assert direct.settings == by_name.settings
    assert criterion_pruner("snip", schedule).settings == {
        "criterion": "snip", "num_batches": 1, "num_probes": 16, "per_layer": False,
        "min_per_layer": 1,
    }  # fmt: skip
    assert greedy_pruner(schedule).settings["max_candidates"] is None
    assert pl_gating_pruner(schedule, seed=3).settings["seed"] == 3
    assert pl_gating_pruner(schedule).settings["gating_steps"] == PLGatingConfig().gating_steps
    differ = [
        (criterion_pruner("snip", schedule), criterion_pruner("snip", schedule, num_batches=2)),
        (lth_pruner(rewinding), lth_pruner(rewinding, min_per_layer=2)),
        (greedy_pruner(schedule), greedy_pruner(schedule, chunk_size=4)),
        (pl_gating_pruner(schedule), pl_gating_pruner(schedule, seed=0)),
    ]
    for a, b in differ:
        assert a.settings != b.settings


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "no-checkpoint"])
def test_a_fresh_start_removes_the_earlier_runs_files_only(digits, mlp, tmp_path, capsys, resume):
    """resume=False, or a directory without a checkpoint: the old run's event, summary, curve
    and TensorBoard files go (a stale event_4.npz would pass for this run's); a user's file
    stays."""
    (tmp_path / "tensorboard").mkdir()
    stale = ["event_4.npz", "events.json", "summary.json", "curve_old.png", "metrics.csv",
             "tensorboard/events.out.tfevents.1.host"]  # fmt: skip
    for name in stale:
        (tmp_path / name).write_text("old run")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "tensorboard" / "notes.txt").write_text("mine too")
    config = _config(num_steps=8, tensorboard=False)
    pruner = criterion_pruner("magnitude", one_shot(3, 0.5))
    train(mlp, digits, optax.adam(1e-2), config, pruner=pruner, run_dir=tmp_path, resume=resume)
    assert not (tmp_path / "event_4.npz").exists()
    assert not (tmp_path / "curve_old.png").exists()
    assert not (tmp_path / "tensorboard" / "events.out.tfevents.1.host").exists()
    assert (tmp_path / "event_3.npz").is_file()
    assert [e["step"] for e in json.loads((tmp_path / "events.json").read_text())] == [3]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 8
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "tensorboard" / "notes.txt").read_text() == "mine too"
    lines = [line for line in capsys.readouterr().out.splitlines() if "fresh start" in line]
    assert len(lines) == 1 and "event_4.npz" in lines[0] and "notes.txt" not in lines[0]


def test_identity_names_functions_without_memory_addresses(digits, mlp):
    pruner = make_pruner("pl", one_shot(3, 0.5))
    identity = run_identity(mlp, digits, _config(), pruner, {"schedule": optax.constant_schedule})
    assert "0x" not in json.dumps(identity)
    assert identity == run_identity(
        build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12"),
        digits,
        _config(),
        make_pruner("pl", one_shot(3, 0.5)),
        {"schedule": optax.constant_schedule},
    )


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    digits, mlp, tmp_path, monkeypatch, capsys
):
    config = _config(num_steps=24, checkpoint_every=6, keep_checkpoints=3)
    make = lambda: criterion_pruner("magnitude", one_shot(8, 0.5))  # noqa: E731
    whole = train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "a")
    _interrupt_after(monkeypatch, 20)  # checkpoints 6, 12, 18 written
    with pytest.raises(KeyboardInterrupt):
        train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "b")
    monkeypatch.undo()
    step_18 = (tmp_path / "b" / "checkpoints" / "18" / "state").rglob("d/*")
    data = max(step_18, key=lambda p: p.stat().st_size)  # the largest array data file
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a partial write
    resumed = train(mlp, digits, optax.adam(1e-2), config, pruner=make(), run_dir=tmp_path / "b")
    out = capsys.readouterr().out
    assert "skipping a corrupt checkpoint, step 18" in out and out.count("\n") == 1
    assert resumed.rows == whole.rows
    for a, b in zip(
        jax.tree_util.tree_leaves(whole.state.params),
        jax.tree_util.tree_leaves(resumed.state.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_evaluate_counts_every_example_once(digits, mlp):
    # 359 test examples, eval batches of 64: the last one is padded and the padding ignored.
    mesh = data_mesh(1)
    result = train(mlp, digits, optax.adam(1e-2), _config(num_steps=5))
    task = make_task("classification", num_outputs=10, info={})
    metrics = evaluate(
        compile_step(make_eval_step(mlp, task), mesh, donate_state=False),
        jax.device_put(result.state),
        digits.test,
        batch_size=64,
        key=jax.random.key(0),
        mesh=mesh,
        task="classification",
    )
    logits = mlp.module.apply({"params": result.state.params}, digits.test["x"])
    accuracy = float(np.mean(np.argmax(logits, -1) == digits.test["y"]))
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, digits.test["y"]).mean())
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_analysis_is_the_pruned_models_ntk_condition(digits, mlp):
    pruner = criterion_pruner("magnitude", one_shot(3, 0.5))
    config = _config(num_steps=6, analysis_every=3, analysis_examples=16)
    result = train(mlp, digits, optax.adam(1e-2), config, pruner=pruner)
    final = result.rows[-1]
    ids, _ = mlp.group_ids(result.state.params)
    mask = np.asarray(result.state.gates)
    x = digits.train["x"][:16]

    def pruned(params, inputs):  # tangents only of the kept weights
        return mlp.module.apply({"params": apply_group_mask(params, ids, mask)}, inputs)

    kernel = empirical_ntk(pruned, result.state.params, x, backend="jacobian")
    expected = spectrum_features(np.asarray(kernel), dtype=np.float64)
    assert final["ntk_condition"] == pytest.approx(float(expected.condition_number), rel=1e-3)
    assert final["ntk_lambda_max"] == pytest.approx(float(expected.lambda_max), rel=1e-4)
    before = [r for r in result.rows if "ntk_condition_before_event" in r]
    assert [r["step"] for r in before] == [3]
    # Hessian trace of the pruned model on the probe batch is logged and positive-ish finite.
    assert np.isfinite(final["hessian_trace"])


def test_mlm_training_reports_perplexity(tmp_path):
    splits = load_dataset(
        DataConfig(name="docstrings", max_chars=20_000, seq_len=16, vocab_size=300)
    )
    model = build_model(
        "bert", num_outputs=splits.num_outputs, input_shape=(16,), overrides={"max_length": 16}
    )
    config = _config(num_steps=4, batch_size=8, eval_batch_size=64, log_every=2)
    result = train(model, splits, optax.adam(1e-3), config)
    summary = result.summary
    assert summary["test_perplexity"] == pytest.approx(np.exp(summary["test_loss"]), rel=1e-6)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["test_loss"] < np.log(splits.num_outputs) + 1.0


_DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from jaxprune.data import DataConfig, load_dataset
    from jaxprune.masks import one_shot
    from jaxprune.train import TrainConfig, build_model, criterion_pruner, train

    assert jax.device_count() == 4, jax.devices()
    out = {}
    digits = load_dataset("digits")
    mlp = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12")
    text = load_dataset(DataConfig(name="docstrings", max_chars=20000, seq_len=16,
                                   vocab_size=300))
    bert = build_model("bert", num_outputs=text.num_outputs, input_shape=(16,),
                       overrides={"max_length": 16})
    vgg_data = load_dataset("digits32")
    vgg = build_model("vgg", num_outputs=10, input_shape=(32, 32, 3))
    # Adam's first steps move every weight by about ±lr whatever its gradient's size, so
    # round-off in near-zero gradients (rare embedding rows, BatchNorm) becomes lr-sized;
    # BERT and VGG use SGD: what is compared is the data-parallel gradient.
    cases = {
        "mlp_snip": (mlp, digits, lambda: criterion_pruner("snip", one_shot(3, 0.5)), 8, 32,
                     optax.adam(1e-2)),
        "bert_dropout": (bert, text, lambda: None, 4, 8, optax.sgd(0.5)),
        "vgg_batchnorm": (vgg, vgg_data, lambda: None, 3, 8, optax.sgd(0.01)),
    }
    for name, (model, splits, pruner, steps, batch, optimizer) in cases.items():
        results = []
        for devices in (1, 4):
            config = TrainConfig(num_steps=steps, batch_size=batch, eval_batch_size=64,
                                 log_every=1, num_devices=devices, progress=False)
            r = train(model, splits, optimizer, config, pruner=pruner())
            results.append(r)
        one, four = results
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(one.state.params),
            jax.tree_util.tree_leaves(four.state.params)))
        scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(one.state.params))
        out[name] = {
            "devices": [one.summary["devices"], four.summary["devices"]],
            "param_diff": diff / scale,
            "loss": [[r["train_loss"] for r in x.rows if "train_loss" in r] for x in results],
            "test_loss": [one.summary["test_loss"], four.summary["test_loss"]],
            "events": [one.events and one.events[0]["kept"], four.events and four.events[0]["kept"]],
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def data_parallel_results():
    done = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL],
        env=cpu_devices_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["mlp_snip", "bert_dropout", "vgg_batchnorm"])
def test_data_parallel_equals_single_device(data_parallel_results, case):
    result = data_parallel_results[case]
    assert result["devices"] == [1, 4]
    assert result["param_diff"] < 1e-4, result
    np.testing.assert_allclose(result["loss"][0], result["loss"][1], rtol=1e-4)
    np.testing.assert_allclose(result["test_loss"][0], result["test_loss"][1], rtol=1e-4)
    assert result["events"][0] == result["events"][1]


def test_forced_cpu_devices_env_sets_the_device_count_and_the_collective_timeout():
    env = forced_cpu_devices_env(3, {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "HOME": "/h"})
    flags = env["XLA_FLAGS"].split()
    assert (
        flags[0] == "--xla_dump_to=/tmp/x" and "--xla_force_host_platform_device_count=3" in flags
    )
    assert any(f.startswith("--xla_cpu_collective_call_terminate_timeout_seconds=") for f in flags)
    assert env["JAX_PLATFORMS"] == "cpu" and env["HOME"] == "/h"
    assert "JAX_PLATFORMS" not in forced_cpu_devices_env(2, {}, cpu_only=False)
    with pytest.raises(ValueError, match="count: expected a positive int, got 0"):
        forced_cpu_devices_env(0)


def test_batch_not_divisible_by_devices_is_an_error(digits, mlp):
    with pytest.raises(ValueError, match="batch_size=33"):
        engine_module.check_batch_size(33, _FakeMesh(4))


class _FakeMesh:
    def __init__(self, size):
        self.devices = np.zeros(size)


def test_mlm_analysis_with_output_projections():
    splits = load_dataset(
        DataConfig(name="docstrings", max_chars=20_000, seq_len=16, vocab_size=300)
    )
    model = build_model("bert", num_outputs=splits.num_outputs, input_shape=(16,))
    config = _config(
        num_steps=2,
        batch_size=8,
        eval_batch_size=64,
        log_every=1,
        analysis_every=2,
        analysis_examples=4,
        analysis_probes=2,
        analysis_projections=8,
    )
    result = train(model, splits, optax.adam(1e-3), config)
    final = result.rows[-1]
    assert final["ntk_lambda_max"] > 0 and np.isfinite(final["hessian_trace"])
    with pytest.raises(ValueError, match="analysis_projections: expected a positive int"):
        _config(analysis_projections=0)
