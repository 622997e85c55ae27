"""The benchmark scripts as a suite: every ``bench_*.py`` answers ``--help`` with the shared
``--quick``/``--json`` flags and reads every flag it parses; ``run_all``'s table and the
RESULTS.md marker block, on made-up rows (no benchmark is run here)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def load(path: Path, monkeypatch):
    """The module at ``path``, imported with the benchmarks folder on ``sys.path`` (the scripts
    import ``_timing`` and ``_report`` from beside them)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_is_found():
    assert len(SCRIPTS) >= 13, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_help_names_the_shared_flags_and_every_flag_is_read(path, monkeypatch, capsys):
    module = load(path, monkeypatch)
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recording)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--quick" in help_text and "--json" in help_text
    source = path.read_text()
    assert 'if __name__ == "__main__":\n    main()' in source
    dests = {a.dest for a in parsers[-1]._actions if not isinstance(a, argparse._HelpAction)}
    unread = sorted(dest for dest in dests if f"args.{dest}" not in source)
    assert not unread, f"{path.name} parses but never reads: {unread}"


@pytest.fixture
def run_all(monkeypatch):
    return load(BENCHMARKS / "run_all.py", monkeypatch)


ROWS = [
    {
        "bench": "lanczos",
        "what": "top-1 eigenvalue, MLP 64-512-512-10",
        "jaxprune": "41 ms",
        "peer": "PyHessian 90 ms",
        "ratio": 2.19512,
        "target": "ratio >= 1",
        "met": True,
        "note": "tol 1e-3 | 10 repeats",
    },
    {"bench": "masks", "what": "forward", "jaxprune": "2.1x", "ratio": None, "met": False},
]


def test_markdown_table_has_one_line_per_row_with_every_column(run_all):
    lines = run_all.markdown_table(ROWS).splitlines()
    assert lines[0] == "| bench | what | jaxprune | peer | ratio | target | met | note |"
    assert len(lines) == 2 + len(ROWS)
    first = lines[2]
    assert first.startswith("| lanczos | top-1 eigenvalue, MLP 64-512-512-10 | 41 ms | ")
    assert "| 2.2 | ratio >= 1 | yes | tol 1e-3 \\| 10 repeats |" in first
    assert lines[3] == "| masks | forward | 2.1x |  | — |  | **no** |  |"
    assert all(line.count(" | ") == len(run_all.COLUMNS) - 1 for line in lines[2:])


def test_a_failed_bench_is_one_row_naming_its_error(run_all):
    outcomes = [
        run_all.Outcome("grda", 1.0, ROWS[:1], None),
        run_all.Outcome("bert", 2.0, [], "exit 1: ValueError: boom"),
    ]
    rows = run_all.table_rows(outcomes)
    assert rows[0] is ROWS[0]
    assert rows[1]["bench"] == "bert" and rows[1]["met"] is False
    assert rows[1]["note"] == "exit 1: ValueError: boom"


def test_replace_block_replaces_only_between_the_markers(run_all):
    text = f"# Results\n\nbefore\n{run_all.BEGIN}\nold table\n{run_all.END}\nafter\n"
    new = run_all.replace_block(text, "new table")
    assert new == f"# Results\n\nbefore\n{run_all.BEGIN}\nnew table\n{run_all.END}\nafter\n"
    assert run_all.replace_block(new, "new table") == new


def test_replace_block_appends_heading_and_markers_when_absent(run_all):
    new = run_all.replace_block("# Results\n\nsome text\n\n", "the table")
    assert new == (
        f"# Results\n\nsome text\n\n{run_all.HEADING}\n\n{run_all.BEGIN}\nthe table\n"
        f"{run_all.END}\n"
    )
    assert run_all.replace_block(new, "again").count(run_all.BEGIN) == 1


def test_select_keeps_the_given_order_and_rejects_unknown_names(run_all):
    available = ["bert", "grda", "masks"]
    assert run_all.select(available, None) == available
    assert run_all.select(available, "masks,bench_bert,masks") == ["masks", "bert"]
    with pytest.raises(ValueError, match=r"'masks,nope'.*bert, grda, masks"):
        run_all.select(available, "masks,nope")
    assert "run_all" not in run_all.discover() and "grda" in run_all.discover()
