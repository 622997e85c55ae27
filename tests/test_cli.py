"""The `jaxprune` command: the analyze job end to end, help, and bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxprune.cli import main
from jaxprune.train import read_metrics


def test_analyze_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "analyze",
            "--hidden",
            "8,6",
            "--train-steps",
            "20",
            "--probe-examples",
            "24",
            "--num-probes",
            "8",
            "--top-k",
            "3",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "NTK condition λ_max/λ_min" in printed and "top Hessian eigenvalues" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["count"] == 14
    assert len(summary["hessian"]["top_eigenvalues"]) == 3
    # The table's condition number is λ_max/λ_min of the same kernel.
    ntk = summary["ntk"]
    assert ntk["condition_number"] == pytest.approx(ntk["lambda_max"] / ntk["lambda_min"], rel=1e-6)
    eig = summary["hessian"]["top_eigenvalues"]
    assert eig == sorted(eig, reverse=True)
    assert np.all(np.asarray(summary["groups"]["entropy"]) >= 0)
    for name in ("spectrum.png", "groups.png"):
        assert (out / name).stat().st_size > 1000


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxprune.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_explains_the_job():
    result = _run("analyze", "--help")
    assert result.returncode == 0
    assert "spectral entropy" in result.stdout and "--probe-examples" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "--hidden", "8,x"], "comma-separated integers"),
        (["analyze", "--probe-examples", "0"], ">= 1"),
        (["analyze", "--dataset", "cifar"], "invalid choice"),
        (["analyze", "--learning-rate", "-1"], "learning_rate: expected a number in (0, inf)"),
        (["frobnicate"], "invalid choice"),
        (["train", "--model", "gpt"], "unknown model 'gpt'; expected one of mlp, two_layer"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; expected one of digits"),
        (
            ["train", "--method", "obs"],
            "--method: expected one of ('none', 'magnitude', 'random'",
        ),
        (
            ["train", "--method", "snip", "--prune-at", "3", "--gating-steps", "3"],
            "--gating-steps: not an option of --method snip, which takes --num-batches",
        ),
        (["train", "--gating-steps", "3"], "--gating-steps needs a pruning --method"),
        (["train", "--method", "lth", "--rewind-step", "3"], "--method lth needs --prune-at"),
        (["train", "--method", "snip"], "needs --prune-at"),
        (["train", "--prune-at", "3"], "--prune-at needs a pruning --method"),
        (["train", "--method", "lth", "--prune-at", "3"], "needs --rewind-step"),
        (["train", "--method", "snip", "--prune-at", "0", "--ratio", "1"], "ratio in [0, 1)"),
        (["train", "--method", "snip", "--prune-at", "x"], "comma-separated step numbers"),
        (["train", "--method", "snip", "--prune-at", "900", "--steps", "10"], "beyond the run"),
        (["train", "--model", "mlp", "--kind", "heads"], "not a group kind of mlp"),
        (["train", "--batch-size", "5000"], "exceeds the 1438 training examples"),
        (["train", "--devices", "3"], "num_devices must be an int in [1, 1]"),
        (["train", "--learning-rate", "0"], "--learning-rate must be > 0"),
        (["train", "--optimizer", "lion"], "invalid choice"),
        (["train", "--steps", "-2"], ">= 1"),
        (["experiment", "table9"], "unknown experiment 'table9'; expected one of demo"),
        (["experiment", "demo", "--preset", "huge"], "invalid choice"),
        (["experiment", "demo", "--set", "seeds"], "--set expects field=value"),
        (["experiment", "demo", "--set", "depth=3"], "unknown field 'depth'; fields are: dataset"),
        (["experiment", "demo", "--set", "ratio=high"], "--set ratio: expected float"),
        (["experiment", "demo", "--set", "per_layer=maybe"], "expected true or false"),
        (["experiment", "demo", "--set", "ratio=1.5"], "ratio: expected a fraction in (0, 1)"),
        (["experiment", "demo", "--set", "methods=dense,obd"], "methods: unknown ['obd']"),
        (["demo", "--set", "num_steps=10"], "prune_step: expected a step in [0, num_steps=10)"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_train_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "mlp",
        "--model-preset",
        "16",
        "--steps",
        "12",
        "--batch-size",
        "32",
        "--method",
        "snip",
        "--prune-at",
        "4",
        "--ratio",
        "0.5",
        "--compact",
        "--log-every",
        "4",
        "--checkpoint-every",
        "6",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed and "groups pruned 50.0%" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"] == 64 * 8 + 8 + 8 * 10 + 10  # 8 of 16 neurons left
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12
    assert (out / "curve_train_loss.png").exists() and (out / "event_4.npz").exists()
    # A second call with the same arguments finds the finished run's checkpoint and resumes.
    assert main(args) == 0
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert again == rows
    # Other settings on the same --out: refused in one line naming the fields and --fresh.
    capsys.readouterr()
    changed = [*args]
    changed[changed.index("snip")] = "magnitude"
    changed[changed.index("--prune-at") + 1] = "8"
    assert main(changed) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--fresh" in message
    assert "method.name: 'snip' -> 'magnitude'" in message and "event_steps" in message
    assert main([*changed, "--fresh"]) == 0
    assert json.loads((out / "events.json").read_text())[0]["step"] == 8


def test_train_without_out_writes_a_new_directory_per_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model-preset", "8", "--steps", "4", "--batch-size", "32", "--quiet"]
    assert main(args) == 0 and main(args) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("train-mlp-none-") for r in runs)
    assert all((r / "metrics.jsonl").exists() for r in runs)


def test_experiment_smoke_preset_and_fields(tmp_path, capsys):
    assert main(["experiment", "demo", "--preset", "smoke", "--list-fields"]) == 0
    assert "num_steps = 40" in capsys.readouterr().out
    out = tmp_path / "demo"
    assert (
        main(
            [
                "experiment",
                "demo",
                "--preset",
                "smoke",
                "--set",
                "methods=dense,snip",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| dense |" in table and "| snip |" in table and "test accuracy" in table
    assert (out / "demo.png").stat().st_size > 1000
    rows = read_metrics(out / "runs" / "snip_seed0")  # the plotted curve: every log_every steps
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(2, 41, 2))
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["snip"]["group_sparsity"] == [29 / 32]  # 90% of 32 neurons, rounded
    assert results["dense"]["group_sparsity"] == [0.0]


def test_demo_smoke_preset_runs_every_default_kind_of_method(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["experiment", "demo", "--preset", "smoke", "--quiet", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for method in ("dense", "magnitude", "lth", "pl"):
        assert f"| {method} |" in table
    results = json.loads((out / "results.json").read_text())["results"]
    # 90% of the 32 neurons, rounded: 29 pruned.
    assert results["pl"]["group_sparsity"] == [29 / 32]


def test_train_pl_end_to_end(tmp_path, capsys):
    """``--method pl`` goes through the pruner registry with its gating options."""
    out = tmp_path / "pl"
    args = ["train", "--model", "mlp", "--model-preset", "8", "--steps", "4", "--batch-size"]
    args += ["16", "--method", "pl", "--prune-at", "2", "--ratio", "0.5", "--gating-steps", "1"]
    args += ["--feature-batch-size", "4", "--log-every", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "groups pruned 50.0%" in printed
    event = np.load(out / "event_2.npz")
    assert event["mask"].sum() == 4 and "gates" in event
    # The ReLU MLP's output Hessian is zero: "auto" trained the gates on the Gauss-Newton trace
    # (the engine splits the loss at the outputs).
    assert str(event["hessian"]) == "gauss_newton" and event["trace_scale"] > 0
    assert event["history_trace_stderr"].shape == (1,)
    # The event's summary reports the final gating trace ± its Hutchinson standard error (the
    # default 4 probes per step): in events.json and on the printed event line.
    (summary,) = json.loads((out / "events.json").read_text())
    assert summary["gating_hessian"] == "gauss_newton" and summary["gating_probes"] == 4
    trace, stderr = summary["gating_trace"], summary["gating_trace_stderr"]
    assert np.isfinite(trace) and trace > 0  # a Gauss-Newton trace: positive semidefinite
    assert np.isfinite(stderr) and stderr > 0
    np.testing.assert_allclose(trace, event["history_trace"][-1], rtol=1e-6)
    np.testing.assert_allclose(stderr, event["history_trace_stderr"][-1], rtol=1e-6)
    line = next(row for row in printed.splitlines() if row.startswith("event at step 2:"))
    assert "kept 4 of 8 groups" in line
    assert f"gating_trace {trace:.4g} ± {stderr:.2g}" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hessian", "fisher"], "hessian"),
        (["--alpha", "-1"], "alpha"),
        (["--num-probes", "0"], "--num-probes"),
        (["--gating-steps", "x"], "--gating-steps"),
    ],
)
def test_train_pl_bad_arguments_exit_2_with_one_line(tmp_path, capsys, flags, message):
    args = ["train", "--model-preset", "8", "--steps", "4", "--method", "pl", "--prune-at", "2"]
    args += ["--ratio", "0.5", "--quiet", "--out", str(tmp_path / "bad"), *flags]
    try:
        status = main(args)
    except SystemExit as exit:  # argparse type errors
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_train_lth_without_steps_fits_the_paper_schedule(tmp_path, capsys):
    """``--method lth`` alone: ``lth_schedule`` (3 rounds, rewinding to 5% of the steps)."""
    out = tmp_path / "lth"
    args = ["train", "--model-preset", "8", "--steps", "40", "--batch-size", "16"]
    args += ["--method", "lth", "--ratio", "0.5", "--log-every", "10", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "groups pruned 50.0%" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("event_*.npz")) == [
        "event_11.npz",
        "event_20.npz",
        "event_29.npz",
    ]
