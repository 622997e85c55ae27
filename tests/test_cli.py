"""The `jaxprune` command: the analyze job end to end, help, and bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxprune.cli import main


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
        (["analyze", "--learning-rate", "-1"], "learning_rate must be > 0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
