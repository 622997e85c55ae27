"""Run every benchmark of this folder and write their rows as one table.

    scripts/with-env python experiments/benchmarks/run_all.py [--quick] [--only a,b]
        [--out DIR] [--results-md PATH] [--timeout S]

Each ``bench_*.py`` runs as a subprocess (a fresh JAX per bench: the benches that force CPU
devices set ``XLA_FLAGS`` for their own workers) with ``--json`` (and ``--quick`` when given);
one progress line per bench gives its wall time.  A bench that fails, or runs past ``--timeout``
seconds, is recorded as failed with the last line of its stderr and the run goes on; on SIGINT
the running bench is stopped and the outputs are written for the benches run so far.  Written:

* ``DIR/benchmarks.md``: the table ``bench | what | jaxprune | peer | ratio | target | met |
  note`` under a header naming the date, ``jax.devices()`` and the command;
* ``DIR/benchmarks.json``: the same header fields, each bench's outcome and all rows;
* ``DIR/logs/NAME.log``: each bench's stdout and stderr, ``DIR/NAME.json`` its rows;
* with ``--results-md PATH``: the block between ``<!-- benchmarks:begin -->`` and
  ``<!-- benchmarks:end -->`` of ``PATH`` replaced by the header and the table (the markers
  and a heading are appended at the end of the file when absent).

``--only`` takes bench names with or without ``bench_`` (``--only masks,bench_grda``), run in
that order.
``DIR`` defaults to ``runs/benchmarks``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
HEADING = "## Benchmark suite (`experiments/benchmarks/run_all.py`)"
INTERRUPTED = "interrupted"
COLUMNS = ("bench", "what", "jaxprune", "peer", "ratio", "target", "met", "note")


class Outcome(NamedTuple):
    """One bench's run: ``name`` (``"grda"`` for ``bench_grda.py``), wall ``seconds``, the
    ``rows`` it wrote (dicts with the fields of ``_report.Row``) and ``error`` (the last stderr
    line of a failed run, ``None`` when it succeeded)."""

    name: str
    seconds: float
    rows: list[dict]
    error: str | None


def discover(directory: Path = HERE) -> list[str]:
    """Names of the benches in ``directory`` (``bench_NAME.py`` gives ``NAME``), sorted."""
    return sorted(path.stem.removeprefix("bench_") for path in directory.glob("bench_*.py"))


def select(available: list[str], only: str | None) -> list[str]:
    """The benches of ``only`` (comma-separated, ``bench_`` optional) in its order, each once,
    or all of ``available`` when ``only`` is ``None``."""
    if only is None:
        return list(available)
    wanted = [name.strip().removeprefix("bench_") for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in available]
    if unknown or not wanted:
        raise ValueError(
            f"--only: got {only!r}; expected comma-separated names from {', '.join(available)}"
        )
    return list(dict.fromkeys(wanted))


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (``""`` when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_bench(name: str, out: Path, quick: bool, timeout: float | None) -> Outcome:
    """Run ``bench_NAME.py`` in its own process group, its output logged to
    ``out/logs/NAME.log`` and its rows read from ``out/NAME.json``."""
    rows_path, log_path = out / f"{name}.json", out / "logs" / f"{name}.log"
    rows_path.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(rows_path)]
    command += ["--quick"] if quick else []
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers are killed with it on a timeout
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        error = None if process.returncode == 0 else last_line(stderr) or "no stderr"
        error = error and f"exit {process.returncode}: {error}"
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        cause = (
            INTERRUPTED if isinstance(stop, KeyboardInterrupt) else f"timed out after {timeout:g} s"
        )
        error = f"{cause}: {last_line(stderr) or last_line(stdout)}"
    seconds = time.perf_counter() - start
    log_path.write_text(f"$ {shlex.join(command)}\n{stdout}\n--- stderr ---\n{stderr}")
    if error is None and not rows_path.exists():
        error = "exited 0 but wrote no rows"
    rows = [] if error else json.loads(rows_path.read_text())
    return Outcome(name, seconds, rows, error)


def table_rows(outcomes: list[Outcome]) -> list[dict]:
    """All rows of ``outcomes``, a failed bench as one row saying so."""
    rows = []
    for outcome in outcomes:
        if outcome.error is None:
            rows += outcome.rows
        else:
            rows.append(
                {
                    "bench": outcome.name,
                    "what": "FAILED",
                    "jaxprune": "",
                    "met": False,
                    "note": outcome.error,
                }
            )
    return rows


def cell(column: str, value) -> str:
    """One table cell: ratios to 3 significant digits, met as yes/no, ``|`` escaped."""
    if value is None or value == "":
        text = "—" if column in ("ratio", "met") else ""
    elif column == "ratio":
        text = f"{value:.3g}"
    elif column == "met":
        text = "yes" if value else "**no**"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """``rows`` as a Markdown table with the columns ``COLUMNS`` (missing fields empty)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def header_lines(date: str, devices: str, command: str) -> str:
    """The block's header: the date, the devices and the command that produced the table."""
    return f"Run {date} on `{devices}`:\n\n```\n{command}\n```"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between ``BEGIN`` and ``END`` replaced by ``block``; without the
    markers, ``text`` with a heading and the marked block appended."""
    marked = f"{BEGIN}\n{block}\n{END}"
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return f"{text.rstrip()}\n\n{HEADING}\n\n{marked}\n"
    return text[:start] + marked + text[end + len(END) :]


def devices_description() -> str:
    """``jax.devices()`` and the jax version, read in a subprocess (this process must not take
    an accelerator the benches need)."""
    code = "import jax; print(f'{jax.devices()} (jax {jax.__version__})')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return last_line(done.stdout) if done.returncode == 0 else f"unknown: {last_line(done.stderr)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every bench")
    parser.add_argument("--only", help="comma-separated bench names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")
    parser.add_argument("--results-md", type=Path, help="replace this file's marked block")
    parser.add_argument("--timeout", type=float, help="seconds per bench (default: none)")
    args = parser.parse_args(argv)
    try:
        names = select(discover(), args.only)
    except ValueError as error:
        parser.error(str(error))
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        [
            "scripts/with-env",
            "python",
            "experiments/benchmarks/run_all.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    devices = devices_description()
    print(f"{len(names)} benches on {devices}, output in {args.out}", flush=True)

    outcomes = []
    for i, name in enumerate(names, 1):
        outcome = run_bench(name, args.out, args.quick, args.timeout)
        status = (
            f"{len(outcome.rows)} rows" if outcome.error is None else f"FAILED: {outcome.error}"
        )
        print(
            f"[{i}/{len(names)}] bench_{name:<22s} {outcome.seconds:7.1f} s  {status}", flush=True
        )
        outcomes.append(outcome)
        if outcome.error is not None and outcome.error.startswith(INTERRUPTED):
            break  # SIGINT (a total time limit): write what was measured

    rows = table_rows(outcomes)
    block = f"{header_lines(date, devices, command)}\n\n{markdown_table(rows)}"
    (args.out / "benchmarks.md").write_text(block + "\n")
    summary = {
        "date": date,
        "devices": devices,
        "command": command,
        "benches": [{"name": o.name, "seconds": o.seconds, "error": o.error} for o in outcomes],
        "rows": rows,
    }
    (args.out / "benchmarks.json").write_text(json.dumps(summary, indent=1))
    if args.results_md is not None:
        text = args.results_md.read_text() if args.results_md.exists() else ""
        args.results_md.write_text(replace_block(text, block))
    failed = sum(o.error is not None for o in outcomes)
    total = sum(o.seconds for o in outcomes)
    print(
        f"{len(rows)} rows, {failed} failed, {total:.0f} s; table in {args.out / 'benchmarks.md'}"
    )


if __name__ == "__main__":
    main()
