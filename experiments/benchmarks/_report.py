"""The row format every benchmark reports in, so ``run_all.py`` can assemble one table.

Each benchmark script parses its flags with :func:`benchmark_parser` (``--quick`` for a
minutes-long run at smaller shapes, ``--json PATH`` to write its rows) and, after printing its
own report, passes the rows it measured to :func:`write_rows`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One measured comparison.

    Attributes:
      bench: the script's short name (``"lanczos"`` for ``bench_lanczos.py``).
      what: what was measured, with the model and shapes (``"top-1 eigenvalue, MLP 64-512-512-10"``).
      jaxprune: jaxprune's figure with its unit (``"41 ms"``).
      peer: the reference's figure with its unit and name (``"PyHessian 90 ms"``), or ``""``.
      ratio: the measured ratio the target is stated in (e.g. peer time / jaxprune time), or
        ``None`` when the row has no ratio.
      target: the target in words (``"ratio >= 1"``), or ``""``.
      met: whether the target was met, or ``None`` when there is no target.
      note: anything a reader needs to read the figures (tolerance, repeats, device).
    """

    bench: str
    what: str
    jaxprune: str
    peer: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every benchmark has: ``--quick`` and ``--json``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller shapes and fewer repeats (about a minute)"
    )
    parser.add_argument("--json", type=Path, help="also write the measured rows to this file")
    return parser


def write_rows(path: Path | None, rows: list[Row]) -> None:
    """Write ``rows`` as a JSON list to ``path`` (nothing when ``path`` is ``None``)."""
    if path is not None:
        path.write_text(json.dumps([asdict(row) for row in rows], indent=1))
